"""fetch-data: real archive split, sources (loopback HTTP, fake Kaggle API), bad inputs."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import stat
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import (
    Recorder,
    kaggle_members,
    lock_held_elsewhere,
    make_zip,
    text_as_jpg,
    truncated,
)
from PIL import Image

from transfer import datasets
from transfer.archive import check_image, classify
from transfer.datasets import FetchOptions, fetch_data
from transfer.download import download
from transfer.errors import TransferError
from transfer.files import sha256_file
from transfer.progress import Reporter, RichReporter
from transfer.sources import kaggle_credentials


def listing(data_dir: Path) -> dict[str, list[str]]:
    return {f"{split}/{cls}": sorted(p.name for p in (data_dir / split / cls).iterdir())
            for split in ("train", "validate", "test") if (data_dir / split).exists()
            for cls in ("cats", "dogs")}


def leftovers(data_dir: Path) -> list[str]:
    """Anything in data_dir except the download cache."""
    if not data_dir.exists():
        return []
    return sorted(p.name for p in data_dir.iterdir() if p.name != ".cache")


# --------------------------------------------------------------------------- the real archive


def test_default_split_of_real_kaggle_archive(kaggle_zip, tmp_path):
    result = fetch_data(FetchOptions(archive=kaggle_zip, data_dir=tmp_path / "a"))
    files = listing(tmp_path / "a")
    assert {k: len(v) for k, v in files.items()} == {
        "train/cats": 1000, "train/dogs": 1000, "validate/cats": 400, "validate/dogs": 400}
    # disjoint, original names, right class
    for cls, prefix in (("cats", "cat."), ("dogs", "dog.")):
        train, val = set(files[f"train/{cls}"]), set(files[f"validate/{cls}"])
        assert not train & val
        assert all(n.startswith(prefix) and n.endswith(".jpg") for n in train | val)
    # byte-identical copies of the archive members
    with zipfile.ZipFile(kaggle_zip) as archive:
        name = files["validate/dogs"][0]
        assert (tmp_path / "a/validate/dogs" / name).read_bytes() == archive.read(f"train/{name}")
    manifest = json.loads((tmp_path / "a/manifest.json").read_text())
    assert manifest["source"]["archive_sha256"] == sha256_file(kaggle_zip)
    assert manifest["seed"] == 42 and manifest["skipped"] == []
    assert manifest["counts"] == {"train": {"cats": 1000, "dogs": 1000},
                                  "validate": {"cats": 400, "dogs": 400}}
    assert result.counts == manifest["counts"] and not result.noop

    # deterministic for a seed, different for another seed
    fetch_data(FetchOptions(archive=kaggle_zip, data_dir=tmp_path / "b"))
    assert listing(tmp_path / "b") == files
    fetch_data(FetchOptions(archive=kaggle_zip, data_dir=tmp_path / "c", seed=7,
                            train_per_class=100, validate_per_class=40, test_per_class=20))
    other = listing(tmp_path / "c")
    assert {k: len(v) for k, v in other.items()}["test/dogs"] == 20
    assert other["train/cats"] != files["train/cats"][:100]
    # the same counts with seed 42: another cut in every split and class (the check above
    # passed with the seed ignored, as it compared with the first 100 names of seed 42's)
    fetch_data(FetchOptions(archive=kaggle_zip, data_dir=tmp_path / "d",
                            train_per_class=100, validate_per_class=40, test_per_class=20))
    same_counts = listing(tmp_path / "d")
    for key in other:
        assert set(other[key]) != set(same_counts[key]), key


def test_rerun_is_noop_other_args_refused_force_replaces(real_photos, tmp_path):
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 30))
    data = tmp_path / "data"
    opts = dict(archive=archive, data_dir=data, train_per_class=10, validate_per_class=5)
    fetch_data(FetchOptions(**opts))
    first = listing(data)
    stamp = (data / "manifest.json").stat().st_mtime_ns
    assert fetch_data(FetchOptions(**opts)).noop
    assert (data / "manifest.json").stat().st_mtime_ns == stamp

    with pytest.raises(TransferError, match=r"other arguments \(--seed 42 then, 1 now\); "
                                            "use --force"):
        fetch_data(FetchOptions(**{**opts, "seed": 1}))
    with pytest.raises(TransferError, match=r"other arguments \(per class \(train/validate/"
                                            r"test\) 10/5/0 then, 12/5/0 now\)"):
        fetch_data(FetchOptions(**{**opts, "train_per_class": 12}))
    assert listing(data) == first

    fetch_data(FetchOptions(**{**opts, "seed": 1, "force": True}))
    assert listing(data) != first
    # fractions on the cats/dogs archive: every photo is used, and the run says so
    said = Recorder()
    fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "fractions", test_split=0.2),
               said)
    assert [m for m in said.infos if m.startswith("split by fractions (--validation-split "
                                                  "0.2, --test-split 0.2): every usable photo")]
    assert json.loads((data / "manifest.json").read_text())["seed"] == 1

    # a changed split (a file removed by hand) is not a no-op
    victim = next((data / "train/cats").iterdir())
    victim.unlink()
    with pytest.raises(TransferError, match="no longer matches"):
        fetch_data(FetchOptions(**{**opts, "seed": 1}))


def test_foreign_data_is_refused_then_moved_aside_never_deleted(real_photos, tmp_path):
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 20))
    data = tmp_path / "data"
    (data / "train/mine").mkdir(parents=True)
    (data / "train/mine/precious.txt").write_text("user file")
    opts = dict(archive=archive, data_dir=data, train_per_class=5, validate_per_class=5)
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(**opts))
    assert str(info.value) == (
        f"{data / 'train'} is already there and was not made by fetch-data; move it away, or "
        "use --force to have it moved aside to <name>.old (never deleted)")
    assert (data / "train/mine/precious.txt").read_text() == "user file"
    result = fetch_data(FetchOptions(**opts, force=True))
    assert result.moved_aside == [str(data / "train.old")]
    assert (data / "train.old/mine/precious.txt").read_text() == "user file"
    assert len(listing(data)["train/cats"]) == 5


def test_a_photo_saved_into_the_split_while_force_rebuilds_it_goes_aside(real_photos,
                                                                       tmp_path, monkeypatch):
    """--force looked for files of yours in the split once, before the download and the
    decoding of every photo (minutes): one saved into data/train/cats meanwhile was removed
    with the previous split. The split is looked at again when the new one moves in."""
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 20))
    data = tmp_path / "data"
    opts = dict(archive=archive, data_dir=data, train_per_class=5, validate_per_class=5)
    fetch_data(FetchOptions(**opts))
    build = datasets._build_split

    def meanwhile(*args, **kwargs):
        (data / "train/cats/my-own-photo.jpg").write_bytes(b"the user's")
        return build(*args, **kwargs)

    monkeypatch.setattr(datasets, "_build_split", meanwhile)
    result = fetch_data(FetchOptions(**opts, seed=7, force=True))
    assert result.moved_aside == [str(data / "train.old")]
    assert (data / "train.old/cats/my-own-photo.jpg").read_bytes() == b"the user's"
    assert len(listing(data)["train/cats"]) == 5  # the new split's, without it
    assert json.loads((data / "manifest.json").read_text())["seed"] == 7


def test_a_split_folder_replaced_by_a_link_goes_aside_with_force(real_photos, tmp_path):
    """data/validate replaced by a link to a folder of yours: --force took the link for the
    split it made, and removed it with the previous split without a word (what it pointed at
    stayed). It is moved aside, and said, as a folder fetch-data did not make."""
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 20))
    data = tmp_path / "data"
    opts = dict(archive=archive, data_dir=data, train_per_class=5, validate_per_class=5)
    fetch_data(FetchOptions(**opts))
    mine = tmp_path / "my-validate"
    shutil.move(data / "validate", mine)
    (data / "validate").symlink_to(mine, target_is_directory=True)
    said = Recorder()
    result = fetch_data(FetchOptions(**opts, seed=7, force=True), said)
    assert result.moved_aside == [str(data / "validate.old")]
    assert os.readlink(data / "validate.old") == str(mine)
    assert said.warnings == [f"moved {data / 'validate'}, which fetch-data did not make, aside "
                             f"to {data / 'validate.old'}"]
    assert not (data / "validate").is_symlink() and len(listing(data)["validate/cats"]) == 5


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("member, message", [
    ("../evil/cat.1.jpg", "escapes the target"),
    ("train/../../cat.2.jpg", "escapes the target"),
    ("/etc/cat.3.jpg", "absolute path"),
])
def test_unsafe_members_refuse_archive(real_photos, tmp_path, member, message):
    members = kaggle_members(real_photos, 20)
    members[member] = real_photos["cats"][0][1]
    archive = make_zip(tmp_path / "evil.zip", members)
    with pytest.raises(TransferError, match=message):
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data",
                                train_per_class=5, validate_per_class=5))
    assert not (tmp_path / "data").exists()  # the folder this run made is removed
    assert not (tmp_path / "evil").exists()


def test_symlink_member_refuses_archive(real_photos, tmp_path):
    archive = make_zip(tmp_path / "link.zip", kaggle_members(real_photos, 20))
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("train/cat.999.jpg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(TransferError, match="symbolic link"):
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data",
                                train_per_class=5, validate_per_class=5))
    assert not (tmp_path / "data").exists()  # the folder this run made is removed


def test_truncated_zip_and_not_a_zip(kaggle_zip, tmp_path):
    cut = tmp_path / "cut.zip"
    with open(kaggle_zip, "rb") as src:
        cut.write_bytes(src.read(5_000_000))
    for bad in (cut, tmp_path / "notes.zip"):
        if not bad.exists():
            bad.write_text("hello, I am not a zip")
        with pytest.raises(TransferError, match="not a readable zip"):
            fetch_data(FetchOptions(archive=bad, data_dir=tmp_path / "data"))
        assert not (tmp_path / "data").exists()  # the folder this run made is removed


def test_archive_without_images_or_with_one_class(real_photos, tmp_path):
    # photos/ is a class folder: one class only, refused before any image is read
    archive = make_zip(tmp_path / "other.zip", {
        "photos/1.jpg": real_photos["cats"][0][1], "readme.txt": b"hi"})
    with pytest.raises(TransferError, match=r"only one class in .*other\.zip \(photos, 1 "
                       r"image\); a classifier needs at least two"):
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data"))
    assert not (tmp_path / "data").exists()  # the folder this run made is removed
    empty = make_zip(tmp_path / "empty.zip", {"readme.txt": b"hi", "x/.DS_Store": b"\0"})
    with pytest.raises(TransferError, match="no images in .*empty.zip"):
        fetch_data(FetchOptions(archive=empty, data_dir=tmp_path / "data"))
    assert not (tmp_path / "data").exists()


def test_too_few_images_says_how_many(real_photos, tmp_path):
    members = kaggle_members(real_photos, 12)
    members["train/cat.500.jpg"] = b""  # a zero-byte cat does not count
    archive = make_zip(tmp_path / "few.zip", members)
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data"))
    text = str(info.value)
    assert "\n" not in text  # one line
    assert "cats: 12 usable" in text and "dogs: 12 usable" in text
    assert "1400 per class" in text and "1000 train + 400 validate" in text
    assert not (tmp_path / "data").exists()  # the folder this run made is removed


def test_a_second_fetch_data_on_one_folder_is_refused_while_the_first_writes(
        real_photos, tmp_path):
    """Another process is writing the split (it holds the data folder's lock), or a train is
    reading it: fetch-data there, even one that would do nothing, refuses in one line and
    touches nothing of the other's temporary folder; once the other has ended, it runs."""
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 30))
    data = tmp_path / "data"
    opts = dict(archive=archive, data_dir=data, train_per_class=10, validate_per_class=5)
    fetch_data(FetchOptions(**opts))
    busy = data / ".fetch-tmp-theirs"  # what the other run is building
    busy.mkdir()
    message = (f"another transfer command is using {data} (fetch-data writing its split, or "
               "train reading it); wait for it to end, then run again")
    for shared in (False, True):  # another fetch-data writing; a train reading
        with lock_held_elsewhere(data, shared):
            for options in (opts, {**opts, "seed": 7, "force": True}):
                with pytest.raises(TransferError) as info:
                    fetch_data(FetchOptions(**options))
                assert str(info.value) == message
                assert busy.is_dir()
    again = fetch_data(FetchOptions(**opts, seed=7, force=True))  # the lock died with it
    assert not again.noop and again.counts["train"] == {"cats": 10, "dogs": 10}
    assert not busy.exists()  # now a leftover of an ended run: cleaned as such


def test_interrupted_split_leaves_nothing_and_keeps_previous(real_photos, tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 30))
    data = tmp_path / "data"
    opts = dict(archive=archive, data_dir=data, train_per_class=10, validate_per_class=5)
    fetch_data(FetchOptions(**opts))
    before = listing(data)
    manifest_before = (data / "manifest.json").read_text()

    calls = {"n": 0}
    real_check = datasets.check_image

    def check_then_interrupt(blob):
        calls["n"] += 1
        if calls["n"] == 17:
            raise KeyboardInterrupt
        return real_check(blob)

    monkeypatch.setattr(datasets, "check_image", check_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch_data(FetchOptions(**opts, seed=5, force=True))
    assert calls["n"] == 17
    assert listing(data) == before
    assert (data / "manifest.json").read_text() == manifest_before
    assert leftovers(data) == ["manifest.json", "train", "validate"]

    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "fresh",
                                train_per_class=10, validate_per_class=5))
    assert not (tmp_path / "fresh").exists()  # the folder this run made is removed


# --------------------------------------------------------------------------- image checks


def test_check_image_on_real_and_broken_files(real_photos):
    good = real_photos["dogs"][3][1]
    assert check_image(good) is None
    assert check_image(b"") == "zero-byte file"
    assert "not a decodable image" in check_image(truncated(good))
    assert "not a decodable image" in check_image(text_as_jpg())


def test_check_image_keeps_a_200_megapixel_phone_photo_that_train_reads(tmp_path):
    """A 16320 x 12240 JPEG (Samsung's 200 MP mode) is over Pillow's bomb limit when decoded
    whole, but train's reader decodes it at 1/8 scale and reads it: fetch-data skipped it as
    "not a decodable image", so its split lost a photo train's own split of the folder kept.
    A PNG of that size, which no reader can reduce, is still refused, and a truncated JPEG
    still fails (every pixel is decoded)."""
    from transfer import bases, pipelines

    photo = io.BytesIO()
    Image.new("L", (16320, 12240), 128).save(photo, "JPEG", quality=50)
    data = photo.getvalue()
    assert check_image(data) is None
    (tmp_path / "phone.jpg").write_bytes(data)
    assert pipelines.read_rgb(tmp_path / "phone.jpg", bases.MAX_SIZE).shape == (1024, 1024, 3)
    assert "not a decodable image" in check_image(truncated(data))
    scan = io.BytesIO()
    Image.new("1", (16320, 12240)).save(scan, "PNG")
    assert "DecompressionBombError" in check_image(scan.getvalue())


def test_classify_layouts():
    assert classify("train/cat.12.jpg") == "cats"
    assert classify("train/DOG.3.JPG") == "dogs"
    assert classify("PetImages/Cat/12.jpg") == "cats"
    assert classify("PetImages/Dog/7.jpg") == "dogs"
    assert classify("PetImages/Dog/Thumbs.db") is None
    assert classify("test1/12.jpg") is None
    assert classify("train/cat.1.txt") is None


# --------------------------------------------------------------------------- Microsoft over HTTP


def petimages_zip(real_photos, tmp_path: Path, per_class: int = 25) -> tuple[Path, list[str]]:
    members = {}
    for cls, folder in (("cats", "Cat"), ("dogs", "Dog")):
        for i, (_, data) in enumerate(real_photos[cls][:per_class]):
            members[f"PetImages/{folder}/{i}.jpg"] = data
    broken = {
        "PetImages/Cat/666.jpg": b"",  # the zero-byte file the real zip has
        "PetImages/Dog/11702.jpg": truncated(real_photos["dogs"][40][1]),
        "PetImages/Dog/9999.jpg": text_as_jpg(),
        "PetImages/Cat/Thumbs.db": b"\x00" * 100,
    }
    members.update(broken)
    return make_zip(tmp_path / "kagglecatsanddogs.zip", members), [
        n for n in broken if n.endswith(".jpg")]


class Server:
    """A loopback HTTP server for one file, with Range support and optional cuts: the first
    answer after ``cut_after`` bytes, every (later) answer after ``cut_every`` bytes."""

    def __init__(self, payload: bytes, cut_after: int | None = None, length: bool = True,
                 ranges: bool = True, cut_every: int | None = None,
                 range_length: bool = True, busy: tuple[int, ...] = (),
                 busy_after: int = 0):
        self.payload, self.cut_after, self.requests = payload, cut_after, []
        # the status codes answered, one a request, from request ``busy_after`` on (a 503)
        self.busy, self.busy_after = list(busy), busy_after
        self.cut_every = cut_every
        self.length = length  # False: no Content-Length on a whole-file answer
        self.ranges = ranges  # False: a Range header is ignored (the whole file, 200)
        # False: a 206 says no length, neither the file's (bytes a-b/*) nor its own
        self.range_length = range_length
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append(rng)
                if server.busy and len(server.requests) > server.busy_after:
                    self.send_response(server.busy.pop(0))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not server.ranges:
                    rng = None
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(server.payload):  # as servers answer a range past the end
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(server.payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.payload[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    size = len(server.payload) if server.range_length else "*"
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(server.payload) - 1}/{size}")
                if server.range_length if rng else server.length:
                    self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = server.cut_every if server.cut_after is None else server.cut_after
                if cut is not None:
                    server.cut_after = None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-file
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/kagglecatsanddogs.zip"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class RecordingReporter(Reporter):
    def __init__(self):
        self.bytes, self.totals, self.warnings = 0, [], []

    def warn(self, message):
        self.warnings.append(message)

    def task(self, description, total=None, kind="items", completed=0):
        from contextlib import contextmanager

        @contextmanager
        def cm():
            def advance(n=1, **fields):
                if kind == "bytes":
                    self.bytes += n
                    if fields.get("total"):
                        self.totals.append(fields["total"])
            yield advance

        return cm()


def test_microsoft_download_resumes_after_cut_and_skips_corrupt(real_photos, tmp_path,
                                                                monkeypatch):
    archive, broken = petimages_zip(real_photos, tmp_path)
    payload = archive.read_bytes()
    monkeypatch.setenv("TRANSFER_MICROSOFT_SHA256", sha256_file(archive))
    reporter = RecordingReporter()
    with Server(payload, cut_after=len(payload) // 3) as server:
        result = fetch_data(FetchOptions(source="microsoft", microsoft_url=server.url,
                                         data_dir=tmp_path / "data", train_per_class=15,
                                         validate_per_class=8), reporter=reporter)
    assert server.requests[0] is None and server.requests[1] == f"bytes={len(payload) // 3}-"
    assert any("resuming" in w for w in reporter.warnings)
    cached = tmp_path / "data/.cache/kagglecatsanddogs.zip"
    assert cached.read_bytes() == payload
    assert not cached.with_name(cached.name + ".part").exists()
    assert reporter.bytes == len(payload) and reporter.totals[-1] == len(payload)
    counts = {k: len(v) for k, v in listing(tmp_path / "data").items()}
    assert counts == {"train/cats": 15, "train/dogs": 15, "validate/cats": 8, "validate/dogs": 8}
    assert sorted(s["name"] for s in result.skipped) == sorted(broken)
    manifest = json.loads((tmp_path / "data/manifest.json").read_text())
    assert manifest["source"]["kind"] == "microsoft" and manifest["source"]["layout"] == "folders"
    assert {s["name"]: s["reason"] for s in manifest["skipped"]}["PetImages/Cat/666.jpg"] == \
        "zero-byte file"
    for path in (tmp_path / "data/train/dogs").iterdir():
        with Image.open(path) as image:
            image.load()


def test_a_damaged_part_an_earlier_run_left_is_named_not_the_mirror(real_photos, tmp_path,
                                                                     monkeypatch):
    archive, _ = petimages_zip(real_photos, tmp_path)
    monkeypatch.setenv("TRANSFER_MICROSOFT_SHA256", sha256_file(archive))
    part = tmp_path / "data/.cache/kagglecatsanddogs.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(1000))
    with Server(archive.read_bytes()) as server, pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(source="microsoft", microsoft_url=server.url,
                                data_dir=tmp_path / "data", train_per_class=5,
                                validate_per_class=5))
    assert "this download resumed a partial file an earlier run left, which may be what was " \
           "damaged: deleted, run again to download it whole" in str(info.value)
    assert "mirror" not in str(info.value)
    with Server(archive.read_bytes()) as server:  # and the next run is whole
        fetch_data(FetchOptions(source="microsoft", microsoft_url=server.url,
                                data_dir=tmp_path / "data", train_per_class=5,
                                validate_per_class=5))
    # resumed by a server that gives no length at all: still named and deleted, not kept as
    # perhaps cut short (no test sent such a 206 before; keeping it passed)
    part = tmp_path / "other/.cache/kagglecatsanddogs.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(1000))
    with Server(archive.read_bytes(), range_length=False) as server, \
            pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(source="microsoft", microsoft_url=server.url,
                                data_dir=tmp_path / "other", train_per_class=5,
                                validate_per_class=5))
    assert server.requests == ["bytes=1000-"]
    assert "this download resumed a partial file an earlier run left" in str(info.value)
    assert not part.exists() and not part.with_name("kagglecatsanddogs.zip").exists()


def test_a_download_cut_short_without_a_length_is_kept_and_resumed(real_photos, tmp_path,
                                                                   monkeypatch):
    """A server that gives no Content-Length and closes the connection a third of the way:
    the end of the stream cannot be told from the end of the file, so only the checksum
    notices. The bytes were deleted and the mirror blamed ("a mirror must serve the very same
    file"); they are now kept as the .part, the error says the download may have been cut,
    and the next run resumes it."""
    archive, _ = petimages_zip(real_photos, tmp_path)
    payload = archive.read_bytes()
    monkeypatch.setenv("TRANSFER_MICROSOFT_SHA256", sha256_file(archive))
    options = FetchOptions(source="microsoft", data_dir=tmp_path / "data", train_per_class=5,
                           validate_per_class=5)
    part = tmp_path / "data/.cache/kagglecatsanddogs.zip.part"
    with Server(payload, cut_after=len(payload) // 3, length=False) as server, \
            pytest.raises(TransferError) as info:
        fetch_data(dataclasses.replace(options, microsoft_url=server.url))
    assert "the server did not say how long the file is, so the connection may have closed " \
           f"early ({len(payload) // 3} bytes kept in {part}: run again to resume)" \
           in str(info.value)
    assert part.read_bytes() == payload[:len(payload) // 3]
    with Server(payload, length=False) as server:
        fetch_data(dataclasses.replace(options, microsoft_url=server.url))
    assert server.requests == [f"bytes={len(payload) // 3}-"]
    assert (tmp_path / "data/.cache/kagglecatsanddogs.zip").read_bytes() == payload
    # a mirror serving another file, with no length: kept once, as it may have been cut;
    # the next run, resuming it, finds it complete and still wrong: deleted, not kept for ever
    other = options.replace(data_dir=tmp_path / "other")
    page = b"<html>not the zip</html>\n" * 100
    for expected in ("the connection may have closed early", "this download resumed a "
                     "partial file an earlier run left, which may be what was damaged: "
                     "deleted"):
        with Server(page, length=False) as server, pytest.raises(TransferError) as info:
            fetch_data(dataclasses.replace(other, microsoft_url=server.url))
        assert expected in str(info.value)
    assert not list((tmp_path / "other/.cache").iterdir())
    # a server that also ignores ranges cannot resume it: the second run, sent the whole
    # file again, says the mirror's file is not the zip (not that a resumed part was damaged)
    third = options.replace(data_dir=tmp_path / "third")
    for expected in ("run again to resume", "a mirror must serve the very same file"):
        with Server(page, length=False, ranges=False) as server, \
                pytest.raises(TransferError) as info:
            fetch_data(dataclasses.replace(third, microsoft_url=server.url))
        assert expected in str(info.value)
    assert not list((tmp_path / "third/.cache").iterdir())


def test_a_full_disk_names_the_data_folder(real_photos, tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):  # what a write() raises: no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 10))
    monkeypatch.setattr(datasets, "_build_split", full)
    with pytest.raises(OSError) as info:
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data",
                                train_per_class=5, validate_per_class=5))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "data")


def test_download_resumes_a_part_file_from_an_earlier_run(tmp_path):
    payload = bytes(range(256)) * 4000
    dest = tmp_path / "file.zip"
    dest.with_name("file.zip.part").write_bytes(payload[:100_000])
    with Server(payload) as server:
        download(server.url, dest)
    assert server.requests == ["bytes=100000-"]
    assert dest.read_bytes() == payload
    # a .part longer than the file served (it changed since): deleted, downloaded whole (no
    # test met that 416 before: keeping the .part passed)
    other = tmp_path / "other.zip"
    other.with_name("other.zip.part").write_bytes(payload + b"stale")
    with Server(payload) as server:
        download(server.url, other)
    assert server.requests == [f"bytes={len(payload) + 5}-", None]
    assert other.read_bytes() == payload
    assert not other.with_name("other.zip.part").exists()


def test_download_http_error_is_one_line(tmp_path):
    with Server(b"x") as server:
        server.httpd.RequestHandlerClass.do_GET = lambda self: self.send_error(404)
        with pytest.raises(TransferError) as info:
            download(server.url, tmp_path / "f.zip")
    assert str(info.value) == f"download of {server.url} failed: HTTP 404 Not Found"
    assert "\n" not in str(info.value)
    assert not (tmp_path / "f.zip").exists()


# --------------------------------------------------------------------------- Kaggle (fake API)


class FakeKaggleApi:
    """Stands in for kaggle.api.kaggle_api_extended.KaggleApi at the client boundary."""

    def __init__(self, zip_bytes: bytes | None = None, authenticated=True, error=None):
        self.zip_bytes, self.authenticated, self.error, self.calls = (
            zip_bytes, authenticated, error, [])

    def authenticate(self):
        if not self.authenticated:
            print("kaggle's own help text")
            raise SystemExit(1)

    def competition_download_file(self, competition, file_name, path=None, force=False,
                                  quiet=False):
        self.calls.append((competition, file_name, path))
        if self.error:
            raise self.error
        if not quiet:  # as the real client (1.8): a line printed on stdout, tqdm on stderr
            print(f"Downloading {file_name} to {path}")
            sys.stderr.write(f"100%|##########| {len(self.zip_bytes)}/{len(self.zip_bytes)}\n")
        Path(path, file_name).write_bytes(self.zip_bytes)


def test_kaggle_client_output_is_silent_for_a_library_caller_and_on_stderr_for_the_cli(
        real_photos, tmp_path, capfd):
    """The Kaggle client prints "Downloading train.zip to ..." on stdout and draws its bar
    on stderr unless told quiet: a library caller (a silent reporter) heard both, and the
    CLI's `--output -`-style stdout got the line. Silent for the one, on stderr for the
    other."""
    zip_bytes = make_zip(tmp_path / "train.zip", kaggle_members(real_photos, 6)).read_bytes()

    def fetch(folder, reporter=None):
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / folder, train_per_class=2,
                                validate_per_class=1), reporter=reporter,
                   kaggle_api_factory=lambda: FakeKaggleApi(zip_bytes))
        return capfd.readouterr()

    capfd.readouterr()
    assert fetch("library") == ("", "")
    out, err = fetch("cli", RichReporter())
    assert out == "" and "Downloading train.zip to " in err and "100%" in err


class HttpError(Exception):
    def __init__(self, status):
        super().__init__(f"{status} Client Error")
        self.response = type("Response", (), {"status_code": status})()


def test_kaggle_success(real_photos, tmp_path):
    zip_bytes = make_zip(tmp_path / "train.zip", kaggle_members(real_photos, 20)).read_bytes()
    api = FakeKaggleApi(zip_bytes)
    result = fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data",
                                     train_per_class=10, validate_per_class=5),
                        kaggle_api_factory=lambda: api)
    assert api.calls[0][:2] == ("dogs-vs-cats", "train.zip")
    assert result.source == "kaggle" and result.counts["validate"] == {"cats": 5, "dogs": 5}
    manifest = json.loads((tmp_path / "data/manifest.json").read_text())
    assert manifest["source"]["competition"] == "dogs-vs-cats"
    assert manifest["source"]["layout"] == "kaggle"


def test_kaggle_competition_zip_wrapping_train_zip(real_photos, tmp_path):
    inner = make_zip(tmp_path / "train.zip", kaggle_members(real_photos, 20)).read_bytes()
    outer = make_zip(tmp_path / "outer.zip", {"train.zip": inner, "test1.zip": b"PK"}).read_bytes()
    result = fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data",
                                     train_per_class=10, validate_per_class=5),
                        kaggle_api_factory=lambda: FakeKaggleApi(outer))
    assert result.counts["train"] == {"cats": 10, "dogs": 10}


def test_kaggle_download_kept_in_the_cache_is_used_again(real_photos, tmp_path):
    """A re-split (--force, another seed) uses the train.zip downloaded before: no account or
    network needed (before, it called Kaggle again and failed offline)."""
    zip_bytes = make_zip(tmp_path / "train.zip", kaggle_members(real_photos, 20)).read_bytes()
    opts = dict(source="kaggle", data_dir=tmp_path / "data", train_per_class=10,
                validate_per_class=5)
    fetch_data(FetchOptions(**opts), kaggle_api_factory=lambda: FakeKaggleApi(zip_bytes))
    offline = FakeKaggleApi(error=ConnectionError("no network"))
    recorder = Recorder()
    result = fetch_data(FetchOptions(**opts, seed=3, force=True), reporter=recorder,
                        kaggle_api_factory=lambda: offline)
    assert offline.calls == [] and result.counts["train"] == {"cats": 10, "dogs": 10}
    kept = tmp_path / "data/.cache/kaggle/dogs-vs-cats/train.zip"
    assert f"using the Kaggle competition 'dogs-vs-cats''s train.zip downloaded before: {kept} " \
           "(delete it to download it again)" in recorder.infos
    kept.write_bytes(zip_bytes[:len(zip_bytes) // 2])  # a download cut short: fetched again
    again = FakeKaggleApi(zip_bytes)
    fetch_data(FetchOptions(**opts, seed=4, force=True), kaggle_api_factory=lambda: again)
    assert len(again.calls) == 1 and kept.read_bytes() == zip_bytes


@pytest.mark.parametrize("content, reason", [
    ("{not json", r"not JSON: Expecting property name"),
    ('{"username": "me"}', r'no "username" and "key" in it'),
])
def test_kaggle_json_the_client_cannot_read_is_named(tmp_path, monkeypatch, content, reason):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "kc").mkdir()
    (tmp_path / "kc/kaggle.json").write_text(content)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kc"))
    with pytest.raises(TransferError) as info:  # the client skips it and prints its help
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"),
                   kaggle_api_factory=lambda: FakeKaggleApi(authenticated=False))
    assert re.match(rf"Kaggle cannot read {re.escape(str(tmp_path / 'kc/kaggle.json'))} "
                    rf"\({reason}.*\); it must hold {{\"username\": \"...\", \"key\": "
                    r'\"...\"}; put ~/.kaggle/kaggle.json', str(info.value)), str(info.value)
    (tmp_path / "kc/kaggle.json").write_text('{"username": "me", "key": "wrong"}')
    with pytest.raises(TransferError, match=r"Kaggle did not accept the credentials in .*kc/"
                       r"kaggle.json; put ~/.kaggle/kaggle.json"):
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"),
                   kaggle_api_factory=lambda: FakeKaggleApi(authenticated=False))


def test_kaggle_names_met_twice_in_split_folders(real_photos, tmp_path):
    """train/cat.0.jpg and validation/cat.0.jpg, different photos: both are used (the second
    renamed); the same photo twice is used once (before, every second name was skipped, and
    the split came short)."""
    members = {}
    for folder, offset in (("train", 0), ("validation", 15)):
        for cls in ("cats", "dogs"):
            for i in range(15):
                members[f"{folder}/{cls[:-1]}.{i}.jpg"] = real_photos[cls][offset + i][1]
    members["validation/cat.0.jpg"] = members["train/cat.0.jpg"]  # the very same photo
    archive = make_zip(tmp_path / "kdup.zip", members)
    result = fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data",
                                     train_per_class=19, validate_per_class=10))
    assert result.counts == {"train": {"cats": 19, "dogs": 19},
                             "validate": {"cats": 10, "dogs": 10}}
    placed = listing(tmp_path / "data")
    names = [n for cls in ("cats", "dogs") for split in ("train", "validate")
             for n in placed[f"{split}/{cls}"]]
    assert len(names) == len(set(names)) == 58
    assert {"dog.3.jpg", "dog.3-2.jpg"} <= set(names)  # two different photos, one name
    assert len(result.skipped) == 1 and result.skipped[0]["reason"] in (
        "the same photo as train/cat.0.jpg", "the same photo as validation/cat.0.jpg")
    # split by fractions: both copies were placed, side by side in the order, so a cut
    # between them put the one photo in train and validate; placed once, wherever the cut
    split = fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "fractions",
                                    validation_split=0.3))
    assert len(split.skipped) == 1 and split.skipped[0]["reason"] in (
        "the same photo as train/cat.0.jpg", "the same photo as validation/cat.0.jpg")
    assert sum(split.counts["train"].values()) + sum(split.counts["validate"].values()) == 59
    digests = {part: {sha256_file(p) for p in (tmp_path / "fractions" / part).rglob("*.jpg")}
               for part in ("train", "validate")}
    assert not digests["train"] & digests["validate"]
    assert len(digests["train"]) + len(digests["validate"]) == 59


def test_kaggle_without_credentials(tmp_path):
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"),
                   kaggle_api_factory=lambda: FakeKaggleApi(authenticated=False))
    text = str(info.value)
    assert "\n" not in text and "kaggle's own help text" not in text
    for hint in ("~/.kaggle/kaggle.json", "KAGGLE_USERNAME", "KAGGLE_API_TOKEN",
                 "--source microsoft", "--archive"):
        assert hint in text
    assert not (tmp_path / "data").exists()  # the folder this run made is removed


def test_kaggle_403_says_accept_the_rules(tmp_path):
    with pytest.raises(TransferError, match=r"accept the competition rules at https://www\."
                       r"kaggle\.com/competitions/dogs-vs-cats/rules"):
        fetch_data(FetchOptions(source="kaggle", data_dir=tmp_path / "data"),
                   kaggle_api_factory=lambda: FakeKaggleApi(error=HttpError(403)))


def test_kaggle_credentials_are_found_where_the_client_finds_them(tmp_path):
    """The Kaggle client (2.x) also reads ~/.config/kaggle/kaggle.json on Linux when there is
    no ~/.kaggle, and ``kaggle auth login``'s ~/.kaggle/credentials.json; its access_token
    only in ~/.kaggle, whatever KAGGLE_CONFIG_DIR says. ``auto`` missed the first two (and
    fell back to Microsoft's 800 MB) and took an access_token the client never reads."""
    home = tmp_path / "home"
    home.mkdir()
    assert kaggle_credentials(env={}, home=home) is None
    xdg = home / ".config/kaggle/kaggle.json"
    xdg.parent.mkdir(parents=True)
    xdg.write_text('{"username": "u", "key": "k"}')
    if sys.platform.startswith("linux"):
        assert kaggle_credentials(env={}, home=home) == str(xdg)
        mine = tmp_path / "xdg/kaggle/kaggle.json"
        mine.parent.mkdir(parents=True)
        mine.write_text("{}")
        assert kaggle_credentials(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")},
                                  home=home) == str(mine)
    (home / ".kaggle").mkdir()  # the client then reads kaggle.json there only
    assert kaggle_credentials(env={}, home=home) is None
    (home / ".kaggle/credentials.json").write_text('{"refresh_token": "r"}')
    assert kaggle_credentials(env={}, home=home) == str(home / ".kaggle/credentials.json")
    (home / ".kaggle/access_token").write_text("token")
    assert kaggle_credentials(env={}, home=home) == str(home / ".kaggle/access_token")
    # kagglesdk's access_token.txt too (skipping it passed: credentials.json was found)
    (home / ".kaggle/access_token").rename(home / ".kaggle/access_token.txt")
    assert kaggle_credentials(env={}, home=home) == str(home / ".kaggle/access_token.txt")
    (home / ".kaggle/access_token.txt").rename(home / ".kaggle/access_token")
    elsewhere = tmp_path / "config"
    elsewhere.mkdir()
    (elsewhere / "access_token").write_text("token")  # not a place the client reads
    (home / ".kaggle/access_token").unlink()
    (home / ".kaggle/credentials.json").unlink()
    assert kaggle_credentials(env={"KAGGLE_CONFIG_DIR": str(elsewhere)}, home=home) is None


def test_auto_chooses_kaggle_only_with_credentials(monkeypatch, tmp_path):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    assert kaggle_credentials() is None
    (tmp_path / "kaggle").mkdir()
    (tmp_path / "kaggle/kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert kaggle_credentials() == str(tmp_path / "kaggle/kaggle.json")
    assert kaggle_credentials(env={"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}) == \
        "KAGGLE_USERNAME/KAGGLE_KEY"
    # one without the other is no credentials (only both together were checked before)
    for half in ({"KAGGLE_USERNAME": "u"}, {"KAGGLE_KEY": "k"}):
        assert kaggle_credentials(env=half, home=tmp_path / "nohome") is None, half
    # auto + credentials -> the Kaggle client is asked
    api = FakeKaggleApi(error=HttpError(403))
    with pytest.raises(TransferError, match="HTTP 403"):
        fetch_data(FetchOptions(data_dir=tmp_path / "data"), kaggle_api_factory=lambda: api)
    assert api.calls


# --------------------------------------------------------------------------- the swap


def split_listing(data_dir: Path) -> dict[str, list[str]]:
    """Like listing(), for the split folders that hold cats/ and dogs/ (not the user's test/)."""
    return {f"{split}/{cls}": sorted(p.name for p in (data_dir / split / cls).iterdir())
            for split in ("train", "validate", "test") if (data_dir / split / "cats").is_dir()
            for cls in ("cats", "dogs")}


def assert_complete_split(data: Path) -> dict:
    """data/ holds one complete split whose files are exactly those its manifest lists, and
    no leftover of an interrupted swap."""
    manifest = datasets.read_manifest(data)
    assert manifest is not None
    for split in manifest["splits"]:
        assert sorted(p.name for p in (data / split).iterdir()) == ["cats", "dogs"]
        for cls in ("cats", "dogs"):
            assert sorted(p.name for p in (data / split / cls).iterdir()) == \
                manifest["files"][split][cls]
            assert len(manifest["files"][split][cls]) == manifest["counts"][split][cls]
    assert not [p.name for p in data.iterdir() if p.name.startswith(".fetch-")]
    return manifest


class Crash(BaseException):
    """The process dies: nothing after this point runs in it."""


def crashed(*args, **kwargs):
    raise Crash  # the in-process finish/roll-back never runs after a crash


SWAP_RENAMES = 9  # tmp manifest, journal, 1 aside, 2 old splits out, 3 new in, the commit


@pytest.fixture
def swap_case(real_photos, tmp_path):
    """A data folder with a split made by fetch-data (train 6, validate 3) plus a test/ folder
    of the user's; the new request (seed 5, with a test split, --force) must move that aside."""
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 30))
    old_opts = dict(archive=archive, train_per_class=6, validate_per_class=3)
    new_opts = dict(old_opts, test_per_class=2, seed=5, force=True)
    template = tmp_path / "template"
    fetch_data(FetchOptions(**old_opts, data_dir=template))
    (template / "test/mine").mkdir(parents=True)
    (template / "test/mine/precious.txt").write_text("user file")
    reference = tmp_path / "reference"
    shutil.copytree(template, reference)
    fetch_data(FetchOptions(**new_opts, data_dir=reference))
    return template, old_opts, new_opts, split_listing(template), split_listing(reference)


def counting_renames(monkeypatch, fail_at: int | None = None, exc: BaseException | None = None,
                     after: bool = False, persist: bool = False):
    """Patch os.replace and os.rename (Path.rename/replace and files.write_json go through
    them): count the calls, and fail the ``fail_at``-th (before or ``after`` it happened)."""
    calls = {"n": 0}
    for name in ("replace", "rename"):
        real = getattr(os, name)

        def call(*args, _real=real, **kwargs):
            calls["n"] += 1
            failing = calls["n"] == fail_at or (persist and fail_at and calls["n"] > fail_at)
            if failing and not after:
                raise exc
            result = _real(*args, **kwargs)
            if failing:
                raise exc
            return result

        monkeypatch.setattr(os, name, call)
    return calls


def test_swap_counts_every_rename(swap_case, tmp_path, monkeypatch):
    template, _, new_opts, _, new_listing = swap_case
    data = tmp_path / "data"
    shutil.copytree(template, data)
    with monkeypatch.context() as patch:
        calls = counting_renames(patch)
        result = fetch_data(FetchOptions(**new_opts, data_dir=data))
    assert calls["n"] == SWAP_RENAMES
    assert split_listing(data) == new_listing and result.moved_aside == [str(data / "test.old")]
    assert (data / "test.old/mine/precious.txt").read_text() == "user file"
    assert assert_complete_split(data)["seed"] == 5


SWAP_FAILURES = (
    [("error", k) for k in range(1, SWAP_RENAMES + 1)]  # disk full, permissions: rolled back
    + [("ctrl-c", k) for k in range(1, SWAP_RENAMES + 1)]  # KeyboardInterrupt: rolled back
    + [("crash", k) for k in range(1, SWAP_RENAMES + 2)]  # killed: the next run recovers
)


@pytest.mark.parametrize("mode, k", SWAP_FAILURES, ids=[f"{m}-{k}" for m, k in SWAP_FAILURES])
def test_swap_interrupted_at_every_rename_ends_with_a_complete_split(swap_case, tmp_path,
                                                                     monkeypatch, mode, k):
    template, old_opts, new_opts, old_listing, new_listing = swap_case
    data = tmp_path / "data"
    shutil.copytree(template, data)
    exc = {"error": OSError(28, "No space left on device"), "ctrl-c": KeyboardInterrupt(),
           "crash": Crash()}[mode]
    with monkeypatch.context() as patch:
        if mode == "crash":  # dies at the k-th rename (k = SWAP_RENAMES + 1: just after the
            # commit): no rollback or clean-up runs in this process; later renames would fail
            patch.setattr(datasets, "_settle", crashed)
            calls = counting_renames(patch, min(k, SWAP_RENAMES), exc,
                                     after=k > SWAP_RENAMES, persist=True)
        else:
            calls = counting_renames(patch, k, exc)
        with pytest.raises(type(exc)):
            fetch_data(FetchOptions(**new_opts, data_dir=data))
    assert calls["n"] >= min(k, SWAP_RENAMES)
    if mode != "crash":  # rolled back at once, in the same process
        assert split_listing(data) == old_listing and assert_complete_split(data)["seed"] == 42
        assert (data / "test/mine/precious.txt").read_text() == "user file"

    # one rerun (any fetch-data on this folder; here the original request, without --force)
    try:
        assert fetch_data(FetchOptions(**old_opts, data_dir=data)).noop
        assert split_listing(data) == old_listing  # rolled back: the previous split, untouched
        assert (data / "test/mine/precious.txt").read_text() == "user file"
        assert assert_complete_split(data)["seed"] == 42
    except TransferError as refused:  # finished: the new split is in place, and kept
        assert mode == "crash" and k > SWAP_RENAMES, refused
        assert "other arguments" in str(refused)
        assert split_listing(data) == new_listing and assert_complete_split(data)["seed"] == 5
        assert (data / "test.old/mine/precious.txt").read_text() == "user file"
    # and the new request still works afterwards
    fetch_data(FetchOptions(**new_opts, data_dir=data))
    assert split_listing(data) == new_listing and assert_complete_split(data)["seed"] == 5
    assert "user file" in {p.read_text() for p in data.glob("test.old*/mine/precious.txt")}


def test_recover_never_deletes_what_it_did_not_move_in(swap_case, tmp_path, monkeypatch):
    """A crash mid-swap, then someone replaces a moved-in split folder by hand: the rollback
    moves that folder aside instead of deleting it."""
    template, old_opts, new_opts, old_listing, _ = swap_case
    data = tmp_path / "data"
    shutil.copytree(template, data)
    with monkeypatch.context() as patch:
        patch.setattr(datasets, "_settle", crashed)
        counting_renames(patch, 9, Crash(), persist=True)  # all new splits in, no commit
        with pytest.raises(Crash):
            fetch_data(FetchOptions(**new_opts, data_dir=data))
    shutil.rmtree(data / "test")
    (data / "test/notes").mkdir(parents=True)
    (data / "test/notes/mine.txt").write_text("written during the crash")
    (data / "train/cats/mine.jpg").write_bytes(b"saved into a moved-in class folder")
    assert datasets.recover(data).startswith("rolled it back")
    assert split_listing(data)["train/cats"] == old_listing["train/cats"]
    assert (data / "test/mine/precious.txt").read_text() == "user file"
    assert [p.read_text() for p in data.glob("test.old*/notes/mine.txt")] == [
        "written during the crash"]
    # a file added inside a moved-in class folder is the user's too: that split is moved
    # aside, not deleted (only its top-level folders were compared with what was moved in)
    assert [p.read_bytes() for p in data.glob("train.old*/cats/mine.jpg")] == [
        b"saved into a moved-in class folder"]
    assert fetch_data(FetchOptions(**old_opts, data_dir=data)).noop
