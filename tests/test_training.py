"""transfer train on real photos: bundle, feature cache, pipelines, fine-tuning, the CNN from
scratch, MirroredStrategy, more than two classes, genuine ImageNet weights, and every error.

Each test that looks at the feature cache trains on its own copy of the photos, so a cache
miss or hit never depends on which test ran before."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, Recorder, lock_held_elsewhere, require_asset
from PIL import Image

from transfer import bundle, features, phases, pipelines
from transfer.errors import TransferError
from transfer.pipelines import Augment
from transfer.settings import TrainSettings
from transfer.training import HParams, train

# random weights, small input: for what does not depend on the features' values
FAST = dict(base="mobilenet", alpha=0.25, weights="none", image_size=48, epochs=2, batch_size=8)
# the genuine MobileNet-0.25 ImageNet weights (random ones give all-zero features here)
GENUINE = dict(base="mobilenet", alpha=0.25, weights="imagenet", image_size=96, batch_size=8)
NO_AUGMENT = Augment(enabled=False)


def hp(split: Path, tmp_path: Path, **kw) -> HParams:
    return HParams(data_dir=split, models_dir=tmp_path / "models", **{**FAST, **kw})


@pytest.fixture
def own_split(tiny_split, tmp_path) -> Path:
    """A private copy of the tiny split (12 + 6 real photos per class), no feature cache."""
    copy = tmp_path / "data"
    shutil.copytree(tiny_split, copy, ignore=shutil.ignore_patterns(".cache"))
    return copy


def validation_pixels(split: Path, size: int):
    """The validation photos as training reads them (the one reader), and their labels."""
    files = [(p, i) for i, name in enumerate(("cats", "dogs"))
             for p in sorted((split / "validate" / name).iterdir())]
    pixels = np.stack([pipelines.read_rgb(p, size) for p, _ in files]).astype("float32")
    return pixels, np.array([label for _, label in files])


def binary_metrics(probs, labels):
    probs = np.clip(probs.reshape(-1).astype("float64"), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))
    return float(np.mean((probs > 0.5) == labels)), loss


def test_bundle_contents_and_the_saved_model_reproduces_validation(own_split, tmp_path,
                                                                   mobilenet_weights):
    result = train(hp(own_split, tmp_path, **GENUINE, epochs=3, augment_copies=2,
                      output=tmp_path / "models/b1"))
    target = tmp_path / "models/b1"
    assert result.bundle == target
    assert sorted(p.name for p in target.iterdir()) == [
        "augment-preview.png", "curves.png", "history.csv", "meta.json", "model.keras",
        "report.html", "settings.json", "train-files.csv"]
    # each one bundle.MADE_BY_RUNS knows (or a later command writes): train --force over it
    # does not take them for the user's
    assert {p.name for p in target.iterdir()} <= bundle.MADE_BY_RUNS["transfer"] | \
        bundle.MADE_LATER
    assert (tmp_path / "models/latest").resolve() == target.resolve()
    listed = (target / "train-files.csv").read_text().splitlines()
    assert listed[0] == "class,file,bytes,path" and len(listed) == 1 + 24
    assert bundle.train_files(target) == {
        (p.name, p.stat().st_size): [(p.parent.name, p.absolute())]
        for p in (own_split / "train").rglob("*.jpg")}
    meta = json.loads((target / "meta.json").read_text())
    assert set(bundle.COMMON_FIELDS) <= set(meta) and meta["kind"] == "transfer"
    assert meta["class_names"] == ["cats", "dogs"] and meta["image_size"] == 96
    assert meta["preprocessing"]["mode"] == "tf" and meta["feature_cache"] == "miss"
    assert meta["augmentation"]["copies"] == 2 and meta["data"]["train_images"] == 24
    assert meta["weights"]["source"] == "imagenet"
    assert meta["timings"]["base_images_per_second"] > 0
    assert result.timings.base_images == 2 * 24 + 12 and result.timings.total > 0
    assert len((target / "history.csv").read_text().splitlines()) == 1 + meta["metrics"][
        "epochs_run"]
    with Image.open(target / "curves.png") as image:
        assert image.format == "PNG"
    # the resolved settings are saved, whole, and fill a TrainSettings again
    saved = json.loads((target / "settings.json").read_text())
    assert saved == meta["settings"]
    assert saved["train_dir"] == str(own_split / "train") and saved["augment_copies"] == 2
    again = TrainSettings(**saved)  # as README says: settings.json repeats the run
    assert again.augment == Augment(**saved["augment"])
    elsewhere = tmp_path / "models/b2"
    assert again.replace(output=elsewhere).validated().as_dict() == {**saved,
                                                                     "output": str(elsewhere)}
    # the saved model takes raw pixels and gives the validation metrics training reported
    model, loaded_meta = bundle.load(target)
    assert loaded_meta == meta
    pixels, labels = validation_pixels(own_split, 96)
    probs = model.predict(pixels, verbose=0)
    assert 0.05 < probs.std(), "features of genuine weights separate the photos"
    accuracy, loss = binary_metrics(probs, labels)
    assert accuracy == meta["metrics"]["val_accuracy"]
    assert loss == pytest.approx(meta["metrics"]["val_loss"], abs=1e-5)


def test_a_repeated_run_hits_the_cache_and_repeats_its_numbers(own_split, tmp_path,
                                                              monkeypatch):
    calls = []
    real_pass = features.run_pass

    def counting_pass(*args, **kwargs):
        calls.append(kwargs["description"])  # which split / copy
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(features, "run_pass", counting_pass)
    first = train(hp(own_split, tmp_path, augment=NO_AUGMENT, output=tmp_path / "a",
                     epochs=3, seed=3))
    assert len(calls) == 2 and first.meta["feature_cache"] == "miss"  # train + validate
    assert (own_split / ".cache/features").is_dir()
    # the second run is the first's saved settings, only the output changed
    saved = json.loads((tmp_path / "a/settings.json").read_text())
    second = train(TrainSettings(**{**saved, "output": tmp_path / "b"}))
    assert len(calls) == 2, "the base ran again on a cache hit"
    assert second.meta["feature_cache"] == "hit"
    assert second.meta["metrics"] == first.meta["metrics"]
    assert second.history == first.history


def test_the_cache_is_invalidated_by_files_mtimes_and_weights(own_split, tmp_path,
                                                              monkeypatch):
    calls = []
    real_pass = features.run_pass

    def counting_pass(*args, **kwargs):
        calls.append(kwargs["description"].split(": ")[1])  # "mobilenet features (tf): train"
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(features, "run_pass", counting_pass)
    settings = dict(augment=NO_AUGMENT, epochs=1, force=True, output=tmp_path / "out")

    def run(**kw):
        calls.clear()
        return train(hp(own_split, tmp_path, **{**settings, **kw})).meta["feature_cache"], calls

    assert run() == ("miss", ["train", "validate"])
    assert run() == ("hit", [])
    victim = sorted((own_split / "validate/dogs").iterdir())[0]
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    # the 24 training features read back, the 12 validation ones computed again
    assert run() == ("partial: 24 of 36 features read, 12 computed", ["validate"]), \
        "a new mtime must invalidate"
    shutil.copy(victim, own_split / "train/cats/extra.jpg")
    assert run() == ("partial: 12 of 37 features read, 25 computed", ["train"]), \
        "a new file must invalidate"
    (own_split / "train/cats/extra.jpg").unlink()
    assert run() == ("hit", [])  # the same files as before: the earlier entry again
    assert run(seed=7) == ("miss", ["train", "validate"]), "other (random) weights"
    assert run(feature_cache=False) == ("off", ["train", "validate"])


def test_the_head_trains_on_copy_e_mod_k_in_epoch_e(own_split, tmp_path, monkeypatch,
                                                    mobilenet_weights):
    """Records what the compiled epoch is given: epoch e trains on augmented copy e % K, every
    photo once, in a new order each epoch (the same orders for every L2 value)."""
    seen, extracted = [], []
    real_epoch, real_extract = phases.HeadTrainer.run_epoch, phases.extract_features

    def recording(self, x, y, w, order, val_x, val_y):
        seen.append((np.asarray(x), np.asarray(order)))
        return real_epoch(self, x, y, w, order, val_x, val_y)

    def extract(*args, **kwargs):
        extracted.append(real_extract(*args, **kwargs))
        return extracted[-1]

    monkeypatch.setattr(phases.HeadTrainer, "run_epoch", recording)
    monkeypatch.setattr(phases, "extract_features", extract)
    epochs = 4
    result = train(hp(own_split, tmp_path, **GENUINE, augment_copies=2, epochs=epochs,
                      patience=10, output=tmp_path / "c"))
    copies = extracted[0].train
    assert len(copies) == 2 and not np.allclose(copies[0], copies[1])
    assert len(seen) == epochs and result.meta["metrics"]["epochs_run"] == epochs
    for epoch, (x, order) in enumerate(seen):
        np.testing.assert_array_equal(x, copies[epoch % 2])
        assert sorted(order) == list(range(24)), "every photo once per epoch"
    assert not all(np.array_equal(seen[0][1], o) for _, o in seen[1:]), "reshuffled"


def test_stopped_early_names_the_epochs_of_the_head_kept(tmp_path, mobilenet_weights):
    """Of the l2 grid's heads, the last to stop was said ("head stopped early after epoch 12")
    while the head kept (its history.csv, curves.png, best epoch) stopped earlier. Real
    flowers, unbalanced as a user's are (40/30/12/40/8), a learning rate that makes the heads
    stop apart."""
    from contextlib import contextmanager

    from conftest import require_asset

    from transfer.progress import Reporter

    flowers = require_asset("data/flowers")
    data = tmp_path / "flowers"
    for name, n in zip(("daisy", "dandelion", "roses", "sunflowers", "tulips"),
                       (40, 30, 12, 40, 8), strict=True):
        (data / name).mkdir(parents=True)
        for photo in sorted((flowers / name).iterdir())[:n]:
            shutil.copyfile(photo, data / name / photo.name)

    class Statuses(Reporter):
        said: list = []

        @contextmanager
        def task(self, description, total=None, kind="items", completed=0):
            yield lambda n=1, **fields: self.said.append(fields.get("status"))

    result = train(hp(data, tmp_path, **{**GENUINE, "image_size": 224}, augment=NO_AUGMENT,
                      epochs=40, learning_rate=0.05, patience=3, feature_cache=False,
                      output=tmp_path / "es"), reporter=Statuses())
    grid = {k: v["epochs_run"] for k, v in result.meta["head"]["l2_grid"].items()}
    kept = result.meta["metrics"]["epochs_run"]
    assert kept < max(grid.values()), ("the test needs heads that stop apart", grid)
    assert kept == len(result.history["loss"]) == grid[f"{result.meta['head']['l2']:g}"]
    assert max(grid.values()) < 40, ("the test needs every head to stop early", grid)
    assert Statuses.said[-1] == (f"head stopped early after epoch {kept} of 40: no lower "
                                 "val_loss in 3 epochs")


def test_early_stopping_restores_the_best_weights(own_split, tmp_path, mobilenet_weights):
    """A learning rate too high makes the validation loss bounce, so the run stops before its
    12 epochs; the model saved is the one of the best epoch, not the last."""
    from contextlib import contextmanager

    from transfer.progress import Reporter

    class Statuses(Reporter):  # the progress bars' status lines
        said: list = []

        @contextmanager
        def task(self, description, total=None, kind="items", completed=0):
            yield lambda n=1, **fields: self.said.append(fields.get("status"))

    result = train(hp(own_split, tmp_path, **GENUINE, augment=NO_AUGMENT, epochs=12,
                      learning_rate=0.02, patience=2, output=tmp_path / "es"),
                   reporter=Statuses())
    m, losses = result.meta["metrics"], result.history["val_loss"]
    assert m["best_epoch"] < m["epochs_run"], "the test needs a run whose last epoch is worse"
    # the bar ends full: its last status says why (it read "12/12 ... head epoch 5")
    assert Statuses.said[-1] == (f"head stopped early after epoch {m['epochs_run']} of 12: "
                                 "no lower val_loss in 2 epochs")
    assert losses[-1] > min(losses)
    assert m["val_loss"] == pytest.approx(min(losses), rel=1e-5)
    assert m["best_epoch"] == int(np.argmin(losses)) + 1
    # best_val_accuracy is the saved (lowest-loss) epoch's accuracy, which README and
    # meta.json's readers take it for; not history.csv's highest (the name is kept)
    assert m["best_val_accuracy"] == result.history["val_accuracy"][m["best_epoch"] - 1]


def test_tensorboard_writes_logs_per_phase(own_split, tmp_path):
    logs = tmp_path / "tb"
    settings = hp(own_split, tmp_path, augment=NO_AUGMENT, epochs=1, tensorboard=logs,
                  output=tmp_path / "tbrun")
    result = train(settings)
    events = list((logs / "head").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert {e.parent.name for e in events} >= {"train", "validation"}
    # and they hold the run's figures (files of no value at all passed the checks above)
    assert tensorboard_scalars(logs / "head/train", "epoch_loss") == pytest.approx(
        result.history["loss"], rel=1e-5)
    assert tensorboard_scalars(logs / "head/validation", "epoch_loss") == pytest.approx(
        result.history["val_loss"], rel=1e-5)


def test_tensorboard_without_its_package_is_one_line_before_work(own_split, tmp_path,
                                                                   monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    monkeypatch.setattr(phases, "build_model", None)  # it must fail before any model is built
    settings = hp(own_split, tmp_path, augment=NO_AUGMENT, epochs=1, tensorboard=tmp_path / "tb",
                  output=tmp_path / "tbrun")
    one_line_error(settings, "--tensorboard needs the tensorboard package")


def test_train_and_validate_folders_anywhere(tiny_split, tmp_path):
    mine, theirs = tmp_path / "a/mine", tmp_path / "b/theirs"
    shutil.copytree(tiny_split / "train", mine)
    shutil.copytree(tiny_split / "validate", theirs)
    (theirs / "dogs" / sorted(os.listdir(theirs / "dogs"))[0]).unlink()
    result = train(hp(tmp_path / "unused", tmp_path, train_dir=mine, validate_dir=theirs,
                      augment=NO_AUGMENT, epochs=1, output=tmp_path / "anywhere"))
    data = result.meta["data"]
    assert {k: data[k] for k in ("train_dir", "validate_dir", "train_images",
                                 "validate_images")} == {
        "train_dir": str(mine), "validate_dir": str(theirs), "train_images": 24,
        "validate_images": 11}
    assert result.meta["settings"]["train_dir"] == str(mine)
    # folders fetch-data did not make are the user's: nothing is written among the photos
    # (nor under an unread --data-dir: the default one appeared as ./data in the working
    # folder); the cache is the user's, beside the converted bases
    assert not (tmp_path / "a/.cache").exists() and not (tmp_path / "unused").exists()
    assert sorted(os.listdir(tmp_path / "a")) == ["mine"]
    assert result.meta["feature_cache"] == "miss"
    again = train(hp(tmp_path / "unused", tmp_path, train_dir=mine, validate_dir=theirs,
                     augment=NO_AUGMENT, epochs=1, output=tmp_path / "again"))
    assert again.meta["feature_cache"] == "hit"
    assert list(features.cache_folder(mine.parent).glob("*.npz"))
    assert features.cache_folder(mine.parent) == (Path(os.environ["KERAS_HOME"])
                                                  / "transfer/features")


def test_tfdata_bundles_evaluate_as_training_measured(own_split, tmp_path, mobilenet_weights):
    import warnings

    from transfer.evaluate import evaluate

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        classic = train(hp(own_split, tmp_path, pipeline="tfdata", augment_copies=0, epochs=2,
                           output=tmp_path / "t1"))
    assert classic.meta["feature_cache"] == "off" and classic.meta["pipeline"] == "tfdata"
    # a program calling train was told by Keras that the run was cut short ("Your input ran
    # out of data") and that shuffle=True was ignored: both epochs ran whole
    assert len(classic.history["loss"]) == 2
    assert not [w for w in said if "ran out of data" in str(w.message)
                or "shuffle=True" in str(w.message)], [str(w.message) for w in said]
    recorder = Recorder()
    cached = train(hp(own_split, tmp_path, **GENUINE, pipeline="tfdata", augment_copies=1,
                      epochs=3, output=tmp_path / "t2"), reporter=recorder)
    assert cached.meta["feature_cache"] == "miss"
    # the head trained on cached features: no pipeline ran, and the run says --pipeline
    # took no part (meta.json said "tfdata", and nothing was said)
    assert cached.meta["pipeline"] == "features"
    assert any(w.startswith("--pipeline tfdata unused") for w in recorder.warnings)
    m = cached.meta["metrics"]
    # every route reads through the one reader: the saved model on the validation photos
    # gives the numbers training measured, and so does evaluate
    model, _ = bundle.load(cached.bundle)
    pixels, labels = validation_pixels(own_split, 96)
    accuracy, loss = binary_metrics(model.predict(pixels, verbose=0), labels)
    assert accuracy == m["val_accuracy"]
    assert loss == pytest.approx(m["val_loss"], abs=1e-5)
    report = evaluate(cached.bundle, output=tmp_path / "report").report
    assert report["images"] == 12
    assert report["accuracy"] == m["val_accuracy"]
    assert report["loss"] == pytest.approx(m["val_loss"], abs=1e-5)


def test_fine_tuning_moves_top_layers_only_and_keeps_batchnorm_frozen(own_split, tmp_path,
                                                                     mobilenet_weights):
    from transfer.tf import keras

    common = dict(GENUINE, augment=NO_AUGMENT, epochs=1, fine_tune_epochs=1, fine_tune_lr=1e-2)
    plain = train(hp(own_split, tmp_path, output=tmp_path / "plain", **common))
    tuned = train(hp(own_split, tmp_path, output=tmp_path / "ft", fine_tune=6, **common))
    assert tuned.history["phase"] == ["head", "fine-tune"]
    result = tuned.meta["training"]["fine_tune_result"]  # it lowered the loss: kept
    assert result["kept"] is True
    assert result["fine_tuned"]["val_loss"] < result["frozen"]["val_loss"]
    assert result["fine_tuned"]["val_loss"] == tuned.meta["metrics"]["val_loss"]

    def base_of(result):
        model, _ = bundle.load(result.bundle)
        return next(layer for layer in model.layers if isinstance(layer, keras.Model))

    a, b = base_of(plain), base_of(tuned)
    changed = {layer.name for layer in a.layers if layer.weights and not all(
        np.array_equal(np.asarray(u), np.asarray(v))
        for u, v in zip(layer.weights, b.get_layer(layer.name).weights, strict=True))}
    # the top 6 layers: conv_dw_13, its BN and ReLU, conv_pw_13, its BN and ReLU
    assert changed == {"conv_dw_13", "conv_pw_13"}
    for layer in b.layers:  # BatchNormalization statistics never moved: inference mode
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(np.asarray(layer.moving_mean),
                                          np.asarray(a.get_layer(layer.name).moving_mean))
    # after fine-tuning the final validation ran the images through the changed base
    pixels, labels = validation_pixels(own_split, 96)
    model, meta = bundle.load(tuned.bundle)
    accuracy, loss = binary_metrics(model.predict(pixels, verbose=0), labels)
    assert accuracy == meta["metrics"]["val_accuracy"]
    assert loss == pytest.approx(meta["metrics"]["val_loss"], abs=1e-5)


def test_fine_tuning_that_raises_the_validation_loss_is_undone(own_split, tmp_path,
                                                                mobilenet_weights):
    """Fine-tuning picks its best epoch among its own epochs only, so a run could end worse
    than the frozen-base model it started from, and say nothing. Here a rate of 1 wrecks the
    top layers: the bundle holds the frozen-base model, weight for weight the run without
    fine-tuning, with its numbers; meta.json and a warning say what happened."""
    common = dict(GENUINE, augment=NO_AUGMENT, epochs=2)
    plain = train(hp(own_split, tmp_path, output=tmp_path / "plain", **common))
    recorder = Recorder()
    tuned = train(hp(own_split, tmp_path, output=tmp_path / "ft", fine_tune=6,
                     fine_tune_epochs=1, fine_tune_lr=1.0, **common), recorder)
    assert tuned.history["phase"] == ["head", "head", "fine-tune"]  # the epochs it ran
    result = tuned.meta["training"]["fine_tune_result"]
    assert result["kept"] is False
    assert result["fine_tuned"]["val_loss"] > result["frozen"]["val_loss"]
    a, _ = bundle.load(plain.bundle)
    b, _ = bundle.load(tuned.bundle)
    assert len(a.weights) == len(b.weights)
    for u, v in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=u.path)
    m, frozen = tuned.meta["metrics"], plain.meta["metrics"]
    assert m["val_loss"] == pytest.approx(frozen["val_loss"], abs=1e-5)
    assert m["val_loss"] == pytest.approx(result["frozen"]["val_loss"], abs=1e-5)
    assert m["val_accuracy"] == frozen["val_accuracy"]
    assert m["best_epoch"] == frozen["best_epoch"] and m["epochs_run"] == 3
    # what the bundle's model scores on the validation photos is what meta.json says
    pixels, labels = validation_pixels(own_split, 96)
    accuracy, loss = binary_metrics(b.predict(pixels, verbose=0), labels)
    assert accuracy == m["val_accuracy"] and loss == pytest.approx(m["val_loss"], abs=1e-5)
    assert any(w.startswith("fine-tuning did not lower the validation loss") and
               "keeps the frozen base" in w for w in recorder.warnings), recorder.warnings
    assert "Fine-tuning was undone" in (tuned.bundle / "report.html").read_text()
    assert "Fine-tuning was undone" not in (plain.bundle / "report.html").read_text()


@pytest.mark.parametrize(("frozen_loss", "tuned_loss", "kept"), [
    (math.nan, 0.6, True),  # a NaN head is no model to go back to
    (0.5, math.nan, False),  # a NaN after fine-tuning is never kept
    (0.5, 0.5, False),  # a tie keeps the frozen model: fine-tuning must lower the loss
])
def test_what_a_non_finite_or_tied_loss_keeps(own_split, tmp_path, monkeypatch, frozen_loss,
                                              tuned_loss, kept):
    """The rule on its edges: the frozen and the fine-tuned model's measures are given."""
    measures = iter([phases.Validation(frozen_loss, 0.5), phases.Validation(tuned_loss, 0.5)])
    monkeypatch.setattr(phases, "final_validation", lambda *a: next(measures))
    result = train(hp(own_split, tmp_path, output=tmp_path / "ft", fine_tune=3,
                      fine_tune_epochs=1, epochs=1, augment=NO_AUGMENT))
    assert result.meta["training"]["fine_tune_result"]["kept"] is kept
    assert result.meta["metrics"]["val_loss"] == pytest.approx(
        tuned_loss if kept else frozen_loss, nan_ok=True)


def test_fine_tune_beyond_the_bases_layers_says_all_of_them(own_split, tmp_path):
    """--fine-tune 5000 said "fine-tuning the top 5000 layers of MobileNet": it unfreezes every
    layer the base has, and says so with the number it has."""
    from transfer import bases

    layers = len(bases.build(bases.get("mobilenet"), 48, alpha=0.25, weights="none").layers)
    recorder = Recorder()
    train(hp(own_split, tmp_path, output=tmp_path / "ft", fine_tune=5000, fine_tune_epochs=1,
             epochs=1, augment=NO_AUGMENT), recorder)
    said = [m for m in recorder.infos if m.startswith("fine-tuning ")]
    assert said == [f"fine-tuning all {layers} layers of MobileNet (27 trainable, "
                    "BatchNormalization frozen; --fine-tune 5000 is more than it has)"]
    recorder = Recorder()
    train(hp(own_split, tmp_path, output=tmp_path / "ft3", fine_tune=3, fine_tune_epochs=1,
             epochs=1, augment=NO_AUGMENT), recorder)
    assert [m for m in recorder.infos if m.startswith("fine-tuning ")] == [
        "fine-tuning the top 3 layers of MobileNet (1 trainable, BatchNormalization frozen)"]


def easy_two_class_set(root: Path, n_train: int = 16, n_val: int = 8) -> Path:
    """Reddish vs bluish noisy squares: a set any learner separates."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("validate", n_val)):
        for name, colour in (("blue", (40, 60, 200)), ("red", (200, 50, 40))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                noise = rng.normal(0, 40, (32, 32, 3))
                pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(("base", "tail"), [
    ("scratch", ["GlobalAveragePooling2D", "Dropout", "Dense"]),
    ("scratch-seeds", ["Flatten", "Dense", "Dropout", "Dense"]),
])
def test_the_cnn_from_scratch_learns(tmp_path, base, tail):
    data = easy_two_class_set(tmp_path / "easy")
    result = train(HParams(data_dir=data, base=base, image_size=32, epochs=6,
                           batch_size=8, augment=NO_AUGMENT, patience=6, learning_rate=1e-3,
                           lr_schedule="constant", models_dir=tmp_path / "models",
                           output=tmp_path / "s"))
    meta, history = result.meta, result.history
    assert meta["feature_cache"] == "off" and meta["keras_class"] == "scratch CNN"
    # the CNN's whole fit is training time (it was filed as "head_training_seconds")
    t = meta["timings"]
    assert t["feature_extraction_seconds"] == 0 and "head_training_seconds" not in t
    assert 0 < t["training_seconds"] <= t["total_seconds"]
    assert history["loss"][-1] < history["loss"][0] * 0.5, history["loss"]
    assert meta["metrics"]["val_accuracy"] >= 0.9, meta["metrics"]
    model, _ = bundle.load(result.bundle)
    layer_types = [type(layer).__name__ for layer in model.layers]
    assert layer_types[-len(tail):] == tail
    assert meta["preprocessing"]["mode"] == "scale"


def test_more_than_two_classes_train_a_softmax_head(tmp_path, mobilenet_weights):
    flowers = require_asset("data/flowers")
    names = sorted(p.name for p in flowers.iterdir() if p.is_dir() and p.name[0] != ".")[:3]
    for name in names:
        files = sorted((flowers / name).glob("*.jpg"))
        for split, chosen in (("train", files[:10]), ("validate", files[10:16])):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for path in chosen:
                shutil.copy(path, tmp_path / "data" / split / name / path.name)
    result = train(hp(tmp_path / "data", tmp_path, **GENUINE, augment=NO_AUGMENT, epochs=15,
                      learning_rate=3e-3, output=tmp_path / "flowers"))
    meta = result.meta
    assert meta["class_names"] == names and meta["output"] == "softmax"
    model, _ = bundle.load(result.bundle)
    assert model.output_shape == (None, 3)
    assert model.get_layer("predictions").get_config()["activation"] == "softmax"
    files = [(p, i) for i, name in enumerate(names)
             for p in sorted((tmp_path / "data/validate" / name).iterdir())]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((96, 96), Image.BILINEAR),
                                  dtype="float32") for p, _ in files])
    probs = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(probs.argmax(1) == np.array([i for _, i in files])))
    assert accuracy == pytest.approx(meta["metrics"]["val_accuracy"])
    assert accuracy > 0.6, "three classes: chance is 1/3"


def test_mirrored_strategy_on_two_logical_cpus_matches_the_default(tiny_split, tmp_path,
                                                                   mobilenet_weights):
    script = textwrap.dedent(f"""
        import json, shutil
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from transfer.training import HParams, train
        from transfer.pipelines import Augment
        out = {{}}
        for strategy in ("none", "mirrored"):
            data = {str(tmp_path)!r} + "/data-" + strategy
            shutil.copytree({str(tiny_split)!r}, data,
                            ignore=shutil.ignore_patterns(".cache"))
            r = train(HParams(data_dir=data, base="mobilenet", alpha=0.25,
                              weights="imagenet", image_size=96, epochs=3, batch_size=8,
                              fine_tune=10, fine_tune_epochs=2, fine_tune_lr=1e-4,
                              distribute=strategy, augment=Augment(enabled=False), dropout=0.0,
                              output={str(tmp_path)!r} + "/" + strategy,
                              models_dir={str(tmp_path)!r}))
            out[strategy] = [r.meta["training"]["replicas"],
                             r.meta["training"]["fine_tune_result"]]
        print("RESULT", json.dumps(out))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    (one, default), (two, mirrored) = out["none"], out["mirrored"]
    assert (one, two) == (1, 2)
    # fine-tuned: the strategy spreads end-to-end fits only (this test compared the frozen
    # route's models, whose feature pass and head run under no strategy: one model twice).
    # Without dropout (whose draws differ per replica) the two fits are one: each replica's
    # half batch sums to the whole batch's gradient. (They were 1.046 against 1.067: Keras
    # shuffled the batches of the PyDataset, which shuffles itself, in another order under
    # the strategy; fit no longer shuffles on top)
    assert mirrored["frozen"] == default["frozen"]
    assert mirrored["fine_tuned"]["val_loss"] != default["frozen"]["val_loss"]
    assert mirrored["fine_tuned"]["val_loss"] == pytest.approx(default["fine_tuned"]["val_loss"],
                                                               abs=1e-4)
    assert mirrored["fine_tuned"]["val_accuracy"] >= 0.5


def test_genuine_imagenet_weights_transfer(trained_bundle):
    """100 real photos per class: the pretrained MobileNet-0.25 reaches >= 0.85."""
    assert trained_bundle.meta["weights"]["source"] == "imagenet"
    assert trained_bundle.meta["metrics"]["val_accuracy"] >= 0.85, trained_bundle.meta["metrics"]


# --------------------------------------------------------------------------- engines, head


def test_the_tflite_engine_trains_as_tensorflow_does(own_split, tmp_path, mobilenet_weights):
    """The same run with each engine: the engine recorded, the same validation accuracy
    (within one photo of 12), and the tflite run's features reused by a tf run (the engine is
    not in the cache key)."""
    common = dict(GENUINE, augment=NO_AUGMENT, epochs=4)
    lite = train(hp(own_split, tmp_path, engine="tflite", output=tmp_path / "lite", **common))
    plain = train(hp(own_split, tmp_path, engine="tf", feature_cache=False,
                     output=tmp_path / "tf", **common))
    engine = lite.meta["engine"]
    assert engine["requested"] == "tflite" and engine["name"] == "tflite", engine
    assert engine["parity_max_abs_diff"] < engine["parity_tolerance"]
    assert engine["images"] == 36 and engine["images_per_second"] > 0
    # the pass's speed leaves out the one-time setup (the conversion, a first run's seconds),
    # which the seconds of the feature pass count
    timings = lite.meta["timings"]
    if engine["conversion_seconds"] > 0:
        assert timings["engine_setup_seconds"] >= engine["conversion_seconds"]
    assert 36 / timings["base_images_per_second"] == pytest.approx(  # seconds rounded to ms
        timings["feature_extraction_seconds"] - timings["engine_setup_seconds"], abs=0.002)
    assert timings["base_images_per_second"] > 36 / timings["feature_extraction_seconds"]
    assert plain.meta["engine"]["name"] == "tf" and plain.meta["feature_cache"] == "off"
    assert abs(lite.meta["metrics"]["val_accuracy"]
               - plain.meta["metrics"]["val_accuracy"]) <= 1 / 12 + 1e-9
    again = train(hp(own_split, tmp_path, engine="tf", output=tmp_path / "again", **common))
    assert again.meta["feature_cache"] == "hit"
    assert again.meta["engine"]["cached_features_from"] == ["tflite"]
    assert again.meta["metrics"] == lite.meta["metrics"]
    # --no-feature-cache computes the features again but reuses the converted base
    fresh = train(hp(own_split, tmp_path, engine="tflite", feature_cache=False,
                     output=tmp_path / "fresh", **common))
    assert fresh.meta["engine"]["name"] == "tflite"
    assert fresh.meta["engine"]["converted_file"] == engine["converted_file"]
    assert fresh.meta["engine"]["conversion_seconds"] == 0.0  # converted once per session
    assert fresh.meta["metrics"] == lite.meta["metrics"]


def test_auto_keeps_tensorflow_for_a_pass_too_small_to_repay_a_conversion(own_split, tmp_path):
    """36 photos: auto does not convert the base (seconds, up to a minute for InceptionV3)."""
    from transfer import engines

    result = train(hp(own_split, tmp_path, augment=NO_AUGMENT, output=tmp_path / "few"))
    engine = result.meta["engine"]
    assert engine["requested"] == "auto" and engine["name"] == "tf"
    assert engine["converted_file"] is None and engine["conversion_seconds"] == 0
    assert f"36 image(s), fewer than {engines.MIN_IMAGES}" in engine["fallback"]


def test_an_unreadable_photo_in_the_feature_pass_is_skipped_and_recorded(own_split, tmp_path):
    victim = sorted((own_split / "train/dogs").iterdir())[4]
    victim.write_bytes(victim.read_bytes()[:1500])  # the header is fine, the pixels are not
    result = train(hp(own_split, tmp_path, augment_copies=2, output=tmp_path / "skip"))
    assert [item["file"] for item in result.meta["skipped"]] == [str(victim)]
    assert result.meta["skipped"][0]["reason"]
    assert result.meta["data"]["train_images"] == 23
    assert result.meta["data"]["counts"]["train"] == {"cats": 12, "dogs": 11}


def test_class_weights_balanced_and_the_auto_rule():
    labels = np.array([0] * 15 + [1] * 10)
    assert phases.class_weights(labels, 2, "auto") == ("none", None)  # 1.5x: not above
    assert phases.class_weights(labels, 2, "none") == ("none", None)
    applied, weights = phases.class_weights(labels, 2, "balanced")
    assert applied == "balanced" and weights == pytest.approx({0: 25 / 30, 1: 25 / 20})
    applied, weights = phases.class_weights(np.array([0] * 16 + [1] * 10 + [2] * 4), 3,
                                            "auto")
    assert applied == "balanced"
    assert weights == pytest.approx({0: 30 / 48, 1: 30 / 30, 2: 30 / 12})


def test_unbalanced_classes_train_with_balanced_weights(own_split, tmp_path):
    for path in sorted((own_split / "train/cats").iterdir())[:6]:  # 6 cats, 12 dogs
        path.unlink()
    result = train(hp(own_split, tmp_path, augment=NO_AUGMENT, output=tmp_path / "unb"))
    weights = result.meta["training"]["class_weight"]
    assert weights == {"mode": "auto", "applied": "balanced",
                       "weights": {"cats": 1.5, "dogs": 0.75}}
    plain = train(hp(own_split, tmp_path, augment=NO_AUGMENT, class_weight="none",
                     output=tmp_path / "unw"))
    assert plain.meta["training"]["class_weight"]["applied"] == "none"
    assert plain.history["loss"] != result.history["loss"]


def test_unbalanced_classes_are_said_and_the_balanced_accuracy_shown(own_split, tmp_path,
                                                                     mobilenet_weights):
    """5 cats against 18 dogs: train warns before the work, and its summary puts the balanced
    accuracy (kept in meta.json) beside the accuracy; evaluate's own count agrees with it."""
    from typer.testing import CliRunner

    from transfer.cli import app
    from transfer.evaluate import evaluate

    for split, keep in (("train", 3), ("validate", 2)):
        for path in sorted((own_split / split / "cats").iterdir())[keep:]:
            path.unlink()
    done = CliRunner().invoke(app, [
        "train", "--base", "mobilenet", "--alpha", "0.25", "--image-size", "96", "--epochs",
        "3", "--no-augment", "--data-dir", str(own_split), "--models-dir",
        str(tmp_path / "models"), "--output", str(tmp_path / "models/unbalanced")])
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.split())
    assert "unbalanced classes: dogs has 18 images, cats 5 (4x)" in said
    meta = json.loads((tmp_path / "models/unbalanced/meta.json").read_text())
    balanced = meta["metrics"]["val_balanced_accuracy"]
    assert f"(balanced accuracy {balanced:.4f})" in said
    measured = evaluate(tmp_path / "models/unbalanced").report
    assert measured["balanced_accuracy"] == pytest.approx(balanced, abs=1e-6)
    assert measured["images"] == 2 + 6


def test_the_l2_penalty_is_chosen_on_the_validation_loss(own_split, tmp_path,
                                                        mobilenet_weights):
    result = train(hp(own_split, tmp_path, **GENUINE, augment=NO_AUGMENT, epochs=6,
                      learning_rate=3e-3, output=tmp_path / "l2"))
    head = result.meta["head"]
    assert head["l2_chosen_by"] == "validation loss"
    grid = head["l2_grid"]
    assert set(grid) == {f"{v:g}" for v in phases.L2_GRID}
    best = min(grid, key=lambda k: grid[k]["best_val_loss"])
    assert head["l2"] == float(best)
    assert result.meta["metrics"]["val_loss"] == pytest.approx(grid[best]["best_val_loss"],
                                                               rel=1e-5)
    # the grid's heads differ (each its own penalty)
    assert len({round(g["best_val_loss"], 6) for g in grid.values()}) > 1
    given = train(hp(own_split, tmp_path, **GENUINE, augment=NO_AUGMENT, epochs=6,
                     learning_rate=3e-3, l2=0.01, output=tmp_path / "l2given"))
    assert given.meta["head"]["l2"] == 0.01 and given.meta["head"]["l2_chosen_by"] == "given"
    assert list(given.meta["head"]["l2_grid"]) == ["0.01"]
    alone = given.meta["head"]["l2_grid"]["0.01"]  # the same head as in the grid
    assert alone["best_epoch"] == grid["0.01"]["best_epoch"]
    assert alone["best_val_loss"] == pytest.approx(grid["0.01"]["best_val_loss"], rel=1e-4)


def test_a_cosine_schedule_decays_to_zero_at_the_last_step(own_split, tmp_path, monkeypatch):
    schedule = phases.schedule_of("cosine", 1e-3, 30)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(15)) == pytest.approx(5e-4, rel=1e-4)
    assert float(schedule(30)) == pytest.approx(0.0, abs=1e-12)
    assert phases.schedule_of("constant", 1e-3, 30) == 1e-3
    from transfer import head

    rates, real = [], head.HeadTrainer.run_epoch

    def spy(self, *args):  # the rate each epoch of the head ended at
        out = real(self, *args)
        rates.append(out[-1])
        return out

    monkeypatch.setattr(head.HeadTrainer, "run_epoch", spy)
    result = train(hp(own_split, tmp_path, augment=NO_AUGMENT, epochs=3, patience=5,
                      lr_schedule="cosine", output=tmp_path / "cos"))
    assert result.meta["training"]["lr_schedule"] == "cosine"
    assert result.meta["metrics"]["epochs_run"] == 3
    # the head trained on it (meta.json said "cosine" of a head trained at a constant rate)
    assert len(rates) == 3 and rates[0] < result.meta["training"]["learning_rate"]
    assert rates[-1] == pytest.approx(0.0, abs=1e-12), rates


# --------------------------------------------------------------------------- errors


def write_jpeg(path: Path, color=(120, 80, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), color).save(path, "JPEG")


def one_line_error(settings, pattern: str) -> str:
    with pytest.raises(TransferError, match=pattern) as info:
        train(settings)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.strip() == text, text
    return text


def test_errors_are_one_clear_line(tiny_split, tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):  # Keras's download, offline (the boundary, faked)
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    cases = []
    cases.append((HParams(data_dir=tmp_path / "nothing"), "run `transfer fetch-data` first"))
    one = tmp_path / "one"
    write_jpeg(one / "train/cats/a.jpg")
    write_jpeg(one / "validate/cats/a.jpg")
    cases.append((HParams(data_dir=one), "at least two class"))
    empty = tmp_path / "empty"
    write_jpeg(empty / "train/cats/a.jpg")
    (empty / "train/dogs").mkdir(parents=True)
    cases.append((HParams(data_dir=empty), "has no images"))
    # a class left with one usable image once the feature pass skipped a truncated photo
    broken = tmp_path / "broken"
    write_jpeg(broken / "train/cats/a.jpg")
    write_jpeg(broken / "train/dogs/b.jpg")
    write_jpeg(broken / "validate/cats/a.jpg")
    write_jpeg(broken / "validate/dogs/b.jpg")
    photo = (broken / "validate/dogs/b.jpg").read_bytes()
    (broken / "validate/dogs/b.jpg").write_bytes(photo[:len(photo) // 2])
    cases.append((HParams(data_dir=broken, models_dir=tmp_path / "m", **FAST),
                  "too few usable images"))
    cases.append((HParams(data_dir=tiny_split, base="inception", image_size=64),
                  "below the minimum of inception"))
    cases.append((HParams(data_dir=tiny_split, base="alexnet"), "unknown base 'alexnet'"))
    cases.append((HParams(data_dir=tiny_split, base="mobilenet", alpha=0.5,
                          models_dir=tmp_path / "m"),
                  "could not be downloaded.*mobilenet_5_0_224_tf_no_top.h5"))
    cases.append((HParams(data_dir=tiny_split, **{**FAST, "weights": str(tmp_path / "w.h5")}),
                  "--weights must be imagenet, none or a weights file"))
    cases.append((HParams(data_dir=tiny_split, **{**FAST, "epochs": 0}),
                  "--epochs must be at least 1"))
    cases.append((HParams(data_dir=tiny_split, **{**FAST, "dropout": 1.5}),
                  r"--dropout must be in \[0, 1\)"))
    for settings, pattern in cases:
        one_line_error(settings, pattern)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_bad_options_fail_before_tensorflow_loads(tmp_path):
    """`transfer train --epochs 0` fails without importing TensorFlow (so in well under 2 s)."""
    script = textwrap.dedent(f"""
        import sys
        from transfer.errors import TransferError
        from transfer.settings import TrainSettings
        from transfer.training import train
        for bad in (dict(epochs=0), dict(learning_rate=-1), dict(patience=-1),
                    dict(base="mobilenet", fine_tune=3, fine_tune_epochs=0),
                    dict(output={str(tmp_path / "mine")!r}, force=True),  # not a bundle
                    dict(dropout="0.5"), dict(learning_rate="1e-3")):  # strings, not numbers
            try:
                train(TrainSettings(data_dir={str(tmp_path / "data")!r}, **bad))
            except TransferError as exc:
                print("ERROR", exc)
        print("TF", "tensorflow" in sys.modules)
    """)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("mine")  # an empty folder would be a place to land
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == "TF False"
    errors = [line for line in lines if line.startswith("ERROR ")]
    assert len(errors) == 7, run.stdout
    assert "--epochs must be at least 1" in errors[0]
    assert "not a model bundle" in errors[4]
    assert errors[5] == "ERROR --dropout must be a number, not '0.5'"
    assert errors[6] == "ERROR --learning-rate must be a number, not '1e-3'"


def test_folders_and_output_are_checked_before_any_model_is_built(tiny_split, tmp_path,
                                                                 monkeypatch):
    def must_not_build(plan):
        raise AssertionError("a model was built before the checks")

    monkeypatch.setattr(phases, "build_model", must_not_build)
    one_line_error(hp(tmp_path / "nothing", tmp_path), "run `transfer fetch-data` first")
    (tmp_path / "old").mkdir()
    (tmp_path / "old/notes.txt").write_text("mine")  # an empty folder would be a place to land
    one_line_error(hp(tiny_split, tmp_path, output=tmp_path / "old"), "not a model bundle")


def test_models_inside_the_photo_folder_are_refused(tmp_path):
    """A bundle written into a folder of class folders is a class (of its PNGs) next time."""
    from transfer.settings import TrainSettings

    photos = tmp_path / "photos"
    for name in ("cats", "dogs"):
        (photos / name).mkdir(parents=True)
    for options in (dict(models_dir=photos / "models"), dict(output=photos / "mine"),
                    dict(models_dir=photos)):
        with pytest.raises(TransferError, match="is inside the data folder"):
            TrainSettings(data_dir=photos, **options).validated()
    TrainSettings(data_dir=photos, models_dir=tmp_path / "models").validated()
    # a bundle given its own --output may live anywhere outside the photos
    TrainSettings(data_dir=photos, models_dir=photos, output=tmp_path / "m").validated()


def test_refuses_to_overwrite_without_force_and_replaces_a_bundle_with_it(own_split, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("mine")
    for force in (False, True):  # one answer: it said 'use --force', then 'not a bundle'
        one_line_error(hp(own_split, tmp_path, output=tmp_path / "mine", force=force,
                          augment=NO_AUGMENT, epochs=1), "not a model bundle")
    assert (tmp_path / "mine/notes.txt").read_text() == "mine"
    first = train(hp(own_split, tmp_path, output=tmp_path / "models/b", augment=NO_AUGMENT,
                     epochs=1))
    one_line_error(hp(own_split, tmp_path, output=tmp_path / "models/b"),
                   "already exists; use --force")
    second = train(hp(own_split, tmp_path, output=tmp_path / "models/b", augment=NO_AUGMENT,
                      epochs=2, force=True))
    meta = json.loads((tmp_path / "models/b/meta.json").read_text())
    assert meta["created"] >= first.meta["created"] and meta["training"]["epochs"] == 2
    assert meta == second.meta
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["b", "latest"]


def test_the_accuracy_gate_is_recorded_in_meta_and_exits_3_from_the_cli(tiny_split, tmp_path):
    """--assert-accuracy-at-least: meta.json records the gate (for Python callers too); the CLI
    writes the bundle, then one line and exit code 3 when it is not met."""
    from typer.testing import CliRunner

    from transfer.cli import app

    args = ["train", "--data-dir", str(tiny_split), "--base", "mobilenet", "--alpha", "0.25",
            "--weights", "none", "--image-size", "32", "--epochs", "1", "--no-augment",
            "--models-dir", str(tmp_path / "models"), "--output", str(tmp_path / "gated"),
            "--assert-accuracy-at-least", "1.0"]
    result = CliRunner().invoke(app, args, prog_name="transfer")
    meta = json.loads((tmp_path / "gated" / "meta.json").read_text())
    gate = meta["gate"]
    assert gate["threshold"] == 1.0 and gate["accuracy"] == meta["metrics"]["val_accuracy"]
    assert gate["passed"] is False and result.exit_code == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]]  # one line, the last
    assert errors[0].startswith("error: validation accuracy 0.")
    assert "Traceback" not in result.stderr
    # from Python: returned, not raised; TrainResult.gate_failed says it (it had no such field)
    from transfer.training import TrainResult

    assert TrainResult(tmp_path / "gated", meta, {}).gate_failed
    assert not TrainResult(tmp_path / "gated", {**meta, "gate": None}, {}).gate_failed
    assert not TrainResult(tmp_path / "gated", {**meta, "gate": {**gate, "passed": True}},
                           {}).gate_failed


def test_a_preview_that_does_not_fit_in_the_data_folder_is_a_warning(own_split, tmp_path,
                                                                     monkeypatch):
    """--preview-augment copies the preview into the data folder after the bundle is written:
    a disk full there leaves no half-written PNG (which the next run would refuse to
    replace) and the finished run is not reported as failed."""
    import errno

    real = shutil.copyfile

    def full_disk(src, dst, **kwargs):
        if Path(src).name == "augment-preview.png":
            with open(dst, "wb") as handle:
                handle.write(Path(src).read_bytes()[:1000])  # what fitted
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    reporter = Recorder()
    result = train(hp(own_split, tmp_path, augment=Augment(), epochs=1, preview_augment=True,
                      output=tmp_path / "models/p"), reporter)
    assert (result.bundle / "augment-preview.png").is_file()
    assert not [p.name for p in own_split.iterdir() if "preview" in p.name]
    assert any("augmentation preview not copied" in w and "No space left on device" in w
               for w in reporter.warnings), reporter.warnings


def test_an_interrupted_pass_leaves_no_shard_files_behind(own_split, tmp_path, monkeypatch):
    """Features beyond the memory budget with the cache off go to a temporary folder of shard
    files; Ctrl-C in the middle of the pass removes it (it was only removed at the end)."""
    import tempfile

    from transfer import features as feature_module

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TRANSFER_FEATURE_MEMORY_MB", "0")
    real, calls = feature_module.run_pass, []

    def interrupted_on_the_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            assert [p.name for p in scratch.iterdir() if p.name.startswith("transfer-features-")]
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_module, "run_pass", interrupted_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        train(hp(own_split, tmp_path, augment=NO_AUGMENT, feature_cache=False,
                 feature_shard_size=8, engine="tf", output=tmp_path / "models/i"))
    assert len(calls) == 3
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("transfer-features-")]


def test_streamed_shards_hold_every_class_and_in_memory_ones_keep_the_folders_order(
        own_split, tmp_path, monkeypatch):
    """The head streamed shard by shard never lets a batch cross a shard: shards cut in the
    folders' order held one class each, so every batch did (measured: a worse head than the
    same run in memory, on every seed). A streamed pass interleaves the classes, every shard
    holding both in proportion; a pass kept in memory cuts them as before (the same cache
    entries, the same head)."""
    from transfer import features as feature_module

    real, shards = feature_module.run_pass, []

    def recorded(paths, labels, *args, **kwargs):
        shards.append(sorted(set(np.asarray(labels).tolist())))
        return real(paths, labels, *args, **kwargs)

    monkeypatch.setattr(feature_module, "run_pass", recorded)
    monkeypatch.setenv("TRANSFER_FEATURE_MEMORY_MB", "0")
    streamed = train(hp(own_split, tmp_path, augment=NO_AUGMENT, feature_shard_size=6,
                        engine="tf", output=tmp_path / "models/streamed"))
    assert len(shards) == 24 // 6 + 12 // 6  # train and validation passes, 6 photos a shard
    assert all(classes == [0, 1] for classes in shards), shards
    assert streamed.meta["data"]["train_images"] == 24
    shards.clear()
    monkeypatch.delenv("TRANSFER_FEATURE_MEMORY_MB")
    train(hp(own_split, tmp_path, augment=NO_AUGMENT, feature_shard_size=6, engine="tf",
             output=tmp_path / "models/memory"))
    assert shards == [[0]] * 2 + [[1]] * 2 + [[0], [1]], "in memory: the folders' order"


def test_a_cached_shard_with_no_readable_photo_is_read_back(own_split, tmp_path):
    """A shard none of whose photos could be read was cached as features of shape (0, 0): the
    run itself went on, but every rerun (a cache hit) failed joining it to the others
    (np.concatenate's ValueError). It is cached as (0, width) and read back."""
    cats = own_split / "train" / "cats"
    whole = next(iter(sorted(cats.iterdir()))).read_bytes()
    (cats / "zzz-cut-short.jpg").write_bytes(whole[:len(whole) // 3])  # a JPEG cut short
    runs = [train(hp(own_split, tmp_path, augment=NO_AUGMENT, feature_shard_size=1, engine="tf",
                     epochs=2, output=tmp_path / f"models/{name}")) for name in ("a", "b")]
    assert [r.meta["feature_cache"] for r in runs] == ["miss", "hit"]
    for run in runs:
        assert [Path(s["file"]).name for s in run.meta["skipped"]] == ["zzz-cut-short.jpg"]
        assert run.meta["data"]["train_images"] == 24
    assert runs[1].meta["metrics"] == runs[0].meta["metrics"]


def test_a_cache_hit_leaves_out_the_same_photos_however_the_folder_is_named(
        own_split, tmp_path, monkeypatch):
    """The cache finds a shard by its files relative to the data folder, but the files it
    could not read were kept as the first run named them (data/train/cats/x.jpg): a run
    naming the folder another way (/home/me/project/data) counted them as usable photos
    (train_images 25, skipped listing the other spelling). Spelled as this run names them."""
    cats = own_split / "train" / "cats"
    whole = next(iter(sorted(cats.iterdir()))).read_bytes()
    (cats / "zzz-cut-short.jpg").write_bytes(whole[:len(whole) // 3])
    monkeypatch.chdir(own_split.parent)
    runs = [train(hp(Path(folder), tmp_path, augment=NO_AUGMENT, engine="tf", epochs=2,
                     output=tmp_path / f"models/{name}"))
            for name, folder in (("a", own_split.name), ("b", own_split))]
    assert [r.meta["feature_cache"] for r in runs] == ["miss", "hit"]
    assert [r.meta["data"]["train_images"] for r in runs] == [24, 24]
    assert [r.meta["skipped"][0]["file"] for r in runs] == [
        f"{own_split.name}/train/cats/zzz-cut-short.jpg", str(cats / "zzz-cut-short.jpg")]


def test_a_checkpoint_resumes_whatever_the_options_that_do_not_train(own_split, tmp_path,
                                                                      monkeypatch):
    """A multi-worker rerun "the same command again" from another folder, naming the data
    folder another way, or adding --tensorboard (--engine, --no-feature-cache...), found its
    epoch checkpoints "of another run" and started over. They do not change what is trained;
    the photos (relative to the data folder) and the settings that do still count."""
    from transfer.phases import checkpoint_fingerprint
    from transfer.training import plan

    monkeypatch.chdir(own_split.parent)

    def fingerprint(data: Path = Path(own_split.name), home: Path = tmp_path, **kw) -> str:
        return checkpoint_fingerprint(plan(hp(data, home, fine_tune=2,
                                              **kw).validated().resolved()), "fine-tune", 2)

    first = fingerprint()
    assert fingerprint(own_split, tmp_path / "elsewhere", tensorboard=tmp_path / "tb",
                       engine="tf", feature_cache=False, assert_accuracy_at_least=0.5,
                       preview_augment=True) == first
    assert fingerprint(fine_tune_lr=1e-4) != first and fingerprint(seed=1) != first
    (own_split / "train/cats" / "one-more.jpg").write_bytes(
        next(iter(sorted((own_split / "train/dogs").iterdir()))).read_bytes())
    assert fingerprint() != first


def test_the_preview_draws_the_copies_the_feature_pass_drew(own_split, tmp_path,
                                                            monkeypatch):
    """Each augmented copy's draw goes by the photo's place in the feature pass's list; the
    preview took places from the usable list after the pass, where an unreadable file found
    by the pass no longer stood: every photo after it was drawn with another photo's draw
    (and a streamed pass's interleaved classes moved them all)."""
    from transfer import preview

    cats = own_split / "train" / "cats"
    whole = next(iter(sorted(cats.iterdir()))).read_bytes()
    (cats / "000-cut-short.jpg").write_bytes(whole[:len(whole) // 3])  # first in the list
    drawn = []
    real = preview.preview_augment
    monkeypatch.setattr(preview, "preview_augment",
                        lambda *a, **kw: drawn.append(kw.get("indices")) or real(*a, **kw))
    run = train(hp(own_split, tmp_path, augment=Augment(), augment_copies=1, engine="tf",
                   output=tmp_path / "models/p"))
    assert [Path(s["file"]).name for s in run.meta["skipped"]] == ["000-cut-short.jpg"]
    first = sorted(p for p in cats.iterdir() if p.name != "000-cut-short.jpg")[0]
    assert drawn and drawn[-1][first] == 1  # second in the pass's list, after the cut one


def test_train_waits_for_no_fetch_data_but_refuses_while_one_writes(own_split, tmp_path):
    """A fetch-data writing the split (another process holds the folder's lock): train refuses
    in one line before any work; another train reading the same folder does not stop it."""
    with lock_held_elsewhere(own_split, shared=False):
        with pytest.raises(TransferError, match=f"fetch-data is writing the split in "
                                                f"{own_split}; wait for it to end"):
            train(hp(own_split, tmp_path, augment=NO_AUGMENT, output=tmp_path / "models/a"))
    assert not (tmp_path / "models/a").exists()
    with lock_held_elsewhere(own_split, shared=True):
        result = train(hp(own_split, tmp_path, augment=NO_AUGMENT, epochs=1,
                          output=tmp_path / "models/b"))
    assert result.bundle == tmp_path / "models/b"
    # --train-dir/--validate-dir: the folder holding them is what counts, not --data-dir
    other = tmp_path / "data-not-read"
    other.mkdir()
    named = dict(train_dir=own_split / "train", validate_dir=own_split / "validate",
                 augment=NO_AUGMENT, epochs=1)
    with lock_held_elsewhere(own_split, shared=False):
        with pytest.raises(TransferError, match=f"fetch-data is writing the split in "
                                                f"{own_split}"):
            train(hp(other, tmp_path, **named, output=tmp_path / "models/c"))
    with lock_held_elsewhere(other, shared=False):
        assert train(hp(other, tmp_path, **named, output=tmp_path / "models/d")).bundle
    # the feature cache goes beside the photos read, not into --data-dir (a data/ folder was
    # made in the working directory)
    assert list((own_split / ".cache/features").glob("*.npz"))
    assert list(other.iterdir()) == []


def test_an_interrupt_after_the_model_is_saved_says_where_it_is(own_split, tmp_path,
                                                                monkeypatch):
    """Ctrl-C while the report was written ended with 'interrupted' only, though the bundle
    was in place and latest pointed at it: the user believed no model was made."""
    from transfer import report

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_quietly", interrupted)
    recorder = Recorder()
    out = tmp_path / "models/saved"
    with pytest.raises(KeyboardInterrupt):
        train(HParams(data_dir=own_split, models_dir=tmp_path / "models", output=out,
                      augment=NO_AUGMENT, **FAST), recorder)
    assert bundle.is_bundle(out)
    assert recorder.warnings[-1] == (f"interrupted after the model was saved in {out}; its "
                                     f"report was not written (transfer report {out} writes it)")


def test_the_saved_epoch_of_a_fine_tuned_run_is_its_fine_tuning_best():
    """Fine-tuning restores its own best epoch: 'best epoch 38 of 45' named a head epoch
    (whose validation loss, on the mean of two views, was lower) though the bundle held
    fine-tuning's epoch 44."""
    from transfer.training import saved_epoch

    history = {"val_loss": [0.9, 0.7, 0.8, 0.95, 0.85, 1.0],
               "phase": ["head", "head", "head", "fine-tune", "fine-tune", "fine-tune"]}
    assert saved_epoch(history) == 5
    assert saved_epoch({"val_loss": [0.9, 0.7, 0.8], "phase": ["head"] * 3}) == 2
    assert saved_epoch({"val_loss": [0.9, 0.7, 0.8]}) == 2 and saved_epoch({}) == 1


def test_an_interrupt_while_the_bundle_is_written_leaves_no_checkpoints(own_split, tmp_path,
                                                                       monkeypatch):
    """Ctrl-C after the last epoch, while the bundle is being written: `interrupted`, and the
    epoch checkpoints (models/.NAME.checkpoints, named by a timestamp by default, so they
    piled up) go as they do after an interrupt during training."""
    def interrupted(*args, **kwargs):
        assert list((tmp_path / "models").glob(".*.checkpoints/*")), "no checkpoint to remove"
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(hp(own_split, tmp_path, output=tmp_path / "models/ft", fine_tune=4,
                 fine_tune_epochs=1, augment=NO_AUGMENT, epochs=1))
    assert not list((tmp_path / "models").glob(".*.checkpoints"))


@pytest.mark.parametrize("bad, message", [
    (dict(l2="0.1"), "--l2 must be a number, not '0.1'"),
    (dict(augment=Augment(rotation="20")), "--rotation must be a number, not '20'"),
    (dict(image_size="224"), "--image-size must be a whole number, not '224'"),
    (dict(augment=None), "augment= must be an Augment(...), not None"),
    (dict(data_dir=None), "--data-dir must be a path, not None"),
    (dict(base="mobilenet", alpha="0.25"), "--alpha must be a number, not '0.25'"),
    (dict(assert_accuracy_at_least="0.9"),
     "--assert-accuracy-at-least must be a number, not '0.9'"),
    (dict(validation_split="0.2"), "--validation-split must be a number, not '0.2'"),
    (dict(feature_cache="no"), "--feature-cache must be True or False, not 'no'"),  # meant on
    (dict(augment=Augment(flip="no")), "--flip must be True or False, not 'no'"),
    (dict(weights=None), "--weights must be a path, not None"),
    (dict(models_dir=None), "--models-dir must be a path, not None"),
    (dict(output=5), "--output must be a path, not 5"),
])
def test_library_settings_of_the_wrong_type_are_one_error(bad, message):
    """From Python a number can come as a string (a config file, a form): one TransferError
    quoting it, not a TypeError from a comparison deep in the checks."""
    with pytest.raises(TransferError) as info:
        TrainSettings(**bad).validated()
    assert str(info.value) == message


def test_a_cache_that_cannot_be_written_is_said_once(own_split, tmp_path, monkeypatch):
    """A feature cache that cannot be written (here fetch-data's split on a read-only disk):
    the run goes on and says so once, not once per shard (here 5 of them)."""
    from unwritable import unwritable_folder

    stores, real = [], features.store_quietly
    monkeypatch.setattr(features, "store_quietly", lambda *a: stores.append(real(*a)) or False)
    reporter = Recorder()
    with unwritable_folder(own_split / ".cache") as locked:
        train(hp(own_split, tmp_path, augment=NO_AUGMENT, feature_shard_size=8, engine="tf",
                 output=tmp_path / "models/r"), reporter)
        assert list(locked.iterdir()) == []
    assert stores == [False] * 5  # 24 training photos in 3 shards, 12 validation ones in 2
    said = [w for w in reporter.warnings if w.startswith("feature cache not written")]
    assert len(said) == 1, reporter.warnings
    assert str(own_split / ".cache") in said[0]


def test_fine_tuning_with_output_elsewhere_writes_nothing_among_the_photos(own_split, tmp_path,
                                                                         monkeypatch):
    """`train --data-dir . --output ../b1 --fine-tune 3` from inside the photo folder made an
    empty models/ there (its checkpoints' folder in --models-dir), which the next train of the
    folder took for a class; --preview-augment with --train-dir wrote into ./data, which that
    run did not read (a warning at the end). The checkpoints go beside the bundle, and the
    preview beside the folders read."""
    monkeypatch.chdir(own_split)  # models_dir "models" is then inside the photos
    before = sorted(p.relative_to(own_split) for p in own_split.rglob("*"))
    train(HParams(train_dir=own_split / "train", validate_dir=own_split / "validate",
                  output=tmp_path / "b1", fine_tune=3, fine_tune_epochs=1, preview_augment=True,
                  feature_cache=False, **{**FAST, "epochs": 1, "augment": NO_AUGMENT}))
    after = sorted(p.relative_to(own_split) for p in own_split.rglob("*"))
    assert [p for p in after if p not in before] == [Path("augment-preview.png")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1", "data", "latest"]  # no checkpoints


def test_random_transforms_a_run_does_not_use_are_said_not_recorded_as_used(own_split, tmp_path,
                                                                           monkeypatch):
    """On the default route (test-time flips, no transformed copies) --rotation 40 --zoom 0.5
    changed nothing, yet meta.json recorded them as the run's augmentation and the bundle's
    preview showed transformed photos the model never trained on. Now a warning says so,
    meta.json records random_transforms false, and the preview shows each photo and its
    mirror image, which is what the head trains on."""
    from transfer import plots

    drawn = []
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, *a, **k: (drawn.append(fig),
                                                            real_save(fig, *a, **k)))
    reporter = Recorder()
    result = train(hp(own_split, tmp_path, augment=Augment(rotation=40, zoom=0.5), epochs=1),
                   reporter)
    assert result.meta["test_time"]["flips"] and result.meta["augmentation"]["copies"] == 0
    assert result.meta["augmentation"]["random_transforms"] is False
    assert any(w.startswith("--rotation 40 --zoom 0.5 unused: the head trains on each photo's "
                            "mean with its mirror image") for w in reporter.warnings), \
        reporter.warnings
    preview = next(fig for fig in drawn
                   if "mirror image" in fig._suptitle.get_text().replace("\n", " "))
    photo, mirror = (np.asarray(ax.images[0].get_array()) for ax in preview.axes[:2])
    assert np.array_equal(mirror, photo[:, ::-1])
    # each row names its class (it said "0: cat.3.jpg", the class's number)
    rows = [ax.get_ylabel() for ax in preview.axes[::2]]
    assert rows and all(row.split(": ")[0] in ("cats", "dogs") for row in rows), rows
    assert "no random transform" in preview._suptitle.get_text().replace("\n", " ")
    assert not any("--validation-split" in w for w in reporter.warnings)
    # FixRes (a training size below the model's): the head trains on the plain photos at that
    # size, as the warning and the preview (one column: the photo at 48 px) now say
    drawn.clear()
    reporter = Recorder()
    fixres = train(hp(own_split, tmp_path, augment=Augment(rotation=40), epochs=1,
                      image_size=64, train_size=48, output=tmp_path / "fixres"), reporter)
    assert fixres.meta["augmentation"]["random_transforms"] is False
    assert any(w.startswith("--rotation 40 unused: the head trains on the photos as they are "
                            "at 48 px (the saved model averages photo and mirror at 64 px)")
               for w in reporter.warnings), reporter.warnings
    preview = next(fig for fig in drawn
                   if "each photo as it is" in fig._suptitle.get_text().replace("\n", " "))
    assert len(preview.axes) == 6 and all(len(ax.images) == 1 for ax in preview.axes)
    assert np.asarray(preview.axes[0].images[0].get_array()).shape == (48, 48, 3)
    # with --fine-tune the transforms are fine-tuning's, on photos at the model's size
    drawn.clear()
    train(hp(own_split, tmp_path, augment=Augment(rotation=40), epochs=1, image_size=64,
             train_size=48, fine_tune=3, fine_tune_epochs=1, output=tmp_path / "fixres-ft"))
    preview = next(fig for fig in drawn
                   if "rotation" in fig._suptitle.get_text().replace("\n", " "))
    assert np.asarray(preview.axes[0].images[0].get_array()).shape == (64, 64, 3)
    assert "feature pass" not in preview._suptitle.get_text().replace("\n", " ")
    # with transformed copies asked for, they are used, and said so; a --validation-split
    # given with train/ and validate/ folders is said to be unused (it was ignored in silence)
    reporter = Recorder()
    used = train(hp(own_split, tmp_path, augment=Augment(rotation=40), epochs=1,
                    augment_copies=1, output=tmp_path / "copies", validation_split=0.5),
                 reporter)
    assert used.meta["augmentation"]["random_transforms"] is True
    assert "--validation-split 0.5 unused: the photos are split into their train and validate " \
        "folders already" in reporter.warnings


def test_options_a_run_does_not_use_are_said_before_it_trains(own_split, tmp_path):
    """--fine-tune-lr without --fine-tune, --augment-copies and --rotation with --no-augment,
    --dropout/--dense/--l2 with a CNN from scratch, --l2 on an end-to-end fit, --no-feature-cache
    with no feature pass, --worker-timeout on one worker: each trained as if never given,
    without a word, and settings.json recorded it as used."""
    from transfer.training import plan, unused_options

    def said(**kw):
        return unused_options(plan(hp(own_split, tmp_path, **kw).validated().resolved()))

    assert said() == [] and said(l2=0.01, fine_tune=2, fine_tune_lr=1e-4) == []
    assert said(fine_tune_epochs=3, fine_tune_lr=1e-4) == [
        "--fine-tune-epochs 3 --fine-tune-lr 0.0001 unused: no fine-tuning without "
        "--fine-tune N (the top N layers of the base to unfreeze)"]
    assert said(augment=Augment(enabled=False, rotation=40), augment_copies=2) == [
        "--augment-copies 2 --rotation 40 unused: --no-augment turns augmentation off"]
    assert said(base="scratch", alpha=1.0, image_size=64, dropout=0.5, l2=0.01) == [
        "--dropout 0.5 --l2 0.01 unused: a CNN from scratch has its own fixed head "
        "(meta.json's head)"]
    assert said(augment_copies=0, l2=0.01) == [
        "--l2 0.01 unused: it is the penalty of the head trained on features computed once; "
        "this run fits end to end (--augment-copies 0)"]
    # a CNN from scratch takes no copies and has no feature pass to run on an engine
    assert said(base="scratch", alpha=1.0, image_size=64, augment_copies=2, engine="tflite") == [
        "--augment-copies 2 unused: a CNN from scratch learns from photos transformed afresh "
        "each epoch, not from copies of features computed once",
        "--engine tflite unused: it runs the frozen base's feature pass, and this run has "
        "none: it fits end to end (--base scratch)"]
    assert said(augment_copies=0, engine="tf") == [
        "--engine tf unused: it runs the frozen base's feature pass, and this run has none: "
        "it fits end to end (--augment-copies 0)"]
    assert said(engine="tf") == [] and said(fine_tune=2, engine="tflite") == []
    # the feature pass's cache options where there is none; a cluster's timeout on one machine
    assert said(augment_copies=0, feature_cache=False, feature_shard_size=64) == [
        "--feature-shard-size 64 --no-feature-cache unused: they concern the frozen base's "
        "feature pass, and this run has none: it fits end to end (--augment-copies 0)"]
    assert said(feature_cache=False, feature_shard_size=64) == []
    assert said(base="scratch", alpha=1.0, image_size=64, feature_cache=False) == [
        "--no-feature-cache unused: it concerns the frozen base's feature pass, and this run "
        "has none: it fits end to end (--base scratch)"]
    assert said(worker_timeout=30) == [
        "--worker-timeout 30 unused: it bounds the waits of a run over several workers "
        "(--distribute multi-worker)"]
    # fine-tuning's options with a CNN from scratch; a strategy on the frozen route (its
    # feature pass and NumPy head run under none: meta.json said replicas 2)
    assert said(base="scratch", alpha=1.0, image_size=64, fine_tune_lr=1e-4) == [
        "--fine-tune-lr 0.0001 unused: a CNN from scratch trains whole from the start; there "
        "is no pretrained base to fine-tune"]
    assert said(distribute="mirrored") == [
        "--distribute mirrored unused: this run's base runs once a photo (the feature pass) "
        "and its head trains on those features, neither under Keras's strategy; it spreads "
        "end-to-end fits over the devices (--fine-tune N, --augment-copies 0, --base scratch)"]
    assert said(distribute="mirrored", fine_tune=2) == []


def test_a_split_that_leaves_few_training_photos_is_said(tmp_path):
    """--validation-split 0.99 on 15 photos a class trained on 1 each without a word (the
    warning about small classes counted training and validation photos together)."""
    from conftest import png_bytes

    from transfer.training import plan, report_data

    for name in ("daisy", "roses", "tulips"):
        (tmp_path / "fl" / name).mkdir(parents=True)
        for i in range(15):
            (tmp_path / "fl" / name / f"{i}.png").write_bytes(png_bytes(size=(32 + i, 32)))
    for split, warned in ((0.99, True), (0.2, False)):
        reporter = Recorder()
        settings = hp(tmp_path / "fl", tmp_path, validation_split=split)
        report_data(plan(settings.validated().resolved()), reporter)
        said = [w for w in reporter.warnings if "too few training photos" in w]
        assert said == (["--validation-split 0.99 leaves too few training photos to learn "
                         "from (daisy 1, roses 1, tulips 1); the default 0.2 keeps 80% of "
                         "each class for training"] if warned else []), reporter.warnings
    # a small class beside them (said as few) no longer hides the others' split: daisy and
    # roses left with 1 training photo each were said by nothing
    (tmp_path / "fl" / "iris").mkdir()
    for i in range(2):
        (tmp_path / "fl" / "iris" / f"{i}.png").write_bytes(png_bytes(size=(40 + i, 32)))
    reporter = Recorder()
    report_data(plan(hp(tmp_path / "fl", tmp_path, validation_split=0.9).validated().resolved()),
                reporter)
    assert [w for w in reporter.warnings if "too few" in w] == [
        "class iris has only 2 images (fewer than 10): too few to learn it well or to measure "
        "it; add photos if you can",
        "--validation-split 0.9 leaves too few training photos to learn from (daisy 1, roses "
        "1, tulips 1); the default 0.2 keeps 80% of each class for training"]


def test_a_run_that_diverges_says_so(own_split, tmp_path):
    """--learning-rate 1e30: the loss went NaN, the bundle was written as a success without a
    word (after 'invalid value encountered in cast' from the report's heatmaps), and evaluate
    then gave ROC AUC 1.0000 from NaN scores ranked by their position."""
    import warnings

    from transfer import metrics

    reporter = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy's overflow lines, as the CLI shows
        result = train(hp(own_split, tmp_path, base="scratch", alpha=1.0, image_size=64,
                          epochs=1, learning_rate=1e30), reporter)
    written = json.loads((result.bundle / "meta.json").read_text())
    assert written["metrics"]["val_loss"] is None  # NaN, written as null
    assert ("the training diverged (the model's outputs are not numbers): this model is no use; "
            "try a lower --learning-rate than 1e+30") in reporter.warnings, reporter.warnings
    # the head trained on features (NumPy): "warning: overflow encountered in square" and
    # four more such lines; now the one line above
    head_reporter = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        head = train(hp(own_split, tmp_path, learning_rate=1e30, l2=0.001,
                        output=tmp_path / "head"), head_reporter)
    written = json.loads((head.bundle / "meta.json").read_text())
    assert written["metrics"]["val_loss"] is None  # NaN, written as null
    assert ("the training diverged (the model's outputs are not numbers): this model is no use; "
            "try a lower --learning-rate than 1e+30") in head_reporter.warnings, \
        head_reporter.warnings
    assert metrics.roc_auc([0, 1, 0, 1], [np.nan] * 4) is None
    assert metrics.roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0


def test_the_report_draws_its_grad_cams_with_the_model_train_holds(own_split, tmp_path,
                                                                  monkeypatch):
    """The report at the end of train traces its Grad-CAM overlays with the model the run has
    just saved, in memory: model.keras is not loaded a second time (0.4-0.5 s a run)."""
    monkeypatch.setenv("TRANSFER_REPORT_GRADCAMS", "4")  # the suite's default is 0
    loads: list = []
    real = bundle.load_keras
    monkeypatch.setattr(bundle, "load_keras", lambda path: loads.append(path) or real(path))
    result = train(hp(own_split, tmp_path, output=tmp_path / "models/r"))
    page = (result.bundle / "report.html").read_text()
    assert page.count('class="gradcam"') == 4
    assert loads == []
    from transfer import report  # the same figures as the saved file, loaded, draws

    drawn = re.findall(r'<figure><img class="gradcam".*?</figure>', page)
    assert drawn == report.gradcam_figures(result.bundle, result.meta, count=4)
    assert len(loads) == 1


def test_the_cnn_from_scratch_is_not_stopped_or_kept_in_its_noisy_first_half(tmp_path):
    """Early stopping cut `compare --runs scratch` off in the first half of its schedule and
    kept epoch 1 (validation at chance in every epoch, the lowest loss at the first): the
    README says it cannot. The second half is watched, its best epoch kept."""
    from transfer.training import saved_epoch

    data = easy_two_class_set(tmp_path / "easy")
    result = train(HParams(data_dir=data, base="scratch", image_size=32, epochs=6,
                           batch_size=8, augment=NO_AUGMENT, patience=1, learning_rate=0.3,
                           lr_schedule="constant", models_dir=tmp_path / "models",
                           output=tmp_path / "s"))
    metrics = result.meta["metrics"]
    losses = result.history["val_loss"]
    assert len(losses) >= 4 and metrics["epochs_run"] == len(losses)  # 3 watched + patience
    assert metrics["best_epoch"] >= 4
    assert metrics["best_epoch"] == 4 + int(np.argmin(losses[3:]))
    assert metrics["best_epoch_from"] == 4  # said: "best epoch 14" read as the lowest loss
    from typer.testing import CliRunner

    from transfer.cli import app

    said = CliRunner().invoke(app, [
        "train", "--data-dir", str(data), "--base", "scratch", "--image-size", "32", "--epochs",
        "6", "--batch-size", "8", "--no-augment", "--patience", "1", "--learning-rate", "0.3",
        "--lr-schedule", "constant", "--models-dir", str(tmp_path / "models"), "--output",
        str(tmp_path / "cli")])
    assert said.exit_code == 0, said.output
    again = json.loads((tmp_path / "cli" / "meta.json").read_text())["metrics"]
    assert (f"(best epoch {again['best_epoch']} of {again['epochs_run']}, the best of epochs "
            f"4-{again['epochs_run']})") in " ".join(said.output.split())
    # no feature pass to speak of (it said "feature cache: off; features 0.0 s")
    assert "no feature pass; training" in said.output and "feature cache" not in said.output
    # which epoch a history's bundle holds, watched from the 4th
    history = {"val_loss": [0.1, 0.9, 0.8, 0.5, 0.7, 0.6], "phase": ["train"] * 6}
    assert saved_epoch(history) == 1 and saved_epoch(history, watched_from=3) == 4


def tensorboard_scalars(folder: Path, tag: str) -> list[float]:
    """The values of ``tag`` in the event files under ``folder``, in step order."""
    from transfer.tf import tf

    found = []
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag == tag:
                    found.append((event.step, float(tf.make_ndarray(value.tensor))))
    return [v for _, v in sorted(found)]


@pytest.mark.parametrize("pipeline", ["tfdata", "generator"])
def test_a_cosine_schedule_ends_at_the_last_step_on_either_pipeline(pipeline, own_split,
                                                                    tmp_path):
    """The tf.data pipeline's length is unknown to Keras (unreadable files are left out as it
    goes), and Keras counted one step more an epoch than it ran: a cosine schedule reached 0
    epochs early (a 24-epoch scratch run trained its last 3 at rate 0). The rate after each
    epoch is now the schedule's at the steps run, on both pipelines."""
    from transfer.tf import keras

    logs = tmp_path / "tb"
    result = train(hp(own_split, tmp_path, base="scratch", alpha=1.0, image_size=32, epochs=3,
                      pipeline=pipeline, lr_schedule="cosine", learning_rate=2e-3,
                      tensorboard=logs, output=tmp_path / pipeline))
    steps = 3  # 24 training photos at --batch-size 8
    assert sum(result.counts["train"].values()) == 24
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=3 * steps, alpha=0.0)
    logged = tensorboard_scalars(logs, "epoch_learning_rate")
    assert logged == pytest.approx([float(schedule(e * steps)) for e in (1, 2, 3)], rel=1e-5,
                                   abs=1e-9), logged


def test_the_preview_of_cached_copies_shows_the_copies_the_pass_computed(own_split, tmp_path,
                                                                       monkeypatch):
    """--tta none caches one transformed copy of each photo, the only one its head sees: the
    preview drew three others (each photo's draw went by its row in the picture, not by its
    place in the training list). Now each tile is one of the copies the feature pass
    computed, and there are as many tiles as copies."""
    from PIL import Image

    from transfer import features, preview

    drawn, shown, into = [], [], {"list": None}
    real_affine, real_versions = features.random_affine, preview.augmented_versions

    def spy(pixels, augment, rng):  # the real transform, its outputs written down
        out = real_affine(pixels, augment, rng)
        into["list"].append(out.tobytes())
        return out

    def versions(*args, **kwargs):
        into["list"] = shown
        return real_versions(*args, **kwargs)

    into["list"] = drawn
    monkeypatch.setattr(features, "random_affine", spy)
    monkeypatch.setattr(preview, "augmented_versions", versions)
    result = train(hp(own_split, tmp_path, **GENUINE, tta="none", augment_copies=1, epochs=1,
                      output=tmp_path / "copies"))
    assert result.meta["feature_cache"] == "miss" and len(drawn) == 24  # one copy each
    assert len(shown) == 6 and set(shown) <= set(drawn)
    with Image.open(result.bundle / "augment-preview.png") as picture:
        assert picture.width == 2 * 2 * 80  # the photo and its one copy


def mirrored_classes(photos: Path, root: Path) -> Path:
    """A data set whose classes are mirror images of each other: left/ holds real photos (the
    cats and dogs of ``photos``), right/ the same photos mirrored (PNG both: nothing but the
    mirror tells a photo from its twin)."""
    for side in ("left", "right"):
        (root / side).mkdir(parents=True)
    for i, path in enumerate(sorted(photos.rglob("*.jpg"))):
        with Image.open(path) as photo:
            photo = photo.convert("RGB")
            photo.save(root / "left" / f"{i:02d}.png")
            photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "right" / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("options", [{}, {"train_size": 288}, {"augment_copies": 2}])
def test_no_flip_keeps_test_time_flips_off(own_split, tmp_path, options):
    """--no-flip (a photo's mirror image is another picture) was overridden by --tta auto: the
    saved model averaged every photo with its mirror image, and with --train-size 288 the head
    even trained on photo + mirror means. Now auto leaves the flips off with --no-flip: the
    plain model at the base's own size, trained on the photos (one transformed copy each,
    without flips)."""
    from transfer.training import plan

    def planned(**kw):
        return plan(hp(own_split, tmp_path, weights="imagenet", image_size=None,
                       **{**options, **kw}).validated())

    assert planned().flips, "the default flips: the comparison below means something"
    run = planned(augment=Augment(flip=False))
    assert (run.flips, run.size, run.train_mirror, run.train_views) == (False, 224, False,
                                                                        "photo")
    assert run.copies == options.get("augment_copies", 1)


def test_tta_flip_with_no_flip_is_refused_and_no_flip_without_augment_is_said(own_split,
                                                                                tmp_path):
    """--tta flip --no-flip asks for a model that cannot tell a photo from its mirror image and
    says the two differ: one line, before any work. --no-flip with --no-augment flips
    nothing either way: said to be unused, as --rotation is."""
    from transfer.training import plan, unused_options

    with pytest.raises(TransferError, match=r"^--tta flip averages each photo with its mirror "
                                            r"image, and --no-flip says .*give one or the other"):
        hp(own_split, tmp_path, tta="flip", augment=Augment(flip=False)).validated()
    settings = hp(own_split, tmp_path, augment=Augment(enabled=False, flip=False)).validated()
    assert unused_options(plan(settings)) == [
        "--no-flip unused: --no-augment turns augmentation off"]


def test_a_model_trained_with_no_flip_tells_a_photo_from_its_mirror_image(tiny_split, tmp_path,
                                                                          mobilenet_weights):
    """left/ = real photos, right/ = their mirror images, --no-flip: the saved model averaged
    each photo with its mirror (--tta auto), so a photo and its mirror got the very same
    probabilities, whatever it learnt. Now the flips are off, meta.json says so, and the two
    get different answers."""
    data = mirrored_classes(tiny_split / "train", tmp_path / "chiral")
    result = train(hp(data, tmp_path, **GENUINE, epochs=8, augment=Augment(flip=False)))
    meta = json.loads((result.bundle / "meta.json").read_text())
    assert meta["test_time"] == {"tta": "auto", "flips": False, "size": 96, "train_size": 96,
                                 "train_views": "photo"}
    assert meta["augmentation"]["flip"] is False and meta["augmentation"]["copies"] == 1
    model, _ = bundle.load(result.bundle)
    photos = sorted((data / "left").iterdir())[:8]
    pixels = np.stack([pipelines.read_rgb(p, 96) for p in photos]).astype("float32")
    probs = model.predict(pixels, verbose=0)
    mirrored = model.predict(np.ascontiguousarray(pixels[:, :, ::-1]), verbose=0)
    assert np.abs(probs - mirrored).max() > 1e-3, "a photo and its mirror get one answer"


def test_train_dir_alone_validates_beside_it_and_says_where(tiny_split, tmp_path, monkeypatch):
    """--train-dir pets/train without --validate-dir validated on ./data/validate, unrelated
    photos, though pets/validate sat beside it, and nothing said so. The folder beside it is
    used and the data line says so; a validation folder taken from --data-dir instead (none
    beside) is a warning."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_split, "pets", ignore=shutil.ignore_patterns(".cache"))
    shutil.copytree(tiny_split / "validate", "data/validate")  # the tour's, say
    shutil.rmtree("data/validate/cats/", ignore_errors=True)
    shutil.copytree(tiny_split / "train/cats", "data/validate/cats")  # other photos
    reporter = Recorder()
    result = train(hp(Path("data"), tmp_path, train_dir=Path("pets/train"), epochs=1),
                   reporter)
    assert result.meta["data"]["validate_dir"] == "pets/validate"
    assert result.counts["validate"] == {"cats": 6, "dogs": 6}
    assert reporter.infos[0].startswith("data: pets/train and pets/validate (the validation "
                                        "folder beside it); 24 train + 12 validate"), \
        reporter.infos[0]
    assert not any("validating on" in w for w in reporter.warnings)
    shutil.move("pets/validate", "elsewhere")
    reporter = Recorder()
    result = train(hp(Path("data"), tmp_path, train_dir=Path("pets/train"), epochs=1,
                      output=tmp_path / "models/away"), reporter)
    assert result.meta["data"]["validate_dir"] == "data/validate"
    assert reporter.infos[0].startswith("data: pets/train and data/validate (found under "
                                        "--data-dir data)"), reporter.infos[0]
    assert ("validating on data/validate, which is not beside --train-dir pets/train (no "
            "validation folder there): check they are photos of the same things, or give "
            "--validate-dir") in reporter.warnings


def test_a_validate_folder_missing_a_class_is_a_mismatch_not_one_class(tiny_split, tmp_path):
    """p3/train/{cats,dogs} with p3/validate/cats alone: "p3/validate has one class (cats); a
    classifier needs at least two class subfolders", which hid the folder missing. Now it is
    the mismatch message, and the validation folder's own checks still come after."""
    from transfer.training import plan

    data = tmp_path / "p3"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    shutil.rmtree(data / "validate/dogs")
    with pytest.raises(TransferError, match=re.escape(
            f"class folders differ: {data / 'train'} has ['cats', 'dogs'], "
            f"{data / 'validate'} has ['cats']")):
        plan(hp(data, tmp_path).validated())
    (data / "validate/dogs").mkdir()  # the same classes, one without photos
    with pytest.raises(TransferError, match=r"^class folder .*validate/dogs has no images"):
        plan(hp(data, tmp_path).validated())


def test_a_rerun_after_an_interrupted_pass_says_the_cache_was_partly_read(own_split, tmp_path,
                                                                         monkeypatch):
    """Ctrl-C in the validation pass of `--seed 3 --augment-copies 2`: the rerun read the two
    cached training copies and computed the validation features, yet said "feature cache:
    miss" (meta.json too, where the CLI's line takes it from). It now says how much was read;
    the next run is a hit, one without the cache a miss."""
    real, passes = features.run_pass, []

    def interrupted_in_validation(*args, **kwargs):
        passes.append(kwargs["description"])
        if "validate" in kwargs["description"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    settings = hp(own_split, tmp_path, augment_copies=2, seed=3, epochs=1, engine="tf")
    monkeypatch.setattr(features, "run_pass", interrupted_in_validation)
    with pytest.raises(KeyboardInterrupt):
        train(settings)
    assert len(passes) == 3  # two training copies, then the validation pass
    monkeypatch.setattr(features, "run_pass", real)
    again = train(settings.replace(output=tmp_path / "again"))
    # 24 training photos twice are read back, the 12 validation photos computed
    assert again.meta["feature_cache"] == "partial: 48 of 60 features read, 12 computed"
    saved = json.loads((tmp_path / "again/meta.json").read_text())
    assert saved["feature_cache"] == again.meta["feature_cache"]
    assert train(settings.replace(output=tmp_path / "hit")).meta["feature_cache"] == "hit"
    shutil.rmtree(own_split / ".cache")
    assert train(settings.replace(output=tmp_path / "miss")).meta["feature_cache"] == "miss"
    # a first run that finds a photo it cannot read computed every feature it could: a miss,
    # not "partial" (the photo planned and skipped still went to the base)
    shutil.rmtree(own_split / ".cache")
    (own_split / "train/cats/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")
    first = train(settings.replace(output=tmp_path / "broken"))
    assert first.meta["skipped"] and first.meta["feature_cache"] == "miss"


def test_a_library_train_that_downloads_its_weights_prints_nothing(real_photos, tmp_path):
    """README: a progress reporter is optional everywhere, silent by default. A first train
    (or compare) from Python printed Keras's "Downloading data from ..." and its bar on
    standard error all the same; now nothing without a reporter. A real HTTP server on
    127.0.0.1 holds the genuine weights; only Keras's URL points at it."""
    from test_bases import _served

    weights = require_asset("keras/models/mobilenet_2_5_224_tf_no_top.h5")
    for split, photos in (("train", slice(0, 12)), ("validate", slice(12, 18))):
        for cls in ("cats", "dogs"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for name, data in real_photos[cls][photos]:
                (folder / name).write_bytes(data)
    # one process (one TensorFlow import): compare's download, then train's once it is gone
    script = (
        "import os, sys\n"
        "import keras.src.applications.mobilenet as m\n"
        "m.BASE_WEIGHT_PATH = sys.argv[1]\n"
        "from transfer.settings import TrainSettings\n"
        "from transfer.training import train\n"
        "from transfer.compare import ensure_weights\n"
        "settings = TrainSettings(data_dir='data', base='mobilenet', alpha=0.25, epochs=1,\n"
        "                         models_dir='models')\n"
        "got = os.path.join(os.environ['KERAS_HOME'], 'models', sys.argv[2])\n"
        "ensure_weights([settings])\n"
        "print('compare', os.path.getsize(got), file=sys.stderr)\n"
        "os.remove(got)\n"
        "train(settings)\n"
        "print('train', os.path.getsize(got), file=sys.stderr)\n")
    home = tmp_path / "home"
    with _served(weights.parent) as url:
        done = subprocess.run([sys.executable, "-c", script, url, weights.name],
                              env={**os.environ, "KERAS_HOME": str(home)},
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    size = weights.stat().st_size
    said = [line for line in done.stderr.splitlines() if line.startswith(("compare", "train"))]
    assert said == [f"compare {size}", f"train {size}"], done.stderr  # downloaded twice
    assert "Downloading" not in done.stderr and "/step" not in done.stderr, done.stderr
    assert done.stdout == ""
