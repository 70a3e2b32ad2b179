"""fetch-data on a user's own photos: any folder (or zip of one) of class folders.

Genuine photos: ``data/flowers`` (5 classes x 40 JPEGs, one folder of class folders). Each test
works in its own tmp folder; the source folder is never written to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    flushed_before,
    flushes,
    kaggle_members,
    make_zip,
    missing,
    require_asset,
    text_as_jpg,
    truncated,
)
from typer.testing import CliRunner

from transfer import archive as archive_module
from transfer import datasets
from transfer.archive import ALLOWED_FORMATS, sort_into_classes
from transfer.datasets import FetchOptions, fetch_data, fraction_sizes
from transfer.errors import TransferError
from transfer.progress import Reporter
from transfer.settings import TrainSettings

FLOWERS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
TWO = ("daisy", "roses")

if "validation_split" in {f.name for f in dataclasses.fields(FetchOptions)}:
    SplitOptions = FetchOptions
else:  # until settings.FetchOptions has the fields: the same options, with the fractions

    @dataclasses.dataclass
    class SplitOptions(FetchOptions):
        validation_split: float | None = None
        test_split: float | None = None


class Warnings(Reporter):
    def __init__(self):
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


@pytest.fixture(scope="module")
def flowers() -> Path:
    return require_asset("data/flowers")


def copy_classes(flowers: Path, root: Path, per_class: int | None = None,
                 classes=FLOWERS) -> Path:
    """``root/<class>/`` with the first ``per_class`` photos of each class (all: None)."""
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for photo in sorted((flowers / cls).iterdir())[:per_class]:
            shutil.copyfile(photo, root / cls / photo.name)
    return root


def zip_of(folder: Path, path: Path, prefix: str = "", extra: dict | None = None) -> Path:
    """A zip of ``folder``'s files under ``prefix``, with folder entries, plus ``extra``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(folder.rglob("*")):
            name = prefix + item.relative_to(folder).as_posix()
            if item.is_dir():
                archive.writestr(name + "/", b"")
            else:
                archive.write(item, name)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def listing(data: Path) -> dict[str, list[str]]:
    return {f"{split}/{cls.name}": sorted(p.name for p in cls.iterdir())
            for split in ("train", "validate", "test") if (data / split).is_dir()
            for cls in sorted((data / split).iterdir())}


def sizes(data: Path) -> dict[str, int]:
    return {key: len(names) for key, names in listing(data).items()}


def manifest_of(data: Path) -> dict:
    return json.loads((data / "manifest.json").read_text())


def per_class(train: int, validate: int, test: int = 0, classes=FLOWERS) -> dict[str, int]:
    counts = {f"train/{c}": train for c in classes}
    counts.update({f"validate/{c}": validate for c in classes})
    if test:
        counts.update({f"test/{c}": test for c in classes})
    return counts


def no_image_read(monkeypatch) -> list:
    """Record every image decoded: refusals must come before any."""
    calls = []
    real = datasets.check_image
    monkeypatch.setattr(datasets, "check_image", lambda blob: calls.append(1) or real(blob))
    return calls


# --------------------------------------------------------------------------- the folder


def test_folder_of_class_folders_is_split_by_fraction(flowers, tmp_path):
    data = tmp_path / "data"
    result = fetch_data(FetchOptions(archive=flowers, data_dir=data))
    assert sizes(data) == per_class(32, 8)  # 0.2 of 40 to validate, the rest to train
    files = listing(data)
    for cls in FLOWERS:  # disjoint, every photo used once, byte-identical copies
        train, val = set(files[f"train/{cls}"]), set(files[f"validate/{cls}"])
        assert not train & val
        assert train | val == {p.name for p in (flowers / cls).iterdir()}
        name = files[f"validate/{cls}"][0]
        assert (data / "validate" / cls / name).read_bytes() == (flowers / cls / name).read_bytes()
    manifest = manifest_of(data)
    assert manifest["layout"] == manifest["source"]["layout"] == "class-folders"
    assert manifest["classes"] == list(FLOWERS)
    assert manifest["split"] == {"mode": "fractions", "validation": 0.2, "test": 0.0,
                                 "order": "name-hash"}  # datasets.stable_order
    assert manifest["usable"] == dict.fromkeys(FLOWERS, 40)
    assert manifest["counts"] == {"train": dict.fromkeys(FLOWERS, 32),
                                  "validate": dict.fromkeys(FLOWERS, 8)}
    assert manifest["skipped"] == [] and "renamed" not in manifest
    assert manifest["source"]["archive_sha256"].startswith("folder-sha256:")
    assert result.counts == manifest["counts"] and not result.noop
    assert list(result.counts["train"]) == list(FLOWERS)  # one column per class, sorted
    assert not (flowers / ".cache").exists()  # the source folder is never written to


def test_a_competition_named_with_an_archive_is_said_unused(flowers, tmp_path):
    """`fetch-data --archive ~/flowers --competition my-comp` split the folder without a word
    about the competition it was told: --competition names a Kaggle download only."""
    from conftest import Recorder

    said = {}
    for name, competition in (("named", "my-comp"), ("default", "dogs-vs-cats")):
        reporter = Recorder()
        fetch_data(FetchOptions(archive=flowers, data_dir=tmp_path / name,
                                competition=competition, train_per_class=2,
                                validate_per_class=1), reporter=reporter)
        said[name] = [w for w in reporter.warnings if "--competition" in w]
    assert said == {"named": ["--competition my-comp unused: it names a Kaggle competition, "
                              "and the photos come from --archive"], "default": []}


def test_the_augmentation_preview_train_left_in_the_folder_is_no_photo(flowers, tmp_path):
    """`train --preview-augment` writes augment-preview.png beside the class folders; a later
    fetch-data of that folder (and training on it) leaves it out, as it does heatmaps."""
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=FLOWERS[:2])
    shutil.copy(next((folder / FLOWERS[0]).iterdir()), folder / "augment-preview.png")
    fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    assert sizes(tmp_path / "data") == per_class(8, 2, classes=FLOWERS[:2])
    with pytest.raises(TransferError, match="at the top, in no class folder"):  # a photo is
        shutil.copy(next((folder / FLOWERS[0]).iterdir()), folder / "loose.jpg")
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "again"))


@pytest.mark.parametrize("prefix", ["", "flower_photos/", "photos/2024/spring/"],
                         ids=["flat", "top-folder", "deep"])
def test_zip_of_class_folders_at_any_depth_gives_the_folder_split(flowers, tmp_path, prefix):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12)
    archive = zip_of(folder, tmp_path / "flowers.zip", prefix, extra={
        f"{prefix}LICENSE.txt": b"CC-BY 2.0",  # not an image: ignored
        f"__MACOSX/{prefix}daisy/._x.jpg": b"\x00\x05\x16\x07",  # macOS resource forks
    })
    from_zip, from_folder = tmp_path / "zip-data", tmp_path / "folder-data"
    fetch_data(FetchOptions(archive=archive, data_dir=from_zip))
    fetch_data(FetchOptions(archive=folder, data_dir=from_folder))
    assert sizes(from_zip) == per_class(10, 2)  # round(12 x 0.2) = 2
    assert listing(from_zip) == listing(from_folder)  # same photos, same seed: same split
    manifest = manifest_of(from_zip)
    assert manifest["layout"] == "class-folders" and manifest["classes"] == list(FLOWERS)
    assert manifest["skipped"] == []
    assert fetch_data(FetchOptions(archive=archive, data_dir=from_zip)).noop


def test_split_is_deterministic_for_a_seed_rerun_noop_force_replaces(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=15)
    data = tmp_path / "data"
    fetch_data(FetchOptions(archive=folder, data_dir=data))
    first = listing(data)
    stamp = (data / "manifest.json").stat().st_mtime_ns
    assert fetch_data(FetchOptions(archive=folder, data_dir=data)).noop
    assert (data / "manifest.json").stat().st_mtime_ns == stamp

    fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "again"))
    assert listing(tmp_path / "again") == first  # same seed: same split

    with pytest.raises(TransferError, match="other arguments.*--force"):
        fetch_data(FetchOptions(archive=folder, data_dir=data, seed=7))
    assert listing(data) == first
    shutil.copyfile(sorted((flowers / "roses").iterdir())[30], folder / "roses/new.jpg")
    with pytest.raises(TransferError, match=r"was made from other photos \(.*flowers changed "
                       r"since; a rerun would split the photos it holds now\); use --force"):
        fetch_data(FetchOptions(archive=folder, data_dir=data))
    (folder / "roses/new.jpg").unlink()  # the same photos again: the split is theirs
    fetch_data(FetchOptions(archive=folder, data_dir=data, seed=7, force=True))
    assert listing(data) != first and sizes(data) == per_class(12, 3)
    assert manifest_of(data)["seed"] == 7

    # a fraction split cuts each class in the order of sha256(f"{seed}:{class}:{file name}")
    order = sorted((p.name for p in (folder / "roses").iterdir()),
                   key=lambda name: hashlib.sha256(f"7:roses:{name}".encode()).hexdigest())
    assert listing(data)["validate/roses"] == sorted(order[:3])


def test_fractions_with_a_test_split_and_unbalanced_classes(flowers, tmp_path):
    folder = tmp_path / "flowers"
    for cls, n in (("daisy", 40), ("roses", 20), ("tulips", 13)):
        copy_classes(flowers, folder, per_class=n, classes=[cls])
    data = tmp_path / "data"
    fetch_data(SplitOptions(archive=folder, data_dir=data, validation_split=0.25,
                            test_split=0.125))
    # each class by itself: validate round(n/4), test round(n/8), the rest train
    assert sizes(data) == {"train/daisy": 25, "train/roses": 12, "train/tulips": 8,
                           "validate/daisy": 10, "validate/roses": 5, "validate/tulips": 3,
                           "test/daisy": 5, "test/roses": 3, "test/tulips": 2}
    manifest = manifest_of(data)
    assert manifest["split"] == {"mode": "fractions", "validation": 0.25, "test": 0.125,
                                 "order": "name-hash"}
    assert manifest["request"]["validation_split"] == 0.25
    assert manifest["usable"] == {"daisy": 40, "roses": 20, "tulips": 13}


def test_fraction_sizes():
    assert fraction_sizes(40, 0.2) == {"validate": 8, "test": 0, "train": 32}
    assert fraction_sizes(45, 0.1, 0.1) == {"validate": 5, "test": 5, "train": 35}  # half up
    assert fraction_sizes(3, 0.2) == {"validate": 1, "test": 0, "train": 2}  # at least 1
    assert fraction_sizes(2, 0.2) == {"validate": 1, "test": 0, "train": 1}
    assert fraction_sizes(3, 0.5, 0.4) == {"validate": 1, "test": 1, "train": 1}
    assert fraction_sizes(1, 0.2) is None and fraction_sizes(2, 0.2, 0.1) is None


def test_counts_given_for_class_folders_take_counts(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=20, classes=FLOWERS[:3])
    data = tmp_path / "data"
    result = fetch_data(FetchOptions(archive=folder, data_dir=data, train_per_class=10,
                                     validate_per_class=4, test_per_class=2))
    assert sizes(data) == per_class(10, 4, 2, classes=FLOWERS[:3])
    assert manifest_of(data)["split"] == {"mode": "per_class", "train": 10, "validate": 4,
                                          "test": 2}
    assert list(result.counts) == ["train", "validate", "test"]
    with pytest.raises(TransferError, match=r"daisy: 20 usable.*asked for 30 per class"):
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "more",
                                train_per_class=20, validate_per_class=10))
    with pytest.raises(TransferError, match="not both"):
        fetch_data(SplitOptions(archive=folder, data_dir=tmp_path / "both",
                                train_per_class=10, validation_split=0.3))
    # one count alone: the cats/dogs tour's 1000 / 400 are no size for these classes
    for alone in ({"test_per_class": 5}, {"train_per_class": 10}, {"validate_per_class": 4}):
        with pytest.raises(TransferError, match="give both --train-per-class and "
                                                "--validate-per-class"):
            fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "alone", **alone))
        assert not (tmp_path / "alone").exists()
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(TransferError, match=r"--validation-split must be a fraction in "
                           r"\(0, 1\)"):
            fetch_data(SplitOptions(archive=folder, data_dir=tmp_path / "bad",
                                    validation_split=bad))
    with pytest.raises(TransferError, match="must stay below 1"):
        fetch_data(SplitOptions(archive=folder, data_dir=tmp_path / "bad",
                                validation_split=0.5, test_split=0.5))
    assert not (tmp_path / "more").exists() and not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- odd files


def test_hidden_and_system_files_are_ignored_silently(flowers, tmp_path):
    clean = copy_classes(flowers, tmp_path / "clean", per_class=10, classes=TWO)
    messy = copy_classes(flowers, tmp_path / "messy", per_class=10, classes=TWO)
    junk = {"daisy/.DS_Store": b"\x00\x00\x00\x01Bud1", "daisy/Thumbs.db": b"\xd0\xcf" * 50,
            "roses/desktop.ini": b"[.ShellClassInfo]", "roses/._x.jpg": b"\x00\x05\x16\x07",
            ".DS_Store": b"\x00", "daisy/notes.txt": b"my notes",
            ".thumbnails/roses/a.jpg": text_as_jpg(),  # a hidden folder: never looked into
            "__MACOSX/daisy/._y.jpg": b"\x00\x05\x16\x07"}
    for name, blob in junk.items():
        (messy / name).parent.mkdir(parents=True, exist_ok=True)
        (messy / name).write_bytes(blob)
    fetch_data(FetchOptions(archive=clean, data_dir=tmp_path / "a"))
    result = fetch_data(FetchOptions(archive=messy, data_dir=tmp_path / "b"))
    assert result.skipped == []  # ignored, not listed as skipped
    assert listing(tmp_path / "b") == listing(tmp_path / "a")
    assert manifest_of(tmp_path / "b")["classes"] == ["daisy", "roses"]


def test_corrupt_images_are_skipped_and_listed(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    daisy = sorted((flowers / "daisy").iterdir())
    (folder / "daisy/truncated.jpg").write_bytes(truncated(daisy[20].read_bytes()))
    (folder / "daisy/text.jpg").write_bytes(text_as_jpg())
    (folder / "roses/empty.png").write_bytes(b"")
    data = tmp_path / "data"
    result = fetch_data(FetchOptions(archive=folder, data_dir=data))
    reasons = {s["name"]: (s["class"], s["reason"]) for s in result.skipped}
    assert set(reasons) == {"daisy/truncated.jpg", "daisy/text.jpg", "roses/empty.png"}
    assert reasons["roses/empty.png"] == ("roses", "zero-byte file")
    assert reasons["daisy/text.jpg"][1] == ("not a decodable image (not a format Pillow "
                                            "recognises)")
    assert reasons["daisy/truncated.jpg"][1].startswith("not a decodable image")
    assert manifest_of(data)["skipped"] == result.skipped
    assert manifest_of(data)["usable"] == {"daisy": 10, "roses": 10}
    # the truncated photo kept its place in daisy's cut (11: 2 to validate, the first its),
    # as in train's own split of the folder; the text file did not (roses: 10, 2 to validate)
    assert sizes(data) == {"train/daisy": 9, "validate/daisy": 1, "train/roses": 8,
                           "validate/roses": 2}


def test_webp_and_tiff_photos_are_placed_like_any_photo(flowers, tmp_path):
    """Training reads every image through the one Pillow reader, so a split may hold WebP and
    TIFF photos (and PPM/PGM); a format outside that set is still skipped with a reason."""
    from PIL import Image

    folder = copy_classes(flowers, tmp_path / "flowers", per_class=6, classes=FLOWERS[:2])
    with Image.open(sorted((flowers / "daisy").iterdir())[30]) as photo:
        photo.save(folder / "daisy/photo.webp", "WEBP")
        photo.save(folder / "daisy/photo.tif", "TIFF")
        photo.save(folder / "daisy/photo.ppm", "PPM")
        photo.save(folder / "daisy/icon.png", "ICO")  # a Windows icon named .png
    assert {"WEBP", "TIFF", "PPM"} <= ALLOWED_FORMATS
    result = fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    reasons = {s["name"]: s["reason"] for s in result.skipped}
    placed = {p.name for p in (tmp_path / "data").rglob("photo.*")}
    assert not {"daisy/photo.webp", "daisy/photo.tif", "daisy/photo.ppm"} & set(reasons)
    assert placed == {"photo.webp", "photo.tif", "photo.ppm"}
    assert reasons["daisy/icon.png"] == "format ICO is not readable by the training pipelines yet"


def test_avif_photos_are_placed_as_train_reads_them(flowers, tmp_path):
    """fetch-data skipped genuine AVIF photos ("format AVIF is not readable by the training
    pipelines yet") while train, whose Pillow reads AVIF (.avif an image suffix), split and
    read them: the two splits of one folder differed. They are placed now, from a folder and
    from a zip of it, on the sides of the cut train's own split puts them."""
    from PIL import Image, features

    from transfer import pipelines

    if not features.check("avif"):  # Pillow's own word, not the code's under test
        missing("this Pillow was built without AVIF (the PyPI wheels have it)")
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=8, classes=TWO)
    for photo in sorted((flowers / "roses").iterdir())[20:24]:
        with Image.open(photo) as image:
            image.save(folder / "roses" / f"{photo.stem}.avif", quality=80)
    train, validate = pipelines.split_in_memory(folder, list(TWO), 0.25, 3)
    assert sum(s.path.suffix == ".avif" for s in train + validate) == 4
    for source in (folder, zip_of(folder, tmp_path / "flowers.zip")):
        data = tmp_path / f"data-{source.suffix or 'folder'}"
        result = fetch_data(SplitOptions(archive=source, data_dir=data, validation_split=0.25,
                                         seed=3))
        assert result.skipped == []
        placed = sorted(data.rglob("*.avif"))
        assert len(placed) == 4 and all(Image.open(p).format == "AVIF" for p in placed)
        for split, samples in (("train", train), ("validate", validate)):
            by_train = sorted(f"{TWO[s.label]}/{s.path.name}" for s in samples)
            by_fetch = sorted(f"{key.split('/')[1]}/{name}" for key, names in
                              listing(data).items() if key.startswith(f"{split}/")
                              for name in names)
            assert by_train == by_fetch


def test_sub_folders_of_a_class_folder_belong_to_it_as_in_train(flowers, tmp_path):
    """daisy/2023/1.jpg is a daisy (not a class "2023"), in fetch-data as in train: the same
    folder and seed give the same split."""
    from transfer.pipelines import split_in_memory

    folder = tmp_path / "photos"
    daisy = sorted((flowers / "daisy").iterdir())
    roses = sorted((flowers / "roses").iterdir())
    for cls, photos in (("daisy", daisy), ("roses", roses)):
        for year, chosen in (("2023", photos[:5]), ("2024", photos[5:10])):
            (folder / cls / year).mkdir(parents=True)
            for photo in chosen:
                shutil.copyfile(photo, folder / cls / year / photo.name)
    shutil.copyfile(daisy[11], folder / "daisy/2024" / daisy[0].name)  # same name, other photo
    shutil.copyfile(roses[12], folder / "roses" / roses[12].name)  # and one at the class's top
    data = tmp_path / "data"
    result = fetch_data(FetchOptions(archive=folder, data_dir=data))
    manifest = manifest_of(data)
    assert manifest["classes"] == ["daisy", "roses"]
    assert manifest["usable"] == {"daisy": 11, "roses": 11}
    assert sum(result.counts[s]["daisy"] for s in result.counts) == 11
    stem = daisy[0].stem
    (renamed, source), = manifest["renamed"].items()  # one kept under a new name
    assert renamed.endswith(f"/daisy/{stem}-2.jpg") and source.startswith("daisy/")
    assert (data / renamed).read_bytes() == (folder / source).read_bytes()
    train, validate = split_in_memory(folder, ["daisy", "roses"], 0.2, 42)
    for split, samples in (("train", train), ("validate", validate)):
        by_train = sorted((["daisy", "roses"][s.label], s.path.read_bytes()) for s in samples)
        by_fetch = sorted((cls.name, f.read_bytes()) for cls in (data / split).iterdir()
                          for f in cls.iterdir())
        assert by_train == by_fetch  # the same photos on the same side


def test_split_folders_of_a_download_are_merged_by_class(flowers, tmp_path):
    """cats_and_dogs_filtered-style downloads: train/ and validation/ hold the class folders."""
    daisy = sorted((flowers / "daisy").iterdir())
    roses = sorted((flowers / "roses").iterdir())
    members = {f"download/{split}/{cls}/{p.name}": p.read_bytes()
               for split, part in (("train", slice(0, 8)), ("validation", slice(8, 12)))
               for cls, photos in (("daisy", daisy), ("roses", roses)) for p in photos[part]}
    archive = make_zip(tmp_path / "download.zip", members)
    data = tmp_path / "data"
    fetch_data(FetchOptions(archive=archive, data_dir=data))
    manifest = manifest_of(data)
    assert manifest["classes"] == ["daisy", "roses"]
    assert manifest["usable"] == {"daisy": 12, "roses": 12}
    with pytest.raises(TransferError, match=r"train/ holds images in no class folder"):
        unlabelled = dict(members, **{"download/train/loose.jpg": daisy[20].read_bytes()})
        fetch_data(FetchOptions(archive=make_zip(tmp_path / "loose.zip", unlabelled),
                                data_dir=tmp_path / "loose"))


def test_kaggle_names_sorted_into_folders_take_the_folders_class(kaggle_zip, tmp_path):
    """A student moved dogs the model called cats (suspects.csv) into cats/: the folder, not
    the dog.N name, is the label; so are black/ and white/ folders of cat.N photos."""
    with zipfile.ZipFile(kaggle_zip) as source:
        def photo(name):
            return source.read(f"train/{name}")

        members = {f"pets/cats/cat.{i}.jpg": photo(f"cat.{i}.jpg") for i in range(10)}
        members.update({f"pets/dogs/dog.{i}.jpg": photo(f"dog.{i}.jpg") for i in range(3, 13)})
        members.update({f"pets/cats/dog.{i}.jpg": photo(f"dog.{i}.jpg") for i in range(3)})
        two_cats = {f"bw/{c}/cat.{i}.jpg": photo(f"cat.{i}.jpg")
                    for c, r in (("black", range(6)), ("white", range(6, 12))) for i in r}
    for name, content in (("pets", members), ("bw", two_cats)):
        folder = tmp_path / name
        for member, data in content.items():
            (tmp_path / member).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / member).write_bytes(data)
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / f"{name}-data"))
    pets = listing(tmp_path / "pets-data")
    assert manifest_of(tmp_path / "pets-data")["usable"] == {"cats": 13, "dogs": 10}
    assert {f"dog.{i}.jpg" for i in range(3)} <= set(pets["train/cats"] + pets["validate/cats"])
    assert manifest_of(tmp_path / "bw-data")["classes"] == ["black", "white"]


# --------------------------------------------------------------------------- refused before work


def test_a_single_class_is_refused_before_any_work(flowers, tmp_path, monkeypatch):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=["daisy"])
    decoded = no_image_read(monkeypatch)
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    assert str(info.value) == (
        f"only one class in {folder} (daisy, 12 images); a classifier needs at least two: one "
        "folder per class, e.g. daisy/1.jpg and roses/2.jpg")
    assert decoded == [] and not (tmp_path / "data").exists()


def test_a_models_folder_given_as_the_photos_is_refused(trained_bundle, tmp_path, monkeypatch):
    """`fetch-data --archive models/` split each bundle into a "class" of its pictures
    (curves.png, confusion.png ...), as train did with such a --data-dir before it refused it.
    It is one line now, before any work; a zip of it too."""
    import shutil

    models = tmp_path / "models"
    for name in ("mobilenet-1", "mobilenet-2"):
        shutil.copytree(trained_bundle.bundle, models / name)
    decoded = no_image_read(monkeypatch)
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive=models, data_dir=tmp_path / "data"))
    assert str(info.value) == (
        f"{models}: mobilenet-1, mobilenet-2 are model bundles (what transfer train writes), "
        "not class folders of photos; give --archive the folder of class folders (or move them "
        "out of it)")
    zipped = shutil.make_archive(str(tmp_path / "models"), "zip", tmp_path, "models")
    with pytest.raises(TransferError, match="are model bundles"):
        fetch_data(FetchOptions(archive=Path(zipped), data_dir=tmp_path / "data"))
    # one bundle, or a comparison's folder (compare.png at its top): "images at the top, in
    # no class folder (curves.png)" came first
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive=models / "mobilenet-1", data_dir=tmp_path / "data"))
    assert str(info.value) == (f"{models / 'mobilenet-1'} is a model bundle (what transfer "
                               "train writes), not a folder of class folders of photos; give "
                               "--archive the folder of class folders")
    (models / "compare.png").write_bytes((models / "mobilenet-1" / "curves.png").read_bytes())
    with pytest.raises(TransferError, match="mobilenet-1, mobilenet-2 are model bundles"):
        fetch_data(FetchOptions(archive=models, data_dir=tmp_path / "data"))
    shutil.rmtree(models / "mobilenet-2")
    with pytest.raises(TransferError, match="mobilenet-1 is a model bundle .*, not a class "
                                            "folder of photos;"):
        fetch_data(FetchOptions(archive=models, data_dir=tmp_path / "data"))
    assert decoded == [] and not (tmp_path / "data").exists()


def test_an_empty_class_folder_is_refused_before_any_work(flowers, tmp_path, monkeypatch):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=FLOWERS[:3])
    (folder / "tulips").mkdir()
    (folder / "tulips/.DS_Store").write_bytes(b"\x00")  # hidden files do not count
    (folder / "tulips/notes.txt").write_text("to do: add tulips")
    decoded = no_image_read(monkeypatch)
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    assert str(info.value) == (f"{folder}: the class folder tulips holds no images; every class "
                               "needs images: add some, or remove the folder")
    # the same in a zip (its folder entry is all there is of tulips/)
    archive = zip_of(folder, tmp_path / "f.zip", "flowers/")
    with pytest.raises(TransferError, match="the class folder flowers/tulips holds no images"):
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data"))
    # a zip without folder entries: tulips/ is known from its files, even hidden ones
    bare = make_zip(tmp_path / "bare.zip", {
        "daisy/a.jpg": next((folder / "daisy").iterdir()).read_bytes(),
        "roses/b.jpg": next((folder / "roses").iterdir()).read_bytes(),
        "tulips/Thumbs.db": b"\xd0\xcf", "__MACOSX/irises/._c.jpg": b"\x00"})
    with pytest.raises(TransferError, match=r"bare\.zip: the class folder tulips holds no"):
        fetch_data(FetchOptions(archive=bare, data_dir=tmp_path / "data"))
    assert decoded == [] and not (tmp_path / "data").exists()


def test_a_class_under_10_images_is_warned(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=20, classes=FLOWERS[:2])
    copy_classes(flowers, folder, per_class=6, classes=["tulips"])
    reporter = Warnings()
    fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"), reporter=reporter)
    assert reporter.warnings == [
        "class tulips has only 6 usable images (fewer than 10): too few to learn it well or "
        "to measure it; add photos if you can"]
    assert sizes(tmp_path / "data")["validate/tulips"] == 1  # round(6 x 0.2)


def test_a_class_left_with_one_usable_image_stops_with_one_line(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=FLOWERS[:2])
    copy_classes(flowers, folder, per_class=1, classes=["tulips"])
    (folder / "tulips/a.jpg").write_bytes(text_as_jpg())
    (folder / "tulips/b.jpg").write_bytes(text_as_jpg())
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    assert str(info.value) == (
        "too few usable images to split (tulips: 1 usable of 3 (2 skipped: not a decodable "
        "image (not a format Pillow recognises))); each class needs at least 2 (1 train + 1 "
        "validate): add photos, or remove the class folder")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("members, message", [
    ({"train/cat.1.jpg": 0, "train/dog.1.jpg": 1, "flowers/daisy/a.jpg": 2,
      "flowers/roses/b.jpg": 3}, r"mixes layouts: train/ holds Kaggle's cat\.N and dog\.N "
     r"photos, beside class folders \(daisy, roses\); give fetch-data one layout"),
    ({"a.jpg": 0, "daisy/b.jpg": 1, "roses/c.jpg": 2},
     r"has images at the top, in no class folder \(a\.jpg\): put each class's images in a "
     r"folder named after the class"),
    ({"photos/x.jpg": 0, "photos/daisy/b.jpg": 1, "photos/roses/c.jpg": 2},
     r"photos/ holds images and also the class folder photos/daisy/"),
    ({"train/Daisy/x.jpg": 0, "validation/daisy/y.jpg": 1, "validation/roses/z.jpg": 2},
     r"the class folders Daisy and daisy differ only in case"),
], ids=["kaggle-and-class-folders", "images-at-top", "images-beside-class-folders",
        "case-clash"])
def test_unclear_layouts_are_refused_before_any_work(flowers, tmp_path, monkeypatch, members,
                                                     message):
    photos = sorted((flowers / "daisy").iterdir())
    archive = make_zip(tmp_path / "mixed.zip", {name: photos[i].read_bytes()
                                                for name, i in members.items()})
    decoded = no_image_read(monkeypatch)
    with pytest.raises(TransferError, match=message):
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data"))
    assert decoded == [] and not (tmp_path / "data").exists()


def test_data_dir_inside_the_photo_folder_is_refused(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=3, classes=FLOWERS[:2])
    with pytest.raises(TransferError, match="inside --archive"):
        fetch_data(FetchOptions(archive=folder, data_dir=folder / "data"))
    assert not (folder / "data").exists()


# --------------------------------------------------------------------------- cats and dogs


def test_cats_and_dogs_layouts_keep_the_per_class_split(real_photos, tmp_path):
    """The tour's layouts: counts per class, each class shuffled by Random(f"{seed}:{cls}"),
    the first placed go to train, then validate (the split fetch-data always made)."""
    members = kaggle_members(real_photos, 30)
    layouts = {
        "kaggle": make_zip(tmp_path / "train.zip", members),
        "folders": make_zip(tmp_path / "pets.zip", {
            f"PetImages/{'Cat' if name.startswith('train/cat') else 'Dog'}/"
            f"{name.split('.')[1]}.jpg": blob for name, blob in members.items()}),
    }
    for layout, archive in layouts.items():
        data = tmp_path / layout
        result = fetch_data(FetchOptions(archive=archive, data_dir=data, train_per_class=10,
                                         validate_per_class=5, seed=3))
        manifest = manifest_of(data)
        assert manifest["layout"] == layout and manifest["classes"] == ["cats", "dogs"]
        assert manifest["split"] == {"mode": "per_class", "train": 10, "validate": 5}
        assert list(result.counts["train"]) == ["cats", "dogs"]
        for cls in ("cats", "dogs"):
            order = sorted(n for n in archive_names(archive) if cls[:-1] in n.lower()
                           if n.endswith(".jpg"))
            random.Random(f"3:{cls}").shuffle(order)
            names = [n.rsplit("/", 1)[1] for n in order]
            assert listing(data)[f"train/{cls}"] == sorted(names[:10])
            assert listing(data)[f"validate/{cls}"] == sorted(names[10:15])


def archive_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def test_kaggle_folder_beside_test1_keeps_working(real_photos, tmp_path):
    """The competition's train/ and test1/ folders unpacked side by side: test1/ (unlabelled)
    is ignored, as it always was."""
    files = dict(kaggle_members(real_photos, 12))
    files.update({f"test1/{i}.jpg": real_photos["cats"][40 + i][1] for i in range(3)})
    layout, found = sort_into_classes(files)
    assert layout == "kaggle" and list(found) == ["cats", "dogs"]
    assert len(found["cats"]) == len(found["dogs"]) == 12
    # which photos: the names say the class, test1/ is in none (the counts above passed with
    # cats and dogs swapped)
    for cls in ("cats", "dogs"):
        assert sorted(found[cls]) == sorted(n for n in kaggle_members(real_photos, 12)
                                            if n.startswith(f"train/{cls[:-1]}."))


def test_sort_into_classes_reads_zip_names_with_backslashes():
    layout, found = sort_into_classes(["photos\\daisy\\a.jpg", "photos\\roses\\b.jpg"])
    assert layout == "class-folders"
    assert found == {"daisy": ["photos\\daisy\\a.jpg"], "roses": ["photos\\roses\\b.jpg"]}


def test_allowed_formats_is_one_constant():
    assert archive_module.DECODABLE_FORMATS is ALLOWED_FORMATS
    assert {"JPEG", "PNG"} <= ALLOWED_FORMATS


# --------------------------------------------------------------------------- the CLI


def test_cli_fetch_data_of_a_photo_folder_prints_one_column_per_class(flowers, tmp_path):
    from transfer.cli import app

    data = tmp_path / "data"
    result = CliRunner().invoke(app, ["fetch-data", "--archive", str(flowers),
                                      "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "daisy" in line)
    assert [c for c in FLOWERS if c in header] == list(FLOWERS)
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines()]
    rows = {row[0]: row[1:] for row in cells if row and row[0] in ("train", "validate")}
    assert rows == {"train": ["32"] * 5, "validate": ["8"] * 5}
    assert sizes(data) == per_class(32, 8)
    assert f"manifest: {data / 'manifest.json'}" in result.output
    again = CliRunner().invoke(app, ["fetch-data", "--archive", str(flowers),
                                     "--data-dir", str(data)])
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_cli_prints_class_names_and_paths_as_they_are(flowers, tmp_path):
    """Brackets in a class or folder name are no rich markup: "[old]" vanished from the table,
    a "[/x]" in a message ended in a MarkupError traceback."""
    from transfer.cli import app

    folder = copy_classes(flowers, tmp_path / "photos [2024]", per_class=10, classes=TWO)
    (folder / "roses").rename(folder / "roses [old]")
    (folder / "daisy").rename(folder / "daisy [dim]")
    data = tmp_path / "data [v2]"
    result = CliRunner().invoke(app, ["fetch-data", "--archive", str(folder),
                                      "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "roses [old]" in result.output and "daisy [dim]" in result.output
    assert f"manifest: {data / 'manifest.json'}" in result.output


def test_a_real_zip_written_by_pythons_zipfile_in_memory(flowers, tmp_path):
    """A zip made in memory (no folder entries at all): the same classes and split."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for cls in FLOWERS[:2]:
            for photo in sorted((flowers / cls).iterdir())[:5]:
                archive.writestr(f"my photos/{cls}/{photo.name}", photo.read_bytes())
    path = tmp_path / "mine.zip"
    path.write_bytes(buffer.getvalue())
    fetch_data(FetchOptions(archive=path, data_dir=tmp_path / "data"))
    assert sizes(tmp_path / "data") == per_class(4, 1, classes=FLOWERS[:2])


# --------------------------------------------------------------------------- guarantees


def test_interrupted_fraction_split_keeps_the_previous_split(flowers, tmp_path, monkeypatch):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=8, classes=TWO)
    data = tmp_path / "data"
    fetch_data(FetchOptions(archive=folder, data_dir=data))
    before, manifest_before = listing(data), (data / "manifest.json").read_text()
    for interrupt_at in ("check", "staging"):
        with monkeypatch.context() as patch:
            if interrupt_at == "check":  # Ctrl-C while images are being decoded
                calls = {"n": 0}
                real = datasets.check_image

                def check_then_interrupt(blob, real=real, calls=calls):
                    calls["n"] += 1
                    if calls["n"] == 10:
                        raise KeyboardInterrupt
                    return real(blob)

                patch.setattr(datasets, "check_image", check_then_interrupt)
            else:  # a disk error while staged images move into their split
                real_replace = datasets.os.replace

                def failing_replace(src, dst, real=real_replace):
                    if datasets.STAGING in Path(src).parts:
                        raise OSError(28, "No space left on device")
                    return real(src, dst)

                patch.setattr(datasets.os, "replace", failing_replace)
            with pytest.raises(KeyboardInterrupt if interrupt_at == "check" else OSError):
                fetch_data(FetchOptions(archive=folder, data_dir=data, seed=9, force=True))
        assert listing(data) == before
        assert (data / "manifest.json").read_text() == manifest_before
        assert sorted(p.name for p in data.iterdir()) == ["manifest.json", "train", "validate"]
    assert fetch_data(FetchOptions(archive=folder, data_dir=data)).noop


def test_symbolic_links_are_followed_as_train_follows_them(flowers, tmp_path):
    from transfer.pipelines import class_names, image_files

    folder = copy_classes(flowers, tmp_path / "flowers", per_class=5, classes=TWO)
    outside = copy_classes(flowers, tmp_path / "outside", per_class=6, classes=["tulips"])
    tulip = sorted((outside / "tulips").iterdir())[0]
    (folder / "daisy/link.jpg").symlink_to(tulip)  # a linked photo
    (folder / "tulips").symlink_to(outside / "tulips", target_is_directory=True)  # a class
    (folder / "roses/more").symlink_to(outside / "tulips", target_is_directory=True)
    (outside / "tulips/loop").symlink_to(outside, target_is_directory=True)  # back up: a loop
    (folder / "daisy/broken.jpg").symlink_to(tmp_path / "gone.jpg")  # a photo moved away
    result = fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    assert manifest_of(tmp_path / "data")["classes"] == ["daisy", "roses", "tulips"]
    assert manifest_of(tmp_path / "data")["usable"] == {"daisy": 6, "roses": 11, "tulips": 6}
    # the broken link is said, not dropped silently (it was missing from every count)
    assert [(s["name"], s["reason"]) for s in result.skipped] == [
        ("daisy/broken.jpg", f"a broken link (to {tmp_path / 'gone.jpg'}, which does not "
                             "exist)")]
    assert class_names(folder) == ["daisy", "roses", "tulips"]  # train sees the same
    assert [len(image_files(folder / c)) for c in ("daisy", "roses", "tulips")] == [7, 11, 6]
    from transfer import images, inference

    with pytest.raises(images.ImageError, match=f"^a broken link \\(to {tmp_path / 'gone.jpg'}"):
        images.check_header(folder / "daisy/broken.jpg")  # as train and evaluate skip it
    rows = inference.gather([folder / "daisy"])  # predict on the folder: its row, whose
    assert folder / "daisy/broken.jpg" in [file for _, file, _ in rows]  # reading says why


@pytest.mark.parametrize("where", ["class", "inside"])
def test_a_class_folder_linked_to_a_drive_not_mounted_is_refused_not_left_out(flowers, tmp_path,
                                                                             where):
    """``tulips -> /mnt/usb/tulips`` with the drive not mounted: train, evaluate and
    fetch-data left the class out in silence (a link that leads nowhere is no folder), and a
    model of a class fewer was written, exit 0. A sub-folder so linked inside a class lost its
    photos unsaid. One line naming the link, before any photo is read, as for a folder that
    cannot be listed."""
    from transfer.pipelines import class_names
    from transfer.training import plan

    folder = copy_classes(flowers, tmp_path / "flowers", per_class=6, classes=TWO)
    link = folder / "tulips" if where == "class" else folder / "roses" / "2024"
    link.symlink_to(tmp_path / "usb-not-mounted" / "tulips", target_is_directory=True)
    said = re.escape(f"{link} (a link to {tmp_path / 'usb-not-mounted' / 'tulips'}, which "
                     "leads nowhere: a drive not mounted, a folder moved, or a loop)")
    with pytest.raises(TransferError, match=said):
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    assert not (tmp_path / "data").exists()
    for listing_of_train in (lambda: class_names(folder), lambda: plan(
            TrainSettings(data_dir=folder, models_dir=tmp_path / "models").validated())):
        with pytest.raises(TransferError, match=said):
            listing_of_train()
    # a link named as a photo that leads nowhere is an unreadable photo, said as before
    link.unlink()
    (folder / "roses" / "gone.jpg").symlink_to(tmp_path / "gone.jpg")
    result = fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    assert [row["name"] for row in result.skipped] == ["roses/gone.jpg"]


def test_a_broken_photo_keeps_its_place_in_the_cut_as_in_train(flowers, tmp_path):
    """A truncated JPEG passes train's cheap header probe and keeps its place in train's cut
    (it is skipped when read); a text file named .jpg does not. fetch-data cuts the same way,
    so the two splits of one folder hold the same photos on the same sides."""
    from transfer import pipelines

    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=TWO)
    good = sorted((flowers / "daisy").iterdir())[20].read_bytes()
    for i in range(6):  # 18 in the cut, 12 usable: a cut after the usable ones would differ
        (folder / f"daisy/broken-{i}.jpg").write_bytes(truncated(good))
    (folder / "roses/notes.jpg").write_bytes(text_as_jpg())
    data = tmp_path / "data"
    result = fetch_data(SplitOptions(archive=folder, data_dir=data, validation_split=0.25,
                                     seed=6))  # daisy's 5 validation slots: 1 broken
    assert {s["name"] for s in result.skipped} == {
        *(f"daisy/broken-{i}.jpg" for i in range(6)), "roses/notes.jpg"}
    skipped = pipelines.Skipped()
    pipelines.probe_all(pipelines.samples_of(folder, list(TWO)), skipped)
    train, validate = pipelines.split_in_memory(folder, list(TWO), 0.25, 6, skipped)
    assert sum("broken" not in s.path.name for s in validate) == 4 + 3  # daisy: 4 good ones
    assert len(validate) == 5 + 3  # in its 5 slots of 18; roses: 3 of 12 (notes.jpg is out)
    for split, samples in (("train", train), ("validate", validate)):
        by_train = sorted(f"{TWO[s.label]}/{s.path.name}" for s in samples
                          if "broken" not in s.path.name)  # read and skipped by the run
        by_fetch = sorted(f"{key.split('/')[1]}/{name}" for key, names in listing(data).items()
                          if key.startswith(f"{split}/") for name in names)
        assert by_train == by_fetch


def test_the_same_photo_under_two_names_is_placed_once(flowers, tmp_path):
    """A folder of class folders holding one photo twice (``IMG_1.jpg`` and ``IMG_1 (1).jpg``,
    as a phone's export or a second copy makes them): a cut could put it in train and
    validate, the model validated on a photo it trained on. Placed once, under either split
    mode; in a fraction split the copy keeps its place in the cut, and train's in-memory split
    of the folder leaves it out likewise: the two splits agree photo by photo."""
    from transfer import pipelines

    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=TWO)
    photos = sorted((folder / "daisy").iterdir())
    for i, photo in enumerate(photos[:6]):
        shutil.copyfile(photo, folder / "daisy" / f"{photo.stem} ({i}){photo.suffix}")
    results = []
    for options in (SplitOptions(archive=folder, data_dir=tmp_path / "fractions",
                                 validation_split=0.5, seed=3),
                    FetchOptions(archive=folder, data_dir=tmp_path / "counts",
                                 train_per_class=6, validate_per_class=6, seed=3)):
        result = fetch_data(options)
        results.append(result)
        placed = [path.read_bytes() for path in options.data_dir.rglob("*.jpg")]
        assert len({hashlib.sha256(data).hexdigest() for data in placed}) == len(placed)
        assert len(placed) == 24  # 12 photos of each class, each once
        assert len(result.skipped) == 6
        for row in result.skipped:  # the copy or its original, whichever came first
            assert row["class"] == "daisy" and row["reason"].startswith("the same photo as ")
            twin = row["reason"].removeprefix("the same photo as ")
            assert ((folder / row["name"]).read_bytes() == (folder / twin).read_bytes()
                    and row["name"] != twin)
    # train's own split of the folder leaves the same copies out, in the same places (it
    # trained and validated on one photo), and says them as fetch-data does
    skipped = pipelines.Skipped()
    train, validate = pipelines.split_in_memory(folder, list(TWO), 0.5, 3, skipped)
    assert sorted((Path(item["file"]).relative_to(folder).as_posix(), item["reason"])
                  for item in skipped.as_list()) == sorted(
        (row["name"], row["reason"]) for row in results[0].skipped)  # the fraction split's
    for split, samples in (("train", train), ("validate", validate)):
        by_train = sorted(f"{TWO[s.label]}/{s.path.name}" for s in samples)
        by_fetch = sorted(f"{key.split('/')[1]}/{name}"
                          for key, names in listing(tmp_path / "fractions").items()
                          if key.startswith(f"{split}/") for name in names)
        assert by_train == by_fetch


@pytest.mark.parametrize("one_sync", [False, True], ids=["each-file", "one-sync"])
def test_a_split_is_on_the_disk_before_its_manifest_commits_it(flowers, tmp_path, monkeypatch,
                                                               one_sync):
    """The manifest's rename commits a split: a power cut after it, before the photos' blocks
    reached the disk (ext4 allocates them late), left a committed split of empty photos.
    Every photo and folder is flushed before it, the data folder's entries after: each file
    (a few), or all at once with one sync() (the tour's 2,800: 3.9 s one at a time)."""
    from transfer import files

    folder = copy_classes(flowers, tmp_path / "flowers", per_class=6, classes=TWO)
    data = tmp_path / "data"
    monkeypatch.setattr(files, "SYNC_ALL_ABOVE", 4 if one_sync else 64)
    events = flushes(monkeypatch)
    fetch_data(FetchOptions(archive=folder, data_dir=data))
    placed = [path for path in data.rglob("*") if path.name != "manifest.json"]
    assert len([path for path in placed if path.is_file()]) == 12
    before = flushed_before(events, data / "manifest.json")
    commit = max(i for i, (kind, what) in enumerate(events)
                 if kind == "rename" and what == data / "manifest.json")
    assert ("fsync", data.stat().st_ino) in events[commit:]
    if one_sync:
        assert ("sync", None) in events[:commit]
        assert not {path.stat().st_ino for path in placed} & before  # not one by one
    else:
        assert {path.stat().st_ino for path in placed} <= before
        assert (data / "manifest.json").stat().st_ino in before  # its own blocks


def test_a_photo_too_large_to_copy_keeps_its_place_in_the_cut(flowers, tmp_path, monkeypatch):
    """A scan over fetch-data's size limit for one photo (64 MiB; here lowered to 200 KB; a
    BMP, or a TIFF whose directory is at its end) is
    skipped, but train reads it, and its cheap header probe counts it in the cut: fetch-data
    dropped it from the cut, which moved other photos across the line between train and
    validate. It now keeps its place, and the two splits agree on every other photo."""
    from PIL import Image

    from transfer import pipelines

    monkeypatch.setattr(archive_module, "MAX_IMAGE_BYTES", 200_000)
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=TWO)
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    for i in range(6):  # BMPs, and TIFFs whose directory is at the end (libtiff's LZW)
        if i % 2:
            Image.fromarray(noise).save(folder / f"daisy/scan-{i}.tif", compression="tiff_lzw")
        else:
            Image.new("RGB", (300, 300), (10 * i, 90, 30)).save(folder / f"daisy/scan-{i}.bmp")
    data = tmp_path / "data"
    result = fetch_data(SplitOptions(archive=folder, data_dir=data, validation_split=0.25,
                                     seed=4))
    assert sorted(s["name"] for s in result.skipped) == [
        f"daisy/scan-{i}.{'tif' if i % 2 else 'bmp'}" for i in range(6)]
    assert all(s["reason"].startswith("too large for a photo") for s in result.skipped)
    train, validate = pipelines.split_in_memory(folder, list(TWO), 0.25, 4)
    assert any("scan" in s.path.name for s in validate)  # train reads them: some validate
    for split, samples in (("train", train), ("validate", validate)):
        by_train = sorted(f"{TWO[s.label]}/{s.path.name}" for s in samples
                          if "scan" not in s.path.name)
        by_fetch = sorted(f"{key.split('/')[1]}/{name}" for key, names in listing(data).items()
                          if key.startswith(f"{split}/") for name in names)
        assert by_train == by_fetch


def test_heic_photos_are_said_by_fetch_data_and_train(flowers, tmp_path):
    """A class of iPhone photos (.heic, which transfer cannot read): fetch-data and train say
    so and how to fix it, instead of "no images" or a silent gap."""
    from transfer.pipelines import class_names

    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    (folder / "daisy/IMG_0001.HEIC").write_bytes(b"ftypheic")
    # an iPhone photo renamed .jpg: said as train, predict and serve say it, not "not a format
    # Pillow recognises"
    (folder / "daisy/IMG_0002.jpg").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic")
    warned = Warnings()
    fetched = fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"),
                         reporter=warned)
    assert [(s["name"], s["reason"]) for s in fetched.skipped] == [(
        "daisy/IMG_0002.jpg", "HEIC (an iPhone's photos) is not a format transfer reads; "
        "convert them to JPEG (e.g. export as JPEG from the photo app)")]
    assert warned.warnings[0] == ("left out: 1 .heic file (HEIC (an iPhone's photos)), which "
                                  "transfer cannot read; convert them to JPEG (e.g. export "
                                  "as JPEG from the photo app)")
    from transfer.training import data_meta, plan

    run = plan(TrainSettings(data_dir=folder, models_dir=tmp_path / "models").validated())
    assert run.unread == [str(folder / "daisy/IMG_0001.HEIC")]  # left out, and kept in meta
    assert data_meta(run)["unread_photos"] == run.unread
    (folder / "tulips").mkdir()
    (folder / "tulips/IMG_0002.heic").write_bytes(b"ftypheic")
    with pytest.raises(TransferError, match=r"class folder .*tulips has no images it can read: "
                                            r"it holds 1 \.heic file"):
        class_names(folder)
    phone = tmp_path / "phone"
    (phone / "cats").mkdir(parents=True)
    (phone / "cats/IMG_1.heic").write_bytes(b"ftypheic")
    with pytest.raises(TransferError, match=r"no images transfer can read in .*phone: it holds "
                                            r"1 \.heic file"):
        fetch_data(FetchOptions(archive=phone, data_dir=tmp_path / "nothing"))


def phone_folder(flowers: Path, root: Path) -> tuple[list[str], list[str]]:
    """``root/daisy`` and ``root/roses``, 10 real photos each, with what a phone leaves: a real
    daisy photo (a JPEG) renamed IMG_1.heic, a genuine AVIF made from a real rose (when this
    Pillow reads AVIF), a text file named notes.heic, a genuine HEIC (its header) and a raw
    file (a TIFF named .dng). Returns (the photos, the files to convert), relative, sorted."""
    from PIL import Image, features

    copy_classes(flowers, root, per_class=10, classes=TWO)
    daisy, roses = sorted((flowers / "daisy").iterdir()), sorted((flowers / "roses").iterdir())
    shutil.copyfile(daisy[20], root / "daisy/IMG_1.heic")
    (root / "daisy/notes.heic").write_text("a shopping list, not a photo\n")
    (root / "roses/IMG_2.HEIC").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"
                                            + bytes(range(256)) * 8)
    with Image.open(roses[21]) as photo:
        photo.save(root / "roses/DSC_4.dng", format="TIFF")
    photos = [f"{cls}/{p.name}" for cls in TWO for p in (root / cls).iterdir()
              if p.suffix == ".jpg"] + ["daisy/IMG_1.heic"]
    if features.check("avif"):  # Pillow's own word, not the code's under test
        with Image.open(roses[20]) as photo:
            photo.save(root / "roses/IMG_3.avif", quality=80)
        photos.append("roses/IMG_3.avif")
    return sorted(photos), ["daisy/notes.heic", "roses/DSC_4.dng", "roses/IMG_2.HEIC"]


def test_every_command_lists_the_same_photos_named_heic_avif_or_raw(flowers, tmp_path):
    """predict and evaluate read a JPEG renamed .heic (Pillow decides), while train left it out
    ("left out: 2 .heic files") and fetch-data said the same of it, from a folder and from a
    zip: one folder was three data sets. Every listing now asks Pillow of a file named as
    HEIC or raw (only those): the same photos everywhere, and the same files, a text file
    named .heic among them, get the one "convert them to JPEG" line."""
    from transfer import files, inference, pipelines
    from transfer.evaluate import labelled_files
    from transfer.training import plan, report_data

    folder = tmp_path / "phone"
    photos, unread = phone_folder(flowers, folder)
    hint = "convert them to JPEG (e.g. export as JPEG from the photo app)"
    left_out = ("left out: 1 .dng file (camera raw), 2 .heic files (HEIC (an iPhone's photos)), "
                f"which transfer cannot read; {hint}")

    def rel(paths) -> list[str]:
        return sorted(Path(p).relative_to(folder).as_posix() for p in paths)

    # predict (and report's counts): the folder's listing, its rows
    found, named = files.photos_under(folder)
    assert (rel(found), rel(named)) == (photos, unread)
    assert rel(files.images_under(folder)) == photos
    rows = inference.gather([folder])
    assert rel(file for _, file, error in rows if not error) == photos
    assert rel(name for name, _, error in rows if error) == unread
    assert all(error.endswith(f"is not a format transfer reads; {hint}")
               for _, _, error in rows if error)
    # evaluate
    assert rel(path for path, _ in labelled_files(folder, list(TWO))) == photos
    # train: its listing, its split, and what it says
    assert rel(p for cls in TWO for p in pipelines.image_files(folder / cls)) == photos
    assert sorted(f"{cls}/{r}" for cls in TWO for r in pipelines.unread_photos(folder / cls)) \
        == unread
    run = plan(TrainSettings(data_dir=folder, models_dir=tmp_path / "models",
                             validation_split=0.25, seed=3).validated())
    assert rel(s.path for s in run.train + run.validate) == photos
    assert rel(run.unread) == unread
    said = Warnings()
    report_data(run, said)
    assert left_out in said.warnings
    # fetch-data, from the folder and from a zip of it: the same photos on the same sides
    for source in (folder, zip_of(folder, tmp_path / "phone.zip")):
        data = tmp_path / f"data-{source.suffix or 'folder'}"
        said = Warnings()
        result = fetch_data(SplitOptions(archive=source, data_dir=data, validation_split=0.25,
                                         seed=3), reporter=said)
        assert result.skipped == [] and said.warnings == [left_out]
        for split, samples in (("train", run.train), ("validate", run.validate)):
            by_fetch = sorted(f"{key.split('/')[1]}/{name}" for key, names in
                              listing(data).items() if key.startswith(f"{split}/")
                              for name in names)
            assert by_fetch == rel(s.path for s in samples), (source, split)
        assert sum(result.counts[split][cls] for split in result.counts for cls in TWO) \
            == len(photos)


def flower_tree(flowers: Path, root: Path, layout: dict[str, tuple]) -> Path:
    """``root/<folder>/`` with ``n`` photos of ``cls`` for each ``folder: (cls, n)``, from the
    ``start``-th on for ``(cls, n, start)``; a folder named ".../" gets photos straight in it."""
    for folder, (cls, n, *start) in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        first = start[0] if start else 0
        for photo in sorted((flowers / cls).iterdir())[first:first + n]:
            shutil.copyfile(photo, root / folder / photo.name)
    return root


def test_split_names_in_any_case_and_a_held_out_test_set(flowers, tmp_path):
    """Train/ and VAL/ are split folders in fetch-data and in train; a test/ (labelled or
    not) is held out and said, not spent on training."""
    from transfer.training import plan

    folder = flower_tree(flowers, tmp_path / "download", {
        "Train/daisy": ("daisy", 8), "Train/roses": ("roses", 8),
        "VAL/daisy": ("daisy", 3, 8), "VAL/roses": ("roses", 3, 8), "test": ("tulips", 4)})
    warned = Warnings()
    fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"), reporter=warned)
    manifest = manifest_of(tmp_path / "data")
    assert manifest["classes"] == ["daisy", "roses"]
    assert manifest["usable"] == {"daisy": 11, "roses": 11}  # test/ not among them
    assert ("test/ left out: a test set is held out, not split again (transfer evaluate "
            f"--data-dir {folder / 'test'})") in warned.warnings
    run = plan(TrainSettings(data_dir=folder, models_dir=tmp_path / "models").validated())
    assert run.split == "folders" and run.names == ["daisy", "roses"]
    assert (run.settings.train_dir.name, run.settings.validate_dir.name) == ("Train", "VAL")


def test_split_folders_beside_a_class_folder(flowers, tmp_path):
    """train/ of class folders beside a class folder: fetch-data refuses (it would make a class
    "train" of mixed flowers), train says what it leaves out."""
    from conftest import Recorder

    from transfer.training import plan, report_data

    folder = flower_tree(flowers, tmp_path / "mixed", {
        "train/daisy": ("daisy", 6), "train/roses": ("roses", 6), "tulips": ("tulips", 4)})
    with pytest.raises(TransferError, match=r"mixes layouts: train/ holds class folders, beside "
                                            r"the class folder tulips/"):
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    run = plan(TrainSettings(data_dir=folder, models_dir=tmp_path / "models").validated())
    reporter = Recorder()
    report_data(run, reporter)
    assert run.names == ["daisy", "roses"]
    assert f"left out: tulips/ beside the split folders in {folder}; only train/ are read" in \
        reporter.warnings
    # the run's own models folder there (`transfer train --data-dir .` inside the split): its
    # pictures are not photos left out (it said "left out: models/" of its own output), nor a
    # folder holding it, nor its own bundle there replaced with --force
    shutil.rmtree(folder / "tulips")
    photo = flowers / "daisy" / sorted(os.listdir(flowers / "daisy"))[0]

    def only(own: str) -> None:  # an earlier bundle at ``own``, the one folder beside
        for d in folder.iterdir():
            if d.name not in ("train",):
                shutil.rmtree(d)
        (folder / own).mkdir(parents=True)
        shutil.copyfile(photo, folder / own / "curves.png")
        (folder / own / "meta.json").write_text(json.dumps(
            {"schema_version": 1, "class_names": ["daisy", "roses"]}))

    for own, settings in (
            ("models/mobilenet-1", TrainSettings(data_dir=folder, models_dir=folder / "models")),
            ("models/older", TrainSettings(data_dir=folder, output=folder / "models" / "mine")),
            ("runs/models/mobilenet-1", TrainSettings(data_dir=folder,
                                                      models_dir=folder / "runs" / "models")),
            ("runs/models/older", TrainSettings(data_dir=folder,
                                                output=folder / "runs" / "models" / "m")),
            ("run1", TrainSettings(data_dir=folder, output=folder / "run1", force=True))):
        only(own)
        reporter = Recorder()
        report_data(plan(settings.validated()), reporter)
        assert not [w for w in reporter.warnings if "left out" in w], (own, reporter.warnings)
    reporter = Recorder()  # a models folder of another run's is left out as before
    report_data(plan(TrainSettings(data_dir=folder, models_dir=tmp_path / "models"
                                   ).validated()), reporter)
    assert f"left out: run1/ beside the split folders in {folder}; only train/ are read" in \
        reporter.warnings


def test_a_class_named_train_and_a_users_cat_and_dog_folders(flowers, tmp_path):
    """A vehicle classifier's train/ holds photos itself: a class. A user's own Cat/ and Dog/
    are classes named as the user named them (only Microsoft's PetImages/ is the tour's)."""
    from transfer.pipelines import class_names

    vehicles = flower_tree(flowers, tmp_path / "vehicles", {
        "train": ("daisy", 6), "bus": ("roses", 6)})
    fetch_data(FetchOptions(archive=vehicles, data_dir=tmp_path / "v"))
    assert manifest_of(tmp_path / "v")["classes"] == ["bus", "train"]
    assert class_names(vehicles) == ["bus", "train"]
    assert TrainSettings(data_dir=vehicles).resolved().train_dir is None  # not a split folder
    pets = flower_tree(flowers, tmp_path / "pets", {"Cat": ("daisy", 6), "Dog": ("roses", 6)})
    fetch_data(FetchOptions(archive=pets, data_dir=tmp_path / "p"))
    assert manifest_of(tmp_path / "p")["classes"] == ["Cat", "Dog"]
    assert manifest_of(tmp_path / "p")["layout"] == "class-folders"


def test_train_names_a_wrapper_and_refuses_classes_differing_in_case(flowers, tmp_path):
    from transfer.pipelines import class_names

    wrapped = flower_tree(flowers, tmp_path / "dl", {
        "flower_photos/daisy": ("daisy", 2), "flower_photos/roses": ("roses", 2)})
    with pytest.raises(TransferError, match=r"has one class \(flower_photos\); .* if the "
                                            r"folders in it \(daisy, roses\) are the classes, "
                                            r"use --data-dir .*dl/flower_photos"):
        class_names(wrapped)
    clash = flower_tree(flowers, tmp_path / "clash", {"Daisy": ("daisy", 2),
                                                      "daisy": ("daisy", 2)})
    with pytest.raises(TransferError, match="the class folders Daisy and daisy differ only"):
        class_names(clash)


def test_unsorted_kaggle_photos_in_split_folders_are_labelled_by_name(kaggle_zip, tmp_path):
    """train/ and validation/ each holding cat.N and dog.N (unsorted): the names say the
    class, never folders named "train" and "validation"."""
    with zipfile.ZipFile(kaggle_zip) as source:
        members = {f"{split}/{kind}.{i}.jpg": source.read(f"train/{kind}.{i}.jpg")
                   for split, numbers in (("train", range(8)), ("validation", range(8, 11)))
                   for kind in ("cat", "dog") for i in numbers}
    archive = make_zip(tmp_path / "unsorted.zip", members)
    fetch_data(SplitOptions(archive=archive, data_dir=tmp_path / "data", validation_split=0.2))
    manifest = manifest_of(tmp_path / "data")
    assert manifest["classes"] == ["cats", "dogs"]
    assert manifest["usable"] == {"cats": 11, "dogs": 11}
    # which photos: every cat.N in cats/, every dog.N in dogs/ (the counts above passed with
    # cats and dogs swapped)
    placed = listing(tmp_path / "data")
    for cls in ("cats", "dogs"):
        assert sorted(placed[f"train/{cls}"] + placed[f"validate/{cls}"]) == sorted(
            f"{cls[:-1]}.{i}.jpg" for i in range(11))


def test_split_names_without_a_train_split_are_classes(flowers, tmp_path):
    """A valid/invalid classifier with year sub-folders: valid/ is a class, in both commands."""
    from transfer.training import plan

    folder = flower_tree(flowers, tmp_path / "vv", {
        "valid/2023": ("daisy", 6), "invalid/2023": ("roses", 6)})
    fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    assert manifest_of(tmp_path / "data")["classes"] == ["invalid", "valid"]
    run = plan(TrainSettings(data_dir=folder, models_dir=tmp_path / "models").validated())
    assert run.split == "in-memory" and run.names == ["invalid", "valid"]


def test_folders_linking_to_each_other_are_entered_once_per_branch(tmp_path):
    from transfer.files import walk

    for cls in ("cats", "dogs"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "d" / cls / f"{cls}{i}.jpg").write_bytes(b"x")
    (tmp_path / "d/cats/x").symlink_to("../dogs", target_is_directory=True)
    (tmp_path / "d/dogs/y").symlink_to("../cats", target_is_directory=True)
    files, _ = walk(tmp_path / "d")
    assert len(files) == 12  # each folder's 3 photos, and each linked folder's once


def test_many_photos_of_one_name_are_renamed_in_linear_time():
    taken: dict = {}
    names = [datasets._free_file_name("IMG_0001.JPG", taken) for _ in range(20000)]
    assert len(set(names)) == 20000 and names[:3] == ["IMG_0001.JPG", "IMG_0001-2.JPG",
                                                       "IMG_0001-3.JPG"]
    assert datasets._free_file_name("img_0001-2.jpg", taken) == "img_0001-2-2.jpg"  # any case
    # roses/a/café.jpg (the accent composed) and roses/b/café.jpg (e and a combining accent,
    # as macOS writes names): one file on macOS (the second photo replaced the first, or the
    # run failed on its rename), two names here; one is renamed
    assert datasets._free_file_name("caf\u00e9.jpg", taken) == "caf\u00e9.jpg"
    assert datasets._free_file_name("cafe\u0301.jpg", taken) == "cafe\u0301-2.jpg"
    assert datasets._free_file_name("CAFE\u0301.JPG", taken) == "CAFE\u0301-3.JPG"
    assert datasets.member_file_name("cats\\cat.0.jpg") == "cat.0.jpg"  # a Windows zip


@pytest.mark.parametrize("counts", [False, True], ids=["fractions", "counts"])
def test_a_name_too_long_for_linux_is_shortened_not_fatal(flowers, tmp_path, counts):
    """90 Chinese characters are a legal file name on Windows and macOS (255 UTF-16 units)
    but 270 bytes of UTF-8 here: the one photo so named in a zip made the whole run fail
    ("File name too long", naming a temporary folder already gone). It is now placed under a
    name shortened to 255 bytes, its original kept in the manifest's ``renamed``."""
    photos = {cls: sorted((flowers / cls).iterdir())[:14] for cls in TWO}
    long_name = "玫瑰花" * 30 + ".jpg"  # 14 of each: every photo placed in either mode
    members = {f"{cls}/{p.name}": p.read_bytes() for cls in TWO for p in photos[cls][:12]}
    members.update({f"daisy/{p.name}": p.read_bytes() for p in photos["daisy"][12:]})
    members[f"roses/{long_name}"] = photos["roses"][12].read_bytes()
    members[f"roses/{long_name[:-4]}-2.jpg"] = photos["roses"][13].read_bytes()
    path = make_zip(tmp_path / "long.zip", members)
    data = tmp_path / "data"
    options = (FetchOptions(archive=path, data_dir=data, train_per_class=10,
                            validate_per_class=4) if counts
               else SplitOptions(archive=path, data_dir=data, validation_split=0.25))
    result = fetch_data(options)
    assert result.skipped == []
    renamed = manifest_of(data)["renamed"]
    assert sorted(renamed.values()) == sorted([f"roses/{long_name}",
                                               f"roses/{long_name[:-4]}-2.jpg"])
    for placed, source in renamed.items():
        assert len(os.fsencode(Path(placed).name)) <= 255 and placed.endswith(".jpg")
        assert (data / placed).read_bytes() == members[source]
    assert len({Path(placed).name for placed in renamed}) == 2  # shortened apart


def test_petimages_given_as_the_current_folder(flowers, tmp_path, monkeypatch):
    """Microsoft's PetImages given as "." is still the tour's cats and dogs."""
    pets = flower_tree(flowers, tmp_path / "PetImages", {"Cat": ("daisy", 12),
                                                         "Dog": ("roses", 12)})
    monkeypatch.chdir(pets)
    fetch_data(FetchOptions(archive=Path("."), data_dir=tmp_path / "data",
                            train_per_class=8, validate_per_class=2))
    assert manifest_of(tmp_path / "data")["classes"] == ["cats", "dogs"]


# --------------------------------------------------------------------------- your files


def test_files_you_put_into_a_split_are_moved_aside_with_it_never_deleted(flowers, tmp_path):
    """A split folder holding files fetch-data did not place (notes, a photo, a class of
    yours) is no longer "this split", is refused naming them, and with --force is moved aside
    whole; before, --force deleted them with the previous split."""
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    data = tmp_path / "data"
    opts = dict(archive=folder, data_dir=data)
    fetch_data(FetchOptions(**opts))
    made = listing(data)
    (data / "train/birds").mkdir()
    shutil.copyfile(sorted((flowers / "tulips").iterdir())[0], data / "train/birds/bird1.jpg")
    (data / "train/daisy/MY_NOTES.txt").write_text("mine")
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(**opts))  # the same arguments: no longer a no-op
    assert str(info.value) == (
        f"the split in {data} holds files fetch-data did not put there "
        f"({data / 'train/birds'}, {data / 'train/daisy/MY_NOTES.txt'}); move them away, or "
        f"use --force to have {data / 'train'} moved aside whole to <name>.old (never "
        "deleted)")
    result = fetch_data(FetchOptions(**opts, force=True))
    assert result.moved_aside == [str(data / "train.old")]
    assert (data / "train.old/birds/bird1.jpg").is_file()
    assert (data / "train.old/daisy/MY_NOTES.txt").read_text() == "mine"
    assert listing(data) == made  # the same split, made again
    assert fetch_data(FetchOptions(**opts)).noop


def test_a_file_browsers_hidden_files_leave_the_split_as_it_is(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    data = tmp_path / "data"
    fetch_data(FetchOptions(archive=folder, data_dir=data))
    (data / "train/daisy/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (data / "validate/Thumbs.db").write_bytes(b"\x00" * 64)
    assert fetch_data(FetchOptions(archive=folder, data_dir=data)).noop


def test_your_own_manifest_json_is_refused_then_moved_aside(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text('{"my": "own manifest"}')
    with pytest.raises(TransferError, match=r"manifest.json is already there and was not made "
                       r"by fetch-data; move it away, or use --force"):
        fetch_data(FetchOptions(archive=folder, data_dir=data))
    assert (data / "manifest.json").read_text() == '{"my": "own manifest"}'
    assert not (data / "train").exists()
    result = fetch_data(FetchOptions(archive=folder, data_dir=data, force=True))
    assert result.moved_aside == [str(data / "manifest.json.old")]
    assert (data / "manifest.json.old").read_text() == '{"my": "own manifest"}'
    assert manifest_of(data)["tool"] == "transfer fetch-data"


def test_your_own_test_folder_is_left_alone_by_a_split_without_one(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    data = tmp_path / "data"
    (data / "test/daisy").mkdir(parents=True)
    (data / "test/daisy/x.jpg").write_bytes(b"mine")
    result = fetch_data(FetchOptions(archive=folder, data_dir=data))
    assert result.moved_aside == [] and (data / "test/daisy/x.jpg").read_bytes() == b"mine"
    assert sizes(data) == {**per_class(8, 2, classes=TWO), "test/daisy": 1}
    with pytest.raises(TransferError, match=r"test is already there and was not made"):
        fetch_data(FetchOptions(archive=folder, data_dir=data, test_split=0.2, force=False))


def test_split_options_given_at_their_defaults_are_the_same_split(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    data = tmp_path / "data"
    fetch_data(FetchOptions(archive=folder, data_dir=data))
    for same in (dict(validation_split=0.2), dict(test_split=0.0), dict(test_per_class=0),
                 dict(validation_split=0.2, test_split=0.0)):
        assert fetch_data(FetchOptions(archive=folder, data_dir=data, **same)).noop, same
    with pytest.raises(TransferError, match="other arguments"):
        fetch_data(FetchOptions(archive=folder, data_dir=data, validation_split=0.3))


def test_a_journal_write_cut_short_leaves_no_file_behind(flowers, tmp_path):
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    data = tmp_path / "data"
    data.mkdir()
    stray = data / "..fetch-swap.tmp-4242.json"  # files.replacing's name for the journal
    stray.write_text('{"split_id": ')
    fetch_data(FetchOptions(archive=folder, data_dir=data))
    assert not stray.exists()
    assert sorted(p.name for p in data.iterdir()) == ["manifest.json", "train", "validate"]


def test_a_tar_archive_is_named_as_one(flowers, tmp_path):
    import tarfile

    folder = copy_classes(flowers, tmp_path / "flowers", per_class=3, classes=TWO)
    archive = tmp_path / "flower_photos.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="flower_photos")
    with pytest.raises(TransferError, match=r"flower_photos.tgz is a tar archive: fetch-data "
                       r"reads zip archives and folders; unpack it \(tar xf .*\) and give the "
                       r"folder to --archive"):
        fetch_data(FetchOptions(archive=archive, data_dir=tmp_path / "data"))


def test_a_changed_wrapper_zip_is_unwrapped_again(flowers, tmp_path):
    """A zip wrapping train.zip is unwrapped into the cache; another archive of the same name
    (a new version, another competition's) got the first one's copy, and its photos."""
    def wrapper(classes):
        inner = zip_of(copy_classes(flowers, tmp_path / "-".join(classes), per_class=10,
                                    classes=classes), tmp_path / f"{classes[0]}.zip")
        (tmp_path / "w").mkdir(exist_ok=True)
        with zipfile.ZipFile(tmp_path / "w/comp.zip", "w") as outer:
            outer.write(inner, "train.zip")
        return tmp_path / "w/comp.zip"

    data = tmp_path / "data"
    fetch_data(FetchOptions(archive=wrapper(TWO), data_dir=data))
    assert manifest_of(data)["classes"] == list(TWO)
    fetch_data(FetchOptions(archive=wrapper(("sunflowers", "tulips")), data_dir=data,
                            force=True))
    assert manifest_of(data)["classes"] == ["sunflowers", "tulips"]
    assert sorted(sizes(data)) == ["train/sunflowers", "train/tulips", "validate/sunflowers",
                                   "validate/tulips"]
    assert len(list((data / ".cache/unwrapped").glob("comp-*train.zip"))) == 1  # earlier went


def test_fetch_options_of_the_wrong_type_are_one_error(flowers, tmp_path):
    for bad, message in ((dict(train_per_class="10"), "--train-per-class must be a whole "
                                                      "number, not '10'"),
                         (dict(validate_per_class=10.5), "--validate-per-class must be a whole "
                                                         "number, not 10.5"),
                         (dict(seed=None), "--seed must be a whole number, not None"),
                         (dict(seed="7"), "--seed must be a whole number, not '7'"),
                         (dict(data_dir=None), "--data-dir must be a path, not None"),
                         (dict(validation_split="0.3"), "--validation-split must be a number, "
                                                        "not '0.3'"),
                         (dict(test_split="0.1"), "--test-split must be a number, not '0.1'"),
                         (dict(validation_split=True), "--validation-split must be a number, "
                                                       "not True")):
        with pytest.raises(TransferError) as info:
            fetch_data(FetchOptions(**{"archive": flowers, "data_dir": tmp_path / "d", **bad}))
        assert str(info.value) == message


def test_your_hidden_files_in_a_split_are_moved_aside_with_it_never_deleted(flowers, tmp_path):
    """A hidden file or folder of yours inside a split (``.notes.txt``, ``.backup/``) is yours
    as much as a visible one: a rerun with other arguments names it, --force moves the split
    aside whole; before, --force deleted them with the previous split. A file browser's own
    metadata (``.DS_Store``, ``._x``, ``Thumbs.db``) is not: it goes with the old split."""
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=10, classes=TWO)
    data = tmp_path / "data"
    fetch_data(FetchOptions(archive=folder, data_dir=data))
    (data / "train/daisy/.labels-notes.txt").write_text("mine")
    (data / "validate/.my-backup").mkdir()
    shutil.copyfile(sorted((flowers / "tulips").iterdir())[0], data / "validate/.my-backup/a.jpg")
    (data / "train/roses/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (data / "train/roses/._rose.jpg").write_bytes(b"\x00\x05\x16\x07")
    assert fetch_data(FetchOptions(archive=folder, data_dir=data)).noop  # the same split
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive=folder, data_dir=data, seed=9))
    assert str(info.value).startswith(
        f"the split in {data} holds files fetch-data did not put there "
        f"({data / 'train/daisy/.labels-notes.txt'}, {data / 'validate/.my-backup'}); ")
    warnings = Warnings()
    result = fetch_data(FetchOptions(archive=folder, data_dir=data, seed=9, force=True),
                        warnings)
    assert result.moved_aside == [str(data / "train.old"), str(data / "validate.old")]
    assert (data / "train.old/daisy/.labels-notes.txt").read_text() == "mine"
    assert (data / "validate.old/.my-backup/a.jpg").is_file()
    assert warnings.warnings == [
        f"moved {data / 'train'} aside to {data / 'train.old'}: it held files fetch-data did "
        "not put there", f"moved {data / 'validate'} aside to {data / 'validate.old'}: it held "
        "files fetch-data did not put there"]


def test_a_refusal_names_the_split_that_was_made_fractions_or_counts(flowers, tmp_path):
    """A folder of class folders split by fraction was refused as "per class 1000/400/0 then":
    the tour's counts, recorded in the request, that no split used."""
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=20, classes=TWO)
    data = tmp_path / "data"
    fetch_data(SplitOptions(archive=folder, data_dir=data))
    with pytest.raises(TransferError) as info:
        fetch_data(SplitOptions(archive=folder, data_dir=data, train_per_class=12,
                                validate_per_class=4))
    assert "other arguments (fractions (validation 0.2, test 0) then, per class (train/" \
           "validate/test) 12/4/0 now); use --force" in str(info.value)
    with pytest.raises(TransferError) as info:
        fetch_data(SplitOptions(archive=folder, data_dir=data, validation_split=0.3))
    assert "other arguments (fractions (validation 0.2, test 0) then, fractions (validation " \
           "0.3, test 0) now); use --force" in str(info.value)
    fetch_data(SplitOptions(archive=folder, data_dir=data, train_per_class=12,
                            validate_per_class=4, force=True))
    with pytest.raises(TransferError) as info:
        fetch_data(SplitOptions(archive=folder, data_dir=data, test_split=0.25))
    assert "other arguments (per class (train/validate/test) 12/4/0 then, fractions " \
           "(validation 0.2, test 0.25) now); use --force" in str(info.value)


def test_a_failed_run_on_a_wrapper_zip_leaves_no_copy_and_names_the_users_file(flowers,
                                                                              tmp_path):
    """A zip wrapping train.zip: a run that fails (too few photos) removes the data folder it
    made with its hidden copy of train.zip (it stayed, 550 MB for the competition's); a
    damaged train.zip inside is named inside the user's archive, not by our copy's name."""
    inner = zip_of(copy_classes(flowers, tmp_path / "two", per_class=10, classes=TWO),
                   tmp_path / "train.zip")
    with zipfile.ZipFile(tmp_path / "comp.zip", "w") as outer:
        outer.write(inner, "train.zip")
    data = tmp_path / "new/data"

    class Bars(Warnings):  # the totals of its progress bars
        def __init__(self):
            super().__init__()
            self.totals = {}

        def task(self, description, total=None, **kwargs):
            self.totals[description] = total
            return super().task(description, total, **kwargs)

    bars = Bars()
    with pytest.raises(TransferError, match="not enough usable images"):
        fetch_data(FetchOptions(archive=tmp_path / "comp.zip", data_dir=data,
                                train_per_class=50, validate_per_class=5), reporter=bars)
    assert not (tmp_path / "new").exists()
    # the bar counted to 2 x 55 asked and stopped at 20: it ends at what can be placed
    assert bars.totals["Checking and placing images"] == 20

    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as outer:
        outer.writestr("train.zip", inner.read_bytes()[:len(inner.read_bytes()) // 2])
    for _ in range(2):  # the same line again: no damaged copy of ours is met
        with pytest.raises(TransferError) as info:
            fetch_data(FetchOptions(archive=tmp_path / "bad.zip", data_dir=data))
        assert str(info.value) == (f"the train.zip inside {tmp_path / 'bad.zip'} is not a "
                                   "readable zip archive (not a zip, or truncated)")
    assert not (tmp_path / "new").exists()
    # a damaged train.zip stored whole (a bad CRC), or compressed by a method Python's zip
    # reader lacks (Deflate64: Windows' own zip for large files): a BadZipFile or
    # NotImplementedError traceback
    with zipfile.ZipFile(tmp_path / "stored.zip", "w", zipfile.ZIP_STORED) as outer:
        outer.write(inner, "train.zip")
    whole = bytearray((tmp_path / "stored.zip").read_bytes())
    flipped = bytearray(whole)
    middle = whole.index(inner.read_bytes()) + len(inner.read_bytes()) // 2
    flipped[middle] ^= 0xFF
    deflate64 = bytearray(whole)
    # the outer zip's local header (first) and central record (last; the inner zip's own
    # records sit inside the stored member)
    for start, at in ((deflate64.index(b"PK\x03\x04"), 8),
                      (deflate64.rindex(b"PK\x01\x02"), 10)):
        deflate64[start + at:start + at + 2] = (9).to_bytes(2, "little")
    for name, content, reason in (("crc.zip", flipped, "Bad CRC-32 for file 'train.zip'"),
                                  ("d64.zip", deflate64, "compression method")):
        (tmp_path / name).write_bytes(bytes(content))
        with pytest.raises(TransferError) as info:
            fetch_data(FetchOptions(archive=tmp_path / name, data_dir=data))
        said = str(info.value)
        assert said.startswith(f"the train.zip inside {tmp_path / name} cannot be read (")
        assert reason in said and said.endswith(
            f"); download {name} again, or unzip it and give the train.zip inside as "
            "--archive"), said
        assert not (tmp_path / "new").exists()


def test_an_archive_that_is_neither_file_nor_folder_is_said_so(tmp_path):
    """--archive /dev/null said "archive not found", although it exists."""
    with pytest.raises(TransferError) as info:
        fetch_data(FetchOptions(archive="/dev/null", data_dir=tmp_path / "d"))
    assert str(info.value) == "--archive /dev/null is neither a zip file nor a folder"
    assert not (tmp_path / "d").exists()


def test_names_that_are_not_utf8_split_train_and_export(flowers, tmp_path):
    """A Latin-1 USB stick (or a Windows zip unpacked by `unzip`): class and file names that
    are not UTF-8 ("chi\\xe9ns/ph\\xf6to1.jpg"). fetch-data ended in a traceback (the folder's
    fingerprint), and so did train (train-files.csv) and export (labels.txt). Now the split is
    made (a second run is a no-op), the model trains, and labels.txt holds the folder's bytes."""
    from transfer.export import export
    from transfer.training import train

    source = os.fsencode(tmp_path / "stick")
    for cls, raw in (("daisy", b"d\xe9licate"), ("roses", b"r\xf6ses")):
        os.makedirs(source + b"/" + raw)
        for i, photo in enumerate(sorted((flowers / cls).iterdir())[:10]):
            shutil.copyfile(photo, source + b"/" + raw + b"/ph\xf6to%d.jpg" % i)
    data = tmp_path / "data"
    result = fetch_data(FetchOptions(archive=os.fsdecode(source), data_dir=data))
    names = sorted(result.counts["train"])
    assert [os.fsencode(n) for n in names] == [b"d\xe9licate", b"r\xf6ses"]
    assert sum(result.counts["train"].values()) + sum(result.counts["validate"].values()) == 20
    again = fetch_data(FetchOptions(archive=os.fsdecode(source), data_dir=data))
    assert again.counts == result.counts  # the same split: nothing done
    trained = train(TrainSettings(data_dir=data, base="scratch", image_size=32, epochs=1,
                                  engine="tf", output=tmp_path / "models" / "latin",
                                  models_dir=tmp_path / "models"))
    rows = (trained.bundle / "train-files.csv").read_bytes()
    assert b"ph\xf6to" in rows and b"r\xf6ses" in rows
    exported = export(trained.bundle, format="tflite")
    with zipfile.ZipFile(exported.path) as attached:
        assert attached.read("labels.txt") == b"d\xe9licate\nr\xf6ses\n"


def test_names_that_are_not_utf8_are_printed_on_a_strict_utf8_stdout(flowers, tmp_path):
    """The same stick's split through the CLI on a desktop's standard output (en_US.UTF-8:
    strict, where the C locale's is lenient): the split was written, then its table ended in
    a UnicodeEncodeError traceback, exit 1. The names are printed as their bytes."""
    import subprocess
    import sys

    source = os.fsencode(tmp_path / "stick")
    for cls, raw in (("daisy", b"d\xe9licate"), ("roses", b"roses")):
        os.makedirs(source + b"/" + raw)
        for i, photo in enumerate(sorted((flowers / cls).iterdir())[:5]):
            shutil.copyfile(photo, source + b"/" + raw + b"/ph\xf6to%d.jpg" % i)
    with open(source + b"/roses/cass\xe9.jpg", "wb") as broken:  # in the skipped list
        broken.write(b"not a photo")
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "transfer", "fetch-data", "--archive", source, "--data-dir",
         str(data)], env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "COLUMNS": "120"},
        capture_output=True, timeout=300)
    said = result.stdout + result.stderr
    assert result.returncode == 0 and b"Traceback" not in said, said.decode(errors="replace")
    assert b"d\xe9licate" in result.stdout and b"cass\xe9.jpg" in said
    assert sorted(os.listdir(os.fsencode(data / "train"))) == [b"d\xe9licate", b"roses"]


def test_photos_inside_the_split_they_would_replace_are_refused(flowers, tmp_path):
    """Kaggle's train/ unzipped into data/ and given back: `--archive data/train --data-dir
    data --force` moved the photos aside to train.old, and the same command again was told
    the split came from other photos. Refused before anything moves; the photos stay."""
    data = tmp_path / "data"
    copy_classes(flowers, data / "train", per_class=10, classes=TWO)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    for archive, said in ((data / "train", f"is {data / 'train'}"),
                          (data / "train" / "daisy", f"is inside {data / 'train'}")):
        with pytest.raises(TransferError) as info:
            fetch_data(FetchOptions(archive=archive, data_dir=data, force=True))
        assert str(info.value) == (
            f"--archive {archive} {said}, a split folder fetch-data replaces; move the photos "
            f"out of {data} first (e.g. mv {archive} photos) and give that folder to --archive")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_class_folders_that_differ_in_accent_form_are_said_so(flowers, tmp_path):
    """"café" composed (NFC) beside "café" decomposed (NFD, as a Mac writes it): fetch-data and
    train said they "differ only in case", of two names printed alike."""
    from transfer.training import plan

    folder = tmp_path / "photos"
    for name, cls in (("caf\u00e9", "daisy"), ("cafe\u0301", "roses")):
        (folder / name).mkdir(parents=True)
        for photo in sorted((flowers / cls).iterdir())[:3]:
            shutil.copy(photo, folder / name)
    said = "differ only in how their accents are stored (Unicode NFC and NFD); rename or merge"
    with pytest.raises(TransferError, match=re.escape(said)):
        fetch_data(FetchOptions(archive=folder, data_dir=tmp_path / "data"))
    with pytest.raises(TransferError, match=re.escape(said)):
        plan(TrainSettings(data_dir=folder, models_dir=tmp_path / "models").validated())


def _stamps_of_earlier_versions(folder: Path) -> str:
    """The fingerprint fetch-data recorded for a folder before: names, sizes and times."""
    digest = hashlib.sha256()
    for cls in sorted(p.name for p in folder.iterdir()):
        for photo in sorted((folder / cls).iterdir()):
            stat = photo.stat()
            digest.update(f"{cls}/{cls}/{photo.name}:{stat.st_size}:{stat.st_mtime_ns}\n"
                          .encode())
    return "folder:" + digest.hexdigest()


def _later(paths, seconds: int = 100) -> None:
    """Give ``paths`` a modification time ``seconds`` from now, as a touch later would."""
    when = time.time() + seconds
    for path in paths:
        os.utime(path, (when, when))


def test_the_same_photos_touched_or_copied_again_are_the_same_split(flowers, tmp_path,
                                                                     monkeypatch):
    """The fingerprint of a folder was its photos' names, sizes and modification times: a
    `touch`, or a `cp -r` of the folder back in place, made a rerun refuse ("made from other
    photos") though every photo was the same. Now it is their names and contents; the photos
    are read again only when their times or sizes changed."""
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=TWO)
    data = tmp_path / "data"
    first = fetch_data(SplitOptions(archive=folder, data_dir=data))
    assert not first.noop
    _later((folder / "daisy").iterdir())  # touch flowers/daisy/*
    assert fetch_data(SplitOptions(archive=folder, data_dir=data)).noop
    copy = tmp_path / "copy"  # cp -r flowers copy; rm -rf flowers; mv copy flowers
    shutil.copytree(folder, copy, copy_function=shutil.copyfile)
    _later(copy.rglob("*.jpg"), 200)
    shutil.rmtree(folder)
    copy.rename(folder)
    assert fetch_data(SplitOptions(archive=folder, data_dir=data)).noop

    # unchanged since the last run: no photo is read to know it
    read = []
    real = archive_module.sha256_file
    monkeypatch.setattr(archive_module, "sha256_file", lambda p: read.append(p) or real(p))
    assert fetch_data(SplitOptions(archive=folder, data_dir=data)).noop
    assert read == []

    # one photo changed, its size kept: other photos
    photo = sorted((folder / "roses").iterdir())[0]
    blob = bytearray(photo.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    photo.write_bytes(bytes(blob))
    _later([photo], 300)
    with pytest.raises(TransferError, match=r"was made from other photos \(.*flowers changed "
                       r"since; a rerun would split the photos it holds now\); use --force"):
        fetch_data(SplitOptions(archive=folder, data_dir=data))
    assert read  # the changed times made it read the photos


def test_a_split_an_earlier_version_made_is_not_refused_while_its_photos_are_the_same(
        flowers, tmp_path):
    """A manifest from before records the photos' names, sizes and times: while they are
    still those, a rerun is a no-op; once they were touched, the refusal says why it cannot
    tell; --force then records their contents."""
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=TWO)
    data = tmp_path / "data"
    fetch_data(SplitOptions(archive=folder, data_dir=data))
    manifest = manifest_of(data)
    old = _stamps_of_earlier_versions(folder)
    manifest["request"]["archive_sha256"] = manifest["source"]["archive_sha256"] = old
    manifest["source"].pop("archive_stamps", None)
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert fetch_data(SplitOptions(archive=folder, data_dir=data)).noop

    _later((folder / "roses").iterdir())
    with pytest.raises(TransferError) as info:
        fetch_data(SplitOptions(archive=folder, data_dir=data))
    assert re.search(r"the split in .*data was made by an earlier version of transfer, which "
                     r"recorded when the photos in .*flowers were last modified, not what they "
                     r"hold; they were modified since.*use --force", str(info.value))
    before = listing(data)
    fetch_data(SplitOptions(archive=folder, data_dir=data, force=True))
    assert listing(data) == before  # the same photos: the same split
    assert manifest_of(data)["request"]["archive_sha256"] != old
    _later((folder / "roses").iterdir(), 200)
    assert fetch_data(SplitOptions(archive=folder, data_dir=data)).noop


def test_a_zip_downloaded_again_the_same_is_the_same_split(flowers, tmp_path):
    """A zip's fingerprint is its SHA-256: the same zip with a new time (downloaded again,
    copied) is the same split."""
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=TWO)
    archive = zip_of(folder, tmp_path / "photos.zip")
    data = tmp_path / "data"
    fetch_data(SplitOptions(archive=archive, data_dir=data))
    again = tmp_path / "again.zip"
    shutil.copyfile(archive, again)
    _later([again])
    again.replace(archive)
    assert fetch_data(SplitOptions(archive=archive, data_dir=data)).noop


def test_one_count_alone_is_refused_before_the_saved_split_is_compared(flowers, tmp_path,
                                                                       monkeypatch):
    """--train-per-class alone over a split by fraction was refused as "made with other
    arguments (... per class 30/400/0 now)": counts no split would use; --force then
    failed with the rule. The rule comes first, before any photo is read."""
    folder = copy_classes(flowers, tmp_path / "flowers", per_class=12, classes=TWO)
    archive = zip_of(folder, tmp_path / "photos.zip")
    for source in (folder, archive):
        data = tmp_path / f"data-{source.name}"
        fetch_data(SplitOptions(archive=source, data_dir=data, validation_split=0.25))
        before = listing(data)
        calls = no_image_read(monkeypatch)
        for force in (False, True):
            with pytest.raises(TransferError) as info:
                fetch_data(SplitOptions(archive=source, data_dir=data, train_per_class=8,
                                        force=force))
            assert "give both --train-per-class and --validate-per-class" in str(info.value)
            assert "other arguments" not in str(info.value)
        assert calls == [] and listing(data) == before
