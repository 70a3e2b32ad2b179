"""Engines of the frozen feature pass: TFLite (XNNPACK) must compute TensorFlow's function."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import Recorder

from transfer import engines
from transfer.errors import TransferError


@pytest.fixture(scope="module")
def mobilenet_features(mobilenet_weights):
    """Genuine MobileNet-0.25: raw pixels 0-255 -> pooled features (256)."""
    from transfer.tf import keras

    base = keras.applications.MobileNet(alpha=0.25, include_top=False, weights="imagenet",
                                        input_shape=(224, 224, 3))
    raw = keras.Input((224, 224, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(raw)
    return keras.Model(raw, keras.layers.GlobalAveragePooling2D()(base(x, training=False)))


@pytest.fixture(scope="module")
def photo_batch(kaggle_zip):
    """13 real photos (cats and dogs), resized to 224 px: one full batch of 8 and a short one."""
    from PIL import Image

    arrays = []
    with zipfile.ZipFile(kaggle_zip) as archive:
        for name in [f"train/cat.{n}.jpg" for n in range(7)] + \
                    [f"train/dog.{n}.jpg" for n in range(6)]:
            image = Image.open(io.BytesIO(archive.read(name))).convert("RGB")
            arrays.append(np.asarray(image.resize((224, 224), Image.BILINEAR), "float32"))
    return np.stack(arrays)


KEY = {"base": "mobilenet", "alpha": 0.25, "weights": "imagenet-test", "size": 224}


@pytest.fixture(scope="module")
def converted(mobilenet_features, tmp_path_factory) -> bytes:
    """The bytes of one real conversion of ``mobilenet_features`` (batch 8). A conversion
    costs seconds; the tests whose subject is what surrounds it (a cache, a check, a
    fall-back) start from these bytes, as an earlier run left them, or convert through
    ``Reconversions``. Conversion itself is what the tests converting for real check."""
    path = tmp_path_factory.mktemp("converted") / "mobilenet.tflite"
    assert engines.convert(mobilenet_features, 8, path) > 0
    return path.read_bytes()


def cached(blob: bytes) -> Path:
    """``blob`` as KEY's converted file (batch 8) in the cache of the KERAS_HOME set now."""
    path = engines.cache_dir() / f"{engines.cache_key(**KEY, batch=8, input=[224, 224, 3])}.tflite"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


class Reconversions:
    """``engines.convert`` for the rest of a test: writes ``blob``, the bytes a real
    conversion of ``model`` gave, where the converted file is asked for, and records each
    path (``paths``): the engine still loads and checks a genuine converted model."""

    def __init__(self, monkeypatch, model, blob: bytes):
        self.model, self.blob, self.paths = model, blob, []
        monkeypatch.setattr(engines, "convert", self)

    def __call__(self, model, batch_size: int, path: Path) -> float:
        started = time.perf_counter()
        assert model is self.model and batch_size == 8
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.blob)
        self.paths.append(path)
        return time.perf_counter() - started


def test_a_keras_home_whose_name_is_not_utf8_keeps_its_converted_file(
        mobilenet_features, photo_batch, converted, tmp_path, monkeypatch):
    """A KERAS_HOME on a Latin-1 stick (its name's bytes not UTF-8): the interpreter's own file
    reader refused the path (a TypeError), so every run converted the model again and ran
    TensorFlow ("TFLite unavailable"). The cached file is read and reused."""
    import os

    home = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/l\xe9a"))
    monkeypatch.setenv("KERAS_HOME", str(home))
    conversion = Reconversions(monkeypatch, mobilenet_features, converted)
    for _ in range(2):
        reporter = Recorder()
        engine, info = engines.open_engine(mobilenet_features, photo_batch[:8],
                                           requested="tflite", key=KEY, batch_size=8,
                                           reporter=reporter)
        assert info.name == "tflite" and info.fallback is None, info.fallback
        assert reporter.warnings == []
    assert len(conversion.paths) == 1 and info.converted_file == str(conversion.paths[0])
    assert os.fsencode(info.converted_file).startswith(os.fsencode(str(home)))


def test_tflite_matches_tensorflow_on_real_photos_and_is_cached(
        mobilenet_features, photo_batch, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    reporter = Recorder()
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                       key=KEY, batch_size=8, reporter=reporter)
    assert info.name == "tflite" and engine.name == "tflite", info.fallback
    assert info.conversion_seconds > 0 and info.converted_file.startswith(str(tmp_path))
    assert info.parity_max_abs_diff < 1e-3
    expected = mobilenet_features.predict_on_batch(photo_batch)
    got = engine(photo_batch)  # 13 images: one batch of 8, one padded batch of 5
    assert got.shape == (13, 256)
    assert np.max(np.abs(got - expected)) < 1e-3 * max(1.0, np.abs(expected).max())
    assert np.abs(expected).max() > 0.5  # genuine weights: real, non-zero features
    # the second run reuses the converted file
    again, info2 = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                       key=KEY, batch_size=8, reporter=Recorder())
    assert info2.name == "tflite" and info2.conversion_seconds == 0.0
    assert info2.converted_file == info.converted_file
    # another key (other weights) converts again (this model's bytes, as converting gave them)
    reconverted = Reconversions(monkeypatch, mobilenet_features,
                                Path(info.converted_file).read_bytes())
    _, info3 = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                   key={**KEY, "weights": "other"}, batch_size=8,
                                   reporter=Recorder())
    assert info3.converted_file != info.converted_file and info3.conversion_seconds > 0
    assert [str(p) for p in reconverted.paths] == [info3.converted_file]


def test_tflite_takes_uint8_pixels_and_a_mirror_view_as_a_float32_copy(
        mobilenet_features, photo_batch, converted, tmp_path, monkeypatch):
    """The feature pass hands the engine uint8 batches, and the mirror images as a strided
    view: cast into the input buffer, they give the float32 contiguous copy's features."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    path = cached(converted)
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                       key=KEY, batch_size=8, reporter=Recorder())
    assert info.name == "tflite" and info.converted_file == str(path), info.fallback
    pixels = photo_batch.astype("uint8")  # the photos were resized to whole values
    assert np.array_equal(pixels, photo_batch)
    mirror = pixels[:, :, ::-1]
    assert not mirror.flags.c_contiguous
    expected = engine(np.ascontiguousarray(mirror).astype("float32"))
    np.testing.assert_array_equal(engine(mirror), expected)
    np.testing.assert_array_equal(engine(pixels), engine(photo_batch))
    assert not np.allclose(engine(mirror), engine(pixels), atol=1e-3)  # the mirror is another view


def test_a_converted_model_that_differs_falls_back_to_tensorflow(
        mobilenet_features, photo_batch, converted, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    conversion = Reconversions(monkeypatch, mobilenet_features, converted)
    original = engines.TFLiteEngine.__call__
    monkeypatch.setattr(engines.TFLiteEngine, "__call__",
                        lambda self, batch: original(self, batch) + 0.05)
    reporter = Recorder()
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                       key=KEY, batch_size=8, reporter=reporter)
    assert engine.name == "tf" and info.name == "tf"
    assert "differs from TensorFlow" in info.fallback
    assert any("differs from TensorFlow" in w for w in reporter.warnings)
    assert 0.04 < info.parity_max_abs_diff < 0.06
    assert len(conversion.paths) == 1 and info.conversion_seconds > 0  # converted now
    # the next runs: the file was converted now and failed all the same, so it is not
    # converted again on every run (it was, after a damaged file came to be converted again)
    monkeypatch.setattr(engines, "convert", lambda *a: pytest.fail("converted again"))
    for _ in range(2):
        engine, info = engines.open_engine(mobilenet_features, photo_batch[:8],
                                           requested="tflite", key=KEY, batch_size=8,
                                           reporter=Recorder())
        assert engine.name == "tf" and "differs from TensorFlow" in info.fallback


@pytest.mark.parametrize(("share", "kept"), [(0.5, "tflite"), (1.5, "tf")])
def test_the_parity_limit_is_the_documented_tolerance(
        mobilenet_features, photo_batch, converted, tmp_path, monkeypatch, share, kept):
    """TFLite's outputs moved by half the documented limit (PARITY_TOLERANCE times the largest
    feature, at least 1) keep TFLite; by one and a half, TensorFlow runs. The fall-back test
    adds 0.05, about ten times the limit: a limit five times too loose passed it."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    Reconversions(monkeypatch, mobilenet_features, converted)
    expected = np.asarray(mobilenet_features(photo_batch[:8], training=False))
    scale = max(1.0, float(np.max(np.abs(expected))))
    assert scale > 2  # genuine features: the scale counts (a limit of 1e-3 alone is tighter)
    shift = share * engines.PARITY_TOLERANCE * scale
    original = engines.TFLiteEngine.__call__
    monkeypatch.setattr(engines.TFLiteEngine, "__call__",
                        lambda self, batch: original(self, batch) + shift)
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                       key=KEY, batch_size=8, reporter=Recorder())
    assert engine.name == info.name == kept, info.fallback
    # the shift, and the conversion's own difference (about 2e-5) besides
    assert info.parity_max_abs_diff == pytest.approx(shift, abs=1e-4)
    if kept == "tf":
        assert info.fallback.endswith(f"(> {engines.PARITY_TOLERANCE:g} x {scale:.3g})")
    else:
        assert info.fallback is None


def test_a_read_only_cache_converts_for_the_run_alone(
        mobilenet_features, photo_batch, converted, tmp_path, monkeypatch):
    """A KERAS_HOME nobody may write into (weights a class shares): the model is converted in
    a temporary folder and run from memory, not a fall-back to TensorFlow for every run; auto
    does so only for a pass large enough to repay a conversion every run."""
    from unwritable import unwritable_folder

    home = tmp_path / "home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    with unwritable_folder(home):
        reporter = Recorder()
        engine, info = engines.open_engine(mobilenet_features, photo_batch[:8],
                                           requested="tflite", key=KEY, batch_size=8,
                                           reporter=reporter)
        assert info.name == "tflite" and engine.name == "tflite", info.fallback
        assert info.converted_file is None and info.conversion_seconds > 0
        assert info.parity_max_abs_diff < 1e-3
        assert len([w for w in reporter.warnings if "TFLite cache cannot be written" in w
                    and str(home / "transfer") in w
                    and f"at {mobilenet_features.input_shape[1]} px for this run only" in w]) \
            == len(reporter.warnings) == 1, reporter.warnings
        expected = mobilenet_features.predict_on_batch(photo_batch)
        assert np.max(np.abs(engine(photo_batch) - expected)) < 1e-3
        small, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="auto",
                                          key=KEY, batch_size=8, reporter=Recorder(),
                                          images=engines.UNCACHED_MIN_IMAGES - 1)
        assert small.name == "tf" and "cannot be written" in info.fallback
        assert info.conversion_seconds == 0.0
        # the first conversion was real; this one writes the bytes converting gives
        conversion = Reconversions(monkeypatch, mobilenet_features, converted)
        large, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="auto",
                                          key=KEY, batch_size=8, reporter=Recorder(),
                                          images=engines.UNCACHED_MIN_IMAGES)
        assert large.name == "tflite" and info.fallback is None and info.conversion_seconds > 0
        assert [p.parent.parent for p in conversion.paths] == [tmp_path / "scratch"]
        assert list(home.iterdir()) == []
    # the temporary conversions removed; TensorFlow's autograph writes its generated modules
    # into the same temp folder when it converts a function for the first time in the
    # process (which depends on the tests run before in the worker) and removes them at exit
    left = [p for p in (tmp_path / "scratch").iterdir()
            if not p.name.startswith("__autograph_generated_file")]
    assert left == []


def test_a_damaged_cached_file_is_converted_again(
        mobilenet_features, photo_batch, tmp_path, monkeypatch):
    """A cached file that is no flatbuffer, one cut short or an empty one is converted again
    (once, with a warning naming it), not a lasting fall-back to the slower TensorFlow."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    digest = engines.cache_key(**KEY, batch=8, input=[224, 224, 3])
    path = engines.cache_dir() / f"{digest}.tflite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage, not a flatbuffer")
    def garbled(whole: bytes, start: int, length: int) -> bytes:
        middle = bytes(b ^ 0xA5 for b in whole[start:start + length])
        return whole[:start] + middle + whole[start + length:]

    # garbage first; then the converted file cut short; then empty (a crash before a sync);
    # then a garbled name near its start (UnicodeDecodeError); then garbled weights, a file
    # that loads and computes something else (it was TensorFlow on every later run)
    damages = [lambda whole: whole[:len(whole) // 2], lambda whole: b"",
               lambda whole: garbled(whole, 100, 8),
               lambda whole: garbled(whole, len(whole) // 2, 4000)]
    said = ["is damaged"] * 4 + ["differs from TensorFlow by"]
    conversion = None
    for round in range(len(damages) + 1):
        reporter = Recorder()
        engine, info = engines.open_engine(mobilenet_features, photo_batch[:8],
                                           requested="tflite", key=KEY, batch_size=8,
                                           reporter=reporter)
        assert engine.name == "tflite" and info.fallback is None and info.conversion_seconds
        assert any(f"the cached TFLite file {path} {said[round]}" in w
                   for w in reporter.warnings), (round, reporter.warnings)
        assert info.parity_max_abs_diff < 1e-3
        if conversion is None:  # the first round converted for real; the later ones convert
            # to the very bytes it gave (seconds each): what they check is the damage found,
            # said with the file's name, the file replaced (once) and its parity
            whole = path.read_bytes()
            conversion = Reconversions(monkeypatch, mobilenet_features, whole)
        else:
            assert conversion.paths == [path] and path.read_bytes() == whole, round
            conversion.paths.clear()
        if round < len(damages):
            path.write_bytes(damages[round](whole))
    # a whole file this interpreter cannot run (an op it lacks) is kept: TensorFlow runs
    engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite", key=KEY,
                        batch_size=8, reporter=Recorder())
    whole = path.read_bytes()

    def lacks_an_op(converted):
        raise ValueError("Didn't find op for builtin opcode 'SOME_NEW_OP' version '9'")

    monkeypatch.setattr(engines, "TFLiteEngine", lacks_an_op)
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                       key=KEY, batch_size=8, reporter=Recorder())
    assert engine.name == "tf" and "Didn't find op" in info.fallback
    assert path.read_bytes() == whole and not info.conversion_seconds


def test_auto_measures_once_and_remembers(mobilenet_features, photo_batch, converted,
                                          tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(engines, "has_gpu", lambda: False)
    conversion = Reconversions(monkeypatch, mobilenet_features, converted)
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="auto",
                                       key=KEY, batch_size=8, reporter=Recorder())
    assert set(info.measured) == {"tf", "tflite"} and len(conversion.paths) == 1
    faster = max(info.measured, key=info.measured.get)
    assert engine.name == faster
    choice = engines.cache_dir().glob("*.auto.json")
    assert len(list(choice)) == 1
    # the next run takes the remembered choice (either one) without timing the engines again
    monkeypatch.setattr(engines, "_rate", lambda *a: pytest.fail("measured a second time"))
    again, info_again = engines.open_engine(mobilenet_features, photo_batch[:8],
                                            requested="auto", key=KEY, batch_size=8,
                                            reporter=Recorder())
    assert again.name == faster and info_again.measured == info.measured
    # a GPU makes auto pick TensorFlow without converting anything
    monkeypatch.setattr(engines, "has_gpu", lambda: True)
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="auto",
                                       key={**KEY, "weights": "gpu"}, batch_size=8,
                                       reporter=Recorder())
    assert engine.name == "tf" and info.fallback == "a GPU is present"
    assert len(conversion.paths) == 1


def test_a_remembered_tensorflow_choice_runs_tensorflow(mobilenet_features, photo_batch,
                                                        tmp_path, monkeypatch):
    """auto's remembered choice "tf" (TensorFlow measured faster, as VGG16 can be): TensorFlow
    runs with the speeds measured then, and nothing is converted or measured again. TFLite
    wins on this machine, so the test that measures never reads this choice back."""
    import json

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(engines, "has_gpu", lambda: False)
    monkeypatch.setattr(engines, "convert", lambda *a: pytest.fail("converted"))
    monkeypatch.setattr(engines, "_rate", lambda *a: pytest.fail("measured again"))
    digest = engines.cache_key(**KEY, batch=8, input=[224, 224, 3])
    choice = engines.cache_dir() / f"{digest}.auto.json"
    choice.parent.mkdir(parents=True)
    measured = {"tf": 900.0, "tflite": 100.0}
    choice.write_text(json.dumps({"choice": "tf", "measured": measured,
                                  "threads": engines.cpu_threads()}))
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="auto",
                                       key=KEY, batch_size=8, reporter=Recorder())
    assert engine.name == info.name == "tf" and info.measured == measured
    assert info.fallback == "TensorFlow measured faster on this machine"
    assert info.converted_file is None and info.parity_max_abs_diff is None
    assert sorted(p.name for p in choice.parent.iterdir()) == [choice.name]


@pytest.mark.parametrize("damaged", ["null", "[]", "{", '{"choice": "tf", "measured": '
                                     '{"tf": 900, "tflite": 1}, "threads": 4096}'])
def test_a_damaged_choice_file_is_measured_again(mobilenet_features, photo_batch, converted,
                                                 tmp_path, monkeypatch, damaged):
    """auto's remembered choice edited into JSON that is not an object was an AttributeError
    traceback on every predict; now the engines are measured again and the file rewritten.
    So is a choice measured with another number of threads (taskset, a container's quota,
    another machine sharing KERAS_HOME), which was kept for good."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(engines, "has_gpu", lambda: False)
    digest = engines.cache_key(**KEY, batch=8, input=[224, 224, 3])
    choice = engines.cache_dir() / f"{digest}.auto.json"
    cached(converted)  # beside the model a run converted
    choice.write_text(damaged)
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="auto",
                                       key=KEY, batch_size=8, reporter=Recorder())
    assert set(info.measured) == {"tf", "tflite"} and engine.name in info.measured
    import json

    assert json.loads(choice.read_text())["choice"] == engine.name
    assert json.loads(choice.read_text())["threads"] == engines.cpu_threads()


def test_a_full_cache_disk_is_said_in_a_line(mobilenet_features, photo_batch, tmp_path,
                                            monkeypatch):
    """The converter's SaveV2 on a full KERAS_HOME: the warning was 400 characters of
    TensorFlow's op names; TensorFlow still runs the pass."""
    from transfer.tf import tf

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def full(model, batch_size, path):
        raise tf.errors.ResourceExhaustedError(None, None, (
            "{{function_node __wrapped__SaveV2_dtypes_271_device_/job:localhost/replica:0/task:0"
            f"/device:CPU:0}}}} {path.parent}/.convert-3m6sjixt/variables/variables_temp/part-0"
            "; No space left on device [Op:SaveV2]"))

    monkeypatch.setattr(engines, "convert", full)
    reporter = Recorder()
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                       key=KEY, batch_size=8, reporter=reporter)
    assert engine.name == "tf"
    assert info.fallback == ("TFLite unavailable (no space left on the disk of "
                             f"{engines.cache_dir()})")
    assert reporter.warnings == [f"{info.fallback}; using TensorFlow"]


def test_unknown_engine_is_one_clear_error(mobilenet_features, photo_batch):
    with pytest.raises(TransferError, match="--engine must be one of auto, tf, tflite"):
        engines.open_engine(mobilenet_features, photo_batch[:8], requested="onnx", key=KEY)


def test_a_small_pass_says_what_it_counted():
    """With test-time flips the base runs twice a photo: 'engine tf; 94 image(s), fewer than
    128' for 47 photos (meta.json said 47)."""
    assert engines.few_images(94, views=2).startswith(
        "94 views (47 photos and their mirror images), fewer than 128: converting")
    assert engines.few_images(47).startswith("47 image(s), fewer than 128")


def test_two_sizes_of_one_run_are_recorded_together_and_each_on_its_own():
    """FixRes runs the training features at 224 px and the validation at 288 px, each size
    through its own engine: meta.json's engine has the run's totals, names both engines when
    they differ, adds their conversion times, keeps the worst parity, says which size fell
    back, and lists each size (``by_size``) with its own images and speed."""
    small = engines.EngineInfo(requested="auto", name="tflite", interpreter="ai_edge_litert",
                               conversion_seconds=2.0, parity_max_abs_diff=3e-5)
    large = engines.EngineInfo(requested="auto", name="tf",
                               fallback="TensorFlow measured faster on this machine")
    meta = engines.merged_info({224: small, 288: large}, {224: (2000, 4.0), 288: (800, 4.0)},
                               2800, 8.0, primary=288)
    assert meta["name"] == "tflite+tf"
    assert (meta["images"], meta["images_per_second"]) == (2800, 350.0)
    assert meta["conversion_seconds"] == 2.0 and meta["parity_max_abs_diff"] == 3e-5
    assert meta["fallback"] == "288 px: TensorFlow measured faster on this machine"
    assert meta["by_size"]["224"]["images_per_second"] == 500.0
    assert meta["by_size"]["288"]["images_per_second"] == 200.0
    assert meta["by_size"]["288"]["name"] == "tf"
    # both sizes converted: the conversion times added, the worse parity kept (here the
    # smaller size's, not the primary one's)
    both = engines.merged_info(
        {224: engines.EngineInfo(requested="auto", name="tflite", conversion_seconds=2.0,
                                 parity_max_abs_diff=8e-5),
         288: engines.EngineInfo(requested="auto", name="tflite", conversion_seconds=3.0,
                                 parity_max_abs_diff=3e-5)},
        {224: (2000, 4.0), 288: (800, 4.0)}, 2800, 8.0, primary=288)
    assert both["conversion_seconds"] == 5.0 and both["parity_max_abs_diff"] == 8e-5
    assert both["name"] == "tflite" and both["fallback"] is None
    only = engines.merged_info({224: engines.EngineInfo(requested="tf")}, {224: (10, 1.0)},
                               10, 2.0, primary=224)
    assert "by_size" not in only and only["images_per_second"] == 5.0


def test_a_keras_home_holding_a_bracket_converts(mobilenet_features, photo_batch, tmp_path,
                                                 monkeypatch):
    """The converted file lives in KERAS_HOME: a "keras [work]" folder made TensorFlow look
    for the SavedModel's variables through a glob ("Failed to find any matching files"), so
    every run fell back to the slower TensorFlow pass. It converts, and leaves no folder but
    the cache's own."""
    home = tmp_path / "keras [work]"
    monkeypatch.setenv("KERAS_HOME", str(home))
    reporter = Recorder()
    engine, info = engines.open_engine(mobilenet_features, photo_batch[:8], requested="tflite",
                                       key=KEY, batch_size=8, reporter=reporter)
    assert info.name == "tflite" and engine.name == "tflite", info.fallback
    assert info.converted_file.startswith(str(home)) and info.parity_max_abs_diff < 1e-3
    converted = list(home.rglob("*.tflite"))
    assert [str(p) for p in converted] == [info.converted_file]
    assert not [p for p in home.rglob("*") if "tmp" in p.name]
