"""The registry, swept as timm sweeps its own: every base builds (random weights, small input),
its last convolutional layer exists, its preprocessing layer is Keras's preprocess_input, and
the NumPy preprocessing of the pipelines equals the in-model layer. None needs the network."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from transfer import bases, phases
from transfer.errors import TransferError

PRETRAINED = [n for n, b in bases.BASES.items() if b.pretrained]


@pytest.mark.parametrize("name", list(bases.BASES))
def test_every_base_builds_and_runs_one_batch_frozen(name):
    base = bases.get(name)
    size = max(base.min_size, 32)
    base_model = bases.build(base, size, weights="none")
    base_model.trainable = not base.pretrained
    graphs = phases.graphs_of(base, base_model, size, 3, dropout=0.2, dense=8)
    batch = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probs = np.asarray(graphs["full"](batch, training=False))
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert graphs["full"].get_layer("preprocess").trainable_weights == []
    last_conv = base_model.get_layer(base.last_conv)  # Grad-CAM's layer exists ...
    assert len(last_conv.output.shape) == 4  # ... and is a feature map
    if base.pretrained:
        assert base_model.trainable_weights == []
        names = [w.path for w in graphs["full"].trainable_weights]
        assert names and all(n.startswith(("dense", "predictions")) for n in names)
        assert set(graphs) == {"full", "core", "features", "head"}


@pytest.mark.parametrize("name", PRETRAINED)
def test_preprocessing_is_keras_preprocess_input(name):
    """The in-model layer and the pipelines' NumPy function both equal the Keras application's
    own preprocess_input (a wrong mode, channel order or mean fails this)."""
    base = bases.get(name)
    module = importlib.import_module(f"keras.applications.{base.module}")
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    x[0, 0, 0] = (255, 0, 10)  # a pixel whose channels differ: RGB vs BGR shows
    expected = module.preprocess_input(x.copy())
    layer = bases.preprocess_layer(base.preprocess)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(bases.preprocess_numpy(base.preprocess)(x), expected, rtol=1e-6,
                               atol=1e-4)


@pytest.mark.parametrize("mode", bases.PREPROCESS_MODES)
def test_numpy_preprocessing_equals_the_model_layer(mode):
    """The feature cache (NumPy, ImageDataGenerator) and evaluate (the layer inside the saved
    model) must see the same numbers: equal to float32 rounding, every mode."""
    x = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3)).astype("float32")
    got = np.asarray(bases.preprocess_layer(mode)(x))
    np.testing.assert_allclose(got, bases.preprocess_numpy(mode)(x), rtol=0, atol=1e-6)
    expected = {"tf": x / 127.5 - 1, "scale": x / 255, "none": x,
                "caffe": x[..., ::-1] - np.float32([103.939, 116.779, 123.68])}[mode]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


def test_scratch_preprocessing_is_scale():
    assert bases.get("scratch").preprocess == "scale"


def test_old_preprocess_layer_still_loads(tmp_path):
    """Bundles written before the plain Keras layers hold transfer>Preprocess: still loaded."""
    from transfer import bundle
    from transfer.tf import keras

    inputs = keras.Input((4, 4, 3))
    old = keras.Model(inputs, bases.preprocess_layer_class()("caffe", name="preprocess")(inputs))
    old.save(tmp_path / "old.keras")
    loaded = bundle.load_keras(tmp_path / "old.keras")
    x = np.random.default_rng(3).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), bases.preprocess_numpy("caffe")(x),
                               atol=1e-5)


def test_registry_errors_and_weight_files():
    with pytest.raises(TransferError, match="unknown base 'resnet'; known bases: inception"):
        bases.get("resnet")
    with pytest.raises(TransferError, match="must be one of") as refused:
        bases.check_alpha(bases.get("mobilenet"), 0.3)
    assert refused.value.exit_code == 2  # a usage error, as an unknown --base is
    with pytest.raises(TransferError, match="applies to mobilenet only") as refused:
        bases.check_alpha(bases.get("vgg16"), 0.5)  # a combination of options: exit code 1
    assert refused.value.exit_code == 1
    with pytest.raises(TransferError, match="below the minimum"):
        bases.build(bases.get("inception"), 64, weights="none")
    with pytest.raises(TransferError, match="image size 1025 is above the maximum of 1024 px"):
        bases.build(bases.get("mobilenet"), 1025, weights="none")
    assert bases.check_size(bases.get("mobilenet"), 1024) == 1024
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        bases.preprocess_layer("bgr")
    assert bases.get("mobilenet").weight_file(0.25) == "mobilenet_2_5_224_tf_no_top.h5"
    assert bases.get("inception").weight_file(include_top=True) == \
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"


def test_genuine_mobilenet_weights_are_found_in_keras_home(mobilenet_weights):
    base = bases.get("mobilenet")
    assert bases.cached_weights(base, 0.25) == mobilenet_weights
    source, digest = bases.weights_fingerprint(base, "imagenet", 0.25, 224, 0)
    assert source == "imagenet" and digest == bases.sha256(mobilenet_weights)


def offline(monkeypatch):
    """Keras's download, failing as it does with no network (the boundary, faked), so the test
    means the same on a machine with a network."""
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", no_network)


def test_missing_imagenet_weights_name_the_file(monkeypatch):
    offline(monkeypatch)
    base = bases.get("mobilenet")
    assert bases.cached_weights(base, 0.5) is None  # not among the shared files
    with pytest.raises(TransferError) as info:
        bases.build(base, 224, alpha=0.5, weights="imagenet")
    text = str(info.value)
    assert "mobilenet_5_0_224_tf_no_top.h5" in text and "--weights none" in text
    assert "could not be downloaded" in text and "\n" not in text


def test_a_size_with_a_weight_file_of_its_own_names_the_one_at_hand(mobilenet_weights,
                                                                     monkeypatch):
    """MobileNet at 128 px offline: Keras wants mobilenet_2_5_128_tf_no_top.h5, while
    `transfer bases` says "cached" (the 224 px file is there). The error names the 224 px
    file as --weights, which builds the same network at 128 px."""
    offline(monkeypatch)
    base = bases.get("mobilenet")
    with pytest.raises(TransferError) as info:
        bases.build(base, 128, alpha=0.25, weights="imagenet")
    text = str(info.value)
    assert "put mobilenet_2_5_128_tf_no_top.h5 into" in text and "\n" not in text, text
    given = text.split("--weights ")[-1]
    assert Path(given).name == "mobilenet_2_5_224_tf_no_top.h5", text
    model = bases.build(base, 128, alpha=0.25, weights=given)
    assert model.input_shape == (None, 128, 128, 3)
    # at a size whose file is the 224 px one, nothing more to say
    assert bases.cached_weights(base, 0.5) is None
    with pytest.raises(TransferError) as info:
        bases.build(base, 224, alpha=0.5, weights="imagenet")
    assert "px weights you have" not in str(info.value)


def test_a_read_only_keras_home_still_gives_its_weights(mobilenet_weights, monkeypatch,
                                                        tmp_path):
    """A class's shared, read-only KERAS_HOME holding the weights: Keras itself would look in
    /tmp/.keras instead (and download, failing offline); the base loads the same weights from
    the read-only folder."""
    from unwritable import unwritable_folder

    base = bases.get("mobilenet")
    expected = bases.build(base, 96, alpha=0.25, weights="imagenet").get_weights()
    offline(monkeypatch)  # Keras's get_file, even for a file it has: no network from here
    home = tmp_path / "shared-keras"
    (home / "models").mkdir(parents=True)
    (home / "models" / mobilenet_weights.name).symlink_to(mobilenet_weights.resolve())
    with unwritable_folder(home):
        monkeypatch.setenv("KERAS_HOME", str(home))
        assert not os.access(home, os.W_OK)
        built = bases.build(base, 96, alpha=0.25, weights="imagenet").get_weights()
    assert len(built) == len(expected)
    for mine, theirs in zip(built, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


# --------------------------------------------------------------------------- CNNs from scratch


def _layer_summary(model) -> list[tuple]:
    rows = []
    for layer in model.layers:
        config = layer.get_config()
        rows.append((type(layer).__name__, layer.name,
                     config.get("filters") or config.get("units") or config.get("rate")))
    return rows


def test_the_seeds_cnn_is_still_there_layer_for_layer():
    """scratch-seeds is the seeds' CNN as the course shows it: Conv32-Pool-Conv32-Pool-
    Flatten-Dense128-Dropout0.5, 150 px, x/255, Grad-CAM on conv2."""
    base = bases.get("scratch-seeds")
    assert (base.size, base.preprocess, base.last_conv, base.pretrained) == (150, "scale",
                                                                             "conv2", False)
    trunk = bases.build(base, weights="none")
    assert _layer_summary(trunk) == [("InputLayer", trunk.layers[0].name, None),
                                     ("Conv2D", "conv1", 32), ("MaxPooling2D", "pool1", None),
                                     ("Conv2D", "conv2", 32), ("MaxPooling2D", "pool2", None)]
    assert trunk.get_layer("conv1").get_config()["kernel_size"] == (3, 3)
    assert trunk.get_layer("conv1").get_config()["activation"] == "relu"
    full = bases.scratch_graphs(base, trunk, 150, 2)["full"]
    assert [type(layer).__name__ for layer in full.layers] == [
        "InputLayer", "Rescaling", "Functional", "Flatten", "Dense", "Dropout", "Dense"]
    assert _layer_summary(full)[-3:] == [("Dense", "dense", 128), ("Dropout", "dropout", 0.5),
                                         ("Dense", "predictions", 1)]
    # 896 + 9,248 (convs) + 36*36*32*128 + 128 (Dense128) + 129 (the output)
    assert full.count_params() == 5_318_817
    assert bases.head_meta(base) == {"pool": "flatten", "dense": 128, "dropout": 0.5}


def test_the_scratch_cnn_is_four_batchnorm_blocks_and_global_pooling():
    base = bases.get("scratch")
    assert (base.size, base.preprocess, base.last_conv) == (128, "scale", "block4_relu")
    trunk = bases.build(base, weights="none")
    kinds = [type(layer).__name__ for layer in trunk.layers[1:]]
    assert kinds == ["Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D"] * 4
    widths = [layer.filters for layer in trunk.layers if type(layer).__name__ == "Conv2D"]
    assert widths == list(bases.SCRATCH_WIDTHS)
    assert trunk.get_layer("block1_conv").strides == (2, 2)
    assert trunk.output.shape[1:] == (4, 4, bases.SCRATCH_WIDTHS[-1])  # 128 / 2 / 2**4
    graphs = bases.scratch_graphs(base, trunk, 128, 5)
    assert set(graphs) == {"full", "core", "features"}
    assert [type(layer).__name__ for layer in graphs["full"].layers][-3:] == [
        "GlobalAveragePooling2D", "Dropout", "Dense"]
    assert graphs["full"].output.shape[-1] == 5
    assert bases.head_meta(base) == {"pool": "global_average", "dropout": 0.3}


def test_the_scratch_cnn_learns_an_easy_set_and_its_batchnorm_trains():
    """Blue vs red noise at 32 px: the loss falls by more than half in a few epochs, and the
    BatchNormalization averages move (the trunk is not called in inference mode while
    fitting, as a frozen pretrained base is)."""
    from transfer.tf import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 64
    y = np.arange(n) % 2
    colours = np.where(y[:, None] == 1, [[200, 50, 40]], [[40, 60, 200]]).astype("float32")
    x = np.clip(colours[:, None, None, :] + rng.normal(0, 40, (n, 32, 32, 3)), 0, 255)
    base = bases.get("scratch")
    trunk = bases.build(base, 32, weights="none")
    graphs = bases.scratch_graphs(base, trunk, 32, 2)
    before = np.array(trunk.get_layer("block1_bn").moving_mean)
    model = graphs["full"]
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x.astype("float32"), y.astype("float32"), epochs=8, batch_size=16,
                        verbose=0).history
    assert history["loss"][-1] < history["loss"][0] * 0.5, history["loss"]
    assert not np.allclose(before, np.array(trunk.get_layer("block1_bn").moving_mean))
    probs = np.asarray(model(x.astype("float32"), training=False)).reshape(-1)
    assert np.mean((probs > 0.5) == y) >= 0.9


@pytest.mark.parametrize("name", ["scratch", "scratch-seeds"])
def test_scratch_graphs_share_their_layers(name):
    """full (raw pixels), core (preprocessed) and features share one set of weights."""
    base = bases.get(name)
    trunk = bases.build(base, 48, weights="none")
    graphs = bases.scratch_graphs(base, trunk, 48, 2)
    x = np.random.default_rng(4).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    full = np.asarray(graphs["full"](x, training=False))
    core = np.asarray(graphs["core"](x / 255.0, training=False))
    np.testing.assert_allclose(full, core, rtol=1e-5, atol=1e-6)
    assert len(graphs["full"].weights) == len(graphs["core"].weights)


def test_keras_home_is_found_as_keras_finds_it(monkeypatch, tmp_path):
    """KERAS_HOME set but empty is the current folder to Keras (keras/src/backend/config.py);
    transfer took it for unset (~/.keras), looked for weights where Keras would not, and cached
    there."""
    from transfer import engines, features

    monkeypatch.setenv("KERAS_HOME", "")
    assert bases.keras_cache_dir() == Path("models")
    assert engines.cache_dir() == Path("transfer/tflite")
    assert features.cache_folder(tmp_path) == Path("transfer/features")
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert bases.keras_cache_dir() == tmp_path / ".keras/models"


def test_a_damaged_weights_file_is_named_not_taken_for_the_download(
        tmp_path, monkeypatch, mobilenet_weights):
    """A weights file cut short (0 bytes) or a proxy's error page saved under Keras's name:
    Keras takes any file there for its download and failed with "could not build MobileNet:
    Unable to synchronously open file (file signature not found)", naming no file; `transfer
    bases` called it "cached". Now the file and the way out are named, and the state is told
    apart (train needs the file without the top, --imagenet the one with it)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / mobilenet_weights.name).symlink_to(mobilenet_weights)  # the genuine no-top file
    (models / "mobilenet_5_0_224_tf_no_top.h5").write_bytes(b"")
    (models / "mobilenet_7_5_224_tf_no_top.h5").write_text("<html>502 Bad Gateway</html>")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    base = bases.get("mobilenet")
    assert bases.weights_state(base, 0.25) == "for train only"
    assert bases.weights_state(base, 0.5) == bases.weights_state(base, 0.75) == "damaged"
    assert bases.weights_state(base, 1.0) == "not cached"
    assert bases.weights_state(bases.get("scratch")) == "-"
    assert bases.cached_weights(base, 0.5) is None and bases.cached_weights(base, 0.25)
    for alpha, why in ((0.5, "is empty (0 bytes"), (0.75, "is not an HDF5 weights file")):
        with pytest.raises(TransferError) as info:
            bases.build(base, 224, alpha=alpha, weights="imagenet")
        text = str(info.value)
        assert str(models / base.weight_file(alpha)) in text and why in text, text
        assert "delete it" in text and "\n" not in text
    assert [(path.name, why.split(" (")[0]) for path, why in bases.damaged_files()] == [
        ("mobilenet_7_5_224_tf_no_top.h5", "is not an HDF5 weights file"),
        ("mobilenet_5_0_224_tf_no_top.h5", "is empty")]


def test_a_damaged_file_keras_checks_by_its_hash_is_left_to_keras(tmp_path, monkeypatch):
    """InceptionV3's loader (VGG16's, ResNet50's, EfficientNet's) checks its file against a
    hash and downloads a damaged one again: refusing it stopped a run Keras would have
    mended online. Offline, the download's failure is the error, naming the file."""
    offline(monkeypatch)
    models = tmp_path / "models"
    models.mkdir()
    base = bases.get("inception")
    (models / base.weight_file()).write_bytes(b"")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert base.keras_checks_file and not bases.get("mobilenet").keras_checks_file
    assert bases.weights_state(base) == "damaged"  # still said by `transfer bases`
    with pytest.raises(TransferError) as info:
        bases.build(base, 75, weights="imagenet")
    text = str(info.value)
    assert "could not be downloaded" in text and base.weight_file() in text, text


def test_importing_transfer_tf_keeps_a_level_the_caller_gave_tensorflows_logger():
    """A program that set ``logging.getLogger("tensorflow").setLevel(INFO)`` (or ran with
    TRANSFER_VERBOSE=1) had it overridden to ERROR by ``import transfer.tf``: lowered now only
    when nobody chose a level, as TF_CPP_MIN_LOG_LEVEL is (setdefault).

    One fresh process (importing TensorFlow costs seconds): its first case a genuine first
    import of TensorFlow and transfer.tf, the later ones ``transfer.tf`` loaded again
    (``importlib.reload``: its ``_load`` runs again on the logger TensorFlow made), each
    from the level and TRANSFER_VERBOSE that case gives."""
    import subprocess

    cases = [("INFO", False), ("WARNING", False), ("-", True), ("-", False)]
    code = ("import importlib, logging, os, sys\n"
            "module = None\n"
            "for given, verbose in eval(sys.argv[1]):\n"
            "    logger = logging.getLogger('tensorflow')\n"
            "    logger.setLevel(logging.NOTSET if given == '-' else given)\n"
            "    os.environ.pop('TRANSFER_VERBOSE', None)\n"
            "    if verbose:\n"
            "        os.environ['TRANSFER_VERBOSE'] = '1'\n"
            "    if module is None:\n"
            "        assert 'tensorflow' not in sys.modules\n"
            "        import transfer.tf as module\n"
            "    else:\n"
            "        importlib.reload(module)\n"
            "    print('level', logging.getLevelName(logger.level))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFER_VERBOSE"}
    done = subprocess.run([sys.executable, "-c", code, repr(cases)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    levels = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("level ")]
    # given INFO before TensorFlow's first import; WARNING; nothing with TRANSFER_VERBOSE=1;
    # and nothing: the quiet default of a caller who said nothing
    assert levels == ["INFO", "WARNING", "NOTSET", "ERROR"], done.stdout


@contextlib.contextmanager
def _served(folder: Path):
    """A real HTTP server on 127.0.0.1 serving ``folder``: its URL (no internet here)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # its request lines are not what the test reads
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_keras_download_is_said_to_the_reporter_and_silent_without_one(tmp_path, capfd):
    """Keras's "Downloading data from ..." and its progress bar, on standard error whatever
    the caller (README: a reporter is optional everywhere, silent by default): now nowhere
    with no reporter or a silent one, as lines to a reporter's ``info``, and on standard
    error for the CLI's RichReporter (and callers that pass none: ``ON_STDERR``)."""
    from conftest import Recorder, require_asset

    from transfer.progress import Reporter, RichReporter
    from transfer.tf import keras

    served = require_asset("keras/models/imagenet_class_index.json")
    recorder = Recorder()
    with _served(served.parent) as url:
        origin = url + served.name

        def download(reporter, folder: str) -> tuple[str, str]:
            (tmp_path / folder).mkdir()  # a missing one: Keras would use /tmp/.keras instead
            with bases.downloads_said_to(reporter):
                got = keras.utils.get_file(origin=origin, cache_dir=str(tmp_path / folder),
                                           cache_subdir="")
            assert Path(got).read_bytes() == served.read_bytes()
            return capfd.readouterr()

        assert download(None, "none") == ("", "")
        assert download(Reporter(), "silent") == ("", "")
        assert download(recorder, "recorder") == ("", "")
        rich_out, rich_err = download(RichReporter(), "rich")
        default_out, default_err = download(bases.ON_STDERR, "default")
    said = f"Downloading data from {origin}"
    assert recorder.infos[0] == said and recorder.warnings == []
    assert all(not {"\r", "\b", "\x1b"} & set(line) for line in recorder.infos)
    size = served.stat().st_size
    assert len(recorder.infos) == 2 and f"{size}/{size}" in recorder.infos[1]  # its bar, done
    assert rich_out == default_out == "" and said in rich_err and said in default_err


def test_a_bar_redrawn_in_place_keeps_only_its_last_state():
    """Keras's download bar redraws in place 20 times a second with no line break until the
    end: the whole history was kept and split again on every redraw, CPU growing with the
    square of the download's time. Only the last state is held; a line ended by \\r\\n is
    said, not dropped."""
    said = []
    lines = bases._Lines(said.append)
    for done in range(1, 5001):
        lines.write("\b" * 40 + f"\r\x1b[1m{done}/5000\x1b[0m ━━━━ 0s/step")
        assert len(lines.pending) < 60
    lines.write("\n")
    lines.write("Downloading data from http://127.0.0.1/x.h5\r\n")
    assert said == ["5000/5000 ━━━━ 0s/step", "Downloading data from http://127.0.0.1/x.h5"]


def _legacy_h5(model, path: Path) -> Path:
    """``model``'s weights in the format of Keras's ImageNet files (``efficientnetb0_notop.h5``)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def test_efficientnet_from_a_weights_file_is_the_imagenet_network(monkeypatch, tmp_path):
    """Keras adds EfficientNet's Rescaling by 1/sqrt(ImageNet's stddev) only when built with
    weights="imagenet": built from a file (--weights PATH, or the cached file of a read-only
    KERAS_HOME) the network lacked it, its inputs about 2x off, under the feature-cache key of
    the ImageNet run (the same file's fingerprint). It is the ImageNet network with the file's
    weights, Keras's hash check and download not asked."""
    from unwritable import unwritable_folder

    from transfer.tf import keras

    base = bases.get("efficientnetb0")
    plain = bases.build(base, 64, weights="none")
    assert [type(layer).__name__ for layer in plain.layers].count("Rescaling") == 1
    given = _legacy_h5(plain, tmp_path / base.weight_file())
    offline(monkeypatch)
    home = tmp_path / "shared-keras"
    (home / "models").mkdir(parents=True)
    (home / "models" / base.weight_file()).symlink_to(given)
    built = [bases.build(base, 64, weights=str(given))]
    with unwritable_folder(home):
        monkeypatch.setenv("KERAS_HOME", str(home))
        built.append(bases.build(base, 64, weights="imagenet"))
    photo = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    for model in built:
        scales = [np.ravel(layer.scale) for layer in model.layers
                  if isinstance(layer, keras.layers.Rescaling)]
        np.testing.assert_allclose(scales[1], [1 / np.sqrt(s) for s in (0.229, 0.224, 0.225)],
                                   rtol=1e-6)
        assert len(scales) == 2 and len(model.layers) == len(plain.layers) + 1
        for mine, theirs in zip(model.get_weights(), plain.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
        mine, theirs = np.asarray(model(photo)), np.asarray(plain(photo))  # the layer is used
        assert np.abs(mine - theirs).max() > 0.1 * np.abs(theirs).max()
    np.testing.assert_array_equal(built[0](photo), built[1](photo))
    from keras.src.utils import file_utils  # the offline fake is back once built

    with pytest.raises(Exception, match="URL fetch failure"):
        file_utils.get_file("x", "https://example.invalid/x")
