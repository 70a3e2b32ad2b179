"""The registry of bases: the only place that knows a base.

Each entry says which Keras application it is, its native and minimum input size, its
preprocessing, its last convolutional layer (for Grad-CAM) and the ImageNet weight files Keras
downloads for it. Everything else (training, predict, explain, export) asks here.
"""

from __future__ import annotations

import contextlib
import io
import numbers
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transfer.errors import TransferError
from transfer.files import sha256_file as sha256

MOBILENET_ALPHAS = (1.0, 0.75, 0.5, 0.25)

# Preprocessing modes, as keras.applications.imagenet_utils names them, plus "scale" (x/255).
#   tf:    x / 127.5 - 1                      (Inception, MobileNet v1/v2)
#   caffe: RGB -> BGR, minus the ImageNet BGR means   (VGG16, ResNet50)
#   none:  raw 0-255 (EfficientNet rescales inside the model)
#   scale: x / 255                            (the CNN from scratch)
PREPROCESS_MODES = ("tf", "caffe", "none", "scale")
PREPROCESS_SHOWN = {"tf": "x/127.5 - 1", "caffe": "BGR, minus ImageNet means",  # `bases`
                    "none": "inside the network", "scale": "x/255"}
SCRATCH_SHOWN = {"scratch": "4 conv blocks, from scratch",
                 "scratch-seeds": "2 conv layers, from scratch"}
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Base:
    name: str
    keras_class: str  # name in keras.applications ("" for scratch)
    module: str  # keras.applications submodule with preprocess_input/decode_predictions
    size: int  # native input size (square)
    min_size: int
    preprocess: str  # one of PREPROCESS_MODES
    last_conv: str  # layer name of the last convolutional feature map
    weight_files: Callable[[float, int], tuple[str, str]]  # (alpha, size) -> (top, no top)
    has_alpha: bool = False
    # the size the frozen route runs at with test-time flips (``--tta auto``), where measured
    # to pay: ImageNet weights trained on random crops see objects larger than a whole photo
    # at their native size shows them (FixRes, Touvron et al. 2019). None: no test-time flips
    # by default for this base (``--tta flip`` still asks for them, at the native size).
    test_size: int | None = None
    # Keras checks this base's weight files against their hash and downloads a damaged one
    # again (InceptionV3, VGG16, ResNet50, EfficientNet); MobileNet's loaders take any file of
    # the name as the download (``build`` names a damaged one instead)
    keras_checks_file: bool = False
    # Keras adds layers to this base only when built with weights="imagenet" (EfficientNet's
    # Rescaling by 1/sqrt(ImageNet's stddev) after its Normalization): a weights file (--weights
    # PATH, a read-only KERAS_HOME's) is loaded through that path, or the network lacks them
    imagenet_layers: bool = False

    @property
    def pretrained(self) -> bool:
        return bool(self.keras_class)

    def weight_file(self, alpha: float = 1.0, size: int | None = None,
                    include_top: bool = False) -> str:
        top, notop = self.weight_files(alpha, size or self.size)
        return top if include_top else notop


def _fixed(stem: str, top_suffix: str = "", notop_suffix: str = "_notop"):
    return lambda alpha, size: (f"{stem}{top_suffix}.h5", f"{stem}{notop_suffix}.h5")


def _mobilenet_files(alpha: float, size: int) -> tuple[str, str]:
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    rows = size if size in (128, 160, 192, 224) else 224
    return f"mobilenet_{alpha_text}_{rows}_tf.h5", f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"


def _mobilenetv2_files(alpha: float, size: int) -> tuple[str, str]:
    rows = size if size in (96, 128, 160, 192, 224) else 224
    stem = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}"
    return f"{stem}.h5", f"{stem}_no_top.h5"


BASES: dict[str, Base] = {
    b.name: b
    for b in (
        Base("inception", "InceptionV3", "inception_v3", 299, 75, "tf", "mixed10",
             _fixed("inception_v3_weights_tf_dim_ordering_tf_kernels"), keras_checks_file=True),
        Base("vgg16", "VGG16", "vgg16", 224, 32, "caffe", "block5_conv3",
             _fixed("vgg16_weights_tf_dim_ordering_tf_kernels"), keras_checks_file=True),
        Base("mobilenet", "MobileNet", "mobilenet", 224, 32, "tf", "conv_pw_13_relu",
             _mobilenet_files, has_alpha=True, test_size=288),  # docs/BENCHMARKS.md (alpha 0.25)
        Base("mobilenetv2", "MobileNetV2", "mobilenet_v2", 224, 32, "tf", "out_relu",
             _mobilenetv2_files),
        Base("resnet50", "ResNet50", "resnet50", 224, 32, "caffe", "conv5_block3_out",
             _fixed("resnet50_weights_tf_dim_ordering_tf_kernels"), keras_checks_file=True),
        Base("efficientnetb0", "EfficientNetB0", "efficientnet", 224, 32, "none",
             "top_activation", _fixed("efficientnetb0", "", "_notop"),
             keras_checks_file=True, imagenet_layers=True),
        # The CNN from scratch: four Conv-BatchNorm-ReLU-MaxPool blocks (the first conv with
        # stride 2) and global average pooling; 128 px (docs/BENCHMARKS.md has the runs).
        Base("scratch", "", "", 128, 32, "scale", "block4_relu", lambda alpha, size: ("", "")),
        # The seeds' CNN, as the course shows it: Conv32-Pool-Conv32-Pool-Flatten-Dense128.
        Base("scratch-seeds", "", "", 150, 16, "scale", "conv2", lambda alpha, size: ("", "")),
    )
}

# What each CNN from scratch is: its trunk (built by ``build``) and its head (``scratch_graphs``).
SCRATCH_WIDTHS = (32, 64, 128, 256)  # the blocks of "scratch"
SCRATCH_BN_MOMENTUM = 0.9  # of the BatchNorm averages (Keras: 0.99): they keep up with early epochs
SCRATCH_HEADS = {
    "scratch": {"pool": "global_average", "dropout": 0.3},
    "scratch-seeds": {"pool": "flatten", "dense": 128, "dropout": 0.5},
}


def get(name: str) -> Base:
    try:
        return BASES[name]
    except (KeyError, TypeError):  # TypeError: a list or a dict (unhashable) from a program
        raise TransferError(f"unknown base {name!r}; known bases: {', '.join(BASES)}") from None


class NotAChoice(TransferError):
    """An option given a value outside its few fixed choices (``--alpha 0.3`` for mobilenet):
    a usage error, exit code 2, as an unknown ``--base`` is (it was exit code 1)."""

    exit_code = 2


def check_alpha(base: Base, alpha: float) -> float:
    """``alpha`` as a float when ``base`` takes it, else one TransferError: a width MobileNet
    does not have is ``NotAChoice`` (a usage error, exit code 2); any other alpha than 1.0
    for another base, or no number, exit code 1."""
    # NumPy's numbers too (a sweep over np.array([0.25, 0.5])), as every other number option;
    # nan and inf are numbers, widths MobileNet does not have (exit code 2, as 0.3)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TransferError(f"--alpha must be a number, not {alpha!r}")
    if base.has_alpha:
        if alpha not in MOBILENET_ALPHAS:
            raise NotAChoice(f"--alpha for {base.name} must be one of "
                                f"{', '.join(map(str, MOBILENET_ALPHAS))}, not {alpha}")
        return float(alpha)
    if alpha != 1.0:
        raise TransferError(f"--alpha applies to mobilenet only, not {base.name}")
    return 1.0


# The largest image size a run accepts. The ImageNet bases were trained at 224-299 px; at
# 1024 px a batch of 32 already holds activations of a gigabyte and more per layer, and a typo
# (--image-size 2240, --train-size 5000) ran a machine out of memory, the kernel killing the
# run without a word.
MAX_SIZE = 1024


def check_size(base: Base, size: int) -> int:
    """``size`` if the base accepts it, else one clear error."""
    if size < base.min_size:
        raise TransferError(f"image size {size} is below the minimum of {base.name} "
                            f"({base.min_size} px)")
    if size > MAX_SIZE:
        raise TransferError(f"image size {size} is above the maximum of {MAX_SIZE} px (the "
                            f"ImageNet weights were trained at {base.size} px or so; larger "
                            "images multiply the memory a batch needs)")
    return size


def keras_home() -> Path:
    """Keras's folder as Keras finds it: ``$KERAS_HOME`` when set (even empty: the current
    folder), else ``~/.keras`` (``/tmp/.keras`` when the home folder is not writable)."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    base = os.path.expanduser("~")
    return Path(base if os.access(base, os.W_OK) else "/tmp") / ".keras"


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``, default ~/.keras/models)."""
    return keras_home() / "models"


def cached_weights(base: Base, alpha: float = 1.0, size: int | None = None,
                   include_top: bool = False) -> Path | None:
    if not base.pretrained:
        return None
    path = keras_cache_dir() / base.weight_file(alpha, size, include_top)
    return path if path.is_file() and not damaged_weights(path) else None


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of every .h5 file Keras writes


def damaged_weights(path: Path) -> str | None:
    """Why the weights file at ``path`` cannot be Keras's (0 bytes, not an HDF5 file: a
    download cut short, a proxy's error page saved under its name), or None. Keras takes any
    file it finds under the name as the download and fails to open it ("file signature not
    found", naming no file)."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(HDF5_SIGNATURE))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not head:
        return "is empty (0 bytes: a download cut short?)"
    if head != HDF5_SIGNATURE:
        return "is not an HDF5 weights file (a download cut short, or an error page?)"
    return None


def weights_state(base: Base, alpha: float = 1.0) -> str:
    """What `transfer bases` says of a base's ImageNet weights in the Keras cache: "cached"
    (both files: train's without the top, predict --imagenet's with it), "for train only",
    "for --imagenet only", "damaged" (a file there that Keras cannot open) or "not cached"."""
    if not base.pretrained:
        return "-"
    files = [keras_cache_dir() / base.weight_file(alpha, include_top=top) for top in (False, True)]
    if any(path.is_file() and damaged_weights(path) for path in files):
        return "damaged"
    train, imagenet = (path.is_file() for path in files)
    return ("cached" if train and imagenet else "for train only" if train
            else "for --imagenet only" if imagenet else "not cached")


def damaged_files() -> list[tuple[Path, str]]:
    """(path, why) of each weights file in the Keras cache, of any registered base, that Keras
    cannot open (``damaged_weights``)."""
    found = []
    for base in (b for b in BASES.values() if b.pretrained):
        for alpha in MOBILENET_ALPHAS if base.has_alpha else (1.0,):
            for top in (False, True):
                path = keras_cache_dir() / base.weight_file(alpha, include_top=top)
                why = path.is_file() and damaged_weights(path)
                if why:
                    found.append((path, why))
    return found


WEIGHTS_HINT = "or use --weights PATH or --weights none"  # train's way around missing weights


# who hears Keras's downloads when a caller names no reporter: standard error, as before
# reporters were passed down (training, compare and the server still say them there)
ON_STDERR = "stderr"


def on_stderr(reporter) -> bool:
    """Whether a downloader's own output (Keras's, the Kaggle client's) is shown as it comes,
    on standard error: for the CLI's RichReporter and ``ON_STDERR``."""
    from transfer.progress import RichReporter

    return reporter is ON_STDERR or isinstance(reporter, RichReporter)


@contextlib.contextmanager
def downloads_said_to(reporter=ON_STDERR):
    """Where a download's own output goes (Keras's of weights, of the class index or of a data
    set: "Downloading data from ..." and its progress bar; the Kaggle client's lines): they
    write it on standard output, where `predict --format json` or `--output -` writes its
    results. Nowhere for no reporter or a silent one (a
    library caller asked for no output); on standard error for the CLI's RichReporter or
    ``ON_STDERR`` (the user sees it, the results parse); else its lines to ``reporter.info``
    (the progress bar's last state only)."""
    from transfer.progress import Reporter

    if on_stderr(reporter):
        stream = sys.stderr
    elif reporter is None or type(reporter).info is Reporter.info:
        stream = _Lines(lambda line: None)
    else:
        stream = _Lines(reporter.info)
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        if isinstance(stream, _Lines):
            stream.write("\n")  # a line cut short by an error is said too


_COLOURS = re.compile(r"\x1b\[[0-9;]*m")  # the terminal colours of Keras's progress bar


class _Lines(io.TextIOBase):
    """A text stream that hands each whole line written to it to ``say``: a progress bar
    redrawn in place (carriage returns, backspaces) as its last state, without colours."""

    def __init__(self, say):
        super().__init__()
        self.say, self.pending = say, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, pending = (self.pending + text).split("\n")
        # a bar redrawn in place keeps only its last state: the whole history, re-joined and
        # split on every redraw (20 a second), cost CPU growing with the square of a
        # download's time (4.7 s for ten minutes)
        self.pending = pending.rsplit("\r", 1)[-1]
        for line in lines:
            shown = _COLOURS.sub("", line.rstrip("\r").split("\r")[-1]).replace("\b", "").strip()
            if shown:
                self.say(shown)
        return len(text)


def build(base: Base, image_size: int | None = None, alpha: float = 1.0,
          weights: str | None = "imagenet", include_top: bool = False,
          offline_hint: str = WEIGHTS_HINT, reporter=ON_STDERR):
    """The Keras model of ``base``: feature maps (no top) or the ImageNet classifier (top).

    ``weights``: "imagenet" (Keras's download and cache), None/"none" (random init) or a path to
    a weights file. Offline with no cached file, one clear TransferError names the file.
    ``reporter``: who hears of a download (``downloads_said_to``; None: nobody).
    """
    from transfer.tf import keras

    size = check_size(base, image_size or base.size)
    if weights == "none":
        weights = None
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise TransferError(f"weights file not found: {weights}")
    if not base.pretrained:
        if include_top:
            raise TransferError("the scratch CNN has no ImageNet classifier")
        return scratch_trunk(size) if base.name == "scratch-seeds" else scratch_blocks(size)
    application = getattr(keras.applications, base.keras_class)
    kwargs = {"alpha": alpha} if base.has_alpha else {}
    if include_top and size != base.size:
        raise TransferError(f"the ImageNet classifier of {base.name} needs {base.size} px")
    kwargs["input_shape"] = (size, size, 3)
    cached = cached_weights(base, alpha, size, include_top) if weights == "imagenet" else None
    if weights == "imagenet" and cached is None and not base.keras_checks_file:
        found = keras_cache_dir() / base.weight_file(alpha, size, include_top)
        why = found.is_file() and damaged_weights(found)
        if why:  # Keras would take it for the download and fail on it, naming no file
            raise TransferError(f"the ImageNet weights file {found} {why}; delete it and run "
                                "again to download it, or put the genuine file there")
    if cached is not None and not os.access(keras_cache_dir().parent, os.W_OK):
        # Keras looks in /tmp/.keras instead of a read-only KERAS_HOME (a class's shared
        # weights folder): load the file it would have found there, the same weights
        weights = str(cached)
    try:
        with warnings.catch_warnings(), downloads_said_to(reporter):
            # MobileNet at a size without its own weight file loads the 224 px weights (the
            # registry's weight_files says which file; `transfer bases` lists them): expected
            warnings.filterwarnings("ignore", message=r".*input_shape. is undefined or non-sq")
            if weights not in (None, "imagenet") and base.imagenet_layers:
                with _keras_fetches(weights):  # the ImageNet network, this file's weights
                    return application(include_top=include_top, weights="imagenet", **kwargs)
            return application(include_top=include_top, weights=weights, **kwargs)
    except TransferError:
        raise
    except Exception as exc:
        if weights == "imagenet" and cached is None:
            wanted = base.weight_file(alpha, size, include_top)
            # MobileNet keeps a file per size (128, 160, 192, 224 px): the base's own size's,
            # when there, is the same network (trained at that size) and loads at any size
            other = keras_cache_dir() / base.weight_file(alpha, base.size, include_top)
            also = (f"; or the {base.size} px weights you have (trained at {base.size} px), "
                    f"at {size} px: --weights {other}"
                    if other.name != wanted and other.is_file() and not damaged_weights(other)
                    else "")
            raise TransferError(
                f"ImageNet weights for {base.keras_class} could not be downloaded ({exc}); "
                f"put {wanted} into {keras_cache_dir()} (KERAS_HOME), {offline_hint}{also}"
                ) from exc
        raise TransferError(f"could not build {base.keras_class}: {exc}") from exc


_FETCHING = threading.Lock()


@contextlib.contextmanager
def _keras_fetches(path: str):
    """Keras's ``get_file`` (its download and hash check of ImageNet weights) answering
    ``path`` while a base is built: the ``weights="imagenet"`` network with a file's weights
    (``Base.imagenet_layers``)."""
    from keras.src.utils import file_utils

    with _FETCHING:
        fetch = file_utils.get_file
        file_utils.get_file = lambda *args, **kwargs: str(path)
        try:
            yield
        finally:
            file_utils.get_file = fetch


def weights_fingerprint(base: Base, weights: str | None, alpha: float, size: int,
                        seed: int) -> tuple[str, str | None]:
    """(source, sha256) of the weights a base was built with; random weights depend on seed."""
    if not base.pretrained or weights in (None, "none"):
        return "none", f"random-seed-{seed}"
    if weights == "imagenet":
        path = cached_weights(base, alpha, size)
        return "imagenet", sha256(path) if path else None
    return str(Path(weights).resolve()), sha256(Path(weights))


def scratch_trunk(size: int):
    """The seeds' CNN from scratch, minus its head: Conv32-Pool-Conv32-Pool."""
    from transfer.tf import keras

    layers = keras.layers
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    return keras.Model(inputs, x, name="scratch")


def scratch_blocks(size: int, widths: tuple | None = None, momentum: float | None = None):
    """The trunk of the CNN from scratch: per block Conv3x3 (no bias) - BatchNormalization -
    ReLU - MaxPool2, the first conv with stride 2 (a 128 px photo is 8x8 after four blocks,
    4x4 with the stride); layers named block<i>_conv/_bn/_relu/_pool."""
    from transfer.tf import keras

    layers = keras.layers
    widths = widths or SCRATCH_WIDTHS
    momentum = momentum or SCRATCH_BN_MOMENTUM
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i, width in enumerate(widths, start=1):
        x = layers.Conv2D(width, 3, strides=2 if i == 1 else 1, padding="same", use_bias=False,
                          name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(momentum=momentum, name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="scratch")


def head_meta(base: Base) -> dict:
    """meta.json's "head" of a CNN from scratch (its fixed head, whatever --dropout says)."""
    return dict(SCRATCH_HEADS[base.name])


def scratch_graphs(base: Base, trunk, size: int, n_classes: int) -> dict:
    """The full, core and features graphs of a CNN from scratch over one set of layers:
    its trunk (``build``), then its head (``SCRATCH_HEADS``) and the output layer.

    The trunk is called without ``training=False`` (unlike a frozen pretrained base): its
    BatchNormalization layers normalise by the batch while fitting and learn their averages.
    """
    from transfer.tf import keras

    layers = keras.layers
    spec = SCRATCH_HEADS[base.name]
    binary = n_classes == 2
    if spec["pool"] == "flatten":
        pool = layers.Flatten(name="flatten")
    else:
        pool = layers.GlobalAveragePooling2D(name="pool")
    head_layers = []
    if spec.get("dense"):
        head_layers.append(layers.Dense(spec["dense"], activation="relu", name="dense"))
    head_layers.append(layers.Dropout(spec["dropout"], name="dropout"))
    head_layers.append(layers.Dense(1 if binary else n_classes,
                                    activation="sigmoid" if binary else "softmax",
                                    name="predictions"))

    def head(x):
        for layer in head_layers:
            x = layer(x)
        return x

    raw = keras.Input((size, size, 3), name="image")
    x = preprocess_layer(base.preprocess)(raw)
    full = keras.Model(raw, head(pool(trunk(x))), name=f"{base.name}_classifier")
    pre = keras.Input((size, size, 3), name="preprocessed")
    core = keras.Model(pre, head(pool(trunk(pre))), name="core")
    feature_model = keras.Model(pre, pool(trunk(pre)), name="features")
    return {"full": full, "core": core, "features": feature_model}


# The in-model preprocessing as plain Keras layers: (scale, offset) of a Rescaling layer.
_RESCALE = {"tf": (1 / 127.5, -1.0), "scale": (1 / 255.0, 0.0)}


def preprocess_numpy(mode: str):
    """The preprocessing of ``mode`` as a NumPy function (ImageDataGenerator's hook), computed
    exactly as the in-model layer of ``preprocess_layer`` computes it (float32, x * s + o)."""
    import numpy as np

    def fn(x):
        x = np.asarray(x, dtype="float32")
        if mode in _RESCALE:
            scale, offset = _RESCALE[mode]
            return x * np.float32(scale) + np.float32(offset)
        if mode == "caffe":
            return x[..., ::-1] - np.asarray(CAFFE_BGR_MEAN, dtype="float32")
        return x

    return fn


def preprocess_layer(mode: str, name: str = "preprocess"):
    """Raw pixels (0-255) -> what the base expects, as one layer plain Keras knows, so a
    bundle's model.keras loads with ``keras.saving.load_model`` without importing transfer.

    tf and scale: ``Rescaling`` (x * s + o); caffe (RGB -> BGR minus the ImageNet means): a
    frozen ``Dense(3)`` whose kernel is the channel permutation and whose bias is minus the
    means (exact: one product by 1, two by 0); none: ``Identity``.
    """
    import numpy as np

    from transfer.tf import keras

    if mode not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    if mode in _RESCALE:
        scale, offset = _RESCALE[mode]
        return keras.layers.Rescaling(scale, offset=offset, name=name)
    if mode == "caffe":
        layer = keras.layers.Dense(3, trainable=False, name=name)
        layer.build((None, 3))
        swap = np.eye(3, dtype="float32")[::-1]  # column j picks channel 2 - j: RGB -> BGR
        layer.set_weights([swap, -np.asarray(CAFFE_BGR_MEAN, dtype="float32")])
        return layer
    return keras.layers.Identity(name=name)


def preprocess_layer_class():
    """The ``transfer>Preprocess`` layer of bundles written before plain Keras layers were used;
    registered so those bundles still load (new models use ``preprocess_layer``)."""
    return _registered()["Preprocess"]


_REGISTERED: dict = {}


def _registered() -> dict:
    if _REGISTERED:
        return _REGISTERED
    from transfer.tf import keras

    @keras.saving.register_keras_serializable(package="transfer")
    class Preprocess(keras.layers.Layer):
        """Raw RGB pixels (0-255) -> what the base expects, inside the saved model."""

        def __init__(self, mode: str = "none", **kwargs):
            super().__init__(**kwargs)
            if mode not in PREPROCESS_MODES:
                raise ValueError(f"unknown preprocessing mode {mode!r}")
            self.mode = mode

        def call(self, x):
            ops = keras.ops
            x = ops.cast(x, "float32")
            if self.mode == "tf":
                return x / 127.5 - 1.0
            if self.mode == "caffe":
                return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN, "float32")
            if self.mode == "scale":
                return x / 255.0
            return x

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    _REGISTERED["Preprocess"] = Preprocess
    return _REGISTERED


def count_params(base: Base, alpha: float = 1.0) -> int:
    return build(base, alpha=alpha, weights=None).count_params()
