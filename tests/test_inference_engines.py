"""--engine of predict and evaluate: a bundle's whole model converted to TFLite must give
TensorFlow's results on real photos, fall back to TensorFlow when it does not, and stay on
TensorFlow for a handful of images.

The bundle is ``trained_bundle`` (genuine MobileNet-0.25 + a head trained on real cats and
dogs); the photos are ``small_split``'s 200 training photos (more than ENGINE_MIN_IMAGES, so
``auto`` considers converting). Converted models go to a KERAS_HOME of this module's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Recorder, png_bytes, split_images
from typer.testing import CliRunner

from transfer import engines, inference
from transfer.cli import app
from transfer.errors import TransferError
from transfer.evaluate import evaluate
from transfer.predict import predict
from transfer.settings import EvaluateSettings, PredictSettings

runner = CliRunner()


@pytest.fixture(scope="module")
def tflite_home(tmp_path_factory):
    return tmp_path_factory.mktemp("engines-keras-home")


@pytest.fixture
def cache(tflite_home, monkeypatch):
    """engines.cache_dir() under this module's KERAS_HOME (Keras itself read it at import)."""
    monkeypatch.setenv("KERAS_HOME", str(tflite_home))
    return engines.cache_dir()


@pytest.fixture(scope="module")
def photos(small_split):
    """(folder of class folders, [(file, class)]) of 200 real photos."""
    folder = small_split / "train"
    return folder, split_images(folder)


@pytest.fixture(scope="module")
def on_tensorflow(trained_bundle, photos, tmp_path_factory):
    """(predict, evaluate's report) with --engine tf on the 200 photos: what the other
    engines' results are held to (each pass once for the module: seconds each)."""
    folder, _ = photos
    return (predict([folder], model=trained_bundle.bundle, engine="tf"),
            evaluate(trained_bundle.bundle, data_dir=folder, engine="tf",
                     output=tmp_path_factory.mktemp("tf-report")).report)


@pytest.fixture(scope="module")
def on_tflite(trained_bundle, photos, tflite_home):
    """(predict's result, its warnings, the images each call of the TFLite engine was given)
    with --engine tflite on the 200 photos and this module's KERAS_HOME: the bundle's model
    converted for real and cached there."""
    folder, _ = photos
    reporter = Recorder()
    ran: list[int] = []
    call = engines.TFLiteEngine.__call__
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(tflite_home))
        patch.setattr(engines.TFLiteEngine, "__call__",
                      lambda self, batch: (ran.append(len(batch)), call(self, batch))[1])
        result = predict([folder], model=trained_bundle.bundle, engine="tflite",
                         reporter=reporter)
    return result, reporter.warnings, ran


class Reconversions:
    """``engines.convert`` for the rest of a test: writes ``blob``, the bytes converting this
    bundle's model gave (``on_tflite``), where the converted file is asked for, and records
    each path (``paths``): the engine still loads and checks the genuine converted model."""

    def __init__(self, monkeypatch, blob: bytes):
        self.blob, self.paths = blob, []
        monkeypatch.setattr(engines, "convert", self)

    def __call__(self, model, batch_size: int, path: Path) -> float:
        started = time.perf_counter()
        assert batch_size == inference.ENGINE_BATCH
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.blob)
        self.paths.append(path)
        return time.perf_counter() - started


def probabilities(result) -> np.ndarray:
    return np.array([item.probabilities["dogs"] for item in result.items])


def same_results(reference, other) -> None:
    """The same labels on every photo, or one flip whose probability sits within the parity
    tolerance of 0.5 (a difference below 1e-3 can flip nothing else), and probabilities
    within 1e-3."""
    p_ref, p_other = probabilities(reference), probabilities(other)
    assert [i.file for i in reference.items] == [i.file for i in other.items]
    np.testing.assert_allclose(p_other, p_ref, atol=1e-3, rtol=0)
    flips = [i for i, (a, b) in enumerate(zip(reference.items, other.items, strict=True))
             if a.label != b.label]
    assert len(flips) <= 1, flips
    for i in flips:
        assert abs(p_ref[i] - 0.5) < 1e-3, (reference.items[i].file, p_ref[i], p_other[i])


def test_tflite_gives_tensorflows_predictions_and_metrics_on_real_photos(
        trained_bundle, photos, on_tensorflow, on_tflite, cache, tmp_path):
    folder, truth = photos
    reference, tf_report = on_tensorflow
    assert reference.engine["name"] == "tf" and reference.engine["requested"] == "tf"
    assert reference.engine["converted_file"] is None and reference.engine["fallback"] is None
    lite, warnings, ran = on_tflite
    info = lite.engine
    assert info["name"] == "tflite", info["fallback"]
    assert info["converted_file"].startswith(str(cache)) and os.path.isfile(info["converted_file"])
    assert info["parity_max_abs_diff"] < engines.PARITY_TOLERANCE
    assert info["images"] == len(truth) == 200 and info["images_per_second"] > 0
    assert not warnings
    # the interpreter classified the photos: the 200 and the parity check's first batch went
    # through it (TensorFlow running the pass while meta.json said tflite: the 8 alone)
    assert sum(ran) == len(truth) + inference.ENGINE_BATCH, ran
    same_results(reference, lite)
    p_ref = probabilities(reference)
    # genuine weights on real photos: confident answers on both sides, mostly right
    assert p_ref.min() < 0.1 and p_ref.max() > 0.9
    accuracy = np.mean([i.label == cls for i, (_, cls) in zip(reference.items, truth,
                                                               strict=True)])
    assert accuracy > 0.85, accuracy

    # evaluate: the same metrics; the converted file is reused (no second conversion)
    lite_report = evaluate(trained_bundle.bundle, data_dir=folder, output=tmp_path / "lite",
                           engine="tflite").report
    assert lite_report["engine"]["name"] == "tflite"
    assert lite_report["engine"]["conversion_seconds"] == 0.0
    assert lite_report["engine"]["converted_file"] == info["converted_file"]
    assert json.loads((tmp_path / "lite" / "report.json").read_text())["engine"] == \
        json.loads(json.dumps(lite_report["engine"]))
    flips = sum(a.label != b.label for a, b in zip(reference.items, lite.items, strict=True))
    if flips == 0:
        assert lite_report["confusion_matrix"] == tf_report["confusion_matrix"]
        assert lite_report["per_class"] == tf_report["per_class"]
        assert lite_report["accuracy"] == tf_report["accuracy"]
    else:  # the one borderline photo (checked above) moved one cell of the matrix
        assert abs(lite_report["accuracy"] - tf_report["accuracy"]) <= 1 / 200 + 1e-12
    assert lite_report["loss"] == pytest.approx(tf_report["loss"], abs=1e-3)
    assert lite_report["roc_auc"] == pytest.approx(tf_report["roc_auc"], abs=1e-3)


def test_cli_json_and_report_record_the_engine(trained_bundle, photos, cache, tmp_path):
    folder, _ = photos
    model = str(trained_bundle.bundle)
    result = runner.invoke(app, ["predict", str(folder), "--model", model, "--format", "json",
                                 "--engine", "tflite", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    engine = payload["engine"]
    assert engine["requested"] == "tflite" and engine["name"] == "tflite"
    assert engine["images"] == 200 and engine["images_per_second"] > 0
    assert engine["parity_max_abs_diff"] < engines.PARITY_TOLERANCE
    assert len(payload["predictions"]) == 200
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", "--model", model, "--data-dir", str(folder),
                                 "--output", str(out), "--engine", "tflite"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["engine"]["name"] == "tflite" and report["engine"]["images"] == 200
    assert "engine tflite (" in result.stdout and "images/s" in result.stdout


def test_a_parity_failure_falls_back_to_tensorflow_with_a_warning(
        trained_bundle, photos, on_tensorflow, on_tflite, tmp_path, monkeypatch):
    folder, _ = photos
    tf, reference = on_tensorflow
    # a KERAS_HOME of its own, converted to the bytes on_tflite's real conversion gave
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    conversion = Reconversions(monkeypatch,
                               Path(on_tflite[0].engine["converted_file"]).read_bytes())
    monkeypatch.setattr(engines, "PARITY_TOLERANCE", -1.0)  # no difference passes, not even 0
    reporter = Recorder()
    fallen = evaluate(trained_bundle.bundle, data_dir=folder, output=tmp_path / "fallback",
                      engine="tflite", reporter=reporter).report
    info = fallen["engine"]
    assert info["requested"] == "tflite" and info["name"] == "tf"
    assert "differs from TensorFlow" in info["fallback"]
    assert info["parity_max_abs_diff"] is not None and info["images"] == 200
    assert [str(p) for p in conversion.paths] == [info["converted_file"]]
    assert info["batch_size"] == 32  # what TensorFlow ran after all (it said the converted 8)
    assert any("differs from TensorFlow" in w and "using TensorFlow" in w
               for w in reporter.warnings), reporter.warnings
    for key in ("confusion_matrix", "per_class", "accuracy", "roc_auc"):
        assert fallen[key] == reference[key], key
    assert fallen["loss"] == pytest.approx(reference["loss"], abs=1e-9)
    # predict too: the warning on stderr, TensorFlow's probabilities
    lite = predict([folder], model=trained_bundle.bundle, engine="tflite", reporter=Recorder())
    assert lite.engine["name"] == "tf" and tf.engine["name"] == "tf"
    assert len(conversion.paths) == 1  # converted now and no better: not converted again
    np.testing.assert_allclose(probabilities(lite), probabilities(tf), atol=1e-6, rtol=0)


def test_a_handful_of_images_stays_on_tensorflow_and_tf_forces_it(
        trained_bundle, photos, cache, monkeypatch):
    folder, truth = photos
    open_engine = engines.open_engine

    def no_conversion(*args, **kwargs):
        raise AssertionError("the engine was opened")

    monkeypatch.setattr(engines, "open_engine", no_conversion)
    few = predict([p for p, _ in truth[:5]], model=trained_bundle.bundle)  # auto
    assert few.engine["requested"] == "auto" and few.engine["name"] == "tf"
    assert f"fewer than {inference.ENGINE_MIN_IMAGES}" in few.engine["fallback"]
    assert few.engine["images"] == 5
    forced = predict([folder], model=trained_bundle.bundle, engine="tf")
    assert forced.engine["name"] == "tf" and forced.engine["fallback"] is None
    assert forced.engine["images"] == 200
    # a GPU makes auto keep TensorFlow without converting anything
    monkeypatch.setattr(engines, "open_engine", open_engine)
    monkeypatch.setattr(engines, "has_gpu", lambda: True)
    monkeypatch.setattr(engines, "convert", no_conversion)
    gpu = predict([folder], model=trained_bundle.bundle, engine="auto")
    assert gpu.engine["name"] == "tf" and gpu.engine["fallback"] == "a GPU is present"


def test_a_read_only_cache_keeps_auto_on_tensorflow_for_a_folder(trained_bundle, photos,
                                                                 tmp_path, monkeypatch):
    """A KERAS_HOME nobody may write into: predict and evaluate's auto converted the whole
    model on every run for 200 photos ("for this run only"), though the engine keeps
    TensorFlow below UNCACHED_MIN_IMAGES for a pass that cannot be cached: it was never told
    how many images the run has. It is; nothing is converted."""
    from unwritable import unwritable_folder

    folder, _ = photos
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted")

    monkeypatch.setattr(engines, "convert", no_conversion)
    with unwritable_folder(home):
        said = Recorder()
        result = predict([folder], model=trained_bundle.bundle, reporter=said)  # auto
    assert result.engine["name"] == "tf" and result.engine["images"] == 200
    assert "the TFLite cache cannot be written" in result.engine["fallback"]
    assert "on 200 images" in result.engine["fallback"]
    assert not [w for w in said.warnings if "for this run only" in w], said.warnings


def test_a_diverged_model_is_not_converted_to_be_found_unequal(trained_bundle, photos, cache,
                                                               tmp_path, monkeypatch):
    """A bundle whose training diverged answers NaN: --engine tflite converted its whole model
    (seconds) to warn "TFLite differs from TensorFlow by nan", blaming the conversion. Its
    outputs are looked at first; TensorFlow runs it, every row an error saying why."""
    from conftest import diverged_copy

    from transfer.predict import NOT_NUMBERS

    folder, _ = photos
    broken = diverged_copy(trained_bundle.bundle, tmp_path / "diverged")

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted")

    monkeypatch.setattr(engines, "convert", no_conversion)
    said = Recorder()
    result = predict([folder], model=broken, engine="tflite", reporter=said)
    assert result.engine["name"] == "tf"
    assert result.engine["fallback"] == ("the model's outputs are not numbers (NaN or infinite) "
                                         "on the first batch: nothing to check a conversion "
                                         "against")
    assert not [w for w in said.warnings if "differs" in w], said.warnings
    assert {item.error for item in result.items} == {NOT_NUMBERS}


def test_the_cache_key_is_the_model_file(trained_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_bundle.bundle, copy)
    original = inference.BundleClassifier(trained_bundle.bundle)
    copied = inference.BundleClassifier(copy)
    key = original.engine_key()
    assert key == copied.engine_key()  # the same bytes: the same converted file
    assert key["bytes"] == (copy / "model.keras").stat().st_size
    # the digest of the file's bytes (a constant would key every bundle's model alike)
    assert key["model_sha256"] == hashlib.sha256((copy / "model.keras").read_bytes()).hexdigest()
    # the file replaced after loading: nothing to key a conversion of the loaded model by
    model_file = copy / "model.keras"
    data = model_file.read_bytes()
    model_file.unlink()
    model_file.write_bytes(data)
    assert copied.engine_key() is None
    reporter = Recorder()
    engine = inference.ModelEngine(copied, "tflite", 200, reporter)
    # a model that may be converted gets whole batches of the converted model's 8
    assert [engine.batch_size(n) for n in (1, 32, 33)] == [8, 32, 40]
    assert inference.ModelEngine(copied, "tf", 200).batch_size(1) == 1
    assert inference.ModelEngine(copied, "auto", 5).batch_size(7) == 7
    batch = np.zeros((2, 224, 224, 3), "float32")
    np.testing.assert_allclose(engine.probabilities(batch), copied.probabilities(batch),
                               atol=1e-6)
    assert engine.name == "tf" and "changed since it was loaded" in engine.info.fallback
    assert reporter.warnings
    assert engine.batch_size(1) == 1  # TensorFlow from now on: the batch asked for


def test_imagenet_mode_runs_on_tensorflow(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "open_engine", None)  # never called
    classifier = inference.ImageNetClassifier("mobilenet", 0.25, weights=None)
    (tmp_path / "a.png").write_bytes(png_bytes())
    reporter = Recorder()
    result = predict([tmp_path / "a.png"], classifier=classifier, engine="tflite",
                     reporter=reporter)
    assert result.engine["name"] == "tf"
    assert result.engine["fallback"] == "ImageNet mode runs on TensorFlow"
    assert any("ImageNet mode runs on TensorFlow" in w for w in reporter.warnings)


def test_a_bad_engine_is_one_clear_error_before_anything_loads(tmp_path):
    nowhere = tmp_path / "no-bundle"
    with pytest.raises(TransferError, match="--engine must be one of auto, tf, tflite, not 'onnx'"):
        predict(["x.jpg"], model=nowhere, engine="onnx")
    with pytest.raises(TransferError, match="--engine must be one of auto, tf, tflite"):
        evaluate(EvaluateSettings(model=nowhere, engine="onnx"))
    with pytest.raises(TransferError, match="--engine must be one of"):
        PredictSettings(paths=["x.jpg"], engine="gpu").validated()
