"""Downloads: an unreachable host fails at once in one line; no `.part` is named unless kept."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests
from conftest import flushed_before, flushes, missing
from test_datasets import FakeKaggleApi, RecordingReporter, Server
from typer.testing import CliRunner

from transfer import sources
from transfer.cli import app
from transfer.datasets import FetchOptions, fetch_data
from transfer.download import download
from transfer.errors import TransferError


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.fixture
def no_dns(monkeypatch):
    """Name resolution fails, as it does without a network."""
    calls = []

    def getaddrinfo(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_dns_failure_is_not_retried_and_names_no_part_file(no_dns, tmp_path):
    reporter = RecordingReporter()
    with pytest.raises(TransferError) as info:
        download("https://download.example.invalid/kagglecatsanddogs_5340.zip",
                 tmp_path / "cache/k.zip", reporter, backoff=0, offline_hint="Offline, use X.")
    text = one_line(info.value)
    assert text == ("could not reach download.example.invalid (its name could not be "
                    "resolved): no network? Offline, use X.")
    assert no_dns == ["download.example.invalid"]  # asked once: no retries
    assert reporter.warnings == []  # never reported as "connection lost"
    assert not list((tmp_path / "cache").glob("*.part"))


def test_fetch_data_offline_says_use_archive_and_leaves_no_data_folder(no_dns, tmp_path):
    data = tmp_path / "new/data"
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(source="microsoft", data_dir=data,
                                microsoft_url="https://download.example.invalid/p.zip"))
    text = one_line(info.value)
    assert "could not reach download.example.invalid" in text and "no network?" in text
    assert "--archive PATH" in text and ".part" not in text
    assert not data.exists() and not (tmp_path / "new").exists()  # both made by this run

    mine = tmp_path / "mine"
    mine.mkdir()  # the user's own (empty) folder is never removed
    with pytest.raises(TransferError):
        fetch_data(FetchOptions(source="microsoft", data_dir=mine,
                                microsoft_url="https://download.example.invalid/p.zip"))
    assert mine.is_dir()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_connection_is_retried_then_says_nothing_was_downloaded(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/file.zip"
    reporter = RecordingReporter()
    with pytest.raises(TransferError) as info:
        download(url, tmp_path / "file.zip", reporter, retries=2, backoff=0)
    text = one_line(info.value)
    assert text == (f"download of {url} failed after 2 retries (Connection refused); "
                    "nothing was downloaded")
    assert not (tmp_path / "file.zip.part").exists()
    # nothing was ever received: not "connection lost ... resuming"
    host = url.split("/")[2]
    assert reporter.warnings == [f"could not connect to {host} (Connection refused); trying "
                                 f"again (attempt {n}/2)" for n in (1, 2)]


def test_a_kept_part_file_is_named_and_exists(tmp_path):
    payload = bytes(range(256)) * 4000
    dest = tmp_path / "file.zip"
    # after the first cut, no byte more: no progress
    with Server(payload, cut_after=50_000, cut_every=0) as server:
        with pytest.raises(TransferError) as info:
            download(server.url, dest, retries=1, backoff=0)
    text = one_line(info.value)
    part = Path(str(dest) + ".part")
    # what came before the cut, exactly (any non-empty file passed before)
    assert str(part) in text and part.stat().st_size == 50_000
    assert part.read_bytes() == payload[:50_000]
    assert "run again to resume" in text


def test_a_link_that_drops_often_but_moves_on_each_time_completes(tmp_path):
    """Every answer cut after 50 KB: the five retries were spent after 250 KB although each
    attempt moved on ("stopped at 1200000 of 4829812 bytes"). An attempt that made progress
    now resets the count; attempts that bring nothing still end the download."""
    payload = bytes(range(256)) * 1200  # 307 KB: seven cut answers
    dest = tmp_path / "file.zip"
    reporter = RecordingReporter()
    with Server(payload, cut_every=50_000) as server:
        download(server.url, dest, reporter, retries=1, backoff=0)
    assert dest.read_bytes() == payload
    assert len(server.requests) == 7 and server.requests[1] == "bytes=50000-"
    assert len(reporter.warnings) == 6


def test_a_download_is_on_the_disk_before_it_has_its_name(tmp_path, monkeypatch):
    """The `.part` is flushed before its rename (a power cut after the rename could leave the
    name holding an empty file, taken for a finished download), the folder's entries after."""
    payload = bytes(range(256)) * 400
    dest = tmp_path / "file.zip"
    events = flushes(monkeypatch)
    with Server(payload) as server:
        download(server.url, dest, RecordingReporter(), retries=0, backoff=0)
    assert dest.read_bytes() == payload
    assert dest.stat().st_ino in flushed_before(events, dest)
    assert events[-1] == ("fsync", tmp_path.stat().st_ino)


def test_a_server_busy_for_a_while_is_tried_again_and_the_part_kept(tmp_path):
    """A 503 (or 502, 429...) while the server restarts ended the download at once, "failed:
    HTTP 503", without saying the .part was kept. Tried again as a lost connection is; given
    up on after the retries, saying what is kept."""
    payload = bytes(range(256)) * 1000
    dest = tmp_path / "file.zip"
    reporter = RecordingReporter()
    with Server(payload, cut_after=50_000, busy=(503, 502), busy_after=1) as server:
        download(server.url, dest, reporter, retries=3, backoff=0)
    assert dest.read_bytes() == payload
    assert server.requests == [None, "bytes=50000-", "bytes=50000-", "bytes=50000-"]
    assert [w for w in reporter.warnings if "answered" in w] == [
        # the cut before them was attempt 1: one count of attempts, whatever ended each
        "the server answered HTTP 503 Service Unavailable; trying again (attempt 2/3)",
        "the server answered HTTP 502 Bad Gateway; trying again (attempt 3/3)"]
    dest.unlink()
    with Server(payload, cut_after=50_000, busy=(503,) * 9, busy_after=1) as server:
        with pytest.raises(TransferError) as info:
            download(server.url, dest, retries=2, backoff=0)
    part = Path(str(dest) + ".part")
    assert one_line(info.value) == (f"download of {server.url} failed after 2 retries (HTTP 503 "
                                    f"Service Unavailable); 50000 bytes kept in {part}, run "
                                    "again to resume")
    assert part.read_bytes() == payload[:50_000] and len(server.requests) == 3
    with Server(payload, busy=(404,)) as server:  # not the server's passing trouble: at once
        with pytest.raises(TransferError, match="failed: HTTP 404 Not Found$"):
            download(server.url, tmp_path / "other.zip", retries=2, backoff=0)
    assert len(server.requests) == 1


def test_a_server_that_ignores_the_range_and_drops_at_one_byte_is_given_up_on(tmp_path):
    """The retries reset only when an attempt holds more of the file than any before: a server
    that ignores the range (starting again each time) and drops at the same byte made the
    first version of that reset retry without end (11,159 requests in 20 s)."""
    payload = bytes(range(256)) * 400
    reporter = RecordingReporter()
    with Server(payload, cut_every=1000, ranges=False) as server:
        with pytest.raises(TransferError) as info:
            download(server.url, tmp_path / "file.zip", reporter, retries=3, backoff=0)
    assert "stopped at 1000 of 102400 bytes" in one_line(info.value)
    assert len(server.requests) == 4  # the first, then its 3 retries


@pytest.mark.parametrize("url, said", [
    ("htp://example.com/y.zip", "download of htp://example.com/y.zip failed (unknown url "
                                "type: htp)"),
    ("", "cannot download '': unknown url type: ''"),
    ("http://[::1/x.zip", "cannot download 'http://[::1/x.zip': Invalid IPv6 URL"),
])
def test_an_address_that_cannot_be_right_is_not_retried(url, said, tmp_path):
    """"unknown url type" was retried five times as "connection lost ... resuming" (15 s), and
    an empty or malformed address was a traceback. Each is now one line at once."""
    reporter = RecordingReporter()
    with pytest.raises(TransferError) as info:
        download(url, tmp_path / "file.zip", reporter, retries=5, backoff=1)
    assert one_line(info.value) == said and reporter.warnings == []


def test_a_file_address_naming_no_file_is_not_retried(tmp_path):
    url = (tmp_path / "nowhere.zip").as_uri()
    reporter = RecordingReporter()
    with pytest.raises(TransferError) as info:
        download(url, tmp_path / "file.zip", reporter, retries=5, backoff=1)
    assert one_line(info.value) == f"download of {url} failed (No such file or directory)"
    assert reporter.warnings == []


def test_transfer_microsoft_url_empty_is_the_default_and_a_path_is_refused(tmp_path,
                                                                           monkeypatch):
    """`export TRANSFER_MICROSOFT_URL=` (to undo a mirror) made the address '' (a traceback);
    a local path there was "unknown url type" in a traceback too."""
    from transfer.settings import MICROSOFT_URL

    monkeypatch.setenv("TRANSFER_MICROSOFT_URL", "")
    assert FetchOptions().microsoft_url == MICROSOFT_URL
    monkeypatch.setenv("TRANSFER_MICROSOFT_URL", str(tmp_path / "PetImages.zip"))
    result = CliRunner().invoke(app, ["fetch-data", "--source", "microsoft", "--data-dir",
                                      str(tmp_path / "data")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == (
        f"error: TRANSFER_MICROSOFT_URL '{tmp_path / 'PetImages.zip'}' is not an http://, "
        "https:// or file:// address (a local copy is given with --archive PATH)")
    assert not (tmp_path / "data").exists()
    # --archive does not use it: a bad mirror does not stand in the way
    assert FetchOptions(archive=tmp_path).validated().source == "archive"


# --------------------------------------------------------------------------- Kaggle offline


class UnreachableKaggleApi(FakeKaggleApi):
    """The Kaggle client with no way to Kaggle: its calls go out through requests, as the real
    client's do, and fail there with requests' own errors."""

    def __init__(self, url: str, token: bool = False):
        super().__init__()
        self.url, self.token = url, token

    def _call(self):
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment: straight to self.url
        session.get(self.url, timeout=5)

    def authenticate(self):
        if self.token:  # KAGGLE_API_TOKEN is checked online (the client's IntrospectToken)
            self._call()

    def competition_download_file(self, competition, file_name, path=None, force=False,
                                  quiet=False):
        self._call()


def test_kaggle_offline_names_the_cause_and_says_use_archive(no_dns, tmp_path):
    data = tmp_path / "data"
    for token in (False, True):  # the download fails, or already the token's check
        with pytest.raises(TransferError) as info:
            fetch_data(FetchOptions(source="kaggle", data_dir=data),
                       kaggle_api_factory=lambda t=token: UnreachableKaggleApi(
                           "https://api.kaggle.com/v1/DownloadDataFile", token=t))
        assert one_line(info.value) == ("could not reach Kaggle (its name could not be "
                                        "resolved): no network? " + sources.OFFLINE_HINT)
        assert not data.exists()
    assert no_dns == ["api.kaggle.com", "api.kaggle.com"]


def test_kaggle_refused_connection_says_so(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/v1/DownloadDataFile"
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"),
                   kaggle_api_factory=lambda: UnreachableKaggleApi(url))
    assert one_line(info.value) == ("could not reach Kaggle (Connection refused): no network? "
                                    + sources.OFFLINE_HINT)


def test_kaggle_refusals_keep_their_own_message_not_the_offline_hint(tmp_path):
    for status, expected in ((401, "Kaggle rejected the credentials (HTTP 401)"),
                             (403, "Kaggle refused the download (HTTP 403)")):
        response = requests.Response()
        response.status_code = status
        error = requests.HTTPError(f"{status} Client Error", response=response)
        with pytest.raises(TransferError) as info:
            fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"),
                       kaggle_api_factory=lambda e=error: FakeKaggleApi(error=e))
        text = one_line(info.value)
        assert text.startswith(expected) and "no network?" not in text


def test_transfer_fetch_data_with_kaggle_credentials_offline(no_dns, tmp_path, monkeypatch):
    """The user's command, with the real Kaggle client: one line, the cause, the way out."""
    if not sources.kaggle_installed():
        missing("the kaggle package is not installed: pip install 'transfer[kaggle]'")
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    monkeypatch.setenv("KAGGLE_USERNAME", "x")
    monkeypatch.setenv("KAGGLE_KEY", "y")
    result = CliRunner().invoke(app, ["fetch-data", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == (
        "error: could not reach Kaggle (its name could not be resolved): no network? "
        + sources.OFFLINE_HINT)
    assert "Traceback" not in result.output and "HTTPSConnectionPool" not in result.output


def test_a_full_disk_fails_at_once_saying_so_not_retried_as_a_lost_connection(tmp_path):
    """Writing the download fails (no space left): retrying cannot help, so one request, no
    "connection lost" warnings, and the line says the disk is full and what is kept."""
    dest = tmp_path / "file.zip"
    Path(str(dest) + ".part").symlink_to("/dev/full")  # every write: ENOSPC
    reporter = RecordingReporter()
    with Server(bytes(range(256)) * 1000) as server:
        with pytest.raises(TransferError) as info:
            download(server.url, dest, reporter, retries=3, backoff=0)
    text = one_line(info.value)
    assert text.startswith(f"could not write {dest}.part (No space left on device): ")
    assert "of 256000" in text and "free some space" in text and "resume" in text
    assert server.requests == [None] and reporter.warnings == []
    assert not dest.exists()


def test_a_host_that_never_answers_fails_at_once_as_no_answer(tmp_path):
    """A host that takes the connection but never answers (a stuck proxy, a firewall) took the
    timeout six times over, worded "connection lost ... resuming"; now one wait, one line."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections queue; nothing ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/file.zip"
        reporter = RecordingReporter()
        with pytest.raises(TransferError) as info:
            download(url, tmp_path / "file.zip", reporter, retries=5, timeout=0.5, backoff=0,
                     offline_hint="Offline, use X.")
    text = one_line(info.value)
    assert text == ("127.0.0.1 did not answer within 0.5 s: no network, or the server is down? "
                    "Run again to retry; Offline, use X.")
    assert reporter.warnings == [] and not (tmp_path / "file.zip.part").exists()
