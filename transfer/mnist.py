"""`transfer mnist`: the small CNN trained from scratch, the baseline to compare against.

Data comes from Keras's downloads (``keras.datasets.mnist`` / ``fashion_mnist``) or, offline,
from ``--data PATH``: a Keras-style ``mnist.npz`` or a folder with the four original IDX files
(gzipped or not). Besides the model bundle it writes the pictures a learner wants: samples,
confusion matrix, mistakes, the learned filters, real feature maps, and accuracy under noise.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import bases, bundle, plots
from transfer.errors import TransferError, at_safe_points
from transfer.metrics import confident_mistakes, confusion_matrix
from transfer.progress import Reporter
from transfer.seeds import keeps_random_state
from transfer.settings import MnistParams, given

DATASETS = ("mnist", "fashion")
KERAS_NAMES = {"mnist": "mnist", "fashion": "fashion_mnist"}  # keras.datasets.<name>
ARCHS = ("cnn", "tiny")
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
DIGIT_NAMES = [str(d) for d in range(10)]
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
NOISE_SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.5)
# what --data FILE must hold: the file keras.datasets.mnist.load_data() downloads
NPZ_LAYOUT = ("a Keras mnist.npz, a zip of the .npy arrays x_train, y_train, x_test, y_test "
              "(uint8 images (N, 28, 28), labels (N,) 0-9)")

# SHA-256 of the original MNIST labels as arrays (train, test): the same in the four IDX files
# and in Keras's mnist.npz. Labels that match are the digits, whatever --dataset says.
MNIST_LABELS_SHA256 = ("1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
                       "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5")

# The share of pixels above 0 in MNIST's training digits (measured on the original files:
# 19.1%, mean pixel 0.131); Fashion-MNIST's clothes fill far more of the square (its mean
# pixel, the one its users normalise with, is 0.286: about half the pixels inked). Above
# DIGITS_INK_AT_MOST, files given as the digits are said to look like clothes (a warning:
# other digit sets are welcome).
MNIST_INK = 0.191
DIGITS_INK_AT_MOST = 0.35
INK_SAMPLE = 2000  # training images looked at


@dataclass
class MnistResult:
    bundle: Path
    meta: dict
    noise: list[tuple[float, float]]
    summary: list[tuple[str, str, int]]


# --------------------------------------------------------------------------- data


def class_names(dataset: str) -> list[str]:
    return FASHION_NAMES if dataset == "fashion" else DIGIT_NAMES


def load(dataset: str = "mnist", data: Path | None = None, reporter: Reporter | None = None):
    """((x_train, y_train), (x_test, y_test)) as uint8 arrays, checked. Without ``data``
    Keras downloads them (once, into its cache); its "Downloading data from ..." is said as
    ``bases.downloads_said_to(reporter)`` says (None: nobody; Keras writes it on stdout)."""
    if dataset not in DATASETS:
        raise TransferError(f"unknown dataset {dataset!r}; choose {' or '.join(DATASETS)}")
    if data is None:
        from transfer.tf import keras

        source = getattr(keras.datasets, KERAS_NAMES[dataset])
        try:
            with bases.downloads_said_to(reporter):
                arrays = source.load_data()
        except Exception as exc:
            npz = "a mnist.npz" if dataset == "mnist" else "an .npz of Fashion-MNIST's arrays"
            raise TransferError(f"could not download {dataset} ({exc}); pass --data PATH to "
                                f"{npz} or a folder with {dataset}'s four IDX files") from exc
        (x_train, y_train), (x_test, y_test) = arrays
    else:
        data = Path(data)
        if not data.exists():
            raise TransferError(f"no such file or folder: {data}")
        arrays = _read_npz(data) if data.is_file() else _read_idx_folder(data)
        x_train, y_train, x_test, y_test = (arrays[k] for k in IDX_FILES)
    for x, y, split in ((x_train, y_train, "training"), (x_test, y_test, "test")):
        _check(x, y, split, data)
    if dataset == "fashion" and data is not None and is_mnist_digits(y_train, y_test):
        # trained, the bundle would name digits "T-shirt/top", "Trouser", ...
        raise TransferError(f"{data} holds the MNIST digits, not Fashion-MNIST: use "
                            "--dataset mnist, or pass the Fashion-MNIST files")
    if dataset == "mnist" and data is not None and reporter is not None:
        # the other way round (Fashion-MNIST's files have MNIST's names): its labels cannot be
        # known offline, its pictures can: clothes ink about half the square, digits a fifth
        ink = float(np.mean(x_train[:INK_SAMPLE] > 0))
        if ink > DIGITS_INK_AT_MOST and not is_mnist_digits(y_train, y_test):
            reporter.warn(f"{data}: {ink:.0%} of the training images' pixels are inked, where "
                          f"handwritten digits ink about {MNIST_INK:.0%}: if these are "
                          "Fashion-MNIST's files, use --dataset fashion (trained as digits, "
                          "the classes are named 0 to 9)")
    return (x_train, y_train), (x_test, y_test)


def is_mnist_digits(y_train: np.ndarray, y_test: np.ndarray) -> bool:
    """Whether the labels are the original MNIST's, element for element."""
    return tuple(hashlib.sha256(np.ascontiguousarray(y, np.uint8).tobytes()).hexdigest()
                 for y in (y_train, y_test)) == MNIST_LABELS_SHA256


def _read_npz(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:  # np.load calls all but a zip or a .npy a pickle
            if not zipfile.is_zipfile(handle):
                raise TransferError(f"{path} is not an .npz archive; expected {NPZ_LAYOUT}, "
                                    "or a folder with the four MNIST IDX files")
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in IDX_FILES if k not in archive.files]
            if missing:
                raise TransferError(f"{path} lacks {', '.join(missing)}; expected {NPZ_LAYOUT}")
            return {k: archive[k] for k in IDX_FILES}
    except TransferError:
        raise
    except Exception as exc:
        reason = "it holds Python objects" if "allow_pickle" in str(exc) else exc  # never loaded
        raise TransferError(f"{path} is not a readable .npz file ({reason}); expected "
                            f"{NPZ_LAYOUT}") from exc


def _read_idx_folder(folder: Path) -> dict:
    arrays = {}
    for key, stem in IDX_FILES.items():
        names = [f"{stem}.gz", stem, stem.replace("-idx", ".idx")]
        # Kaggle's MNIST download puts each file in a folder of its own name
        candidates = [folder / n for n in names] + [folder / d / n for d in names[1:]
                                                    for n in names]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise TransferError(f"{folder} has no {stem}.gz (or {stem}); expected the four "
                                "original MNIST IDX files")
        arrays[key] = read_idx(path)
    return arrays


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array; truncated or malformed files fail."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            blob = handle.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: damaged gzip data
        raise TransferError(f"{path} cannot be read ({exc})") from exc
    if len(blob) < 4:
        raise TransferError(f"{path} is too short to be an IDX file")
    zero, dtype, ndim = struct.unpack(">HBB", blob[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise TransferError(f"{path} is not an unsigned-byte IDX file of 1 or 3 dimensions")
    if len(blob) < 4 + 4 * ndim:
        raise TransferError(f"{path} is truncated: its header ends before its {ndim} "
                            "dimensions")
    dims = struct.unpack(f">{ndim}I", blob[4:4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = blob[4 + 4 * ndim:]
    if len(body) != expected:
        raise TransferError(f"{path} is truncated or padded: header says {expected} bytes of "
                            f"data, file has {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _check(x, y, split: str, source) -> None:
    where = f" in {source}" if source else ""
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise TransferError(f"{split} images{where} have shape {x.shape}; expected (N, 28, 28)")
    if y.ndim != 1:
        raise TransferError(f"{split} labels{where} have shape {y.shape}; expected (N,)")
    if len(x) != len(y):
        raise TransferError(f"{split} set{where}: {len(x)} images but {len(y)} labels")
    if x.dtype != np.uint8 or y.dtype != np.uint8:
        raise TransferError(f"{split} arrays{where} are {x.dtype}/{y.dtype}; expected uint8")
    if not len(x):
        raise TransferError(f"{split} set{where} is empty")
    if int(y.max()) > 9:  # y is not empty: checked above
        raise TransferError(f"{split} labels{where} go up to {int(y.max())}; expected 0-9")


# --------------------------------------------------------------------------- model


def build_model(arch: str = "cnn", shift: int = 0, seed: int | None = None):
    """The seeds' CNN (or the one-convolution variant) on raw 0-255 28x28x1 pixels.

    ``shift``: a "shift" layer moving each training image by up to that many pixels (a whole
    number of pixels each way, the border filled with black; inactive at inference). `run`
    saves the network without it (TFLite cannot convert its random ops).
    """
    from transfer.bases import preprocess_layer
    from transfer.tf import keras

    layers = keras.layers
    inputs = keras.Input((28, 28, 1), name="image")
    x = preprocess_layer("scale")(inputs)
    if shift:
        x = layers.RandomTranslation(shift / 28, shift / 28, fill_mode="constant",
                                     interpolation="nearest", seed=seed, name="shift")(x)
    if arch == "cnn":
        x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
        x = layers.MaxPooling2D(2, name="pool1")(x)
        x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
        x = layers.MaxPooling2D(2, name="pool2")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(128, activation="relu", name="dense")(x)
        x = layers.Dropout(0.5, name="dropout")(x)
    elif arch == "tiny":
        x = layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
        x = layers.Flatten(name="flatten")(x)
    else:
        raise TransferError(f"unknown arch {arch!r}; choose {' or '.join(ARCHS)}")
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"mnist_{arch}")


def weight_average(momentum: float):
    """A callback keeping an exponential moving average of the trainable weights, written into
    the model when training ends (so the saved model, the test accuracy and every picture use
    it; the per-epoch validation numbers are the raw weights').

    Averaging the last ~100 steps smooths out the noise of the final batches: +0.05 to +0.22
    points of MNIST test accuracy in 5 epochs, over five seeds (docs/BENCHMARKS.md). The
    momentum ramps up as min(momentum, (1 + t) / (10 + t)), as TensorFlow's
    ExponentialMovingAverage does with `num_updates`; Keras's own `Adam(use_ema=True)` has no
    ramp, so a short run (`--limit`) would end close to its random initial weights.
    """
    from transfer.tf import keras, tf

    class WeightAverage(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.steps = 0
            weights = self.model.trainable_weights
            self.average = [tf.Variable(w.value, trainable=False) for w in weights]

            @tf.function
            def update(m):
                for average, weight in zip(self.average, weights, strict=True):
                    average.assign(m * average + (1 - m) * weight.value)

            self.update = update

        def on_train_batch_end(self, batch, logs=None):
            self.update(tf.constant(min(momentum, (1 + self.steps) / (10 + self.steps))))
            self.steps += 1

        def on_train_end(self, logs=None):
            for average, weight in zip(self.average, self.model.trainable_weights, strict=True):
                weight.assign(average)

    return WeightAverage()


def summary_rows(model) -> list[tuple[str, str, int]]:
    return [(f"{layer.name} ({type(layer).__name__})", str(tuple(layer.output.shape)),
             layer.count_params()) for layer in model.layers]


# --------------------------------------------------------------------------- run


@keeps_random_state
def run(params: MnistParams, reporter: Reporter | None = None) -> MnistResult:
    """Train the small CNN from scratch, test it on the 10,000 test images, write the bundle
    and its pictures.

    Args:
        params: the run's settings (``MnistParams``); checked first, before TensorFlow loads.
        reporter: progress and messages; silent by default.

    Returns:
        MnistResult: the bundle folder, its meta.json, accuracy under noise, the layer summary.

    Raises:
        TransferError: a bad option (``--limit 0`` included), unreadable data, an existing
            output without ``--force``.
    """
    p = given(params, MnistParams, "mnist.run").validated()
    reporter = reporter or Reporter()
    from transfer.tf import interrupt_at_batch_ends, keras

    target = p.target()
    (x_train, y_train), (x_test, y_test) = load(p.dataset, p.data, reporter)
    if p.limit is not None:
        x_train, y_train = x_train[:p.limit], y_train[:p.limit]
    names = class_names(p.dataset)
    started = time.perf_counter()
    keras.utils.set_random_seed(p.seed)
    model = build_model(p.arch, shift=p.shift, seed=p.seed)
    x_train4, x_test4 = x_train[..., None], x_test[..., None]
    # the last images are held out for validation (as Keras's validation_split would), split
    # here so that the counts reported are the ones trained on
    split_at = math.floor(len(x_train) * (1.0 - p.validation_split))
    if split_at < 1:
        raise TransferError(f"--validation-split {p.validation_split:g} of {len(x_train)} "
                            "training images leaves none to train on; hold out less or use "
                            "more images (--limit)")
    if p.label_smoothing:  # Keras's sparse cross-entropy has no smoothing: one-hot targets
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing)
        targets = np.eye(10, dtype="float32")[y_train]
    else:
        loss, targets = "sparse_categorical_crossentropy", y_train
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=p.learning_rate),
                  loss=loss, metrics=["accuracy"])

    epoch_seconds: list[float] = []

    class Progress(keras.callbacks.Callback):
        def __init__(self, advance):
            super().__init__()
            self.advance = advance

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.t0)
            logs = logs or {}
            self.advance(1, status="  ".join(f"{k} {v:.4f}" for k, v in logs.items()
                                             if k in ("loss", "accuracy", "val_loss",
                                                      "val_accuracy")))

    validation = (x_train4[split_at:], targets[split_at:]) if split_at < len(x_train) else None
    with reporter.task(f"Training the {p.arch} on {split_at} {p.dataset} images "
                       f"({len(x_train) - split_at} held out for validation)",
                       total=p.epochs) as advance:
        callbacks = [Progress(advance), interrupt_at_batch_ends()] + (
            [weight_average(p.ema)] if p.ema else [])
        with at_safe_points():  # a Ctrl-C stops the fit at a batch end
            fit = model.fit(x_train4[:split_at], targets[:split_at], epochs=p.epochs,
                            batch_size=p.batch_size, validation_data=validation, verbose=0,
                            callbacks=callbacks)
    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    if p.shift:  # the saved model is the same network without its training-only shift layer
        trained, model = model, build_model(p.arch)
        for layer in model.layers:
            layer.set_weights(trained.get_layer(layer.name).get_weights())
    probs = model.predict(x_test4, batch_size=1000, verbose=0)
    predicted = probs.argmax(-1)
    test_loss = float(keras.losses.SparseCategoricalCrossentropy()(y_test, probs))
    test_accuracy = float(np.mean(predicted == y_test))
    if not np.isfinite(probs).all():
        reporter.warn(f"the training diverged (its outputs are not numbers; loss {test_loss}): "
                      f"this model is no use; try a lower --learning-rate than "
                      f"{p.learning_rate:g}")
    elif test_accuracy < 2 / len(names) and test_loss > 2 * np.log(len(names)):
        # outputs saturated: finite, confidently wrong (--learning-rate 1000: loss 5e17)
        reporter.warn(f"the training diverged (test accuracy {test_accuracy:.4f}, no better "
                      f"than guessing, at a loss of {test_loss:.4g}, worse than guessing's "
                      f"{np.log(len(names)):.2f}): this model is no use; try a lower "
                      f"--learning-rate than {p.learning_rate:g}")
    val_loss = val_accuracy = None  # the saved model's, as the test ones: plain cross-entropy
    if validation is not None:  # (the fit's own is smoothed with --label-smoothing)
        val_probs = model.predict(x_train4[split_at:], batch_size=1000, verbose=0)
        val_loss = float(keras.losses.SparseCategoricalCrossentropy()(y_train[split_at:],
                                                                       val_probs))
        val_accuracy = float(np.mean(val_probs.argmax(-1) == y_train[split_at:]))
    noise = noise_robustness(model, x_test, y_test, p.seed)
    confusion = confusion_matrix(y_test, predicted, 10)
    meta = bundle.meta(
        kind="mnist", class_names=names, image_size=28, channels=1,
        preprocessing={"mode": "scale", "in_model": True, "grayscale": True,
                       "invert": "auto", "fit": "mnist-box",
                       "input": "grayscale pixels 0-255, 28x28, light digit on dark; a "
                                "user's image is fitted into a 20x20 box centred by mass"},
        seed=p.seed, command=p.command, settings=p.as_dict(),
        metrics={"test_accuracy": test_accuracy, "test_loss": test_loss,
                 "val_accuracy": val_accuracy, "val_loss": val_loss,
                 "noise_accuracy": {str(s): a for s, a in noise}},
        base=f"mnist-{p.arch}",
        dataset=p.dataset,
        output="softmax",
        training={"epochs": p.epochs, "batch_size": p.batch_size,
                  "validation_split": p.validation_split, "train_images": split_at,
                  "validation_images": len(x_train) - split_at,
                  "optimizer": "adam", "learning_rate": p.learning_rate,
                  "weight_average_momentum": p.ema, "label_smoothing": p.label_smoothing,
                  "shift_pixels": p.shift},
        confusion_matrix=confusion.tolist(),
        timings={"seconds_per_epoch": [round(s, 2) for s in epoch_seconds],
                 "total_seconds": round(time.perf_counter() - started, 2)},
        data={"source": str(Path(p.data).resolve()) if p.data
              else f"keras.datasets.{KERAS_NAMES[p.dataset]}",
              "test_images": len(x_test),
              "counts": {split: {names[i]: int(n) for i, n in
                                 enumerate(np.bincount(labels, minlength=len(names)))}
                         for split, labels in (("train", y_train[:split_at]),
                                               ("validate", y_train[split_at:]),
                                               ("test", y_test)) if len(labels)}},
    )

    def pictures(folder: Path) -> None:
        shown = min(25, split_at)  # training images only (--limit 12: not the held-out ones)
        plots.image_grid(x_train[:shown], [names[i] for i in y_train[:shown]],
                         folder / "samples.png", cols=5,
                         title=f"{shown} {p.dataset} training images")
        plots.confusion(confusion, names, folder / "confusion.png",
                        title=f"test accuracy {test_accuracy:.4f}")
        errors = int((predicted != y_test).sum())
        wrong = confident_mistakes(probs, y_test, 25)  # as evaluate shows them
        plots.image_grid(x_test[wrong], [f"true {names[y_test[i]]}\npred {names[predicted[i]]} "
                                         f"{probs[i, predicted[i]]:.2f}" for i in wrong],
                         folder / "misclassified.png", cols=5,
                         title=(f"the {len(wrong)} most confident of {errors} mistakes"
                                if errors else "no mistakes"))
        kernels = np.asarray(model.get_layer("conv1").kernel)[:, :, 0, :]  # (3, 3, filters)
        plots.image_grid(np.moveaxis(kernels, -1, 0), [f"filter {i}" for i in
                                                       range(kernels.shape[-1])],
                         folder / "filters.png", cols=8, title="first-layer kernels (trained)",
                         cmap="coolwarm")
        maps = feature_maps(model, x_test[0])
        plots.image_grid(np.moveaxis(maps, -1, 0), [f"map {i}" for i in range(maps.shape[-1])],
                         folder / "feature_maps.png", cols=8,
                         title=f"conv1 activations for a test {names[y_test[0]]}",
                         cmap="viridis")
        plots.noise_curve(noise, folder / "noise.png", title=f"{p.dataset} {p.arch}")

    smoothed = f" (loss: with label smoothing {p.label_smoothing:g})" if p.label_smoothing else ""
    landed = bundle.write(target, p.force, model, meta, history,
                          title=f"{p.dataset} {p.arch}{smoothed}", extra=pictures,
                          reporter=reporter)
    bundle.say_where_it_landed(target, landed, reporter)
    target = landed
    from transfer import report

    report.write_quietly(target, reporter)
    return MnistResult(target, meta, noise, summary_rows(model))


def noise_robustness(model, x_test, y_test, seed: int, sigmas=NOISE_SIGMAS):
    """Test accuracy with Gaussian noise of each sigma added to [0, 1] pixels (then clipped)."""
    rng = np.random.default_rng(seed)
    results = []
    clean = x_test.astype("float32") / 255.0
    for sigma in sigmas:
        noisy = np.clip(clean + rng.normal(0.0, sigma, clean.shape).astype("float32"), 0, 1)
        probs = model.predict((noisy * 255.0)[..., None], batch_size=1000, verbose=0)
        results.append((float(sigma), float(np.mean(probs.argmax(-1) == y_test))))
    return results


def feature_maps(model, image: np.ndarray) -> np.ndarray:
    """The real first-layer activations (H, W, filters) for one 28x28 uint8 image."""
    from transfer.tf import keras

    probe = keras.Model(model.input, model.get_layer("conv1").output)
    return np.asarray(probe(image[None, ..., None].astype("float32"), training=False))[0]

