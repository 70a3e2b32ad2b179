"""transfer mnist on the real MNIST files: loader, quick training, pictures, bad inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import Recorder, require_asset
from PIL import Image
from typer.testing import CliRunner

from transfer import mnist
from transfer.cli import app
from transfer.errors import TransferError
from transfer.explain import explain
from transfer.predict import predict


@pytest.fixture(scope="module")
def mnist_dir():
    return require_asset("data/mnist")


def test_idx_folder_and_npz_give_identical_arrays(mnist_dir):
    (xa, ya), (ta, la) = mnist.load("mnist", mnist_dir)
    (xb, yb), (tb, lb) = mnist.load("mnist", mnist_dir / "mnist.npz")
    assert xa.shape == (60000, 28, 28) and ta.shape == (10000, 28, 28)
    assert len(ya) == 60000 and len(la) == 10000
    for a, b in ((xa, xb), (ya, yb), (ta, tb), (la, lb)):
        np.testing.assert_array_equal(a, b)
    assert np.bincount(la).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_kaggles_layout_a_folder_named_as_each_file_is_read(mnist_dir, tmp_path):
    """Kaggle's MNIST download keeps each IDX file in a folder of its own name; --data said
    the folder "has no train-images-idx3-ubyte", which it had (as a folder)."""
    for original in mnist_dir.glob("*-ubyte*"):
        name = original.name.removesuffix(".gz")
        (tmp_path / name).mkdir()
        (tmp_path / name / original.name).symlink_to(original)
    (x, y), (t, labels) = mnist.load("mnist", tmp_path)
    assert x.shape == (60000, 28, 28) and len(labels) == 10000


@pytest.fixture(scope="module")
def quick(mnist_quick):
    """One quick real training (6000 digits, 1 epoch; conftest's, shared with the browser
    tests), checked by the tests below."""
    return mnist_quick


def test_quick_real_training_and_pictures(quick, mnist_dir):
    result, tmp_path = quick
    meta = json.loads((tmp_path / "mnist-cnn/meta.json").read_text())
    assert meta["metrics"]["test_accuracy"] >= 0.95, meta["metrics"]
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["channels"] == 1
    assert np.asarray(meta["confusion_matrix"]).sum() == 10000
    expected = {"samples.png": (5, 5), "misclassified.png": (5, 5), "filters.png": (4, 8),
                "feature_maps.png": (4, 8), "confusion.png": None, "noise.png": None,
                "curves.png": None}
    # every file it writes is one bundle.MADE_BY_RUNS knows for a digit bundle (or one a
    # later command writes): train --force over it does not take them for the user's
    from transfer.bundle import MADE_BY_RUNS, MADE_LATER

    written = {p.name for p in (tmp_path / "mnist-cnn").iterdir()}
    assert written <= MADE_BY_RUNS["mnist"] | MADE_LATER, written - MADE_BY_RUNS["mnist"]
    for name, grid in expected.items():
        with Image.open(tmp_path / "mnist-cnn" / name) as image:
            assert image.format == "PNG" and image.width > 200
            if grid:  # plots.image_grid: 1.6 x 1.8 inches a cell (+0.4 title) at 80 dpi
                rows, cols = grid
                assert image.size == (cols * 128, rows * 144 + 32), (name, image.size)
    accuracies = [a for _, a in result.noise]
    assert [s for s, _ in result.noise] == [0.0, 0.1, 0.2, 0.3, 0.5]
    assert accuracies[0] == pytest.approx(meta["metrics"]["test_accuracy"])
    assert all(b <= a + 0.01 for a, b in zip(accuracies, accuracies[1:], strict=False))
    assert accuracies[-1] < accuracies[0]
    # the feature maps are this model's real conv1 activations
    model = __import__("transfer.bundle", fromlist=["load"]).load(tmp_path / "mnist-cnn")[0]
    digit = mnist.load("mnist", mnist_dir)[1][0][0]
    maps = mnist.feature_maps(model, digit)
    assert maps.shape == (26, 26, 32) and maps.max() > 0
    # computed apart from Keras: the saved conv1's kernel and bias on the rescaled digit, ReLU
    # (any ReLU convolution passed the checks above: an untrained network's too)
    scaling = next(layer for layer in model.layers if "Rescaling" in type(layer).__name__)
    x = digit.astype("float64") * float(scaling.scale) + float(scaling.offset)
    kernel, bias = (np.asarray(w, "float64") for w in model.get_layer("conv1").get_weights())
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3))  # 26 x 26 x 3 x 3
    expected = np.maximum(np.einsum("ijab,abf->ijf", windows, kernel[:, :, 0, :]) + bias, 0)
    np.testing.assert_allclose(maps, expected, atol=1e-4)


def test_mnist_arrays_classify_with_or_without_their_channel_axis(quick, mnist_dir):
    """A digit bundle's classifier given MNIST's own arrays: x_test[:n] (n x 28 x 28) was
    refused ("image 1: an array of shape (n, 28, 28) is no photo"), and one 28 x 28 digit was
    read as a photo and fitted again, so it scored otherwise than with its channel axis."""
    from transfer.inference import open_classifier

    result, _ = quick
    (_, _), (x_test, y_test) = mnist.load("mnist", mnist_dir)
    classifier, _ = open_classifier(model=result.bundle)
    assert classifier.input_shape() == (28, 28, 1)
    batch = classifier.classify(x_test[:200])
    np.testing.assert_array_equal(batch, classifier.classify(x_test[:200, ..., None]))
    np.testing.assert_array_equal(batch, classifier.classify(list(x_test[:200])))
    # one digit alone runs in a batch of one: the same up to float rounding
    np.testing.assert_allclose(batch[:1], classifier.classify(x_test[0]), atol=1e-5)
    assert np.mean(batch.argmax(1) == y_test[:200]) >= 0.9
    assert batch.shape == (200, 10)


def test_predict_real_test_digits_saved_as_png_both_polarities(quick, mnist_dir, tmp_path):
    """A user's digit: light on dark (as MNIST) or dark on light (ink on paper), found and
    classified the same; --invert no on dark-on-light is the user's explicit choice."""
    result, _ = quick
    (_, _), (x_test, y_test) = mnist.load("mnist", mnist_dir)
    files = []
    for i in range(30):
        for polarity, pixels in (("light", x_test[i]), ("dark", 255 - x_test[i])):
            path = tmp_path / f"{i:02d}-{polarity}.png"
            Image.fromarray(pixels).save(path)
            files.append(path)
    predictions = predict(files, model=result.bundle)
    assert predictions.failed == 0 and predictions.class_names == [str(d) for d in range(10)]
    light, dark = predictions.items[0::2], predictions.items[1::2]
    assert [i.image["inverted"] for i in light] == [False] * 30
    assert [i.image["inverted"] for i in dark] == [True] * 30
    for a, b in zip(light, dark, strict=True):
        assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-5)
    correct = sum(item.label == str(y) for item, y in zip(light, y_test[:30], strict=True))
    assert correct >= 27, correct  # the quick model is ~96% accurate
    forced = predict(files[1:2], model=result.bundle, invert="no")
    assert "no digit found" in forced.items[0].error
    cli = CliRunner().invoke(app, ["predict", str(files[1]), "--model", str(result.bundle),
                                   "--format", "json"])
    assert cli.exit_code == 0, cli.output
    row = json.loads(cli.stdout)["predictions"][0]
    assert row["label"] == dark[0].label and row["image"]["inverted"] is True
    colour = CliRunner().invoke(app, ["predict", str(files[0]), "--model", str(result.bundle),
                                      "--invert", "maybe"])
    # a usage error (the CLI's choice type): exit 2, one line naming the choices
    assert colour.exit_code == 2 and "'maybe' is not one of 'auto', 'yes', 'no'" in colour.output
    assert len(colour.output.strip().splitlines()) == 1


def test_explain_a_digit(quick, mnist_dir, tmp_path):
    result, _ = quick
    (_, _), (x_test, y_test) = mnist.load("mnist", mnist_dir)
    path = tmp_path / "seven.png"
    Image.fromarray(255 - x_test[0]).save(path)
    heat = explain(path, model=result.bundle)
    assert heat.layer == "conv2" and heat.heatmap.shape == (11, 11)
    assert heat.label == str(y_test[0]) and heat.png.exists()
    # dark on light, inverted as MNIST's: said as predict says it ("7 (inverted)")
    assert heat.inverted
    said = CliRunner().invoke(app, ["explain", str(path), "--model", str(result.bundle),
                                    "--output", str(tmp_path / "cli.png")])
    assert said.exit_code == 0, said.output
    assert said.output.startswith(f"{path}: predicted {y_test[0]} (inverted) "), said.output
    light = tmp_path / "light.png"
    Image.fromarray(x_test[0]).save(light)
    assert not explain(light, model=result.bundle, write=False).inverted


def test_tiny_arch_summary():
    model = mnist.build_model("tiny")
    rows = mnist.summary_rows(model)
    assert [r[0].split()[0] for r in rows] == ["image", "preprocess", "conv1", "flatten",
                                               "predictions"]
    assert rows[2][2] == 80 and model.count_params() == 80 + 5408 * 10 + 10


def test_weight_average_is_what_the_model_ends_with():
    """The model ends with the moving average of its weights over the steps (momentum ramped
    up as min(0.99, (1 + t) / (10 + t))): a 12-step run ends near its trained weights, not
    near the random initial ones as with Keras's unramped `use_ema`."""
    from transfer.tf import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    initial = model.get_weights()
    x = np.random.default_rng(0).random((96, 4), dtype=np.float32)
    raw = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: raw.append(model.get_weights()))
    model.fit(x, x.sum(1) * 3, batch_size=8, verbose=0,
              callbacks=[record, mnist.weight_average(0.99)])
    assert len(raw) == 12
    expected = initial
    for t, weights in enumerate(raw):
        m = min(0.99, (1 + t) / (10 + t))
        expected = [m * a + (1 - m) * w for a, w in zip(expected, weights, strict=True)]
    final = model.get_weights()
    for got, want in zip(final, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    kernel = final[0]
    assert not np.allclose(kernel, raw[-1][0])
    assert np.abs(kernel - raw[-1][0]).sum() < np.abs(kernel - initial[0]).sum() / 3
    with pytest.raises(TransferError, match=r"--ema must be in \[0, 1\)"):
        mnist.run(mnist.MnistParams(ema=1.0))
    with pytest.raises(TransferError, match="--learning-rate must be a positive number"):
        mnist.run(mnist.MnistParams(learning_rate=0))


def test_options_are_checked_before_any_work(tmp_path, monkeypatch):
    """`--limit 0` is refused (it used to train on everything), before the data is read."""
    monkeypatch.setattr(mnist, "load", None)  # reading data would fail loudly
    for params, pattern in ((dict(limit=0), "--limit must be at least 10"),
                            (dict(epochs=0), "--epochs must be at least 1"),
                            (dict(arch="big"), "--arch must be one of cnn, tiny"),
                            (dict(validation_split=1.0), r"--validation-split must be in")):
        with pytest.raises(TransferError, match=pattern) as info:
            mnist.run(mnist.MnistParams(output=tmp_path / "never", **params))
        assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_output_places_are_checked_as_trains_are(tmp_path, monkeypatch):
    """--output latest replaced the models/latest link by a folder (train stopped updating
    it), --output inside a bundle wrote a bundle into it, and a folder of photos was refused
    only after the whole run: now all refused before any work, as train refuses them."""
    monkeypatch.setattr(mnist, "load", None)  # reading data would fail loudly
    models = tmp_path / "models"
    (models / "cd").mkdir(parents=True)
    (models / "cd/meta.json").write_text('{"schema_version": 1, "class_names": ["a", "b"]}')
    (models / "cd/model.keras").write_bytes(b"")
    (models / "latest").symlink_to("cd")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/cat.jpg").write_bytes(b"mine")
    for output, pattern in ((models / "latest", "latest is the link to the newest bundle"),
                            (models / "cd/sub", "is inside the bundle"),
                            (tmp_path / "photos", "is not a model bundle; refusing")):
        with pytest.raises(TransferError, match=pattern):
            mnist.run(mnist.MnistParams(output=output, force=True))
    assert (models / "latest").is_symlink() and not (models / "cd/sub").exists()
    assert (tmp_path / "photos/cat.jpg").read_bytes() == b"mine"


@pytest.fixture(scope="module")
def small_runs(mnist_dir, tmp_path_factory):
    """Two of the smallest real runs (400 digits, 1 epoch, the tiny CNN, Adam 1e-3, seed 5),
    with --ema 0 and 0.99: {ema: (result, what it warned)}."""
    folder = tmp_path_factory.mktemp("small-runs")
    runs = {}
    for ema in (0.0, 0.99):
        recorder = Recorder()
        runs[ema] = (mnist.run(mnist.MnistParams(
            data=mnist_dir, limit=400, epochs=1, batch_size=32, arch="tiny", seed=5,
            learning_rate=1e-3, label_smoothing=0.0, shift=0, ema=ema,
            output=folder / f"ema{ema:g}"), recorder), recorder.warnings)
    return runs


def test_ema_zero_is_plain_adam(small_runs, mnist_dir):
    """--ema 0 (with no smoothing, no shifts, Adam 1e-3): the saved weights are exactly those
    of a plain Adam fit with the same seed (and --ema 0.99 ends elsewhere, so the comparison
    can fail)."""
    from transfer import bundle
    from transfer.tf import keras

    (plain, _), (averaged, _) = small_runs[0.0], small_runs[0.99]
    assert plain.meta["training"]["weight_average_momentum"] == 0.0
    (x, y), _ = mnist.load("mnist", mnist_dir)
    x, y = x[:400, ..., None], y[:400]
    keras.utils.set_random_seed(5)
    model = mnist.build_model("tiny")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:360], y[:360], epochs=1, batch_size=32, validation_data=(x[360:], y[360:]),
              verbose=0)
    saved, _ = bundle.load(plain.bundle)
    for got, want in zip(saved.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    other, _ = bundle.load(averaged.bundle)
    assert not np.array_equal(other.get_weights()[0], model.get_weights()[0])


def test_mnist_bundle_has_the_common_meta_and_its_settings(quick):
    from transfer import bundle

    result, tmp_path = quick
    meta = json.loads((tmp_path / "mnist-cnn/meta.json").read_text())
    assert set(bundle.COMMON_FIELDS) <= set(meta) and meta["kind"] == "mnist"
    assert meta["settings"]["limit"] == 6000 and meta["settings"]["epochs"] == 1
    training = meta["training"]  # the defaults: Adam 2e-3, no label smoothing, no shifts
    assert training["learning_rate"] == 0.002 and training["label_smoothing"] == 0.0
    assert training["shift_pixels"] == 0 and training["weight_average_momentum"] == 0.99
    # what it trained on: 6000 digits less the 10% held out (it said 6000)
    assert training["train_images"] == 5400 and training["validation_images"] == 600
    counts = meta["data"]["counts"]
    assert [sum(counts[s].values()) for s in ("train", "validate", "test")] == [5400, 600, 10000]
    assert list(counts["test"]) == meta["class_names"]
    from transfer.report import data_counts

    assert data_counts(meta)[0] == counts  # the report's Data table, per class
    settings = json.loads((tmp_path / "mnist-cnn/settings.json").read_text())
    assert settings == meta["settings"]
    assert mnist.MnistParams(**{**settings, "output": tmp_path / "again"}).validated()
    assert not (tmp_path / "latest").exists()  # only `transfer train` moves models/latest


def write_idx(path, array, dims):
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def test_bad_inputs(mnist_dir, tmp_path):
    with pytest.raises(TransferError, match="no such file"):
        mnist.load("mnist", tmp_path / "missing")
    np.savez(tmp_path / "keys.npz", a=np.zeros(3))
    with pytest.raises(TransferError, match="lacks x_train"):
        mnist.load("mnist", tmp_path / "keys.npz")
    z = np.zeros
    np.savez(tmp_path / "shape.npz", x_train=z((5, 32, 32), np.uint8), y_train=z(5, np.uint8),
             x_test=z((2, 28, 28), np.uint8), y_test=z(2, np.uint8))
    with pytest.raises(TransferError, match=r"shape \(5, 32, 32\)"):
        mnist.load("mnist", tmp_path / "shape.npz")
    # a truncated IDX file (real bytes, cut short)
    folder = tmp_path / "cut"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes((mnist_dir / name).read_bytes())
    raw = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-500]))
    with pytest.raises(TransferError, match="truncated"):
        mnist.load("mnist", folder)
    # a header cut inside its dimensions, and damaged gzip data: struct.error and zlib.error
    # tracebacks before, now one line each
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:6]))
    with pytest.raises(TransferError, match="truncated: its header ends before its 3 dim"):
        mnist.load("mnist", folder)
    labels = bytearray((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    labels[100:200] = bytes(b ^ 0xFF for b in labels[100:200])
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(labels))
    with pytest.raises(TransferError, match="t10k-labels-idx1-ubyte.gz cannot be read"):
        mnist.load("mnist", folder)
    # label/image count mismatch
    bad = tmp_path / "count"
    bad.mkdir()
    write_idx(bad / "train-images-idx3-ubyte.gz", z((4, 28, 28), np.uint8), (4, 28, 28))
    write_idx(bad / "train-labels-idx1-ubyte.gz", z(3, np.uint8), (3,))
    write_idx(bad / "t10k-images-idx3-ubyte.gz", z((2, 28, 28), np.uint8), (2, 28, 28))
    write_idx(bad / "t10k-labels-idx1-ubyte.gz", z(2, np.uint8), (2,))
    with pytest.raises(TransferError, match="4 images but 3 labels"):
        mnist.load("mnist", bad)


def test_the_digits_given_as_fashion_mnist_are_refused(mnist_dir, tmp_path, monkeypatch):
    """`mnist --dataset fashion --data <the digit files>` trained on digits and named them
    "T-shirt/top", "Trouser", ...: the original MNIST labels are known, and refused there."""
    for data in (mnist_dir, mnist_dir / "mnist.npz"):
        with pytest.raises(TransferError, match="holds the MNIST digits, not Fashion-MNIST"):
            mnist.load("fashion", data)
        (_, y_train), (_, y_test) = mnist.load("mnist", data)
        assert mnist.is_mnist_digits(y_train, y_test)
        # other labels (one changed) are not the digits: Fashion-MNIST's own files pass
        changed = y_train.copy()
        changed[0] = (changed[0] + 1) % 10
        assert not mnist.is_mnist_digits(changed, y_test)
    monkeypatch.chdir(tmp_path)
    cli = CliRunner().invoke(app, ["mnist", "--dataset", "fashion", "--data", str(mnist_dir)])
    assert cli.exit_code == 1 and "holds the MNIST digits" in cli.output
    assert "Traceback" not in cli.output and not (tmp_path / "models").exists()


def test_clothes_given_as_the_digits_are_said(mnist_dir, tmp_path):
    """`mnist --data <Fashion-MNIST's files>` (their four files have MNIST's names) trained
    clothes as the digits 0 to 9 without a word. Their labels cannot be known offline; their
    pictures ink about half the square, digits a fifth: said (a warning, as other digit sets
    are welcome). Here the real digits grown by 3 pixels every way, labels shuffled."""
    (x, y), (x_test, y_test) = mnist.load("mnist", mnist_dir / "mnist.npz")
    recorder = Recorder()
    mnist.load("mnist", mnist_dir, recorder)
    assert recorder.warnings == []

    def grown(images):
        out = images.copy()
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                out = np.maximum(out, np.roll(images, (dy, dx), (1, 2)))
        return out

    rng = np.random.default_rng(0)
    dense = tmp_path / "clothes.npz"
    x_dense = grown(x[:3000])
    np.savez(dense, x_train=x_dense, y_train=rng.permutation(y[:3000]),
             x_test=grown(x_test[:500]), y_test=y_test[:500])
    mnist.load("mnist", dense, recorder)
    ink = np.mean(x_dense[:2000] > 0)
    assert 0.5 < ink < 0.6
    assert recorder.warnings == [
        f"{dense}: {ink:.0%} of the training images' pixels are inked, where handwritten "
        "digits ink about 19%: if these are Fashion-MNIST's files, use --dataset fashion "
        "(trained as digits, the classes are named 0 to 9)"]
    # the same pictures with MNIST's own labels are the digits, whatever they look like;
    # as Fashion-MNIST they are what was asked for
    recorder = Recorder()
    np.savez(dense, x_train=grown(x), y_train=y, x_test=grown(x_test), y_test=y_test)
    mnist.load("mnist", dense, recorder)
    np.savez(dense, x_train=x_dense, y_train=rng.permutation(y[:3000]),
             x_test=grown(x_test[:500]), y_test=y_test[:500])
    mnist.load("fashion", dense, recorder)
    assert recorder.warnings == []
    assert mnist.MNIST_INK == pytest.approx(np.mean(x > 0), abs=5e-4)


def test_a_file_that_is_no_npz_says_what_is_expected(mnist_dir, tmp_path):
    """numpy takes any file but a zip for a pickle and suggests loading it unsafely; --data
    says instead what the file should be, and loads no pickle."""
    (_, _), (x_test, y_test) = mnist.load("mnist", mnist_dir)
    csv = tmp_path / "m.csv"  # real digits, in the CSV layout of Kaggle's digit recognizer
    rows = [",".join(map(str, [label, *image.ravel()])) for image, label
            in zip(x_test[:20], y_test[:20], strict=True)]
    csv.write_text("label," + ",".join(f"pixel{i}" for i in range(784)) + "\n"
                   + "\n".join(rows) + "\n")
    real = (mnist_dir / "mnist.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(real[:len(real) // 2])  # an interrupted download
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    np.save(tmp_path / "x_test.npy", x_test)  # one array, not the archive
    for name in ("m.csv", "cut.npz", "noise.npz", "x_test.npy"):
        with pytest.raises(TransferError) as info:
            mnist.load("mnist", tmp_path / name)
        assert str(info.value) == (f"{tmp_path / name} is not an .npz archive; expected "
                                   f"{mnist.NPZ_LAYOUT}, or a folder with the four MNIST IDX "
                                   "files")
    for key in ("x_train", "y_train", "x_test", "y_test", "(N, 28, 28)", "uint8"):
        assert key in mnist.NPZ_LAYOUT

    objects = {key: np.array([{"a": 1}], dtype=object) for key in mnist.IDX_FILES}
    np.savez(tmp_path / "objects.npz", **objects)  # a zip, but of pickles: never loaded
    with pytest.raises(TransferError) as info:
        mnist.load("mnist", tmp_path / "objects.npz")
    assert "(it holds Python objects)" in str(info.value)
    assert "allow_pickle" not in str(info.value)

    result = CliRunner().invoke(app, ["mnist", "--data", str(csv), "--output",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().endswith(f"{csv} is not an .npz archive; expected "
                                          f"{mnist.NPZ_LAYOUT}, or a folder with the four MNIST "
                                          "IDX files")
    assert "allow_pickle" not in result.output and not (tmp_path / "out").exists()


def test_evaluate_a_digit_folder(quick, mnist_dir, tmp_path):
    """evaluate with a ten-class softmax model, on a folder holding three of its classes."""
    from transfer.evaluate import evaluate

    result, _ = quick
    (_, _), (x_test, y_test) = mnist.load("mnist", mnist_dir)
    for digit in (0, 1, 2):
        folder = tmp_path / "digits" / str(digit)
        folder.mkdir(parents=True)
        for i in np.flatnonzero(y_test == digit)[:5]:
            Image.fromarray(x_test[i]).save(folder / f"{i}.png")
    report = evaluate(result.bundle, data_dir=tmp_path / "digits",
                      output=tmp_path / "report").report
    matrix = np.asarray(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == report["images"] == 15
    assert matrix.sum(axis=1)[:3].tolist() == [5, 5, 5] and matrix[3:].sum() == 0
    assert report["roc_auc"] is None and report["per_class"]["7"]["recall"] is None
    assert report["accuracy"] >= 0.8



def test_keras_download_line_is_not_printed_on_stdout_for_a_library_caller(monkeypatch, capfd):
    """Without --data Keras downloads the arrays and prints "Downloading data from ..." on
    stdout: a library caller's `mnist.run` printed it though the library is silent by
    default. Here the real Keras download, with name resolution failing as offline: nothing
    on stdout or stderr for no reporter, the line to a reporter's info, the error as before."""
    import socket

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    capfd.readouterr()
    with pytest.raises(TransferError, match="could not download mnist"):
        mnist.load("mnist")
    assert capfd.readouterr() == ("", "")
    recorder = Recorder()
    with pytest.raises(TransferError, match="could not download mnist"):
        mnist.load("mnist", reporter=recorder)
    assert capfd.readouterr().out == ""
    assert any(line.startswith("Downloading data from https://") for line in recorder.infos)

def test_keras_downloads_are_what_runs_without_data(mnist_dir, tmp_path, monkeypatch):
    """Without --data the arrays come from keras.datasets.<name>.load_data() (Keras downloads
    and caches them; faked here at that boundary, as this machine has no network): Fashion-MNIST
    gets its own loader, class names and default bundle folder, and a failed download is one
    error line that points at --data."""
    from transfer.tf import keras

    real = mnist.load("mnist", mnist_dir / "mnist.npz")
    calls = []

    def offline():
        raise OSError("URL fetch failure on https://storage.googleapis.com/...: no network")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data",
                        lambda: calls.append("fashion") or real)
    with pytest.raises(TransferError, match=r"could not download mnist \(URL fetch failure.*"
                                            r"pass --data PATH to a mnist.npz or a folder with "
                                            r"mnist's four IDX files"):
        mnist.load("mnist")
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(TransferError) as info:  # it asked Fashion-MNIST's users for a mnist.npz
        mnist.load("fashion")
    assert str(info.value).endswith("pass --data PATH to an .npz of Fashion-MNIST's arrays or a "
                                    "folder with fashion's four IDX files")
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data",
                        lambda: calls.append("fashion") or real)
    monkeypatch.chdir(tmp_path)
    cli = CliRunner().invoke(app, ["mnist"])
    assert cli.exit_code == 1 and "could not download mnist" in cli.output
    assert "Traceback" not in cli.output and not (tmp_path / "models").exists()
    cli = CliRunner().invoke(app, ["mnist", "--dataset", "fashion", "--limit", "600",
                                   "--epochs", "1", "--batch-size", "32"])
    assert cli.exit_code == 0, cli.output
    assert calls == ["fashion"]
    meta = json.loads((tmp_path / "models/fashion-cnn/meta.json").read_text())
    assert meta["class_names"] == mnist.FASHION_NAMES
    assert meta["dataset"] == "fashion" and meta["data"]["source"] == "keras.datasets.fashion_mnist"


def test_new_options_are_checked(tmp_path, monkeypatch):
    """--label-smoothing and --shift are checked before any work, from the CLI too."""
    monkeypatch.setattr(mnist, "load", None)
    for params, pattern in ((dict(label_smoothing=1.0), r"--label-smoothing must be in \[0, 1\)"),
                            (dict(shift=-1), "--shift must be at least 0"),
                            (dict(shift=14), "--shift must be at most 13")):
        with pytest.raises(TransferError, match=pattern):
            mnist.run(mnist.MnistParams(output=tmp_path / "never", **params))
    cli = CliRunner().invoke(app, ["mnist", "--shift", "20", "--output", str(tmp_path / "x")])
    assert cli.exit_code == 1 and "--shift must be at most 13" in cli.output


def test_shift_layer_moves_training_images_only():
    """--shift: whole-pixel moves of up to `shift` pixels in training, nothing at inference."""
    from transfer.tf import keras

    model = mnist.build_model("cnn", shift=2, seed=3)
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["image", "preprocess", "shift", "conv1"]
    assert [layer.name for layer in mnist.build_model("cnn").layers][2] == "conv1"
    shift = keras.Model(model.input, model.get_layer("shift").output)
    x = np.zeros((64, 28, 28, 1), np.float32)
    x[:, 10:18, 10:18] = 255.0
    np.testing.assert_array_equal(np.asarray(shift(x, training=False)), x / 255.0)
    moved = np.asarray(shift(x, training=True))[..., 0]
    assert set(np.unique(moved)) <= {0.0, 1.0}  # nearest: no blur
    rows = [np.flatnonzero(m.any(1))[0] - 10 for m in moved]
    cols = [np.flatnonzero(m.any(0))[0] - 10 for m in moved]
    assert max(map(abs, rows + cols)) <= 2 and len(set(rows)) > 1 and len(set(cols)) > 1
    assert (moved.sum((1, 2)) == 64).all()  # the square is never cut off


def test_shift_is_recorded_and_not_saved(mnist_dir, tmp_path, monkeypatch):
    """--shift trains through the shift layer; the bundle holds the same network without it
    (same weights, so the same predictions) and meta.json records the option."""
    from transfer import bundle

    built, real_build = [], mnist.build_model
    monkeypatch.setattr(mnist, "build_model",
                        lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    result = mnist.run(mnist.MnistParams(data=mnist_dir, limit=600, epochs=1, batch_size=32,
                                         shift=2, label_smoothing=0.1,
                                         output=tmp_path / "shifted"))
    training = result.meta["training"]
    assert training["shift_pixels"] == 2 and training["label_smoothing"] == 0.1
    saved, _ = bundle.load(result.bundle)
    # the network trained had the layer (a run that never shifted passed the checks below)
    assert "shift" in [layer.name for layer in built[0].layers]
    assert "shift" not in [layer.name for layer in saved.layers]
    assert result.meta["metrics"]["test_accuracy"] > 0.5
    # val_loss is the saved model's plain cross-entropy, as test_loss is (it was the fit's
    # smoothed loss: 0.67 beside a test_loss of 0.25 at the same accuracy)
    (x_train, y_train), _ = mnist.load("mnist", mnist_dir)
    probs = saved.predict(x_train[540:600, ..., None], verbose=0)
    plain = -np.mean(np.log(probs[np.arange(60), y_train[540:600]]))
    assert result.meta["metrics"]["val_loss"] == pytest.approx(plain, rel=1e-4)
    assert result.meta["metrics"]["val_accuracy"] == np.mean(probs.argmax(-1) == y_train[540:600])


def test_samples_show_training_images_only(mnist_dir, tmp_path):
    """--limit 12 trains on 10 images and holds 2 out: samples.png said "25 mnist training
    images" and showed all 12, the 2 held-out ones among them."""
    result = mnist.run(mnist.MnistParams(data=mnist_dir, limit=12, epochs=1, batch_size=32,
                                         arch="tiny", output=tmp_path / "twelve"))
    assert result.meta["training"]["train_images"] == 10
    with Image.open(result.bundle / "samples.png") as image:
        assert image.size == (5 * 128, 2 * 144 + 32)  # 10 cells: 2 rows of 5


def test_an_empty_set_or_a_split_leaving_nothing_to_train_on_is_one_line(mnist_dir, tmp_path):
    """An npz whose test set is empty crashed in Keras's predict (UnboundLocalError) after
    training; --validation-split 0.95 of 10 images trained on none, then crashed drawing the
    curves. Each is now one TransferError before any training, and no bundle is written."""
    with np.load(mnist_dir / "mnist.npz") as real:
        arrays = {key: real[key] for key in real.files}
    np.savez(tmp_path / "empty-test.npz", **{**arrays, "x_test": arrays["x_test"][:0],
                                             "y_test": arrays["y_test"][:0]})
    with pytest.raises(TransferError, match=r"^test set in .*empty-test.npz is empty$"):
        mnist.load("mnist", tmp_path / "empty-test.npz")
    result = CliRunner().invoke(app, ["mnist", "--data", str(mnist_dir / "mnist.npz"),
                                      "--limit", "10", "--epochs", "1", "--validation-split",
                                      "0.95", "--output", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "error: --validation-split 0.95 of 10 training images leaves none to train on" in \
        result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_run_that_blew_up_without_nan_is_said_diverged(mnist_dir, small_runs, tmp_path):
    """--learning-rate 1000: the loss reached 5e17 and the outputs saturated, finite but
    confidently wrong (test accuracy 0.10, loss 14): the run ended like any other, no word.
    It is now said diverged, as a run whose outputs are not numbers is; the smallest
    ordinary runs are not."""
    recorder = Recorder()
    result = mnist.run(mnist.MnistParams(data=mnist_dir, limit=500, epochs=1, batch_size=32,
                                         arch="tiny", learning_rate=1000.0,
                                         output=tmp_path / "lr1000"), recorder)
    blown = [w for w in recorder.warnings if "diverged" in w]
    accuracy = result.meta["metrics"]["test_accuracy"]
    assert accuracy < 0.2 and len(blown) == 1, recorder.warnings
    assert blown[0].startswith(f"the training diverged (test accuracy {accuracy:.4f}, no better "
                               "than guessing, at a loss of ")
    assert blown[0].endswith("worse than guessing's 2.30): this model is no use; try a lower "
                             "--learning-rate than 1000")
    for ordinary, warned in small_runs.values():
        assert ordinary.meta["metrics"]["test_accuracy"] > 0.2
        assert not [w for w in warned if "diverged" in w], warned


def test_the_benchmark_script_says_a_bad_setting_in_one_line(mnist_dir):
    """`scripts/bench_mnist.py --arch big` ended in a full traceback; every bench script now
    says a bad setting as the CLI does: one line, exit code 1."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_mnist.py"
    done = subprocess.run([sys.executable, str(script), "--data", str(mnist_dir), "--arch",
                           "big"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "error: --arch must be one of cnn, tiny, not 'big'"
