"""The training pipelines over Samples: one reader (``read_rgb``), one set of image suffixes,
hidden and system files ignored, unreadable files recorded and left out, the in-memory split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require_asset, text_as_jpg, truncated
from PIL import Image

from transfer import images, pipelines
from transfer.constants import IMAGE_SUFFIXES
from transfer.errors import TransferError
from transfer.settings import Augment

FLOWERS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


@pytest.fixture(scope="module")
def flowers() -> Path:
    return require_asset("data/flowers")


def photos(flowers: Path, cls: str, n: int) -> list[Path]:
    return sorted((flowers / cls).iterdir())[:n]


@pytest.fixture
def odd_folder(flowers, tmp_path) -> Path:
    """Two classes of 4 real photos, one daisy as .webp and one rose as .tif, and the hidden
    and system files a photo folder collects."""
    root = tmp_path / "photos"
    for cls in ("daisy", "roses"):
        (root / cls).mkdir(parents=True)
        for photo in photos(flowers, cls, 4):
            shutil.copyfile(photo, root / cls / photo.name)
    with Image.open(photos(flowers, "daisy", 5)[4]) as photo:
        photo.save(root / "daisy/extra.webp", "WEBP")
    with Image.open(photos(flowers, "roses", 5)[4]) as photo:
        photo.save(root / "roses/extra.tif", "TIFF")
    (root / "daisy/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "daisy/._extra.webp").write_bytes(b"\0\5\26\7 resource fork")
    (root / "roses/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "roses/desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "roses/.hidden").mkdir()
    shutil.copyfile(photos(flowers, "roses", 1)[0], root / "roses/.hidden/a.jpg")
    (root / "roses/__MACOSX").mkdir()
    shutil.copyfile(photos(flowers, "roses", 1)[0], root / "roses/__MACOSX/b.jpg")
    return root


def test_one_set_of_suffixes_and_system_files_ignored(odd_folder):
    assert pipelines.IMAGE_SUFFIXES is IMAGE_SUFFIXES
    assert {".webp", ".tif", ".tiff", ".ppm"} <= set(IMAGE_SUFFIXES)
    names = {p.name for p in pipelines.image_files(odd_folder / "daisy")}
    assert "extra.webp" in names and len(names) == 5
    names = {p.name for p in pipelines.image_files(odd_folder / "roses")}
    assert "extra.tif" in names and len(names) == 5  # nothing from .hidden/ or __MACOSX/
    assert pipelines.class_names(odd_folder) == ["daisy", "roses"]
    saved = odd_folder / "daisy/saved.jfif"  # a JPEG as a browser on Windows saves it
    shutil.copyfile(next(p for p in pipelines.image_files(odd_folder / "daisy")
                         if p.suffix == ".jpg"), saved)
    assert saved in pipelines.image_files(odd_folder / "daisy")
    assert pipelines.read_rgb(saved, 32).shape == (32, 32, 3)


def test_a_class_of_jpegs_named_heic_is_trained_on_as_evaluate_reads_it(odd_folder, flowers):
    """A class folder of JPEGs named .heic (a phone export renamed, a download) was refused by
    train, "has no images it can read: it holds 2 .heic files", while evaluate and predict read
    them (Pillow decides, constants.unread_file). They are the class's images now, read as the
    same photos named .jpg; a text file named .heic is still an unread HEIC, said."""
    tulips = odd_folder / "tulips"
    (tulips / "2024").mkdir(parents=True)
    originals = photos(flowers, "tulips", 2)
    shutil.copyfile(originals[0], tulips / "IMG_1.heic")
    shutil.copyfile(originals[1], tulips / "2024/IMG_2.HEIF")
    (tulips / "IMG_3.heic").write_text("not a photo\n")
    assert pipelines.class_names(odd_folder) == ["daisy", "roses", "tulips"]
    listed = pipelines.image_files(tulips)
    assert [p.relative_to(tulips).as_posix() for p in listed] == ["2024/IMG_2.HEIF", "IMG_1.heic"]
    assert pipelines.unread_photos(tulips) == ["IMG_3.heic"]
    for path, original in zip(listed, originals[::-1], strict=True):
        np.testing.assert_array_equal(pipelines.read_rgb(path, 32),
                                      pipelines.read_rgb(original, 32))
    for path in listed:
        path.write_text("not a photo either\n")
    with pytest.raises(TransferError, match=r"class folder .*tulips has no images it can read: "
                       r"it holds 2 \.heic files \(HEIC .*\), 1 \.heif file \(HEIF\); convert"):
        pipelines.class_names(odd_folder)


def test_read_rgb_is_what_predict_and_evaluate_read(odd_folder):
    for path in pipelines.image_files(odd_folder / "daisy") + pipelines.image_files(
            odd_folder / "roses"):
        ours = pipelines.read_rgb(path, 64)
        theirs, _ = images.model_input(path, {"image_size": 64, "channels": 3,
                                              "pipeline": "tfdata",
                                              "preprocessing": {"resize": "pil"}})
        assert ours.dtype == np.uint8 and ours.shape == (64, 64, 3)
        np.testing.assert_array_equal(ours.astype("float32"), theirs)


def test_both_pipelines_yield_the_same_preprocessed_pixels(odd_folder):
    names = ["daisy", "roses"]
    samples = pipelines.samples_of(odd_folder, names)
    expected = np.stack([pipelines.read_rgb(s.path, 48) for s in samples]).astype("float32")
    expected = expected / 127.5 - 1.0
    for kind in ("generator", "tfdata"):
        data = pipelines.make(kind, samples, names, 48, "tf", 4, None, shuffle=False, seed=1)
        xs, ys = zip(*pipelines.batches(data, pipelines.steps(len(samples), 4)), strict=True)
        x, y = np.concatenate([np.asarray(v) for v in xs]), np.concatenate(
            [np.asarray(v) for v in ys])
        np.testing.assert_allclose(x, expected, atol=1e-6)
        assert y.tolist() == [s.label for s in samples] and y.dtype == np.float32  # binary


def test_augmentation_is_seeded_and_varies_by_epoch(odd_folder):
    names = ["daisy", "roses"]
    samples = pipelines.samples_of(odd_folder, names)
    first = pipelines.make("generator", samples, names, 48, "tf", 4, Augment(), shuffle=True,
                           seed=3)
    again = pipelines.make("generator", samples, names, 48, "tf", 4, Augment(), shuffle=True,
                           seed=3)
    np.testing.assert_array_equal(first[0][0], again[0][0])
    np.testing.assert_array_equal(first[0][1], again[0][1])
    batch = first[0][0]
    first.on_epoch_end()
    assert not np.array_equal(batch, first[0][0])
    # the same photos in the same order, the next epoch: other transforms (with shuffle on,
    # the new order alone made the batch differ)
    fixed = pipelines.make("generator", samples, names, 48, "tf", 4, Augment(), shuffle=False,
                           seed=3)
    before = np.array(fixed[0][0])
    fixed.on_epoch_end()
    np.testing.assert_array_equal(fixed[0][1], pipelines.make(
        "generator", samples, names, 48, "tf", 4, None, shuffle=False, seed=3)[0][1])
    assert not np.array_equal(before, fixed[0][0])
    plain = pipelines.make("generator", samples, names, 48, "tf", 100, None, shuffle=False,
                           seed=3)[0][0]
    assert plain.shape == (10, 48, 48, 3)
    assert np.abs(np.asarray(again[0][0]) - plain[:4]).max() > 0.1  # augmented


def test_the_tfdata_pipelines_augmentation(odd_folder):
    """--pipeline tfdata (and every multi-worker fit): the same seed gave other pictures each
    run (batches transformed in parallel took the layers' random draws in any order); its
    shear pivoted on the top-left corner (a 20 degree shear also moved the picture sideways
    by a third of its height) and failed above 45 degrees (a ValueError traceback); every
    transform at 0 without --no-augment called an empty Sequential (a traceback); a file name
    that is not UTF-8 failed tf.constant (a traceback)."""
    import math
    import os

    names = ["daisy", "roses"]
    samples = pipelines.samples_of(odd_folder, names)

    def batches(augment, seed=3, take=samples):
        data = pipelines.make("tfdata", take, names, 48, "tf", 4, augment, shuffle=True,
                              seed=seed)
        return [np.asarray(x) for x, _ in data]

    many = samples * 8  # 20 batches (the draws' order did not show on this machine in 3)
    for first, again in zip(batches(Augment(), take=many), batches(Augment(), take=many),
                            strict=True):
        np.testing.assert_array_equal(first, again)
    assert not np.array_equal(batches(Augment())[0], batches(Augment(), seed=4)[0])
    # the shear: about the centre; any angle below 90 degrees
    line = np.zeros((8, 64, 64, 3), "float32")
    line[:, :, 31:33] = 255.0  # a vertical line through the centre
    sheared = np.asarray(pipelines._centred_shear(math.tan(math.radians(20)), 5)(
        line, training=True))
    middle = [np.flatnonzero(image[31:33, :, 0].mean(axis=0) > 127).mean() for image in sheared]
    assert np.allclose(middle, 31.5, atol=1.0), middle
    assert not np.array_equal(sheared[:, 0], line[:, 0])  # the top row did move
    assert len(batches(Augment(shear=60))) == 3
    # every transform off, augmentation on: the plain pictures
    off = Augment(rotation=0, shift=0, shear=0, zoom=0, flip=False)
    plain = pipelines.make("tfdata", samples, names, 48, "tf", 100, None, shuffle=False, seed=3)
    still = pipelines.make("tfdata", samples, names, 48, "tf", 100, off, shuffle=False, seed=3)
    np.testing.assert_array_equal(np.asarray(next(iter(still))[0]),
                                  np.asarray(next(iter(plain))[0]))
    # a name that is not UTF-8
    latin = odd_folder / os.fsdecode(b"daisy/caf\xe9.jpg")
    shutil.copyfile(samples[0].path, latin)
    listed = pipelines.samples_of(odd_folder, names)
    assert latin in [s.path for s in listed]
    data = pipelines.make("tfdata", listed, names, 48, "tf", 100, None, shuffle=False, seed=3)
    assert len(np.asarray(next(iter(data))[0])) == len(listed) == len(samples) + 1


def test_unreadable_files_are_recorded_and_left_out_of_their_batch(odd_folder, flowers):
    names = ["daisy", "roses"]
    (odd_folder / "daisy/broken.jpg").write_bytes(
        truncated(photos(flowers, "daisy", 6)[5].read_bytes()))
    (odd_folder / "roses/text.jpg").write_bytes(text_as_jpg())
    samples = pipelines.samples_of(odd_folder, names)
    assert len(samples) == 12
    for kind in ("generator", "tfdata"):
        skipped = pipelines.Skipped()
        data = pipelines.make(kind, samples, names, 32, "tf", 5, None, shuffle=False, seed=0,
                              skipped=skipped)
        n = sum(len(np.asarray(y)) for _, y in pipelines.batches(data, pipelines.steps(12, 5)))
        assert n == 10, kind
        assert {Path(item["file"]).name for item in skipped} == {"broken.jpg", "text.jpg"}
        reasons = {Path(item["file"]).name: item["reason"] for item in skipped}
        assert reasons["broken.jpg"].startswith("corrupt or truncated image")
        assert reasons["text.jpg"] == "not an image (Pillow cannot identify it)"


def test_skipped_is_one_entry_per_file():
    skipped = pipelines.Skipped()
    skipped.add(Path("a.jpg"), "first")
    skipped.add("a.jpg", "second")
    skipped.add("b.jpg", "other")
    assert len(skipped) == 2 and "a.jpg" in skipped and Path("b.jpg") in skipped
    assert skipped.as_list() == [{"file": "a.jpg", "reason": "first"},
                                 {"file": "b.jpg", "reason": "other"}]


def test_probe_finds_files_that_are_not_images_without_decoding(odd_folder, flowers):
    (odd_folder / "daisy/empty.png").write_bytes(b"")
    (odd_folder / "daisy/text.jpg").write_bytes(text_as_jpg())
    (odd_folder / "daisy/broken.jpg").write_bytes(
        truncated(photos(flowers, "daisy", 6)[5].read_bytes()))
    skipped = pipelines.Skipped()
    pipelines.probe_all(pipelines.samples_of(odd_folder, ["daisy", "roses"]), skipped)
    reasons = {Path(item["file"]).name: item["reason"] for item in skipped}
    assert reasons == {"empty.png": "empty file (0 bytes)",
                       "text.jpg": "not an image (Pillow cannot identify it)"}


def test_in_memory_split_is_stratified_seeded_and_disjoint(flowers):
    train, validate = pipelines.split_in_memory(flowers, list(FLOWERS), 0.2, 42)
    assert len(train) == 160 and len(validate) == 40
    for label in range(5):
        assert sum(s.label == label for s in validate) == 8
    assert not {s.path for s in train} & {s.path for s in validate}
    again = pipelines.split_in_memory(flowers, list(FLOWERS), 0.2, 42)
    assert again == (train, validate)
    other = pipelines.split_in_memory(flowers, list(FLOWERS), 0.2, 7)
    assert {s.path for s in other[1]} != {s.path for s in validate}
    train30, validate30 = pipelines.split_in_memory(flowers, list(FLOWERS), 0.3, 42)
    assert len(validate30) == 60 and len(train30) == 140


def _sides(train, validate, root: Path) -> dict[str, str]:
    return {**{s.path.relative_to(root).as_posix(): "train" for s in train},
            **{s.path.relative_to(root).as_posix(): "validate" for s in validate}}


def test_in_memory_split_barely_moves_when_photos_are_added(flowers, tmp_path):
    """A photo added to each class moves at most one of the others across the cut (a seeded
    shuffle of the sorted list would deal them all again); a photo moved into a subfolder
    stays on its side (fetch-data's split of the same folder is the same photo by photo:
    test_fetch_folders.py::test_sub_folders_of_a_class_folder_belong_to_it_as_in_train)."""
    folder = tmp_path / "photos"
    for cls in FLOWERS:
        shutil.copytree(flowers / cls, folder / cls)
    before = _sides(*pipelines.split_in_memory(folder, list(FLOWERS), 0.2, 42), folder)
    for cls in FLOWERS:  # a new photo, another class's, under a new name
        other = sorted((flowers / ("roses" if cls != "roses" else "daisy")).iterdir())[0]
        shutil.copyfile(other, folder / cls / f"new-{cls}.jpg")
    after = _sides(*pipelines.split_in_memory(folder, list(FLOWERS), 0.2, 42), folder)
    for cls in FLOWERS:
        kept = [name for name in before if name.startswith(f"{cls}/")]
        moved = [name for name in kept if after[name] != before[name]]
        assert len(moved) <= 1, (cls, moved)
        assert sum(after[name] == "validate" for name in after if name.startswith(f"{cls}/")) \
            == 8  # round(41 * 0.2)
    photo = sorted((folder / "tulips").iterdir())[3]
    (folder / "tulips" / "2024").mkdir()
    photo.rename(folder / "tulips" / "2024" / photo.name)
    moved_in = _sides(*pipelines.split_in_memory(folder, list(FLOWERS), 0.2, 42), folder)
    assert moved_in[f"tulips/2024/{photo.name}"] == after[f"tulips/{photo.name}"]


def test_bundles_from_before_the_stable_order_get_their_own_split_back(flowers):
    """meta.json without data.split_order (bundles trained before it) is split as it was
    trained: the sorted paths shuffled by random.Random(f"{seed}:{class}")."""
    import random

    from transfer.evaluate import bundle_images

    meta = {"class_names": list(FLOWERS),
            "data": {"split": "in-memory", "root": str(flowers), "cwd": str(flowers),
                     "validation_split": 0.2, "seed": 42}}
    expected = set()
    for cls in FLOWERS:
        order = sorted(f"{cls}/{p.name}" for p in (flowers / cls).iterdir())
        random.Random(f"42:{cls}").shuffle(order)
        expected |= {flowers / name for name in order[:8]}
    assert {path for path, _ in bundle_images(meta, "validate")} == expected
    meta["data"]["split_order"] = pipelines.STABLE_ORDER
    now = {path for path, _ in bundle_images(meta, "validate")}
    assert now == {s.path for s in pipelines.split_in_memory(flowers, list(FLOWERS), 0.2,
                                                              42)[1]}
    assert now != expected
    meta["data"]["split_order"] = "from-the-future"
    with pytest.raises(TransferError, match="unknown split order"):
        bundle_images(meta, "validate")


def test_check_enough_names_the_short_class_in_one_line(odd_folder):
    from types import SimpleNamespace

    names = ["daisy", "roses"]
    train, validate = pipelines.split_in_memory(odd_folder, names, 0.2, 0)
    skipped = pipelines.Skipped()
    plan = SimpleNamespace(names=names, train=train, validate=validate, skipped=skipped)
    pipelines.check_enough(plan)
    for sample in [s for s in train + validate if s.label == 1][:4]:
        skipped.add(sample.path, "corrupt or truncated image")
    with pytest.raises(TransferError) as caught:
        pipelines.check_enough(plan)
    message = str(caught.value)
    assert "\n" not in message and "roses: 1 usable" in message and "daisy" not in message
    assert "after skipping 4 unreadable files" in message
    skipped = pipelines.Skipped()
    plan.skipped = skipped
    for sample in validate:
        skipped.add(sample.path, "corrupt or truncated image")
    with pytest.raises(TransferError, match=r"^no usable validation image \(2 unreadable "
                                            r"files skipped\)"):
        pipelines.check_enough(plan)


def test_make_refuses_no_samples_and_an_unknown_pipeline(odd_folder):
    with pytest.raises(TransferError, match="split in memory"):
        pipelines.make("generator", None, ["a", "b"], 32, "tf", 4, None, False, 0)
    with pytest.raises(TransferError, match="unknown pipeline"):
        pipelines.make("other", odd_folder, ["daisy", "roses"], 32, "tf", 4, None, False, 0)


def test_a_class_whose_validation_share_is_all_damaged_is_named(tmp_path):
    """train's split keeps a truncated photo's place (as fetch-data's does): when a class's
    whole validation share is such files, the run names the class it cannot measure."""
    from types import SimpleNamespace

    skipped = pipelines.Skipped()
    good, damaged = tmp_path / "daisy.jpg", tmp_path / "roses-truncated.jpg"
    skipped.add(damaged, "corrupt or truncated image")
    run = SimpleNamespace(names=["daisy", "roses"], skipped=skipped,
                          validate=[pipelines.Sample(good, 0), pipelines.Sample(damaged, 1)])
    assert pipelines.unmeasured(run) == ["roses"]
    run.validate.append(pipelines.Sample(tmp_path / "roses.jpg", 1))
    assert pipelines.unmeasured(run) == []


def test_a_folder_of_model_bundles_given_as_the_data_is_said_to_be_one(trained_bundle,
                                                                       tmp_path):
    """A models folder given as --data-dir: each bundle was taken for a class, its curves.png
    for its one photo ("too few usable images (late: 1 usable ...)")."""
    from typer.testing import CliRunner

    from transfer.cli import app

    models = tmp_path / "models"
    for name in ("late", "a"):
        shutil.copytree(trained_bundle.bundle, models / name)
    with pytest.raises(TransferError, match=r"models: a, late are model bundles \(what "
                                            r"transfer train writes\), not class folders of "
                                            r"photos; give --data-dir the folder of class "
                                            r"folders \(or move them out of it\)"):
        pipelines.class_names(models)
    said = CliRunner().invoke(app, ["train", "--data-dir", str(models), "--weights", "none",
                                    "--output", str(tmp_path / "out")])
    assert said.exit_code == 1 and "are model bundles" in said.output, said.output
    assert not (tmp_path / "out").exists()
