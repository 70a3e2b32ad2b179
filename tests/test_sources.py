"""Where the photos come from: Microsoft (mirror URL, pinned SHA-256), Kaggle as an optional
extra, and the Kaggle client's habit of removing KAGGLE_API_TOKEN (kaggle-cli#882)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from conftest import kaggle_members, make_zip
from test_datasets import FakeKaggleApi, Server, listing, petimages_zip
from typer.testing import CliRunner

from transfer import sources
from transfer.cli import app
from transfer.datasets import FetchOptions, fetch_data
from transfer.errors import TransferError
from transfer.files import sha256_file
from transfer.progress import Reporter
from transfer.settings import MICROSOFT_URL


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


class Messages(Reporter):
    def __init__(self):
        self.infos = []

    def info(self, message):
        self.infos.append(message)


# --------------------------------------------------------------------------- Microsoft


def test_microsoft_checksum_is_pinned_for_the_default_url():
    assert MICROSOFT_URL.endswith("/kagglecatsanddogs_5340.zip")
    assert re.fullmatch(r"[0-9a-f]{64}", sources.MICROSOFT_SHA256)


def test_transfer_microsoft_url_mirror_through_the_cli(real_photos, tmp_path, monkeypatch):
    """README: TRANSFER_MICROSOFT_URL points --source microsoft at a mirror; the download is
    checked against the SHA-256 (here the served file's, through TRANSFER_MICROSOFT_SHA256)."""
    archive, broken = petimages_zip(real_photos, tmp_path, per_class=12)
    payload = archive.read_bytes()
    data = tmp_path / "data"
    with Server(payload) as server:
        monkeypatch.setenv("TRANSFER_MICROSOFT_URL", server.url)
        # as pasted: upper case, a trailing newline (passed before with the value not tidied)
        monkeypatch.setenv("TRANSFER_MICROSOFT_SHA256", sha256_file(archive).upper() + "\n")
        result = CliRunner().invoke(app, [
            "fetch-data", "--source", "microsoft", "--data-dir", str(data),
            "--train-per-class", "8", "--validate-per-class", "4"])
    assert result.exit_code == 0, result.output
    assert server.requests == [None]  # one plain GET to the mirror
    assert (data / ".cache/kagglecatsanddogs.zip").read_bytes() == payload
    assert {k: len(v) for k, v in listing(data).items()} == {
        "train/cats": 8, "train/dogs": 8, "validate/cats": 4, "validate/dogs": 4}
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["source"]["url"] == server.url
    assert manifest["source"]["archive_sha256"] == sha256_file(archive)


def test_microsoft_download_with_the_wrong_checksum_is_refused(real_photos, tmp_path):
    archive, _ = petimages_zip(real_photos, tmp_path, per_class=12)
    data = tmp_path / "data"
    with Server(archive.read_bytes()) as server:
        with pytest.raises(TransferError) as info:
            fetch_data(FetchOptions(source="microsoft", microsoft_url=server.url,
                                    data_dir=data, train_per_class=8, validate_per_class=4))
    text = one_line(info.value)
    assert f"SHA-256 is {sha256_file(archive)}" in text
    assert f"expected {sources.MICROSOFT_SHA256}" in text and "deleted" in text
    assert not data.exists()  # the bad download is deleted, and the folders this run made


# --------------------------------------------------------------------------- Kaggle


def test_kaggle_not_installed_says_how_to_install(tmp_path, monkeypatch):
    import subprocess

    # the optional client is imported only when --source kaggle runs (the sys.modules patch
    # below passed with it imported when transfer.sources loads)
    code = ("import sys, transfer.cli, transfer.datasets, transfer.sources; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kaggle', 'kagglesdk'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
    for name in ("kaggle", "kaggle.api.kaggle_api_extended"):  # even after a real import
        monkeypatch.setitem(sys.modules, name, None)  # `import kaggle` fails
    assert not sources.kaggle_installed()
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"))
    assert one_line(info.value) == sources.NO_KAGGLE_PACKAGE
    assert "pip install 'transfer[kaggle]'" in sources.NO_KAGGLE_PACKAGE
    assert not (tmp_path / "data").exists()

    # auto with credentials but no client: Microsoft, and it says why
    monkeypatch.setenv("KAGGLE_API_TOKEN", "token")
    messages = Messages()
    assert sources.resolve_source(FetchOptions(), messages) == "microsoft"
    assert "pip install 'transfer[kaggle]'" in messages.infos[0]


class TokenEatingApi(FakeKaggleApi):
    """Like kaggle>=1.8: authenticating consumes KAGGLE_API_TOKEN from the environment."""

    def authenticate(self):
        if not os.environ.pop("KAGGLE_API_TOKEN", None):
            raise SystemExit(1)


def test_kaggle_token_survives_authentication_for_a_second_fetch(real_photos, tmp_path,
                                                                 monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
    monkeypatch.setenv("KAGGLE_API_TOKEN", "secret-token")
    zip_bytes = make_zip(tmp_path / "train.zip", kaggle_members(real_photos, 12)).read_bytes()
    for run in ("first", "second"):  # auto finds the token both times, and both authenticate
        result = fetch_data(FetchOptions(data_dir=tmp_path / run, train_per_class=6,
                                         validate_per_class=3),
                            kaggle_api_factory=lambda: TokenEatingApi(zip_bytes))
        assert result.source == "kaggle" and result.counts["train"] == {"cats": 6, "dogs": 6}
        assert os.environ["KAGGLE_API_TOKEN"] == "secret-token"


def test_kaggle_errors_are_one_line(tmp_path):
    class Noisy(Exception):
        pass

    for error, expected in ((Noisy("500 Server Error\nbody: <html>..."),
                             "Kaggle download failed: 500 Server Error body: <html>..."),
                            (Noisy("401 Unauthorized"), "Kaggle rejected the credentials")):
        with pytest.raises(TransferError) as info:
            fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"),
                       kaggle_api_factory=lambda e=error: FakeKaggleApi(error=e))
        assert one_line(info.value).startswith(expected)
    assert not (tmp_path / "data").exists()


def test_a_damaged_copy_kept_from_an_earlier_run_is_not_blamed_on_the_server(tmp_path,
                                                                            monkeypatch):
    """The Microsoft zip a finished run kept in the cache, changed since (a bit flipped on
    disk): no request is made, so the line says the kept copy is damaged, not the server."""
    payload = b"PK" + bytes(range(256)) * 100
    monkeypatch.setenv(sources.MICROSOFT_SHA256_ENV,
                       __import__("hashlib").sha256(payload).hexdigest())
    cache = tmp_path / "cache"
    cache.mkdir()
    with Server(payload) as server:
        kept = cache / "k.zip"
        kept.write_bytes(payload[:-1] + b"X")
        with pytest.raises(TransferError) as info:
            sources._microsoft(server.url.rsplit("/", 1)[0] + "/k.zip", cache, Messages())
        assert server.requests == []  # nothing asked of the server
        text = one_line(info.value)
        assert text.startswith(f"the copy of Microsoft's PetImages zip an earlier run "
                               f"downloaded, {kept}, is damaged (SHA-256 ")
        assert "run again to download it" in text and not kept.exists()
        # the next run downloads it whole
        assert sources._microsoft(server.url.rsplit("/", 1)[0] + "/k.zip", cache,
                                  Messages()).path.read_bytes() == payload


def test_auto_uses_the_archive_an_earlier_run_downloaded(real_photos, tmp_path, monkeypatch):
    """`--source auto` picks the source whose zip is in data/.cache: Kaggle's train.zip kept
    from a run with credentials serves the same command without them (it switched to Microsoft
    and refused the split as made "with other arguments", then needed the network)."""
    zip_bytes = make_zip(tmp_path / "train.zip", kaggle_members(real_photos, 20)).read_bytes()
    data = tmp_path / "data"
    opts = dict(data_dir=data, train_per_class=10, validate_per_class=5)
    monkeypatch.setattr(sources, "kaggle_credentials", lambda *a, **k: "KAGGLE_API_TOKEN")
    first = fetch_data(FetchOptions(**opts), kaggle_api_factory=lambda: FakeKaggleApi(zip_bytes))
    assert first.source == "kaggle"
    monkeypatch.setattr(sources, "kaggle_credentials", lambda *a, **k: None)
    messages = Messages()
    again = fetch_data(FetchOptions(**opts), messages)
    assert again.source == "kaggle" and again.noop
    assert messages.infos[0].startswith("source: Kaggle (its train.zip, downloaded before: ")
    other = fetch_data(FetchOptions(**opts, seed=7, force=True))  # another cut, offline
    assert other.source == "kaggle" and not other.noop

    # a Microsoft zip kept in the cache wins over credentials configured since
    cache = tmp_path / "m/.cache"
    cache.mkdir(parents=True)
    (cache / "kagglecatsanddogs_5340.zip").write_bytes(b"kept")
    monkeypatch.setattr(sources, "kaggle_credentials", lambda *a, **k: "KAGGLE_API_TOKEN")
    messages = Messages()
    assert sources.resolve_source(FetchOptions(microsoft_url=MICROSOFT_URL), messages,
                                  lambda: FakeKaggleApi(zip_bytes), cache) == "microsoft"
    assert "downloaded before" in messages.infos[0]


def test_a_changed_mirror_is_named_by_its_variable_not_an_option_that_does_not_exist():
    from transfer.datasets import _changed_arguments

    text = _changed_arguments({"source": "microsoft", "url": "http://a/k.zip"},
                              {"source": "microsoft", "url": "http://b/k.zip"})
    assert text == " (TRANSFER_MICROSOFT_URL http://a/k.zip then, http://b/k.zip now)"


# --------------------------------------------------------------------------- Kaggle, cut short


class CutShortApi(FakeKaggleApi):
    """The client writes part of train.zip, then the connection breaks (requests raises
    ChunkedEncodingError over urllib3's ProtocolError, as kaggle's download does); with
    ``note``, it keeps kaggle>=2's note to resume the file. A later call writes it whole."""

    def __init__(self, zip_bytes: bytes, cut: bool = True, note: bool = False):
        super().__init__(zip_bytes)
        self.cut, self.note = cut, note

    def competition_download_file(self, competition, file_name, path=None, force=False,
                                  quiet=False):
        import requests
        import urllib3

        self.calls.append((competition, file_name, path))
        out = Path(path, file_name)
        if not self.cut:
            out.write_bytes(self.zip_bytes)
            return
        if self.note:
            Path(path, file_name + sources.RESUME_NOTE).write_text('{"validator": "x"}')
        out.write_bytes(self.zip_bytes[: len(self.zip_bytes) // 2])
        broken = urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
        raise requests.exceptions.ChunkedEncodingError(broken)


class SkippingApi(FakeKaggleApi):
    """kaggle's download_needed: a local train.zip newer than Kaggle's is not downloaded."""

    def competition_download_file(self, competition, file_name, path=None, force=False,
                                  quiet=False):
        self.calls.append((competition, file_name, path))
        if not Path(path, file_name).exists():
            Path(path, file_name).write_bytes(self.zip_bytes)


def test_a_kaggle_download_cut_short_says_so_and_the_rerun_downloads_again(real_photos,
                                                                          tmp_path):
    """The connection broke after part of train.zip: it was "could not reach Kaggle ...: no
    network?", and the part stayed in the cache, where a client that skips a newer local file
    would keep it. Now the line says the download was cut short, the part is removed, and
    the rerun downloads it."""
    zip_bytes = make_zip(tmp_path / "train.zip", kaggle_members(real_photos, 12)).read_bytes()
    data = tmp_path / "data"
    opts = dict(source="kaggle", data_dir=data, train_per_class=6, validate_per_class=3)
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(**opts), kaggle_api_factory=lambda: CutShortApi(zip_bytes))
    text = one_line(info.value)
    assert re.fullmatch(r"the download of train\.zip from Kaggle was cut short after [\d.]+ MB "
                        r"\(Connection broken: IncompleteRead\); the partial file was removed: "
                        r"run again to download it", text), text
    assert "no network" not in text
    assert not data.exists()  # nothing kept: the part removed, then the folders made
    again = fetch_data(FetchOptions(**opts), kaggle_api_factory=lambda: SkippingApi(zip_bytes))
    assert again.counts["train"] == {"cats": 6, "dogs": 6}

    # the client's own note to resume it: kept, for the client to resume
    other = tmp_path / "other"
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(**{**opts, "data_dir": other}),
                   kaggle_api_factory=lambda: CutShortApi(zip_bytes, note=True))
    part = other / ".cache/kaggle/dogs-vs-cats/train.zip"
    assert one_line(info.value).endswith(f"the part downloaded is kept in {part}: run again "
                                         "to resume it")
    assert 0 < part.stat().st_size < len(zip_bytes)
    # the rerun offline: nothing came this time, so it is "no network", not "cut short after
    # 0.0 MB ... run again to resume it" (which would fail the same way)
    kept = part.read_bytes()
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(**{**opts, "data_dir": other}),
                   kaggle_api_factory=lambda: OfflineApi(zip_bytes))
    text = one_line(info.value)
    assert "could not reach Kaggle" in text and "no network?" in text, text
    assert "cut short" not in text and part.read_bytes() == kept


class OfflineApi(FakeKaggleApi):
    """The download fails as it does without a network: the name cannot be resolved."""

    def competition_download_file(self, competition, file_name, path=None, force=False,
                                  quiet=False):
        import socket

        import requests

        self.calls.append((competition, file_name, path))
        raise requests.exceptions.ConnectionError(
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"))


def test_a_web_page_saved_as_train_zip_names_kaggle_and_the_way_out(real_photos, tmp_path):
    """The client saved an HTML page as train.zip: "<data>/.cache/kaggle/.../train.zip is not
    a readable zip archive", and the page stayed there for the next run. Now the line names
    Kaggle's client and what to do, and the page is removed so that a rerun downloads."""
    zip_bytes = make_zip(tmp_path / "train.zip", kaggle_members(real_photos, 12)).read_bytes()
    data = tmp_path / "data"
    opts = dict(source="kaggle", data_dir=data, train_per_class=6, validate_per_class=3)
    page = b"<!DOCTYPE html><html><body>Sign in</body></html>"
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(**opts), kaggle_api_factory=lambda: SkippingApi(page))
    text = one_line(info.value)
    assert text.startswith("the file the Kaggle client saved as train.zip is not a zip archive "
                           "(a web page): removed; run again to download it"), text
    assert "competitions/dogs-vs-cats/rules" in text and "--archive" in text
    assert not data.exists()
    # a page an earlier run left in the cache, newer than Kaggle's file: not kept for the client
    cache = data / ".cache/kaggle/dogs-vs-cats"
    cache.mkdir(parents=True)
    (cache / "train.zip").write_bytes(page)
    again = fetch_data(FetchOptions(**opts), kaggle_api_factory=lambda: SkippingApi(zip_bytes))
    assert again.counts["train"] == {"cats": 6, "dogs": 6}


# --------------------------------------------------------------------------- Kaggle, installed


@pytest.fixture
def kaggle_package(tmp_path, monkeypatch):
    """Makes a ``kaggle`` package whose ``__init__`` runs the given source, importable in
    place of the installed one for this test only."""
    def ours(name: str) -> bool:
        return name == "kaggle" or name.startswith("kaggle.")

    for name in [name for name in sys.modules if ours(name)]:
        monkeypatch.delitem(sys.modules, name)

    def make(init: str) -> None:
        package = tmp_path / "site" / "kaggle"
        (package / "api").mkdir(parents=True)
        (package / "__init__.py").write_text(init)
        (package / "api/__init__.py").write_text("")
        (package / "api/kaggle_api_extended.py").write_text("class KaggleApi:\n    pass\n")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))

    yield make
    for name in [name for name in sys.modules if ours(name)]:
        del sys.modules[name]


def test_an_old_kaggle_client_without_credentials_gives_the_credentials_line(
        kaggle_package, tmp_path, monkeypatch):
    """kaggle 1.5 authenticates on import and raises OSError("Could not find kaggle.json"):
    that was "error: OSError (Could not find kaggle.json ...)"."""
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    kaggle_package("raise OSError(\"Could not find kaggle.json. Make sure it's located in "
                   "/root/.kaggle. Or use the environment method.\")\n")
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"))
    assert one_line(info.value) == sources.NO_KAGGLE_CREDENTIALS


def test_a_kaggle_package_missing_a_dependency_is_said_to_be_broken(kaggle_package, tmp_path):
    """A dependency of the client missing (not kaggle or kagglesdk themselves): it was a
    ModuleNotFoundError traceback."""
    kaggle_package("import kaggle_dependency_that_is_not_installed\n")
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"))
    assert one_line(info.value).startswith(
        "the installed kaggle package is broken (it needs the module "
        "kaggle_dependency_that_is_not_installed, which is not installed): reinstall it with "
        "pip install --force-reinstall 'kaggle>=1.8'")
    assert not (tmp_path / "data").exists()
