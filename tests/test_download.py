"""Downloads: an unreachable host fails at once in one line; no `.part` is named unless kept."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from test_datasets import RecordingReporter, Server

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
    assert len(reporter.warnings) == 2 and not (tmp_path / "file.zip.part").exists()


def test_a_kept_part_file_is_named_and_exists(tmp_path):
    payload = bytes(range(256)) * 4000
    dest = tmp_path / "file.zip"
    with Server(payload, cut_after=50_000) as server:
        handler = server.httpd.RequestHandlerClass
        real_get = handler.do_GET

        def always_cut(self):
            server.cut_after = 50_000
            real_get(self)

        handler.do_GET = always_cut
        with pytest.raises(TransferError) as info:
            download(server.url, dest, retries=1, backoff=0)
    text = one_line(info.value)
    part = Path(str(dest) + ".part")
    assert str(part) in text and part.is_file() and part.stat().st_size > 0
    assert "run again to resume" in text
