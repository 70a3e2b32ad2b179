"""Test-time flips (``--tta``): when they apply, what the saved model computes, and that
evaluate, Grad-CAM and the TFLite export follow them. Genuine MobileNet-0.25 weights on real
photos (the tiny split: 12 + 6 per class)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from transfer import bundle, features
from transfer.errors import TransferError
from transfer.evaluate import evaluate
from transfer.explain import gradcam, gradcams
from transfer.pipelines import Augment
from transfer.training import HParams, plan, train


def settings(split: Path, tmp_path: Path, **kw) -> HParams:
    kw = {"base": "mobilenet", "alpha": 0.25, **kw}
    if kw["base"] != "mobilenet":
        kw.pop("alpha")
    return HParams(data_dir=split, models_dir=tmp_path / "models", **kw).validated()


@pytest.mark.parametrize("options, flips, size, train_size, mirror, copies", [
    # the default: flips at MobileNet's test size; the head on plain photos at 224 (FixRes)
    ({}, True, 288, 224, False, 0),
    ({"augment": Augment(enabled=False)}, False, 224, 224, False, 0),  # --no-augment
    ({"tta": "none"}, False, 224, 224, False, 1),  # the random-affine copy as before
    ({"augment_copies": 2}, True, 288, 224, False, 2),  # affine copies at the training size
    ({"image_size": 160}, True, 160, 160, True, 0),  # a size given wins: photo + mirror means
    ({"train_size": 288}, True, 288, 288, True, 0),  # one size: the head on photo + mirror
    ({"train_size": 160}, True, 288, 160, False, 0),
    ({"train_size": 160, "tta": "none"}, False, 224, 160, False, 1),
    ({"base": "vgg16", "weights": "none"}, False, 224, 224, False, 1),  # not measured: off
    ({"base": "vgg16", "weights": "none", "tta": "flip"}, True, 224, 224, True, 0),  # native
    ({"fine_tune": 10}, True, 288, 224, False, 0),  # the head first; then the base tuned
    ({"fine_tune": 10, "tta": "none"}, False, 224, 224, False, 1),
    ({"augment_copies": 0}, False, 224, 224, False, 0),  # the classic recipe: every epoch
])
def test_when_test_time_flips_apply(tiny_split, tmp_path, options, flips, size, train_size,
                                    mirror, copies):
    run = plan(settings(tiny_split, tmp_path, **options))
    assert (run.flips, run.size, run.feature_size, run.train_mirror, run.copies) == (
        flips, size, train_size, mirror, copies)


@pytest.mark.parametrize("options", [{"augment_copies": 0}, {"base": "scratch"}])
def test_a_training_size_without_features_computed_once_is_one_clear_error(tiny_split,
                                                                           tmp_path, options):
    with pytest.raises(TransferError, match="--train-size needs features computed once"):
        plan(settings(tiny_split, tmp_path, train_size=160, **options))


@pytest.mark.parametrize("options", [{"augment_copies": 0},
                                     {"base": "scratch", "augment_copies": 1}])
def test_flips_asked_without_features_computed_once_are_one_clear_error(tiny_split, tmp_path,
                                                                        options):
    with pytest.raises(TransferError, match="--tta flip needs features computed once"):
        plan(settings(tiny_split, tmp_path, tta="flip", **options))


@pytest.mark.parametrize("size, weights", [(288, 16 * 16 + 18 * 18), (96, 8 * 8 + 12 * 12),
                                           (13, 13 * 13)])  # 13 is prime: one permutation
def test_the_mirror_layer_reverses_the_width_exactly_with_small_permutations(size, weights):
    from transfer.phases import mirror_layer

    layer = mirror_layer(size)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(pixels)), pixels[:, :, ::-1])
    assert layer.count_params() == weights  # not size * size: 82,944 weights at 288 px


@pytest.fixture(scope="module")
def flipped_bundle(tiny_split, mobilenet_weights, tmp_path_factory):
    """A bundle with test-time flips, at 96 px to keep it quick (the 224 px weights)."""
    tmp = tmp_path_factory.mktemp("tta")
    data = tmp / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    result = train(HParams(data_dir=data, base="mobilenet", alpha=0.25, image_size=96,
                           epochs=5, batch_size=8, models_dir=tmp / "models",
                           output=tmp / "models/flips"))
    return result, data


def test_the_saved_model_averages_a_photo_and_its_mirror_image(flipped_bundle):
    result, data = flipped_bundle
    meta = json.loads((result.bundle / "meta.json").read_text())
    assert meta["test_time"] == {"tta": "auto", "flips": True, "size": 96, "train_size": 96,
                                 "train_views": "photo and mirror"}
    assert meta["image_size"] == 96 and meta["augmentation"]["copies"] == 0
    model, _ = bundle.load(result.bundle)
    photos = sorted((data / "validate/cats").iterdir())[:3] + sorted(
        (data / "validate/dogs").iterdir())[:3]
    pixels = np.stack([features.read_image(p, 96) for p in photos]).astype("float32")
    probs = model.predict(pixels, verbose=0)
    mirrored = model.predict(np.ascontiguousarray(pixels[:, :, ::-1]), verbose=0)
    np.testing.assert_allclose(probs, mirrored, atol=1e-6)  # a photo and its mirror: one answer
    assert probs.std() > 0.05, "the photos are told apart"
    # it is the head on the mean of the two views' pooled features, which the head trained on
    base = next(layer for layer in model.layers if layer.name.startswith("mobilenet"))
    names = [layer.name for layer in model.layers]
    pool, head = model.get_layer("pool"), model.layers[names.index("mirror_mean") + 1:]
    x = model.get_layer("preprocess")(pixels)
    mean = (np.asarray(pool(base(x))) + np.asarray(pool(base(x[:, :, ::-1])))) / 2
    for layer in head:
        mean = layer(mean)
    np.testing.assert_allclose(probs, np.asarray(mean), atol=1e-5)


def test_evaluate_reproduces_the_validation_of_a_flipped_bundle(flipped_bundle, tmp_path):
    result, _ = flipped_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(result.bundle, copy)
    report = evaluate(copy).report
    trained = result.meta["metrics"]
    assert report["images"] == 12
    assert report["accuracy"] == pytest.approx(trained["val_accuracy"], abs=1e-6)
    assert report["loss"] == pytest.approx(trained["val_loss"], abs=1e-4)


def test_gradcam_of_a_mirrored_photo_is_the_mirrored_heatmap(flipped_bundle):
    """Both views enter the heatmap (the mirror's map flipped back), so the heatmap of a
    mirrored photo is the photo's heatmap mirrored, and not the same picture."""
    result, data = flipped_bundle
    model, meta = bundle.load(result.bundle)
    photo = sorted((data / "validate/dogs").iterdir())[0]
    pixels = features.read_image(photo, 96).astype("float32")
    heat, probs, index, layer = gradcam(model, meta, pixels)
    heat_m, probs_m, index_m, _ = gradcam(model, meta, np.ascontiguousarray(pixels[:, ::-1]))
    assert layer == "conv_pw_13_relu" and index == index_m
    np.testing.assert_allclose(probs, probs_m, atol=1e-6)
    np.testing.assert_allclose(heat, heat_m[:, ::-1], atol=1e-4)
    assert heat.max() == pytest.approx(1.0) and np.abs(heat - heat_m).max() > 0.05


def test_the_tflite_export_of_a_flipped_bundle_computes_the_same(flipped_bundle, tmp_path):
    from transfer.export import export

    result, data = flipped_bundle
    out = export(result.bundle, output=tmp_path / "flips.tflite")
    assert out.path.is_file() and out.n_images > 0 and out.max_abs_diff <= out.tolerance
    # checked apart from export's own check: a plain interpreter on real photos against the
    # saved Keras model (photo and mirror averaged) loaded again
    import tensorflow as tf

    model, _ = bundle.load(result.bundle)
    photos = sorted((data / "validate/cats").iterdir())[:3] + sorted(
        (data / "validate/dogs").iterdir())[:3]
    pixels = np.stack([features.read_image(p, 96) for p in photos]).astype("float32")
    interpreter = tf.lite.Interpreter(model_path=str(out.path))
    given = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(given["index"], list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], pixels)
    interpreter.invoke()
    lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    keras_out = np.asarray(model.predict(pixels, verbose=0))
    assert lite.shape == keras_out.shape == (6, 1)
    np.testing.assert_allclose(lite, keras_out, atol=1e-4)


def test_an_int8_flipped_model_lists_each_weight_once_and_computes_the_same(flipped_bundle,
                                                                             tmp_path,
                                                                             monkeypatch):
    """The base runs twice (photo, mirror): the converter gives each call site its own entry
    (and per-channel scales) for the same int8 weights; share_constants keeps one."""
    from tensorflow.lite.python import schema_py_generated as schema

    from transfer import export as exporting

    result, data = flipped_bundle
    model, _ = bundle.load(result.bundle)
    photos = sorted((data / "train/cats").iterdir())[:4] + sorted(
        (data / "train/dogs").iterdir())[:4]
    pixels = np.stack([features.read_image(p, 96) for p in photos]).astype("float32")
    shared = tmp_path / "shared.tflite"
    exporting._tflite(model, shared, tmp_path, "int8", pixels)
    monkeypatch.setattr(exporting, "share_constants", lambda model: None)
    raw = tmp_path / "raw.tflite"
    exporting._tflite(model, raw, tmp_path, "int8", pixels)

    def constants(path):
        m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
        quant = [(t.buffer, t.type, tuple(t.shape),
                  None if t.quantization is None or t.quantization.scale is None
                  else np.asarray(t.quantization.scale).tobytes())
                 for t in m.subgraphs[0].tensors
                 if m.buffers[t.buffer].data is not None and len(m.buffers[t.buffer].data)]
        return len(quant), len(set(quant))  # constants, distinct (buffer, scales)

    listed, distinct = constants(raw)
    assert listed > distinct  # the same weights, with the same scales, listed twice
    assert constants(shared) == (distinct, distinct)  # each once
    assert shared.stat().st_size < raw.stat().st_size
    np.testing.assert_array_equal(exporting._run_tflite(shared, pixels),
                                  exporting._run_tflite(raw, pixels))


def test_a_fine_tuned_flipped_bundle_validates_as_it_predicts(tiny_split, mobilenet_weights,
                                                              tmp_path):
    """After --fine-tune the base changed, so the final validation reruns the images: through
    both views, as the saved model does (evaluate repeats its loss)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    result = train(HParams(data_dir=data, base="mobilenet", alpha=0.25, image_size=96,
                           epochs=3, batch_size=8, fine_tune=6, fine_tune_epochs=2,
                           fine_tune_lr=1e-4, models_dir=tmp_path / "models",
                           output=tmp_path / "models/tuned"))
    meta = result.meta
    assert meta["test_time"]["flips"] and meta["training"]["fine_tune"] == 6
    assert meta["training"]["fine_tune_result"]["kept"]  # the fine-tuned base is what is saved
    report = evaluate(result.bundle, output=tmp_path / "report").report
    assert report["loss"] == pytest.approx(meta["metrics"]["val_loss"], abs=1e-4)
    assert report["accuracy"] == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-6)


def test_fixres_the_head_trains_on_plain_photos_at_the_training_size(tiny_split,
                                                                     mobilenet_weights,
                                                                     tmp_path):
    """--train-size smaller than the model's size (the MobileNet default's FixRes: 224 -> 288,
    here 64 -> 96 to keep it quick): the training features are the genuine base's pooled
    features of the plain photos at 64 px, computed here independently with Keras; the
    validation is the saved 96 px model's, photo and mirror averaged."""
    from transfer.tf import keras

    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    result = train(HParams(data_dir=data, base="mobilenet", alpha=0.25, image_size=96,
                           train_size=64, epochs=3, batch_size=8, models_dir=tmp_path / "m",
                           output=tmp_path / "m/fixres"))
    meta = result.meta
    assert meta["image_size"] == 96
    assert meta["test_time"] == {"tta": "auto", "flips": True, "size": 96, "train_size": 64,
                                 "train_views": "photo"}
    entries = [features.load_entry(p) for p in (data / ".cache/features").glob("*.npz")]
    assert len(entries) == 2  # one training pass, one validation pass
    train_entry = next(e for e in entries if len(e.labels) == 24)
    val_entry = next(e for e in entries if len(e.labels) == 12)

    def genuine(size, paths, mirror=False):
        base = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None,
                                            input_shape=(size, size, 3))
        base.load_weights(mobilenet_weights)
        pixels = np.stack([features.read_image(p, size) for p in paths]).astype("float32")
        out = base.predict(keras.applications.mobilenet.preprocess_input(pixels.copy()),
                           verbose=0).mean(axis=(1, 2))
        if mirror:
            flipped = pixels[:, :, ::-1].copy()
            out = (out + base.predict(keras.applications.mobilenet.preprocess_input(flipped),
                                      verbose=0).mean(axis=(1, 2))) / 2
        return out

    names = ["cats", "dogs"]
    train_paths = [data / "train" / n / f for n in names
                   for f in sorted(p.name for p in (data / "train" / n).iterdir())]
    val_paths = [data / "validate" / n / f for n in names
                 for f in sorted(p.name for p in (data / "validate" / n).iterdir())]
    np.testing.assert_allclose(train_entry.features, genuine(64, train_paths), atol=1e-3)
    assert not np.allclose(train_entry.features, genuine(96, train_paths), atol=1e-2)
    np.testing.assert_allclose(val_entry.features, genuine(96, val_paths, mirror=True),
                               atol=1e-3)
    # the bundle validates as it predicts: evaluate on the validation photos repeats it
    report = evaluate(result.bundle).report
    assert report["images"] == 12
    assert report["accuracy"] == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-6)
    assert report["loss"] == pytest.approx(meta["metrics"]["val_loss"], abs=1e-4)


def test_the_default_trains_at_224_and_tests_at_288_and_saves_what_repeats_it(
        tiny_split, mobilenet_weights, tmp_path):
    """MobileNet's default (no size given): the head at 224 px on plain photos, the model at
    288 px with flips; each size's engine recorded; settings.json holds the resolved training
    size, so it repeats this run even if the default changes again."""
    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    result = train(HParams(data_dir=data, base="mobilenet", alpha=0.25, epochs=2,
                           batch_size=8, models_dir=tmp_path / "m", output=tmp_path / "m/d"))
    meta = result.meta
    assert meta["image_size"] == 288
    assert meta["test_time"] == {"tta": "auto", "flips": True, "size": 288, "train_size": 224,
                                 "train_views": "photo"}
    assert sorted(meta["engine"]["by_size"]) == ["224", "288"]
    assert meta["engine"]["by_size"]["224"]["images"] == 24
    assert meta["engine"]["by_size"]["288"]["images"] == 12
    saved = json.loads((result.bundle / "settings.json").read_text())
    assert saved["train_size"] == 224 and saved["image_size"] is None
    assert plan(HParams(**saved)).feature_size == 224


def test_a_base_keras_builds_otherwise_with_its_weights_is_refused_a_training_size(
        tiny_split, tmp_path, monkeypatch):
    """Keras adds a layer to EfficientNet with ImageNet weights only: rebuilt at random at the
    training size and given the weights, it would be another function, and the head would
    train on features the model never computes. Such a base is refused --train-size."""
    from transfer import bases
    from transfer.tf import keras

    real_build = bases.build

    def build(base, size=None, alpha=1.0, weights="imagenet", **kw):
        model = real_build(base, size, alpha, weights, **kw)
        if weights == "none" and size == 48:  # the rebuild at the training size
            return keras.Sequential([keras.Input((size, size, 3)), keras.layers.Rescaling(1.0),
                                     model])
        return model

    monkeypatch.setattr(bases, "build", build)
    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    with pytest.raises(TransferError, match="--train-size 48: Keras builds mobilenet"):
        train(HParams(data_dir=data, base="mobilenet", alpha=0.25, weights="none",
                      image_size=64, train_size=48, epochs=1, models_dir=tmp_path / "m"))


def test_features_of_unfingerprinted_weights_chosen_for_another_size_are_keyed_by_it():
    """Without a weights fingerprint (a read-only KERAS_HOME), MobileNet's ImageNet file
    depends on the model's size: training features at 224 px made with the 160 px model's
    weights must not be taken for a 224 px run's."""
    from types import SimpleNamespace

    from transfer.phases import weights_size

    run = SimpleNamespace(size=160)
    assert weights_size(run, SimpleNamespace(weights_sha256=None), 224) == {
        "weights_for_size": 160}
    assert weights_size(run, SimpleNamespace(weights_sha256=None), 160) == {}
    assert weights_size(run, SimpleNamespace(weights_sha256="ab12"), 224) == {}


def test_grad_cams_of_a_batch_through_a_flipped_model_are_each_photos_own(flipped_bundle):
    """Grad-CAM of a batch through the flipped model (both views' maps, the mirror's flipped
    back) gives each photo what gradcam gives it alone, for the class asked or predicted."""

    result, data = flipped_bundle
    model, meta = bundle.load(result.bundle)
    photos = sorted((data / "validate/dogs").iterdir())[:2] + sorted(
        (data / "validate/cats").iterdir())[:2]
    pixels = np.stack([features.read_image(p, 96) for p in photos]).astype("float32")
    maps, layer = gradcams(model, meta, pixels, [None, 0, None, 1])
    for one, wanted, (heat, probs, index) in zip(pixels, [None, 0, None, 1], maps, strict=True):
        alone, alone_probs, alone_index, _ = gradcam(model, meta, one, wanted)
        assert index == alone_index
        np.testing.assert_allclose(probs, alone_probs, atol=1e-5)
        np.testing.assert_allclose(heat, alone, atol=1e-4)
