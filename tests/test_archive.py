"""Reading archives and folders safely: size caps, zip bombs, readable skip reasons, folders."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from conftest import Recorder, kaggle_members, make_zip, text_as_jpg, truncated

from transfer import archive as archive_module
from transfer.archive import FolderImages, ZipImages, check_image, classify
from transfer.datasets import FetchOptions, fetch_data
from transfer.errors import TransferError


class _opened:
    """ZipImages as a context manager."""

    def __init__(self, path: Path):
        self.images = ZipImages(path)

    def __enter__(self):
        return self.images

    def __exit__(self, *exc):
        self.images.close()


def test_skip_reasons_are_words_not_object_reprs(real_photos):
    good = real_photos["cats"][2][1]
    for blob in (text_as_jpg(), truncated(good), b"\x89PNG\r\n\x1a\n" + b"\x00" * 50,
                 good[:200]):
        reason = check_image(blob)
        assert reason and reason.startswith("not a decodable image")
        assert "object at 0x" not in reason and "<_io" not in reason and "\n" not in reason
    assert check_image(text_as_jpg()) == "not a decodable image (not a format Pillow recognises)"


def test_fetch_reports_readable_skip_reasons(real_photos, tmp_path):
    members = kaggle_members(real_photos, 12)
    members["train/cat.900.jpg"] = text_as_jpg()
    members["train/dog.901.jpg"] = truncated(real_photos["dogs"][20][1])
    result = fetch_data(FetchOptions(archive=make_zip(tmp_path / "a.zip", members),
                                     data_dir=tmp_path / "data", train_per_class=8,
                                     validate_per_class=4))
    reasons = {s["name"]: s["reason"] for s in result.skipped}
    assert set(reasons) == {"train/cat.900.jpg", "train/dog.901.jpg"}
    for reason in reasons.values():
        assert reason.startswith("not a decodable image") and "0x" not in reason


def test_classify_uses_the_shared_image_names():
    assert classify("PetImages/Cat/._12.jpg") is None  # macOS resource fork
    assert classify("__MACOSX/PetImages/Dog/._3.jpg") is None
    assert classify("PetImages/Dog/desktop.ini") is None
    assert classify("photos/cats/a.png") == "cats"
    assert classify("train/cat.1.jpg.gradcam.png") is None  # an explain heatmap, not a photo


def test_oversized_member_is_skipped_before_it_is_read(real_photos, tmp_path, monkeypatch):
    big = real_photos["dogs"][5][1]
    monkeypatch.setattr(archive_module, "MAX_IMAGE_BYTES", len(big) - 1)
    members = {"train/dog.5.jpg": big, "train/cat.1.jpg": real_photos["cats"][1][1]}
    path = make_zip(tmp_path / "big.zip", members)
    images = ZipImages(path)
    read = []
    images.zip.open = lambda *a, **k: read.append(a) or zipfile.ZipFile.open(images.zip, *a, **k)
    try:
        with pytest.raises(archive_module.SkipMember, match=r"too large for a photo \(0 MiB "
                           r"uncompressed; the limit is 0 MiB\)") as skip:
            images.read("train/dog.5.jpg")
        # refused from the zip's header; only its first bytes are read, to tell whether it
        # keeps its place in a split's cut (an image's header: train's probe takes it)
        assert len(read) == 1 and skip.value.identified
        assert images.read("train/cat.1.jpg") == real_photos["cats"][1][1]
    finally:
        images.close()


def test_zip_bomb_member_is_skipped_with_a_clear_reason(real_photos, tmp_path):
    members = kaggle_members(real_photos, 12)
    members["train/cat.999.jpg"] = b"\x00" * (8 << 20)  # 8 MiB of zeros: ~1000:1
    result = fetch_data(FetchOptions(archive=make_zip(tmp_path / "bomb.zip", members),
                                     data_dir=tmp_path / "data", train_per_class=8,
                                     validate_per_class=4))
    skipped = {s["name"]: s["reason"] for s in result.skipped}
    if "train/cat.999.jpg" in skipped:  # picked by the shuffle: skipped, never decoded
        assert skipped["train/cat.999.jpg"].startswith("compressed ")
        assert "looks like a zip bomb" in skipped["train/cat.999.jpg"]
    with _opened(tmp_path / "bomb.zip") as images:
        with pytest.raises(archive_module.SkipMember, match=r"compressed \d+:1 .*zip bomb"):
            images.read("train/cat.999.jpg")


def test_oversized_file_in_a_folder_is_skipped(real_photos, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    (root / "train").mkdir(parents=True)
    for name, data in kaggle_members(real_photos, 3).items():
        (root / name).write_bytes(data)
    monkeypatch.setattr(archive_module, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(archive_module.SkipMember, match="too large for a photo"):
        FolderImages(root).read("train/cat.0.jpg")


def test_archive_folder_in_both_layouts(real_photos, tmp_path):
    """README: --archive takes a folder (Kaggle train/cat.N.jpg or PetImages/Cat/N.jpg)."""
    kaggle_dir = tmp_path / "kaggle_folder"
    for name, data in kaggle_members(real_photos, 15).items():
        (kaggle_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (kaggle_dir / name).write_bytes(data)
    (kaggle_dir / "train/.DS_Store").write_bytes(b"\x00\x01")
    pet_dir = tmp_path / "PetImages"
    for cls, folder in (("cats", "Cat"), ("dogs", "Dog")):
        (pet_dir / folder).mkdir(parents=True)
        for i, (_, data) in enumerate(real_photos[cls][:15]):
            (pet_dir / folder / f"{i}.jpg").write_bytes(data)
    (pet_dir / "Cat/666.jpg").write_bytes(b"")
    (pet_dir / "Dog/Thumbs.db").write_bytes(b"\x00" * 10)

    for folder, layout in ((kaggle_dir, "kaggle"), (pet_dir, "folders")):
        data = tmp_path / f"data-{layout}"
        result = fetch_data(FetchOptions(archive=folder, data_dir=data, train_per_class=8,
                                         validate_per_class=4))
        assert result.counts == {"train": {"cats": 8, "dogs": 8},
                                 "validate": {"cats": 4, "dogs": 4}}
        manifest = json.loads((data / "manifest.json").read_text())
        assert manifest["source"]["kind"] == "archive"
        assert manifest["source"]["layout"] == layout
        assert manifest["source"]["archive_sha256"].startswith("folder-sha256:")
        # byte-identical copies of the photos, under their own names
        originals = {p.name: p.read_bytes() for p in folder.rglob("*.jpg")
                     if (layout == "kaggle" or p.parent.name == "Dog")}
        for path in (data / "train/dogs").iterdir():
            assert path.read_bytes() == originals[path.name]
        # the empty photo (PetImages only) is skipped and said so; either result passed before
        assert [(s["name"], s["reason"]) for s in result.skipped] == (
            [] if layout == "kaggle" else [("Cat/666.jpg", "zero-byte file")])
        assert not (folder / ".cache").exists()  # the source folder is never written to
        # a rerun with the same folder is a no-op
        assert fetch_data(FetchOptions(archive=folder, data_dir=data, train_per_class=8,
                                       validate_per_class=4)).noop


def test_zip_read_of_a_real_png(tmp_path):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, "PNG")
    path = make_zip(tmp_path / "p.zip", {"cats/x.png": buffer.getvalue()})
    with _opened(path) as images:  # a user's cats/ folder: a class folder like any other
        assert images.candidates() == {"cats": ["cats/x.png"]}
        assert images.layout == "class-folders"
        assert check_image(images.read("cats/x.png")) is None
    path = make_zip(tmp_path / "q.zip", {"PetImages/Cat/x.png": buffer.getvalue()})
    with _opened(path) as images:  # PetImages's own Cat/Dog folders: the cats/dogs layout
        assert images.candidates() == {"cats": ["PetImages/Cat/x.png"], "dogs": []}
        assert images.layout == "folders"


def test_an_image_too_small_for_the_reader_is_skipped_as_train_skips_it():
    """fetch-data must not place what train, predict and serve refuse (under 8 px a side)."""
    import io

    from PIL import Image

    def png(width, height):
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
        return buffer.getvalue()

    assert check_image(png(1, 1)) == "image is 1x1 px; too small to classify (at least 8x8)"
    assert check_image(png(300, 7)) == "image is 300x7 px; too small to classify (at least 8x8)"
    assert check_image(png(8, 8)) is None


def test_utf8_names_of_a_zip_made_on_a_mac_are_read_as_written(real_photos, tmp_path):
    """macOS's Finder stores UTF-8 names (decomposed accents) without the UTF-8 flag; zipfile
    reads them as cp437 ("chats e\u2560\u00fc"). The classes must be the names the user typed."""
    import unicodedata

    names = {"chats été": real_photos["cats"], "chiens à poils": real_photos["dogs"]}
    raw = {cls: unicodedata.normalize("NFD", cls).encode() for cls in names}
    placeholder = {cls: letter * len(raw[cls])  # the same length, plain ASCII
                   for cls, letter in zip(names, (b"x", b"y"), strict=True)}
    path = tmp_path / "mac.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for cls, photos in names.items():
            for name, data in photos[:3]:
                archive.writestr(f"{placeholder[cls].decode()}/{name}", data)
    blob = path.read_bytes()
    for cls in names:  # the names' bytes as the Mac wrote them, flag bit 11 left unset
        blob = blob.replace(placeholder[cls], raw[cls])
    path.write_bytes(blob)
    with zipfile.ZipFile(path) as check:
        assert not any(i.flag_bits & 0x800 for i in check.infolist())
        assert "╠" in check.infolist()[0].filename  # what zipfile alone makes of it
    images = ZipImages(path)
    try:
        found = images.candidates()
        assert sorted(found) == sorted(names)
        first = found["chats été"][0]
        assert images.read(first) == dict(real_photos["cats"])[first.split("/")[-1]]
    finally:
        images.close()


def test_names_that_differ_only_in_unicode_form_are_refused(real_photos, tmp_path):
    """café/ typed on Linux (NFC) and café/ from macOS (NFD) in one zip: the second class's
    photos of the same names replaced the first's, and half the photos vanished from every
    split without a word. Refused in one line naming both; the same name twice (a zip updated
    in place) is still read, as unzip reads it: the last one."""
    import unicodedata

    nfc, nfd = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    members = {f"{nfc}/{i}.jpg": real_photos["cats"][i][1] for i in range(12)}
    members.update({f"{nfd}/{i}.jpg": real_photos["dogs"][i][1] for i in range(12)})
    members.update({f"tea/{i}.jpg": real_photos["dogs"][12 + i][1] for i in range(12)})
    path = make_zip(tmp_path / "accents.zip", members)
    with pytest.raises(TransferError, match="differ only in how their accents are stored") as e:
        fetch_data(FetchOptions(archive=path, data_dir=tmp_path / "data"))
    assert repr(f"{nfc}/0.jpg") in str(e.value) and repr(f"{nfd}/0.jpg") in str(e.value)
    assert not (tmp_path / "data").exists()
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr("cats/a.jpg", b"old")
        archive.writestr("cats/a.jpg", real_photos["cats"][0][1])
    images = ZipImages(twice)
    try:
        assert images.read("cats/a.jpg") == real_photos["cats"][0][1]
    finally:
        images.close()


def test_a_zip_whose_names_are_flagged_utf8_but_are_not_is_one_line(real_photos, tmp_path):
    """A member named b"caf\\xff\\xfe.jpg" with the UTF-8 flag set: zipfile's
    UnicodeDecodeError came out as a traceback; it is now the one line of an unreadable zip."""
    path = tmp_path / "bad-utf8.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in real_photos["cats"][:3]:
            archive.writestr(f"train/{name}", data)
        archive.writestr("train/cafxx.jpg", real_photos["cats"][3][1])
    # the name's bytes made invalid UTF-8, and the flag bit 11 (UTF-8) set for that member
    # in both its local and its central header
    flagged = bytearray(path.read_bytes().replace(b"cafxx", b"caf\xff\xfe"))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := flagged.find(signature, start)) != -1:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if b"caf\xff\xfe" in flagged[name_at:name_at + 20]:
                flagged[start + offset + 1] |= 0x08  # bit 11 of the little-endian flags
            start += 4
    path.write_bytes(bytes(flagged))
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive=path, data_dir=tmp_path / "data"))
    assert str(info.value) == (f"{path} is not a readable zip archive (a member's name is "
                               "marked UTF-8 but is not; make the zip again)")
    assert not (tmp_path / "data").exists()


def test_a_member_name_twice_is_said_and_the_last_is_used(real_photos, tmp_path):
    """A zip holding train/cat.3.jpg twice (two different photos, a zip appended to): one was
    dropped without a word. The last is used, as unzip keeps it, and fetch-data says so."""
    path = tmp_path / "twice.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for cls in ("cats", "dogs"):
            for name, data in real_photos[cls][:12]:
                archive.writestr(f"train/{name}", data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("train/cat.3.jpg", real_photos["cats"][20][1])
    recorder = Recorder()
    result = fetch_data(FetchOptions(archive=path, data_dir=tmp_path / "data",
                                     train_per_class=8, validate_per_class=4), reporter=recorder)
    assert f"{path} holds 1 member name twice (train/cat.3.jpg): the last member of each " \
           "name is used, as unzip keeps it" in recorder.warnings, recorder.warnings
    placed = list((tmp_path / "data").rglob("cat.3.jpg"))
    assert result.counts["train"]["cats"] + result.counts["validate"]["cats"] == 12
    assert len(placed) == 1 and placed[0].read_bytes() == real_photos["cats"][20][1]


def test_a_zip_member_named_heic_or_raw_is_told_by_its_first_bytes(real_photos, tmp_path,
                                                                   monkeypatch):
    """A JPEG renamed .heic in a zip is a photo, as train, evaluate and predict take it once
    unzipped; a real HEIC and a raw file (a TIFF named .nef) are said as unread. Telling them
    apart reads a member's header, not the member: a few KiB of a 4 MiB HEIC or raw file."""
    import random

    blob = random.Random(0).randbytes(4 << 20)
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + blob
    raw = b"II*\0" + blob
    jpeg = real_photos["cats"][3][1]
    members = {"cats/IMG_1.heic": jpeg, "cats/IMG_2.HEIC": heic, "cats/DSC_3.nef": raw,
               "cats/cat.jpg": real_photos["cats"][4][1], "dogs/dog.jpg":
               real_photos["dogs"][3][1], "dogs/IMG_4.heic": b"not a photo",
               "dogs/dog2.jpg": real_photos["dogs"][4][1]}
    path = tmp_path / "phone.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    served: dict[str, int] = {}
    real_read = zipfile.ZipExtFile.read

    def counted(self, n=-1):
        data = real_read(self, n)
        served[self.name] = served.get(self.name, 0) + len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    with _opened(path) as images:
        found = images.candidates()
        unread = sorted(images.unread())
    assert found == {"cats": ["cats/IMG_1.heic", "cats/cat.jpg"],
                     "dogs": ["dogs/dog.jpg", "dogs/dog2.jpg"]}
    assert unread == ["cats/DSC_3.nef", "cats/IMG_2.HEIC", "dogs/IMG_4.heic"]
    assert served["cats/IMG_2.HEIC"] < 64 << 10 and served["cats/DSC_3.nef"] < 64 << 10
    assert "dogs/dog.jpg" not in served  # a name that is a photo's: not opened to list it
    result = fetch_data(FetchOptions(archive=path, data_dir=tmp_path / "data",
                                     train_per_class=1, validate_per_class=1))
    placed = list((tmp_path / "data").glob("*/cats/IMG_1.heic"))
    assert result.skipped == [] and [p.read_bytes() for p in placed] == [jpeg]
