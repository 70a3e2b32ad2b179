"""`transfer train --data-dir my_photos` on a user's own folder of class folders (the genuine
flower photos): the split made in memory (exact counts per class, deterministic, fetch-data's
split of the same folder), bad files skipped and listed while the run goes on, hidden and system
files ignored, too-small and single or empty classes refused, the train/ + validate/ layout
still detected, and one image giving one answer in training, evaluate and predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import Recorder, require_asset, text_as_jpg, truncated
from PIL import Image

from transfer import phases, pipelines
from transfer.errors import TransferError
from transfer.settings import Augment, FetchOptions, TrainSettings
from transfer.training import plan, train

FLOWERS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
# random weights, small input: for what does not depend on the features' values
FAST = dict(base="mobilenet", alpha=0.25, weights="none", image_size=48, epochs=1, batch_size=8,
            engine="tf")
# the genuine MobileNet-0.25 ImageNet weights
GENUINE = dict(base="mobilenet", alpha=0.25, weights="imagenet", image_size=96, batch_size=8,
               epochs=2, engine="tf")


@pytest.fixture(scope="module")
def flowers() -> Path:
    return require_asset("data/flowers")


def copy_classes(flowers: Path, root: Path, per_class: dict | int, classes=FLOWERS) -> Path:
    """``root/<class>/`` with the first photos of each class (``per_class``: one count, or one
    per class)."""
    for cls in classes:
        n = per_class[cls] if isinstance(per_class, dict) else per_class
        (root / cls).mkdir(parents=True)
        for photo in sorted((flowers / cls).iterdir())[:n]:
            shutil.copyfile(photo, root / cls / photo.name)
    return root


def settings(data: Path, tmp_path: Path, **kw) -> TrainSettings:
    return TrainSettings(data_dir=data, models_dir=tmp_path / "models", **{**FAST, **kw})


def no_model(monkeypatch):
    """Make building a model fail the test: what is refused must be refused before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(phases, "build_model", refuse)


def add_system_files(folder: Path) -> None:
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1\0")
    (folder / "._IMG_0001.jpg").write_bytes(b"\0\5\26\7\0\2 Mac OS X resource fork")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")


# --------------------------------------------------------------------------- the split


def test_a_folder_of_class_folders_trains_on_a_split_made_in_memory(flowers, tmp_path,
                                                                    mobilenet_weights):
    data = copy_classes(flowers, tmp_path / "my_photos",
                        {"daisy": 10, "dandelion": 10, "roses": 10, "sunflowers": 10,
                         "tulips": 9})
    add_system_files(data / "daisy")
    (data / "__MACOSX/daisy").mkdir(parents=True)  # what unzipping a macOS zip leaves
    (data / "__MACOSX/daisy/._100080576_f52e8ee070_n.jpg").write_bytes(b"\0\5\26\7")
    (data / ".thumbnails").mkdir()
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    reporter = Recorder()
    result = train(settings(data, tmp_path, **GENUINE, output=tmp_path / "models/own"),
                   reporter)
    # the photos are the user's: nothing is written among them (the feature cache went into
    # the folder, and into a read-only data set it could not; it is the user's cache now)
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before
    assert result.meta["feature_cache"] == "miss"
    meta = json.loads((result.bundle / "meta.json").read_text())
    assert meta["class_names"] == list(FLOWERS)
    counts = {"train": {"daisy": 8, "dandelion": 8, "roses": 8, "sunflowers": 8, "tulips": 7},
              "validate": {c: 2 for c in FLOWERS}}
    assert meta["data"] == {"split": "in-memory", "root": str(data), "train_dir": None,
                            "validate_dir": None, "validation_split": 0.2, "seed": 42,
                            "split_order": "name-hash", "split_excluded": [], "train_images": 39,
                            "validate_images": 10, "counts": counts, "skipped_images": 0,
                            "cwd": str(Path.cwd())}
    assert meta["skipped"] == []
    assert meta["settings"]["validation_split"] == 0.2
    assert meta["preprocessing"]["resize"] == "pil"
    assert 0 <= meta["metrics"]["val_accuracy"] <= 1
    line = next(m for m in reporter.infos if m.startswith("data: "))
    assert line == (f"data: {data}: class folders split in memory (validation 0.2, seed 42); "
                    "39 train + 10 validate images (daisy 8+2, dandelion 8+2, roses 8+2, "
                    "sunflowers 8+2, tulips 7+2)")
    assert reporter.warnings == [
        "class tulips has only 9 images (fewer than 10): too few to learn it well or to "
        "measure it; add photos if you can"]  # .DS_Store, ._*, Thumbs.db: not a word
    # its report: images per class, and Grad-CAM overlays on the validation photos of the
    # split made in memory (it had none, and totals only: it looked for a validate folder)
    from transfer.report import data_counts, write_report

    assert data_counts(meta)[0] == counts
    page = write_report(result.bundle, tmp_path / "page.html", gradcams=2).read_text()
    assert page.count('class="gradcam"') == 2


def test_the_split_is_deterministic_and_is_fetch_datas_split_of_the_same_folder(flowers,
                                                                               tmp_path):
    from transfer.datasets import fetch_data

    for seed, fraction in ((42, 0.2), (7, 0.3)):
        hp = TrainSettings(data_dir=flowers, models_dir=tmp_path / "models", base="mobilenet",
                           alpha=0.25, seed=seed, validation_split=fraction).validated()
        run = plan(hp)
        assert run.split == "in-memory" and hp.train_dir is None and hp.validate_dir is None
        again = plan(hp)
        assert (again.train, again.validate) == (run.train, run.validate)
        n_val = 8 if fraction == 0.2 else 12
        assert run.counts == {"train": {c: 40 - n_val for c in FLOWERS},
                              "validate": {c: n_val for c in FLOWERS}}
        fetched = fetch_data(FetchOptions(archive=flowers, data_dir=tmp_path / f"data{seed}",
                                          validation_split=fraction, seed=seed))
        assert fetched.counts["validate"] == run.counts["validate"]
        for split, samples in (("validate", run.validate), ("train", run.train)):
            for label, cls in enumerate(FLOWERS):
                ours = sorted(s.path.name for s in samples if s.label == label)
                theirs = sorted(p.name for p in (tmp_path / f"data{seed}" / split / cls).iterdir())
                assert ours == theirs, (seed, split, cls)
    assert {s.path for s in plan(hp.replace(seed=1)).validate} != {s.path for s in run.validate}


def test_the_train_and_validate_layout_is_still_detected(flowers, tmp_path):
    data = tmp_path / "data"
    copy_classes(flowers, data / "train", 6, classes=("daisy", "roses"))
    copy_classes(flowers, data / "validate", 3, classes=("daisy", "roses"))
    add_system_files(data / "train/roses")
    run = plan(settings(data, tmp_path).validated())
    assert run.split == "folders" and run.root == data
    assert run.settings.train_dir == data / "train"
    assert run.counts == {"train": {"daisy": 6, "roses": 6}, "validate": {"daisy": 3, "roses": 3}}
    assert run.train_files[0][0].startswith("daisy/")  # the cache key, as before
    assert len(run.skipped) == 0


def test_a_data_dir_that_train_dir_makes_unused_is_said(flowers, tmp_path):
    """``train --data-dir flowers --train-dir data/train`` trained on data/train and
    data/validate without a word about the 200 photos of --data-dir it did not read."""
    from transfer.training import report_data

    data, other = tmp_path / "data", tmp_path / "other"
    copy_classes(flowers, data / "train", 6, classes=("daisy", "roses"))
    copy_classes(flowers, data / "validate", 3, classes=("daisy", "roses"))
    copy_classes(flowers, other, 4, classes=("daisy", "roses"))
    said = []
    for data_dir, extra in ((other, {"train_dir": data / "train"}), (data, {}),
                            (data, {"train_dir": data / "train"})):
        reporter = Recorder()
        run = plan(settings(data_dir, tmp_path, **extra).validated())
        report_data(run, reporter, validate_looked_for="train_dir" in extra)
        said.append([w for w in reporter.warnings if "--data-dir" in w])
    assert said == [[f"--data-dir {other} unused: the photos are --train-dir's and its "
                     "validation folder's"], [], []]


def test_a_download_s_validation_folder_is_its_validate_split(flowers, tmp_path):
    """cats_and_dogs_filtered and many downloads name the split validation/ (or val/, or
    valid/ as Roboflow's exports do): it is the validate split, not ignored while train/ is
    split in memory."""
    for name in ("validation", "val", "valid"):
        data = tmp_path / name / "data"
        copy_classes(flowers, data / "train", 6, classes=("daisy", "roses"))
        copy_classes(flowers, data / name, 3, classes=("daisy", "roses"))
        run = plan(settings(data, tmp_path).validated())
        assert run.split == "folders" and run.settings.validate_dir == data / name
        assert run.counts == {"train": {"daisy": 6, "roses": 6},
                              "validate": {"daisy": 3, "roses": 3}}


def test_train_without_validate_splits_train_in_memory(flowers, tmp_path):
    data = tmp_path / "data"
    copy_classes(flowers, data / "train", 10, classes=("daisy", "roses"))
    run = plan(settings(data, tmp_path).validated())
    assert run.split == "in-memory" and run.root == data / "train"
    assert run.counts == {"train": {"daisy": 8, "roses": 8}, "validate": {"daisy": 2, "roses": 2}}


def test_photos_in_no_class_folder_are_named_and_a_one_photo_class_refused(flowers, tmp_path,
                                                                          monkeypatch):
    from transfer.training import report_data

    data = copy_classes(flowers, tmp_path / "photos", 10, classes=("daisy", "roses"))
    shutil.copyfile(sorted((flowers / "tulips").iterdir())[0], data / "stray.jpg")
    (data / ".DS_Store").write_bytes(b"\0")
    (data / "roses/2024").mkdir()
    (data / "roses/2024/IMG_0001.HEIC").write_bytes(b"ftypheic")  # an iPhone's photo
    reporter = Recorder()
    run = plan(settings(data, tmp_path).validated())
    report_data(run, reporter)
    assert run.counts["train"] == {"daisy": 8, "roses": 8}
    assert reporter.warnings == ["left out: 1 .heic file (HEIC (an iPhone's photos)), which "
                                 "transfer cannot read; convert them to JPEG (e.g. export as "
                                 "JPEG from the photo app)",
                                 f"1 image directly in {data} is in no class folder and left "
                                 "out (e.g. stray.jpg); move it into the folder of its class"]
    no_model(monkeypatch)
    for extra in sorted(p for p in (data / "roses").iterdir() if p.is_file())[1:]:
        extra.unlink()
    with pytest.raises(TransferError) as caught:
        train(settings(data, tmp_path))
    # it said "(roses: 1 usable (1 to train on)); each class needs at least 2, one to train
    # on", as if the one to train on were missing
    assert str(caught.value) == ("too few usable images (roses: 1 usable, 1 to train on and 0 "
                                 "to validate); each class needs at least 2 usable images, at "
                                 "least 1 of them to train on: add photos")


def test_fine_tuning_and_the_scratch_cnn_train_on_an_in_memory_split(flowers, tmp_path,
                                                                   monkeypatch):
    """The routes that read images every epoch (fine-tuning, the CNN from scratch) take the
    same in-memory split."""
    import inspect
    import random

    data = copy_classes(flowers, tmp_path / "photos", 5, classes=("daisy", "roses"))
    # the images of each pipeline the runs make: the shuffled ones train, the others validate
    read: set[tuple[bool, frozenset]] = set()
    make = pipelines.make

    def noted(*args, **kwargs):
        given = inspect.signature(make).bind(*args, **kwargs).arguments
        read.add((given["shuffle"], frozenset(s.path for s in given["samples"])))
        return make(*args, **kwargs)

    monkeypatch.setattr(pipelines, "make", noted)
    split = plan(settings(data, tmp_path).validated())
    split = {(True, frozenset(s.path for s in split.train)),
             (False, frozenset(s.path for s in split.validate))}
    random.seed(1234)
    np.random.seed(1234)  # a notebook's own random numbers continue after a run (seed 42)
    tuned = train(settings(data, tmp_path, fine_tune=3, fine_tune_epochs=1,
                           output=tmp_path / "models/tuned"))
    assert random.random() == random.Random(1234).random()
    assert np.random.rand() == np.random.RandomState(1234).rand()
    assert tuned.history["phase"][-1] == "fine-tune"
    scratch = train(settings(data, tmp_path, base="scratch", alpha=1.0, weights="none",
                             image_size=None, epochs=1, output=tmp_path / "models/scratch"))
    # trained on the split's training photos, validated on its validation photos only
    assert read == split
    for result in (tuned, scratch):
        assert result.meta["data"]["split"] == "in-memory"
        assert result.counts == {"train": {"daisy": 4, "roses": 4},
                                 "validate": {"daisy": 1, "roses": 1}}


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("route", ["features", "generator", "tfdata"])
def test_bad_files_are_skipped_listed_and_the_run_goes_on(flowers, tmp_path, route):
    """Corrupt, truncated, text named .jpg, zero bytes: all skipped, all listed at the end and
    in meta.json; hidden and system files are not even mentioned."""
    # roses: 7 photos + the truncated one = 8 in the cut (2 validate); 7 would give 1
    data = copy_classes(flowers, tmp_path / "photos", {"daisy": 6, "roses": 7, "tulips": 6},
                        classes=("daisy", "roses", "tulips"))
    photo = sorted((flowers / "daisy").iterdir())[20].read_bytes()
    (data / "daisy/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (data / "roses/truncated.jpg").write_bytes(truncated(photo))
    (data / "roses/notes.jpg").write_bytes(text_as_jpg())
    (data / "tulips/empty.png").write_bytes(b"")
    for cls in ("daisy", "roses", "tulips"):
        add_system_files(data / cls)
    kw = {} if route == "features" else dict(pipeline=route, augment_copies=0)
    reporter = Recorder()
    result = train(settings(data, tmp_path, **kw), reporter)
    meta = json.loads((result.bundle / "meta.json").read_text())
    listed = {Path(item["file"]).relative_to(data).as_posix(): item["reason"]
              for item in meta["skipped"]}
    assert set(listed) == {"daisy/corrupt.jpg", "roses/truncated.jpg", "roses/notes.jpg",
                           "tulips/empty.png"}
    assert listed["roses/notes.jpg"] == "not an image (Pillow cannot identify it)"
    assert listed["tulips/empty.png"] == "empty file (0 bytes)"
    assert listed["roses/truncated.jpg"].startswith("corrupt or truncated image")
    assert listed["daisy/corrupt.jpg"]
    assert meta["data"]["skipped_images"] == 4
    assert meta["data"]["train_images"] + meta["data"]["validate_images"] == 19
    counts = meta["data"]["counts"]
    assert {c: counts["train"][c] + counts["validate"][c] for c in counts["train"]} == {
        "daisy": 6, "roses": 7, "tulips": 6}
    end = reporter.warnings.index("skipped 4 unreadable files (the run went on without them):")
    assert sorted(reporter.warnings[end + 1:]) == sorted(
        f"  {item['file']}: {item['reason']}" for item in meta["skipped"])
    said = " ".join(reporter.infos + reporter.warnings)
    assert "DS_Store" not in said and "Thumbs" not in said and "._IMG" not in said
    # the bundle says how to make its split again: the files left out before the cut (not
    # images by their header), not the truncated one found later (it was in the cut)
    data_meta = meta["data"]
    assert sorted(Path(f).name for f in data_meta["split_excluded"]) == [
        "corrupt.jpg", "empty.png", "notes.jpg"]
    again = pipelines.split_in_memory(Path(data_meta["root"]), meta["class_names"],
                                      data_meta["validation_split"], data_meta["seed"],
                                      data_meta["split_excluded"])
    run = plan(settings(data, tmp_path).validated())
    assert again == (run.train, run.validate)
    assert sum(s.label == 1 for s in run.validate) == 2
    # every skipped file given (the truncated one too): the same split, not a recut
    every = {item["file"] for item in meta["skipped"]}
    assert pipelines.split_in_memory(Path(data_meta["root"]), meta["class_names"],
                                     data_meta["validation_split"], data_meta["seed"],
                                     every) == again


def test_bad_files_in_train_and_validate_folders_are_skipped_too(flowers, tmp_path):
    data = tmp_path / "data"
    copy_classes(flowers, data / "train", 5, classes=("daisy", "roses"))
    copy_classes(flowers, data / "validate", 3, classes=("daisy", "roses"))
    (data / "train/roses/notes.jpg").write_bytes(text_as_jpg())
    photo = sorted((flowers / "daisy").iterdir())[20].read_bytes()
    (data / "validate/daisy/cut.jpg").write_bytes(truncated(photo))
    add_system_files(data / "validate/daisy")
    result = train(settings(data, tmp_path))
    assert sorted(Path(item["file"]).relative_to(data).as_posix() for item in result.skipped) == [
        "train/roses/notes.jpg", "validate/daisy/cut.jpg"]
    assert result.meta["data"]["split"] == "folders"
    assert result.counts == {"train": {"daisy": 5, "roses": 5},
                             "validate": {"daisy": 3, "roses": 3}}


def test_a_class_left_with_one_usable_image_stops_with_one_line(flowers, tmp_path,
                                                                monkeypatch):
    photo = sorted((flowers / "roses").iterdir())[20].read_bytes()
    # files that are not images by their header: refused before any model exists
    data = copy_classes(flowers, tmp_path / "a", {"daisy": 5, "roses": 1},
                        classes=("daisy", "roses"))
    (data / "roses/notes.jpg").write_bytes(text_as_jpg())
    (data / "roses/empty.jpg").write_bytes(b"")
    with monkeypatch.context() as patched:
        no_model(patched)
        with pytest.raises(TransferError) as caught:
            train(settings(data, tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("too few usable images after skipping 2 unreadable files (roses: "
                              "1 usable, 1 to train on and 0 to validate)")
    # files that only fail when decoded: found by the feature pass, then the run stops
    data = copy_classes(flowers, tmp_path / "b", {"daisy": 5, "roses": 1},
                        classes=("daisy", "roses"))
    (data / "roses/cut1.jpg").write_bytes(truncated(photo))
    (data / "roses/cut2.jpg").write_bytes(truncated(photo)[:-100])
    with pytest.raises(TransferError) as caught:
        train(settings(data, tmp_path, output=tmp_path / "models/never"))
    assert "\n" not in str(caught.value) and "roses: 1 usable" in str(caught.value)
    assert not (tmp_path / "models/never").exists()
    # usable images enough, but none of them to train on: the cut's training share of roses
    # all truncated (its 2 validation photos whole) stops the run as well
    data = copy_classes(flowers, tmp_path / "c", {"daisy": 5, "roses": 8},
                        classes=("daisy", "roses"))
    hp = settings(data, tmp_path, output=tmp_path / "models/never").validated()
    validate = {s.path for s in pipelines.split_in_memory(data, ["daisy", "roses"],
                                                          hp.validation_split, hp.seed)[1]}
    for path in sorted((data / "roses").iterdir()):
        if path not in validate:
            path.write_bytes(truncated(path.read_bytes()))
    with pytest.raises(TransferError) as caught:
        train(hp)
    assert "(roses: 2 usable, 0 to train on and 2 to validate)" in str(caught.value)
    assert not (tmp_path / "models/never").exists()


def test_a_single_class_or_an_empty_class_is_refused_before_any_work(flowers, tmp_path,
                                                                     monkeypatch):
    no_model(monkeypatch)
    one = copy_classes(flowers, tmp_path / "one", 5, classes=("daisy",))
    with pytest.raises(TransferError, match=r"has one class \(daisy\)"):
        train(settings(one, tmp_path))
    empty = copy_classes(flowers, tmp_path / "empty", 5, classes=("daisy",))
    (empty / "roses").mkdir()
    add_system_files(empty / "roses")  # only system files: no images
    with pytest.raises(TransferError, match=r"class folder .*roses has no images"):
        train(settings(empty, tmp_path))
    with pytest.raises(TransferError, match="has no class subfolders"):
        train(settings(tmp_path / "one" / "daisy", tmp_path))


# --------------------------------------------------------------------------- one reader


def odd_images(flowers: Path, folder: Path) -> dict[str, list[Path]]:
    """Real photos stored the ways that used to give two answers: semi-transparent PNG, EXIF
    rotation, WebP, TIFF, palette with transparency, CMYK, 16-bit grey, animated GIF."""
    made: dict[str, list[Path]] = {}

    def photo(cls, i):
        return Image.open(sorted((flowers / cls).iterdir())[30 + i]).convert("RGB")

    def save(cls, name, image, **kw):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        path = folder / cls / name
        image.save(path, **kw)
        made.setdefault(cls, []).append(path)

    source = photo("daisy", 0)
    rgba = source.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(source.size).point(lambda v: 40 + v // 2))
    save("daisy", "glass.png", rgba)
    exif = Image.Exif()
    exif[0x0112] = 6
    save("daisy", "phone.jpg", photo("daisy", 1).transpose(Image.Transpose.ROTATE_90),
         exif=exif, quality=92)
    save("roses", "web.webp", photo("roses", 0), quality=85)
    save("roses", "scan.tif", photo("roses", 1))
    palette = photo("tulips", 0).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    save("tulips", "palette.png", palette, transparency=0)
    save("tulips", "print.jpg", photo("tulips", 1).convert("CMYK"), quality=92)
    grey = np.asarray(photo("tulips", 2).convert("L"), dtype="uint16") * 257
    save("tulips", "deep.png", Image.fromarray(grey))
    frames = [photo("tulips", 3), photo("tulips", 4).resize(photo("tulips", 3).size)]
    save("tulips", "moving.gif", frames[0], save_all=True, append_images=frames[1:],
         duration=100, loop=0)
    return made


def core_probabilities(model, pipeline_data, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The saved model's layers after its preprocessing, on a training pipeline's batches of
    preprocessed images: what training's validation pass computes."""
    index = [layer.name for layer in model.layers].index("preprocess")
    outputs, labels = [], []
    for x, y in pipelines.batches(pipeline_data, n_steps):
        h = x
        for layer in model.layers[index + 1:]:
            h = layer(h, training=False)
        outputs.append(np.asarray(h))
        labels.append(np.asarray(y))
    return np.concatenate(outputs), np.concatenate(labels).reshape(-1)


@pytest.mark.parametrize("pipeline", ["generator", "tfdata"])
def test_one_image_gives_one_answer_in_training_evaluate_and_predict(flowers, tmp_path,
                                                                     mobilenet_weights,
                                                                     pipeline):
    from transfer.evaluate import evaluate
    from transfer.inference import BundleClassifier, classify_files
    from transfer.predict import predict
    from transfer.settings import PredictSettings
    from transfer.tf import keras

    names = ["daisy", "roses", "tulips"]
    data = tmp_path / "data"
    copy_classes(flowers, data / "train", 6, classes=names)
    copy_classes(flowers, data / "validate", 1, classes=names)
    made = odd_images(flowers, data / "train")  # trained on too: the feature pass reads them
    made = odd_images(flowers, data / "validate")
    reporter = Recorder()
    result = train(settings(data, tmp_path, **GENUINE, pipeline=pipeline, augment=Augment(
        enabled=False), output=tmp_path / "models/one"), reporter)
    meta = result.meta
    assert meta["skipped"] == [] and meta["data"]["counts"]["validate"] == {
        "daisy": 3, "roses": 3, "tulips": 5}
    assert meta["data"]["counts"]["train"] == {"daisy": 8, "roses": 8, "tulips": 10}

    samples = pipelines.samples_of(data / "validate", names)
    files = [s.path for s in samples]
    assert {p.name for p in files} >= {p.name for ps in made.values() for p in ps}
    model = keras.saving.load_model(result.bundle / "model.keras")
    in_training = {}
    for kind in ("generator", "tfdata"):  # both training pipelines, validation pass
        batches = pipelines.make(kind, samples, names, 96, "tf", 4, None, shuffle=False,
                                 seed=0)
        in_training[kind], labels = core_probabilities(model, batches,
                                                       pipelines.steps(len(samples), 4))
        assert labels.tolist() == [s.label for s in samples]
    in_evaluate = np.stack([c.probabilities for c in
                            classify_files(BundleClassifier(result.bundle), files)])
    predicted = predict(PredictSettings(paths=[str(p) for p in files], model=result.bundle))
    in_predict = np.array([[item.probabilities[n] for n in names] for item in predicted.items])
    for kind in in_training:
        np.testing.assert_allclose(in_training[kind], in_evaluate, atol=1e-5, rtol=0)
    np.testing.assert_allclose(in_predict, in_evaluate, atol=1e-5, rtol=0)

    # the run's own final validation (the feature pass's reader) is evaluate's report
    report = evaluate(result.bundle, data_dir=data / "validate",
                      output=tmp_path / "evaluation").report
    assert report["images"] == len(files)
    assert report["accuracy"] == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-9)
    assert report["loss"] == pytest.approx(meta["metrics"]["val_loss"], abs=1e-5)


def test_many_small_classes_are_warned_about_in_one_line():
    """60 classes, 21 of them under 10 images: one warning naming them with their counts,
    not 21 lines (fetch-data's words say "usable images")."""
    from transfer.constants import few_images_warning

    sizes = {f"kind-{i:02d}": 6 + i % 9 for i in range(60)}
    few = {name: n for name, n in sizes.items() if n < 10}
    said = few_images_warning(sizes)
    assert len(few) > 1 and "\n" not in said
    assert said.startswith(f"{len(few)} classes have fewer than 10 images")
    assert said.endswith(", ".join(f"{name} ({n})" for name, n in few.items()))
    assert few_images_warning({"a": 12, "b": 1}, "usable images") == (
        "class b has only 1 usable image (fewer than 10): too few to learn it well or to "
        "measure it; add photos if you can")
    assert few_images_warning({"a": 10, "b": 10}) is None


def test_the_same_photo_twice_is_trained_or_validated_on_not_both(flowers, tmp_path):
    """A class folder holding copies (``IMG_1.jpg`` and ``IMG_1 (1).jpg``): train's own split
    put a photo in training and its copy in validation (the validation accuracy counted
    photos the model trained on; evaluate said 0 of them were training images). Each copy
    keeps its place in the cut and is left out, said in the skipped list as fetch-data says
    it; evaluate makes the same split again."""
    import hashlib

    from transfer.evaluate import evaluate

    data = copy_classes(flowers, tmp_path / "photos", 10, classes=FLOWERS[:2])
    for photo in sorted((data / "daisy").iterdir())[:5]:
        shutil.copyfile(photo, photo.with_name(f"{photo.stem} (1){photo.suffix}"))
    result = train(settings(data, tmp_path, validation_split=0.4, output=tmp_path / "m"))
    copies = [item for item in result.meta["skipped"]
              if item["reason"].startswith("the same photo as daisy/")]
    assert len(copies) == 5 and result.meta["data"]["skipped_images"] == 5
    counts = result.meta["data"]["counts"]
    assert sum(counts["train"].values()) + sum(counts["validate"].values()) == 20

    def digests(split: str) -> set[str]:
        from transfer.evaluate import bundle_images

        return {hashlib.sha256(Path(path).read_bytes()).hexdigest()
                for path, _ in bundle_images(result.meta, split)}

    assert not digests("train") & digests("validate")
    done = evaluate(tmp_path / "m", output=tmp_path / "ev")
    assert done.report["images"] == sum(counts["validate"].values())
