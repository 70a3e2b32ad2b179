"""transfer train on real photos: bundle, feature cache, pipelines, fine-tuning, scratch,
MirroredStrategy, genuine ImageNet weights, and every error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from transfer import bundle, features, training
from transfer.errors import TransferError
from transfer.pipelines import Augment
from transfer.training import HParams, train

FAST = dict(base="mobilenet", alpha=0.25, weights="none", image_size=48, epochs=2, batch_size=8)


def hp(split: Path, tmp_path: Path, **kw) -> HParams:
    return HParams(data_dir=split, models_dir=tmp_path / "models", **{**FAST, **kw})


def test_bundle_contents_and_raw_pixel_model(tiny_split, tmp_path):
    result = train(hp(tiny_split, tmp_path, augment_copies=2, output=tmp_path / "models/b1"))
    target = tmp_path / "models/b1"
    assert result.bundle == target
    assert sorted(p.name for p in target.iterdir()) == [
        "curves.png", "history.csv", "meta.json", "model.keras"]
    assert (tmp_path / "models/latest").resolve() == target.resolve()
    meta = json.loads((target / "meta.json").read_text())
    assert meta["class_names"] == ["cats", "dogs"] and meta["image_size"] == 48
    assert meta["preprocessing"]["mode"] == "tf" and meta["feature_cache"] == "miss"
    assert meta["augmentation"]["copies"] == 2 and meta["data"]["train_images"] == 24
    assert set(meta["metrics"]) >= {"val_accuracy", "val_loss", "best_val_accuracy",
                                    "best_epoch"}
    assert meta["timings"]["base_images_per_second"] > 0
    assert len((target / "history.csv").read_text().splitlines()) == 1 + meta["metrics"][
        "epochs_run"]
    with Image.open(target / "curves.png") as image:
        assert image.format == "PNG"
    # the saved model loads with safe_mode, takes raw pixels and reproduces the val accuracy
    model, loaded_meta = bundle.load(target)
    assert loaded_meta == meta
    names = sorted((tiny_split / "validate/cats").iterdir()) + sorted(
        (tiny_split / "validate/dogs").iterdir())
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((48, 48), Image.BILINEAR),
                                  dtype="float32") for p in names])
    probs = model.predict(pixels, verbose=0).reshape(-1)
    labels = np.array([0] * 6 + [1] * 6)
    accuracy = float(np.mean((probs > 0.5) == labels))
    assert abs(accuracy - meta["metrics"]["val_accuracy"]) <= 1 / 12 + 1e-9


def test_cache_second_run_skips_base_and_repeats_metrics(tiny_split, tmp_path, monkeypatch):
    calls = []
    real_extract = features.extract

    def counting_extract(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else None)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(features, "extract", counting_extract)
    first = train(hp(tiny_split, tmp_path, augment=Augment(enabled=False), output=tmp_path / "a",
                     epochs=4, seed=3))
    assert len(calls) == 2 and first.meta["feature_cache"] == "miss"  # train + validate
    second = train(hp(tiny_split, tmp_path, augment=Augment(enabled=False),
                      output=tmp_path / "b", epochs=4, seed=3))
    assert len(calls) == 2, "the base ran again on a cache hit"
    assert second.meta["feature_cache"] == "hit"
    assert second.meta["metrics"] == first.meta["metrics"]
    assert second.history == first.history


def test_augmented_copies_are_cycled_across_epochs(tiny_split, tmp_path, monkeypatch):
    seen = {}
    real_fit = training._train_head_on_features

    def spy(*args, **kwargs):
        state = real_fit(*args, **kwargs)
        seen.update(args[11])  # the timing dict
        return state

    monkeypatch.setattr(training, "_train_head_on_features", spy)
    train(hp(tiny_split, tmp_path, augment_copies=2, epochs=4, patience=10,
             output=tmp_path / "c"))
    assert seen["copies_used"] == [0, 1, 0, 1]


def test_tfdata_pipeline_end_to_end_and_cached(tiny_split, tmp_path):
    classic = train(hp(tiny_split, tmp_path, pipeline="tfdata", augment_copies=0, epochs=1,
                       output=tmp_path / "t1"))
    assert classic.meta["feature_cache"] == "off" and classic.meta["pipeline"] == "tfdata"
    cached = train(hp(tiny_split, tmp_path, pipeline="tfdata", augment_copies=1, epochs=1,
                      output=tmp_path / "t2"))
    assert cached.meta["feature_cache"] == "miss"
    assert 0.0 <= cached.meta["metrics"]["val_accuracy"] <= 1.0


def test_fine_tuning_moves_top_layers_only_and_keeps_batchnorm_frozen(tiny_split, tmp_path,
                                                                     mobilenet_weights):
    from transfer.tf import keras

    # genuine weights: a random MobileNet in inference mode gives all-zero features here
    common = dict(augment=Augment(enabled=False), epochs=1, fine_tune_epochs=1,
                  fine_tune_lr=1e-2, weights="imagenet", image_size=96)
    plain = train(hp(tiny_split, tmp_path, output=tmp_path / "plain", **common))
    tuned = train(hp(tiny_split, tmp_path, output=tmp_path / "ft", fine_tune=6, **common))
    assert tuned.history["phase"] == ["head", "fine-tune"]

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


def test_scratch_cnn_baseline(tiny_split, tmp_path):
    result = train(HParams(data_dir=tiny_split, base="scratch", image_size=64, epochs=1,
                           batch_size=8, models_dir=tmp_path / "models",
                           output=tmp_path / "s"))
    meta = result.meta
    assert meta["feature_cache"] == "off" and meta["keras_class"] == "scratch CNN"
    model, _ = bundle.load(result.bundle)
    layer_types = [type(layer).__name__ for layer in model.layers]
    assert layer_types[-4:] == ["Flatten", "Dense", "Dropout", "Dense"]
    assert model.count_params() > 0 and meta["preprocessing"]["mode"] == "scale"


def test_mirrored_strategy_on_two_logical_cpus(tiny_split, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from transfer.training import HParams, train
        from transfer.pipelines import Augment
        r = train(HParams(data_dir={str(tiny_split)!r}, base="mobilenet", alpha=0.25,
                          weights="none", image_size=48, epochs=1, batch_size=8,
                          distribute="mirrored", augment=Augment(enabled=False),
                          output={str(tmp_path / "m")!r}, models_dir={str(tmp_path)!r}))
        print("REPLICAS", r.meta["training"]["replicas"])
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "REPLICAS 2" in run.stdout


def test_genuine_imagenet_weights_transfer(trained_bundle):
    """100 real photos per class: the pretrained MobileNet-0.25 reaches >= 0.85."""
    assert trained_bundle.meta["weights"]["source"] == "imagenet"
    assert trained_bundle.meta["metrics"]["val_accuracy"] >= 0.85, trained_bundle.meta["metrics"]


# --------------------------------------------------------------------------- errors


def write_jpeg(path: Path, color=(120, 80, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), color).save(path, "JPEG")


def test_errors_are_one_clear_line(tiny_split, tmp_path):
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
    broken = tmp_path / "broken"
    write_jpeg(broken / "train/cats/a.jpg")
    write_jpeg(broken / "train/dogs/b.jpg")
    (broken / "train/dogs/c.jpg").write_bytes(b"not really a jpeg")
    write_jpeg(broken / "validate/cats/a.jpg")
    write_jpeg(broken / "validate/dogs/b.jpg")
    # the Keras pipeline stops on the bad file; the error names it (generator and tfdata)
    for pipeline in ("generator", "tfdata"):
        cases.append((HParams(data_dir=broken, models_dir=tmp_path / "m",
                              **{**FAST, "pipeline": pipeline}), "unreadable image .*c.jpg"))
    cut = tmp_path / "cut"
    shutil.copytree(tiny_split, cut)
    victim = sorted((cut / "validate/dogs").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:2000])
    cases.append((HParams(data_dir=cut, models_dir=tmp_path / "m", **FAST),
                  f"unreadable image .*{victim.name}"))
    cases.append((HParams(data_dir=tiny_split, base="inception", image_size=64),
                  "below the minimum of inception"))
    cases.append((HParams(data_dir=tiny_split, base="alexnet"), "unknown base 'alexnet'"))
    cases.append((HParams(data_dir=tiny_split, base="mobilenet", alpha=0.5,
                          models_dir=tmp_path / "m"), "mobilenet_5_0_224_tf_no_top.h5"))
    cases.append((HParams(data_dir=tiny_split, **{**FAST, "weights": str(tmp_path / "w.h5")}),
                  "weights file not found"))
    for params, message in cases:
        with pytest.raises(TransferError, match=message):
            train(params)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_refuses_to_overwrite_without_force(tiny_split, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("mine")
    with pytest.raises(TransferError, match="already exists; use --force"):
        train(hp(tiny_split, tmp_path, output=tmp_path / "mine"))
    with pytest.raises(TransferError, match="not a model bundle"):
        train(hp(tiny_split, tmp_path, output=tmp_path / "mine", force=True,
                 augment=Augment(enabled=False), epochs=1))
    assert (tmp_path / "mine/notes.txt").read_text() == "mine"
