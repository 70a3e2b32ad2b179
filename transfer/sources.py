"""Where the photos come from: the Kaggle competition, Microsoft's PetImages zip, or a local
archive or folder (either cats/dogs layout, or any folder of class folders: `transfer.archive`).

``resolve_source`` turns ``--source auto`` into a choice (an archive an earlier run downloaded;
else Kaggle when credentials exist and the ``kaggle`` package is installed; else Microsoft) and
says which; ``obtain_archive`` brings the
archive into ``data/.cache`` (or uses the local one) and returns its path, with its SHA-256 when
it was checked. The Microsoft zip is size-checked while it downloads and then checked against
its pinned SHA-256; the Kaggle client is an optional extra (``pip install 'transfer[kaggle]'``),
imported only when it is used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import socket
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transfer import bases
from transfer.download import download
from transfer.errors import TransferError
from transfer.files import sha256_file
from transfer.progress import Reporter
from transfer.settings import FetchOptions

# SHA-256 of Microsoft's kagglecatsanddogs_5340.zip (824,887,076 bytes), the file behind
# settings.MICROSOFT_URL. Source: gomlx/gomlx, examples/dogsvscats/dogsvscats.go
# (commit 0d9312cc8c5d06d93ba8555fe066c384d07d9d3c), `DownloadChecksum`, which its downloader
# verifies after fetching that same URL. (TensorFlow Datasets' url_checksums/cats_vs_dogs.txt,
# as stored, pins only the older kagglecatsanddogs_3367a.zip: 824,894,548 bytes, f9553e42...)
# The size matches wget logs of the URL ("Length: 824887076 (787M)").
MICROSOFT_SHA256 = "b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9"
# A mirror (TRANSFER_MICROSOFT_URL) serves the same file, so the same checksum applies; this
# variable overrides it, for tests and for a repackaged copy you trust.
MICROSOFT_SHA256_ENV = "TRANSFER_MICROSOFT_SHA256"

OFFLINE_HINT = ("Offline, use --archive PATH (a train.zip, a PetImages zip, or a folder or "
                "zip of class folders).")

NO_KAGGLE_CREDENTIALS = (
    "no Kaggle credentials: put ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME "
    "and KAGGLE_KEY, or set KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token) from "
    "https://www.kaggle.com/settings; or use --source microsoft (no account) or --archive PATH"
)
NO_KAGGLE_PACKAGE = (
    "--source kaggle needs the Kaggle client, which is not installed: "
    "pip install 'transfer[kaggle]' (or pip install 'kaggle>=1.8'); "
    "or use --source microsoft (no account) or --archive PATH"
)
# What the Kaggle client reads from the environment; `import kaggle` and
# KaggleApi().authenticate() may remove KAGGLE_API_TOKEN (kaggle-cli#882), which would make a
# second authentication in the same process fail. They are put back after each call.
KAGGLE_ENV = ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR")
# The note kaggle>=2 keeps beside a file it is downloading (``<file>.kaggle-partial``): with
# it, the client resumes the file on the next run (``KaggleApi._can_resume_partial``).
RESUME_NOTE = ".kaggle-partial"


@dataclass
class Obtained:
    """The archive to split, and its SHA-256 when it was already computed (None: not yet)."""

    path: Path
    sha256: str | None = None


def kaggle_credentials(env: dict | None = None, home: Path | None = None) -> str | None:
    """Where Kaggle credentials are configured, or None: the places the client (kaggle 2.x)
    looks in. ``kaggle.json`` in ``KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else on Linux (no
    ``~/.kaggle``) ``$XDG_CONFIG_HOME/kaggle`` (``~/.config/kaggle``); an access token in
    ``KAGGLE_API_TOKEN`` or ``~/.kaggle/access_token`` (``.txt``), read there whatever
    ``KAGGLE_CONFIG_DIR`` says; and ``kaggle auth login``'s ``~/.kaggle/credentials.json``."""
    env = os.environ if env is None else env
    home = home or Path.home()
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    dot_kaggle = home / ".kaggle"
    config = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else dot_kaggle
    if (not env.get("KAGGLE_CONFIG_DIR") and sys.platform.startswith("linux")
            and not dot_kaggle.exists()):
        config = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    for path in (config / "kaggle.json", dot_kaggle / "access_token",
                 dot_kaggle / "access_token.txt", dot_kaggle / "credentials.json"):
        if path.is_file():
            return str(path)
    return None


def kaggle_installed() -> bool:
    """True when the optional ``kaggle`` package can be imported (checked without importing)."""
    try:
        return importlib.util.find_spec("kaggle") is not None
    except (ImportError, ValueError):
        return False


def expected_microsoft_sha256() -> str:
    return (os.environ.get(MICROSOFT_SHA256_ENV) or MICROSOFT_SHA256).strip().lower()


def resolve_source(opts: FetchOptions, reporter: Reporter,
                   kaggle_api_factory: Callable[[], object] | None = None,
                   cache: Path | None = None) -> str:
    """The source to use: ``opts.source``, or for "auto" the one whose archive an earlier run
    downloaded into ``cache`` (Kaggle's train.zip, then Microsoft's zip: no account or network
    needed), else Kaggle when it can work, else Microsoft."""
    if opts.source != "auto":
        return opts.source
    if cache is not None:
        kept = _downloaded(Path(cache) / "kaggle" / opts.competition)
        if kept is not None:
            reporter.info(f"source: Kaggle (its train.zip, downloaded before: {kept})")
            return "kaggle"
        kept = _microsoft_file(opts.microsoft_url, Path(cache))
        if kept.is_file():
            reporter.info(f"source: Microsoft PetImages (its zip, downloaded before: {kept})")
            return "microsoft"
    where = kaggle_credentials()
    if where and (kaggle_api_factory is not None or kaggle_installed()):
        reporter.info(f"source: Kaggle (credentials found in {where})")
        return "kaggle"
    if where:
        reporter.info(f"source: Microsoft PetImages (Kaggle credentials found in {where}, but "
                      "the kaggle package is not installed: pip install 'transfer[kaggle]')")
        return "microsoft"
    reporter.info("source: Microsoft PetImages (no Kaggle credentials found; "
                  "use --source kaggle or --archive to choose)")
    return "microsoft"


def obtain_archive(opts: FetchOptions, source: str, cache: Path, reporter: Reporter,
                   kaggle_api_factory: Callable[[], object] | None = None) -> Obtained:
    """The archive for ``source``: the local one, or a download into ``cache``."""
    if source == "archive":
        return Obtained(Path(opts.archive))
    if source == "microsoft":
        return _microsoft(opts.microsoft_url, cache, reporter)
    return Obtained(_kaggle_download(opts.competition, cache / "kaggle" / opts.competition,
                                     reporter, kaggle_api_factory))


def _microsoft_file(url: str, cache: Path) -> Path:
    """Where the Microsoft zip from ``url`` is kept in ``cache``."""
    return cache / (PurePosixPath(url.split("?")[0]).name or "petimages.zip")


def _microsoft(url: str, cache: Path, reporter: Reporter) -> Obtained:
    facts: dict = {}
    path = download(url, _microsoft_file(url, cache), reporter, offline_hint=OFFLINE_HINT,
                    facts=facts)
    expected = expected_microsoft_sha256()
    got = sha256_file(path)
    resumed = facts.get("resumed", False)  # a partial file an earlier run left, continued
    # perhaps cut short (no length said) and resumable: kept for the next run; a server that
    # ignored the range cannot resume it, and a resumed file found whole is what it is
    if (got != expected and facts.get("length_known") is False and not resumed
            and not facts.get("restarted")):
        part = path.with_name(path.name + ".part")
        os.replace(path, part)  # perhaps cut short: kept, the next run resumes it
        raise TransferError(
            f"the file from {url} is not Microsoft's PetImages zip (SHA-256 {got}, expected "
            f"{expected}); the server did not say how long the file is, so the connection may "
            f"have closed early ({part.stat().st_size} bytes kept in {part}: run again to "
            "resume), or it serves another file")
    if got != expected:
        path.unlink(missing_ok=True)  # ours, in the cache: the next run downloads it again
        if facts.get("reused"):  # no request made: the copy kept here is what changed
            raise TransferError(
                f"the copy of Microsoft's PetImages zip an earlier run downloaded, {path}, is "
                f"damaged (SHA-256 {got}, expected {expected}): deleted, run again to download "
                "it")
        if resumed:  # the part an earlier run left may be what is wrong, not the server
            raise TransferError(
                f"the file from {url} is not Microsoft's PetImages zip (SHA-256 {got}, expected "
                f"{expected}); this download resumed a partial file an earlier run left, which "
                "may be what was damaged: deleted, run again to download it whole")
        raise TransferError(
            f"the file from {url} is not Microsoft's PetImages zip: its SHA-256 is {got}, "
            f"expected {expected} (deleted; a mirror must serve the very same file)")
    return Obtained(path, got)


@contextlib.contextmanager
def _keeping_kaggle_env() -> Iterator[None]:
    saved = {name: os.environ[name] for name in KAGGLE_ENV if name in os.environ}
    try:
        yield
    finally:
        for name, value in saved.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


def _default_kaggle_api():
    # Importing the kaggle package authenticates at import time and prints help when there
    # are no credentials: keep that quiet; we give our own message.
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("kaggle", "kagglesdk"):
            raise TransferError(NO_KAGGLE_PACKAGE) from exc
        raise TransferError(_broken_kaggle(exc)) from exc
    except ImportError as exc:  # "cannot import name ...": a half-upgraded package
        raise TransferError(_broken_kaggle(exc)) from exc
    except (OSError, SystemExit) as exc:
        # kaggle before 1.7 authenticates on import, and raises OSError ("Could not find
        # kaggle.json") or exits when it finds no credentials it reads
        raise TransferError(_credentials_refused()) from exc
    return KaggleApi()


def _broken_kaggle(exc: ImportError) -> str:
    """The line for a kaggle package that is installed but cannot be imported."""
    why = (f"it needs the module {exc.name}, which is not installed" if exc.name
           else " ".join(str(exc).split()) or type(exc).__name__)
    return (f"the installed kaggle package is broken ({why}): reinstall it with pip install "
            "--force-reinstall 'kaggle>=1.8'; or use --source microsoft (no account) or "
            "--archive PATH")


def _kaggle_download(competition: str, target: Path, reporter: Reporter,
                     api_factory: Callable[[], object] | None) -> Path:
    kept = _downloaded(target)
    if kept is not None:  # a competition's files do not change: no account or network needed
        reporter.info(f"using the Kaggle competition {competition!r}'s train.zip downloaded "
                      f"before: {kept} (delete it to download it again)")
        return kept
    with _keeping_kaggle_env():
        api = (api_factory or _default_kaggle_api)()
    try:
        with _keeping_kaggle_env(), contextlib.redirect_stdout(io.StringIO()):
            api.authenticate()
    except (SystemExit, Exception) as exc:  # KAGGLE_API_TOKEN is checked online: may be offline
        raise TransferError(_kaggle_offline(exc) or _credentials_refused()) from exc
    target.mkdir(parents=True, exist_ok=True)
    # an earlier run's, cut short: removed (the client may keep it), unless the client can
    # resume it; then "cut short" only when this run added to it (offline, nothing came: that
    # is "no network", not a cut)
    before = {}
    for stale in _unfinished(target):
        if _resumable(stale):
            before[stale] = stale.stat().st_size
        else:
            stale.unlink(missing_ok=True)
    reporter.info(f"downloading train.zip of the Kaggle competition {competition!r}")
    try:
        # the client prints its lines on stdout and draws its bar on stderr: shown (the lines
        # on stderr) for the CLI, not for a library caller (a silent reporter: nothing at all)
        with _keeping_kaggle_env(), bases.downloads_said_to(reporter):
            api.competition_download_file(competition, "train.zip", path=str(target),
                                          quiet=not bases.on_stderr(reporter))
    except Exception as exc:
        cut = [path for path in _unfinished(target)
               if path.stat().st_size > before.get(path, -1)]
        cause = _network_cause(exc) or _size_mismatch(exc)
        if cut and cause:  # bytes came, then the connection broke: not "no network"
            raise TransferError(_cut_short(cut[0], cause)) from exc
        raise TransferError(_kaggle_failure(competition, exc)) from exc
    zips = sorted(target.glob("*.zip"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not zips:
        raise TransferError(f"the Kaggle client reported success but wrote no zip in {target}")
    if not zipfile.is_zipfile(zips[0]):
        raise TransferError(_not_a_zip(zips[0], competition))
    return zips[0]


def _unfinished(target: Path) -> list[Path]:
    """The files named ``*.zip`` in the tool's download folder ``target`` that are not whole
    zips (a download cut short, a web page saved as train.zip)."""
    return [path for path in sorted(target.glob("*.zip"))
            if path.is_file() and not zipfile.is_zipfile(path)]


def _resumable(path: Path) -> bool:
    """True when the Kaggle client noted ``path`` as a partial download it resumes."""
    return path.with_name(path.name + RESUME_NOTE).is_file()


def _size_mismatch(exc: BaseException) -> str | None:
    """kaggle>=2's complaint about a download that ended early without a network error."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, ValueError) and "does not match expected size" in text \
        else None


def _cut_short(path: Path, cause: str) -> str:
    """The line for a download that broke off after writing part of ``path``; the part is
    removed (ours, in the cache) unless the client noted it to resume: the Kaggle client
    skips a local file newer than Kaggle's (``download_needed``), so a rerun would have been
    given the same broken file."""
    size = f"{path.stat().st_size / 1e6:.1f} MB"
    if _resumable(path):
        then = f"the part downloaded is kept in {path}: run again to resume it"
    else:
        path.unlink(missing_ok=True)
        then = "the partial file was removed: run again to download it"
    return f"the download of {path.name} from Kaggle was cut short after {size} ({cause}); {then}"


def _not_a_zip(path: Path, competition: str) -> str:
    """The line for a file the Kaggle client saved that is no zip (a login or error page, a
    download cut short without an error); it is removed, so that a rerun downloads it."""
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    what = "a web page" if head.startswith(b"<") else "not a zip, or cut short"
    path.unlink(missing_ok=True)
    path.with_name(path.name + RESUME_NOTE).unlink(missing_ok=True)
    return (f"the file the Kaggle client saved as {path.name} is not a zip archive ({what}): "
            "removed; run again to download it, and if it happens again check that you "
            f"accepted the rules at https://www.kaggle.com/competitions/{competition}/rules, or "
            "download train.zip in a browser and give it to --archive")


def _downloaded(target: Path) -> Path | None:
    """The newest whole zip an earlier download left in ``target`` (a download cut short has
    no central directory at its end: not a zip), or None."""
    if not target.is_dir():
        return None
    zips = sorted(target.glob("*.zip"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((z for z in zips if z.is_file() and zipfile.is_zipfile(z)), None)


def _credentials_refused() -> str:
    """Why the Kaggle client would not authenticate: no credentials, a kaggle.json that is not
    what the client reads (it skips an unreadable one silently), or credentials refused."""
    where = kaggle_credentials()
    if where is None:
        return NO_KAGGLE_CREDENTIALS
    hint = "; " + NO_KAGGLE_CREDENTIALS.split(": ", 1)[1]
    if where.endswith("kaggle.json"):
        try:
            config = json.loads(Path(where).read_text(encoding="utf-8"))
            problem = (None if isinstance(config, dict) and config.get("username")
                       and config.get("key") else 'no "username" and "key" in it')
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problem = f"not JSON: {exc}" if isinstance(exc, ValueError) else str(exc)
        if problem:
            return (f"Kaggle cannot read {where} ({problem}); it must hold "
                    '{"username": "...", "key": "..."}' + hint)
    return f"Kaggle did not accept the credentials in {where}" + hint


def _kaggle_failure(competition: str, exc: BaseException) -> str:
    offline = _kaggle_offline(exc)
    if offline:
        return offline
    status = _http_status(exc)
    if status == 403:
        return ("Kaggle refused the download (HTTP 403): accept the competition rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules first")
    if status == 401:
        return ("Kaggle rejected the credentials (HTTP 401); "
                + NO_KAGGLE_CREDENTIALS.split(": ", 1)[1])
    if status == 404:
        return (f"Kaggle has no file train.zip in competition {competition!r} (HTTP 404); "
                "check --competition")
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"Kaggle download failed: {text}"


def _http_status(exc: BaseException) -> int | None:
    for candidate in (getattr(exc, "status", None), getattr(exc, "status_code", None),
                      getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(candidate, int):
            return candidate
    match = re.search(r"\b(401|403|404)\b", str(exc))
    return int(match.group(1)) if match else None


def _kaggle_offline(exc: BaseException) -> str | None:
    """The line for the Kaggle client not reaching Kaggle, or None for any other failure."""
    cause = _network_cause(exc)
    return f"could not reach Kaggle ({cause}): no network? {OFFLINE_HINT}" if cause else None


def _network_cause(exc: BaseException) -> str | None:
    """Why the connection failed, in words, when ``exc`` is a network failure; else None.

    The client, on requests and urllib3, raises their connection and timeout errors when the
    name does not resolve, the connection is refused, times out or breaks (the types its own
    download retries on); an HTTP status (401, 403...) is no network failure.
    """
    try:  # the client's own dependencies: without them it cannot have raised these
        from requests import exceptions as requests_errors
        from urllib3 import exceptions as urllib3_errors
    except ImportError:
        return None
    network = (requests_errors.ConnectionError, requests_errors.Timeout,
               requests_errors.ChunkedEncodingError, urllib3_errors.ProtocolError,
               urllib3_errors.ReadTimeoutError)
    if not isinstance(exc, network):
        return None
    root = exc  # the socket's own error, under urllib3's and requests' wrappers
    while (inner := root.__cause__ or root.__context__) is not None:
        root = inner
    return ("its name could not be resolved" if isinstance(root, socket.gaierror)
            else getattr(root, "strerror", None) or " ".join(str(root).split())
            or type(root).__name__)
