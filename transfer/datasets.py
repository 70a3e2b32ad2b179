"""`transfer fetch-data`: get the Dogs vs. Cats photos and lay out a train/validate(/test) split.

The layout is the one Keras's ``flow_from_directory`` expects::

    data/train/cats/cat.12.jpg     data/validate/cats/...     data/test/cats/... (optional)
    data/train/dogs/dog.7.jpg      data/validate/dogs/...     data/manifest.json

Sources: the Kaggle competition (official client), Microsoft's no-account PetImages zip
(HTTPS, resumable), or a local archive/folder in either layout. Every image is fully decoded
with Pillow before it is placed; broken files are skipped and reported. The split is
deterministic for a seed, balanced and disjoint, and is built in a temporary folder that is
renamed into place, so an interrupted run never leaves half a split behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import stat
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from transfer import __version__
from transfer.download import download
from transfer.errors import TransferError
from transfer.files import sha256_file as _sha256_file
from transfer.files import write_json
from transfer.progress import Reporter
from transfer.settings import MICROSOFT_URL, FetchOptions  # noqa: F401

CLASSES = ("cats", "dogs")
SPLITS = ("train", "validate", "test")
SOURCES = ("auto", "kaggle", "microsoft", "archive")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
# What TensorFlow's decode_image and Keras's loaders read, so both pipelines can use the split.
DECODABLE_FORMATS = {"JPEG", "PNG", "BMP", "GIF"}
MANIFEST = "manifest.json"
TMP_PREFIX = ".fetch-tmp-"
_KAGGLE_NAME = re.compile(r"^(cat|dog)\.\d+\.[a-z]+$", re.IGNORECASE)
_FOLDER_CLASS = {"cat": "cats", "cats": "cats", "dog": "dogs", "dogs": "dogs"}


@dataclass
class FetchResult:
    data_dir: Path
    source: str
    archive: str
    counts: dict[str, dict[str, int]]
    skipped: list[dict[str, str]]
    noop: bool = False
    moved_aside: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- public entry


def fetch_data(options: FetchOptions, reporter: Reporter | None = None,
               kaggle_api_factory: Callable[[], object] | None = None) -> FetchResult:
    """Fetch the photos and write the split described by ``options`` into ``data_dir``."""
    reporter = reporter or Reporter()
    opts = _validated(options)
    data_dir = Path(opts.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(data_dir)

    source = _resolve_source(opts, reporter)
    request = _request_key(opts, source)
    previous = read_manifest(data_dir)
    if previous is not None and previous.get("request") == request and _intact(data_dir, previous):
        reporter.info(f"{data_dir} already holds this split (same source, counts and seed); "
                      "nothing to do")
        return FetchResult(data_dir, source, previous["source"].get("archive", ""),
                           previous["counts"], previous.get("skipped", []), noop=True,
                           manifest=previous)
    ours, foreign = _existing_splits(data_dir, previous)
    _refuse_unless_forced(opts, data_dir, previous, request, ours, foreign)

    archive = _obtain_archive(opts, source, data_dir / ".cache", reporter, kaggle_api_factory)
    with _open_source(archive, data_dir / ".cache") as images:
        fingerprint = request.get("archive_sha256") or images.fingerprint()
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=data_dir))
        try:
            counts, files, skipped = _build_split(images, opts, tmp, reporter)
            manifest = {
                "tool": "transfer fetch-data",
                "version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "request": request,
                "source": {"kind": source, "archive": str(archive), "archive_sha256": fingerprint,
                           "layout": images.layout,
                           **({"competition": opts.competition} if source == "kaggle" else {}),
                           **({"url": opts.microsoft_url} if source == "microsoft" else {})},
                "seed": opts.seed,
                "splits": list(counts),
                "counts": counts,
                "files": files,
                "skipped": skipped,
            }
            moved = _swap_into_place(data_dir, tmp, counts, ours, foreign)
            manifest["moved_aside"] = moved
            write_json(data_dir / MANIFEST, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for name in moved:
        reporter.warn(f"moved the existing folder that fetch-data did not make to {name}")
    return FetchResult(data_dir, source, str(archive), counts, skipped, moved_aside=moved,
                       manifest=manifest)


def read_manifest(data_dir: Path) -> dict | None:
    """The manifest fetch-data wrote in ``data_dir``, or None."""
    path = Path(data_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("tool") == "transfer fetch-data":
        return manifest
    return None


def kaggle_credentials(env: dict | None = None, home: Path | None = None) -> str | None:
    """Where Kaggle credentials are configured, or None (the client looks in the same places)."""
    env = os.environ if env is None else env
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    config = Path(env.get("KAGGLE_CONFIG_DIR") or (home or Path.home()) / ".kaggle")
    for name in ("kaggle.json", "access_token"):
        if (config / name).is_file():
            return str(config / name)
    return None


def check_image(data: bytes) -> str | None:
    """None when ``data`` is an image Pillow fully decodes in a format TF reads; else why not."""
    if not data:
        return "zero-byte file"
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format
                image.load()  # decodes every pixel: catches truncated and corrupt files
                width, height = image.size
    except Exception as exc:  # Pillow raises many kinds: all mean "not a usable image"
        return f"not a decodable image ({type(exc).__name__}: {exc})"
    if image_format not in DECODABLE_FORMATS:
        return f"unsupported image format {image_format}"
    if width < 1 or height < 1:
        return "empty image"
    return None


def classify(path: str) -> str | None:
    """The class (cats/dogs) of an archive path, from Kaggle names or PetImages folders."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.suffix.lower() not in IMAGE_SUFFIXES or pure.name.startswith("."):
        return None
    if _KAGGLE_NAME.match(pure.name):
        return pure.name.split(".")[0].lower() + "s"
    if len(pure.parts) >= 2:
        return _FOLDER_CLASS.get(pure.parts[-2].lower())
    return None


# --------------------------------------------------------------------------- steps


def _validated(opts: FetchOptions) -> FetchOptions:
    return opts.validated()


def _resolve_source(opts: FetchOptions, reporter: Reporter) -> str:
    if opts.source != "auto":
        return opts.source
    where = kaggle_credentials()
    if where:
        reporter.info(f"source: Kaggle (credentials found in {where})")
        return "kaggle"
    reporter.info("source: Microsoft PetImages (no Kaggle credentials found; "
                  "use --source kaggle or --archive to choose)")
    return "microsoft"


def _request_key(opts: FetchOptions, source: str) -> dict:
    key = {"source": source, "seed": opts.seed, "per_class": opts.per_split()}
    if source == "kaggle":
        key["competition"] = opts.competition
    elif source == "microsoft":
        key["url"] = opts.microsoft_url
    else:
        archive = Path(opts.archive)
        if not archive.exists():
            raise TransferError(f"archive not found: {archive}")
        key["archive_sha256"] = (sha256_file(archive) if archive.is_file()
                                 else _FolderImages(archive).fingerprint())
        key["archive"] = str(archive.resolve())
    return key


def _intact(data_dir: Path, manifest: dict) -> bool:
    try:
        for split in manifest["splits"]:
            for cls, names in manifest["files"][split].items():
                folder = data_dir / split / cls
                if sorted(p.name for p in folder.iterdir()) != sorted(names):
                    return False
    except (KeyError, OSError, TypeError, AttributeError):
        return False
    return True


def _existing_splits(data_dir: Path, manifest: dict | None) -> tuple[list[str], list[str]]:
    made = set(manifest.get("splits", [])) if manifest else set()
    present = [s for s in SPLITS if (data_dir / s).exists()]
    return [s for s in present if s in made], [s for s in present if s not in made]


def _refuse_unless_forced(opts, data_dir, previous, request, ours, foreign) -> None:
    if opts.force:
        return
    if foreign:
        names = ", ".join(str(data_dir / s) for s in foreign)
        raise TransferError(f"{names} already exist and were not made by fetch-data; move them "
                            "away or use --force (they are then moved aside, never deleted)")
    if previous is not None and ours:
        why = ("was made with other arguments" if previous.get("request") != request
               else "no longer matches its manifest (files were changed)")
        raise TransferError(f"the split in {data_dir} {why}; use --force to replace it")


def _obtain_archive(opts, source, cache: Path, reporter, kaggle_api_factory) -> Path:
    if source == "archive":
        return Path(opts.archive)
    if source == "microsoft":
        name = PurePosixPath(opts.microsoft_url.split("?")[0]).name or "petimages.zip"
        return download(opts.microsoft_url, cache / name, reporter)
    return _kaggle_download(opts.competition, cache / "kaggle" / opts.competition, reporter,
                            kaggle_api_factory)


NO_KAGGLE_CREDENTIALS = (
    "no Kaggle credentials: put ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME "
    "and KAGGLE_KEY, or set KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token) from "
    "https://www.kaggle.com/settings; or use --source microsoft (no account) or --archive PATH"
)


def _default_kaggle_api():
    # Importing the kaggle package authenticates at import time and prints help when there
    # are no credentials: keep that quiet; we give our own message.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi()


def _kaggle_download(competition: str, target: Path, reporter: Reporter,
                     api_factory: Callable[[], object] | None) -> Path:
    api = (api_factory or _default_kaggle_api)()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.authenticate()
    except (SystemExit, Exception) as exc:
        raise TransferError(NO_KAGGLE_CREDENTIALS) from exc
    target.mkdir(parents=True, exist_ok=True)
    reporter.info(f"downloading train.zip of the Kaggle competition {competition!r}")
    try:
        api.competition_download_file(competition, "train.zip", path=str(target), quiet=False)
    except Exception as exc:
        status = _http_status(exc)
        if status == 403:
            raise TransferError(
                f"Kaggle refused the download (HTTP 403): accept the competition rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules first") from exc
        if status == 401:
            raise TransferError("Kaggle rejected the credentials (HTTP 401); "
                                + NO_KAGGLE_CREDENTIALS.split(": ", 1)[1]) from exc
        if status == 404:
            raise TransferError(f"Kaggle has no file train.zip in competition {competition!r} "
                                "(HTTP 404); check --competition") from exc
        raise TransferError(f"Kaggle download failed: {exc}") from exc
    zips = sorted(target.glob("*.zip"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not zips:
        raise TransferError(f"the Kaggle client reported success but wrote no zip in {target}")
    return zips[0]


def _http_status(exc: BaseException) -> int | None:
    for candidate in (getattr(exc, "status", None), getattr(exc, "status_code", None),
                      getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(candidate, int):
            return candidate
    match = re.search(r"\b(401|403|404)\b", str(exc))
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- image sources


class _ImageSource:
    layout = "unknown"

    def candidates(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ZipImages(_ImageSource):
    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise TransferError(f"{path} is not a readable zip archive (not a zip, or truncated)"
                                ) from exc
        for info in self.zip.infolist():
            _check_member_safe(path, info)

    def candidates(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {c: [] for c in CLASSES}
        for info in self.zip.infolist():
            if not info.is_dir():
                cls = classify(info.filename)
                if cls:
                    found[cls].append(info.filename)
        self.layout = _layout(found)
        return found

    def inner_zips(self) -> list[str]:
        return [i.filename for i in self.zip.infolist()
                if i.filename.lower().endswith(".zip") and not i.is_dir()]

    def read(self, name: str) -> bytes:
        return self.zip.read(name)

    def fingerprint(self) -> str:
        return sha256_file(self.path)

    def close(self) -> None:
        self.zip.close()


class _FolderImages(_ImageSource):
    def __init__(self, root: Path):
        self.root = root

    def candidates(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {c: [] for c in CLASSES}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(self.root).as_posix()
                cls = classify(rel)
                if cls:
                    found[cls].append(rel)
        self.layout = _layout(found)
        return found

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for cls, names in self.candidates().items():
            for name in names:
                st = (self.root / name).stat()
                digest.update(f"{cls}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return "folder:" + digest.hexdigest()


def _layout(found: dict[str, list[str]]) -> str:
    names = [n for ns in found.values() for n in ns]
    if names and all(_KAGGLE_NAME.match(PurePosixPath(n).name) for n in names):
        return "kaggle"
    return "folders"


def _check_member_safe(archive: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise TransferError(f"refusing {archive}: member {name!r} has an absolute path")
    if ".." in pure.parts:
        raise TransferError(f"refusing {archive}: member {name!r} escapes the target folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise TransferError(f"refusing {archive}: member {name!r} is a symbolic link")


@contextlib.contextmanager
def _open_source(archive: Path, cache: Path):
    archive = Path(archive)
    if archive.is_dir():
        yield _FolderImages(archive)
        return
    if not archive.is_file():
        raise TransferError(f"archive not found: {archive}")
    images = _ZipImages(archive)
    try:
        found = images.candidates()
        inner = images.inner_zips()
        if not any(found.values()) and inner:
            # A competition download wraps train.zip in another zip: open the inner one.
            member = next((n for n in inner if PurePosixPath(n).name == "train.zip"), inner[0])
            cache.mkdir(parents=True, exist_ok=True)
            unpacked = cache / f"{archive.stem}-{PurePosixPath(member).name}"
            if not unpacked.exists():
                part = unpacked.with_name(unpacked.name + ".part")
                with images.zip.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(part, unpacked)
            images.close()
            images = _ZipImages(unpacked)
        yield images
    finally:
        images.close()


# --------------------------------------------------------------------------- the split


def _build_split(images: _ImageSource, opts: FetchOptions, tmp: Path, reporter: Reporter):
    per_split = opts.per_split()
    need = sum(per_split.values())
    found = images.candidates()
    if not any(found.values()):
        raise TransferError(f"no cat or dog images in {opts.archive or 'the download'} "
                            "(expected train/cat.N.jpg or PetImages/Cat/N.jpg layouts)")
    counts = {split: {cls: 0 for cls in CLASSES} for split in per_split}
    files: dict[str, dict[str, list[str]]] = {split: {cls: [] for cls in CLASSES}
                                              for split in per_split}
    skipped: list[dict[str, str]] = []
    usable: dict[str, int] = {}
    plan = [split for split, n in per_split.items() for _ in range(n)]
    with reporter.task("Checking and placing images", total=need * len(CLASSES)) as advance:
        for cls in CLASSES:
            order = sorted(found[cls])
            random.Random(f"{opts.seed}:{cls}").shuffle(order)
            seen_names: set[str] = set()
            placed = 0
            for member in order:
                if placed == need:
                    break
                name = PurePosixPath(member).name
                reason = "duplicate file name" if name in seen_names else None
                data = b""
                if reason is None:
                    try:
                        data = images.read(member)
                    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                        reason = f"unreadable in the archive ({exc})"
                reason = reason or check_image(data)
                if reason:
                    skipped.append({"name": member, "class": cls, "reason": reason})
                    continue
                seen_names.add(name)
                split = plan[placed]
                folder = tmp / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
                files[split][cls].append(name)
                counts[split][cls] += 1
                placed += 1
                advance(1)
            usable[cls] = placed
    short = {cls: n for cls, n in usable.items() if n < need}
    if short:
        have = ", ".join(
            f"{cls}: {usable[cls]} usable" if cls in short else f"{cls}: at least {usable[cls]}"
            for cls in CLASSES)
        asked = " + ".join(f"{n} {split}" for split, n in per_split.items())
        raise TransferError(f"not enough usable images ({have}; {len(skipped)} skipped); asked "
                            f"for {need} per class ({asked}); lower --train-per-class/"
                            "--validate-per-class or use a larger archive")
    for split in files:
        for cls in files[split]:
            files[split][cls].sort()
    return counts, files, skipped


def _swap_into_place(data_dir: Path, tmp: Path, counts, ours: list[str], foreign: list[str]):
    moved = []
    trash = tmp / ".replaced"
    trash.mkdir()
    for split in ours:  # folders fetch-data made before: replaced
        os.replace(data_dir / split, trash / split)
    for split in foreign:  # folders someone else made: kept, renamed aside
        aside = _free_name(data_dir / f"{split}.old")
        os.replace(data_dir / split, aside)
        moved.append(str(aside))
    for split in counts:
        os.replace(tmp / split, data_dir / split)
    return moved


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}{n}")
    return candidate


def _remove_stale_temp_dirs(data_dir: Path) -> None:
    for stale in data_dir.glob(TMP_PREFIX + "*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    return _sha256_file(path)
