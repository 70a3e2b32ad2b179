"""Engines that run a frozen model on batches of images: TensorFlow, or TFLite with XNNPACK.

A frozen base computes the same function whatever runs it, so the feature pass may use the
fastest runtime of the machine. On a laptop CPU that is often the TFLite interpreter with its
XNNPACK kernels (MobileNet-0.25: about 5x TensorFlow's ``predict`` on 2 cores), but not always
(VGG16 is slightly slower there), so ``auto`` measures both on the first batch and remembers.

- ``tf``: the Keras model itself (``predict_on_batch``).
- ``tflite``: the model exported as a SavedModel with a fixed batch size, converted to TFLite
  once and cached under ``$KERAS_HOME/transfer/tflite/`` (keyed by everything that changes the
  function: base, alpha, weights fingerprint, size, batch, TensorFlow version), run by the LiteRT
  interpreter (``ai-edge-litert``) where it is installed, else ``tf.lite.Interpreter``, on all
  cores. Every run checks it against TensorFlow (called eagerly) on its first batch; a
  difference above ``PARITY_TOLERANCE`` means the converted model is not the same function,
  and the pass falls back to TensorFlow with a warning.
- ``auto``: TensorFlow when a GPU is present or when the pass has fewer than
  ``MIN_IMAGES`` images (converting costs seconds, 5 for MobileNet-0.25 and about 50 for
  InceptionV3 on 2 cores: a handful of images never repays it); otherwise the faster of the
  two on this machine, timed on the first batch once and remembered beside the converted file.
  When that cache cannot be written (a read-only ``KERAS_HOME``), the model is converted for
  the run alone, and ``auto`` does so only for passes of ``UNCACHED_MIN_IMAGES`` or more.

Why the tolerance is 1e-3 (relative to the largest feature, at least 1): XNNPACK sums in
another order than oneDNN, which moves float32 features by about 1e-5 (measured: 2.3e-5 on
MobileNet-0.25 features of magnitude 6); a wrong conversion (lost weights, other
preprocessing, a missing layer) moves them by 1e-1 or more. 1e-3 leaves a 40x margin on one
side and a 100x margin on the other; the head, a linear layer, turns 1e-3 into well under
1e-3 of probability.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.errors import NOT_NUMBERS, TransferError, raise_if_interrupted, without_op_name
from transfer.files import digest, sweep_left_by_killed, temp_prefix, tf_reachable, to_disk
from transfer.progress import Reporter

ENGINES = ("auto", "tf", "tflite")
PARITY_TOLERANCE = 1e-3
MIN_IMAGES = 128  # auto considers converting for this many images or more (4 batches of 32)
# ... and, when the converted file cannot be cached (a read-only KERAS_HOME), so that it is
# converted on every run, for this many: MobileNet-0.25 converts in about 5 s and then saves
# about 2 ms an image on 2 cores (800 against 340 views/s at 288 px), InceptionV3 about 50 s
# for 12 ms an image
UNCACHED_MIN_IMAGES = 3000


def cpu_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover  (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def cache_dir() -> Path:
    """``$KERAS_HOME/transfer/tflite`` (default ``~/.keras/transfer/tflite``): converted bases."""
    from transfer.bases import keras_home

    return keras_home() / "transfer" / "tflite"


def cache_key(**parts) -> str:
    """A short stable digest of everything that changes the converted function."""
    from transfer.tf import tf

    return digest({**parts, "tensorflow": tf.__version__, "format": 1})[:24]


@dataclass
class EngineInfo:
    """What ran the pass, recorded in meta.json."""

    requested: str
    name: str = "tf"  # what actually ran: tf | tflite
    interpreter: str | None = None  # ai_edge_litert | tf.lite
    batch_size: int = 32
    threads: int = 1
    converted_file: str | None = None
    conversion_seconds: float = 0.0  # 0 when the cached file was reused
    parity_max_abs_diff: float | None = None
    parity_tolerance: float = PARITY_TOLERANCE
    fallback: str | None = None  # why tflite was not used, if it was asked for
    measured: dict = field(default_factory=dict)  # auto: images/s of each engine
    images: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float | None:
        return round(self.images / self.seconds, 2) if self.seconds > 0 else None

    def as_dict(self) -> dict:
        return {"requested": self.requested, "name": self.name, "interpreter": self.interpreter,
                "batch_size": self.batch_size, "threads": self.threads,
                "converted_file": self.converted_file,
                "conversion_seconds": round(self.conversion_seconds, 3),
                "parity_max_abs_diff": self.parity_max_abs_diff,
                "parity_tolerance": self.parity_tolerance, "fallback": self.fallback,
                "measured_images_per_second": self.measured,
                "images": self.images, "images_per_second": self.images_per_second}


def merged_info(infos: dict, ran: dict, images: int, seconds: float, primary: int) -> dict:
    """meta.json's ``engine`` for a run whose passes ran at one size or two (FixRes: the
    training features at a smaller size than the validation's): ``infos`` and ``ran`` (images,
    seconds) by size. One engine: its ``as_dict()``. Two: the model size's (``primary``, else
    the first) with the totals, the names joined when they differ ("tflite+tf"), conversion
    times added, the worst parity, every fallback named with its size, and ``by_size``."""
    for size, info in infos.items():
        info.images, info.seconds = ran.get(size, (0, 0.0))
    if len(infos) == 1:
        (info,) = infos.values()
        info.images, info.seconds = images, seconds
        return info.as_dict()
    sizes = sorted(infos)
    main = infos[primary] if primary in infos else infos[sizes[0]]
    out = main.as_dict()
    names = list(dict.fromkeys(infos[s].name for s in sizes))
    parities = [infos[s].parity_max_abs_diff for s in sizes
                if infos[s].parity_max_abs_diff is not None]
    fallbacks = [f"{s} px: {infos[s].fallback}" for s in sizes if infos[s].fallback]
    out.update(name="+".join(names),
               conversion_seconds=round(sum(infos[s].conversion_seconds for s in sizes), 3),
               parity_max_abs_diff=max(parities) if parities else None,
               fallback="; ".join(fallbacks) or None, images=images,
               images_per_second=round(images / seconds, 2) if seconds > 0 else None,
               by_size={str(s): infos[s].as_dict() for s in sizes})
    return out


class TFEngine:
    """The Keras model, one batch at a time."""

    name = "tf"

    def __init__(self, model):
        self.model = model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(np.asarray(batch, "float32")))


def _interpreter_class():
    """LiteRT's interpreter where installed (maintained), else TensorFlow's (deprecated)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        from transfer.tf import tf

        return tf.lite.Interpreter, "tf.lite"


class TFLiteEngine:
    """A converted model with a fixed batch; a short last batch is padded, then cut."""

    name = "tflite"

    def __init__(self, path: Path | None = None, threads: int | None = None, *,
                 content: bytes | None = None):
        """The converted model at ``path``, or given as its bytes (``content``). The file is
        read here, its bytes given to the interpreter: its own reader took a path that is not
        UTF-8 (a Latin-1 stick's KERAS_HOME) for a TypeError, and a file it could not open
        for a damaged one (removed)."""
        interpreter_class, self.interpreter_name = _interpreter_class()
        self.threads = threads or cpu_threads()
        if content is None:
            content = Path(path).read_bytes()  # OSError: not readable, not damaged
        with _quiet_native():
            self.interpreter = interpreter_class(model_content=content,
                                                 num_threads=self.threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch_size = int(self.input["shape"][0])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Features of ``batch`` (raw pixels 0-255: uint8 or float, any strides, e.g. a mirror
        view ``batch[:, :, ::-1]``). Each chunk is cast straight into the interpreter's input
        buffer, one pass over the pixels: at 288 px, a float32 copy, a contiguous mirror copy
        and ``set_tensor``'s own copy had made 32 photos and their mirror images take 121 ms
        instead of 104 (scripts/bench_reader.py)."""
        batch = np.asarray(batch)
        outputs = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            n = len(chunk)
            buffer = self.interpreter.tensor(self.input["index"])()  # the input tensor itself
            cast_into(buffer[:n], chunk)
            buffer[n:] = 0  # a short last batch: padded, then cut
            del buffer  # invoke() refuses to run while a view of its buffers is alive
            self.interpreter.invoke()
            outputs.append(self.interpreter.get_tensor(self.output["index"])[:n].copy())
        return np.concatenate(outputs) if outputs else np.zeros((0,), "float32")


def cast_into(target: np.ndarray, pixels: np.ndarray) -> None:
    """``pixels`` (batch, height, width, channels; uint8 or float) copied and cast into the
    float32 ``target``. A strided view (the mirror images, ``batch[:, :, ::-1]``) is copied
    channel by channel: NumPy's loop over three channels at a time made the whole view take
    0.32 ms a 288 px image against 0.12 channel by channel (a contiguous batch: 0.03 at once;
    scripts/bench_reader.py)."""
    if pixels.flags.c_contiguous or pixels.ndim != 4:
        np.copyto(target, pixels, casting="same_kind")
        return
    for c in range(pixels.shape[-1]):
        np.copyto(target[..., c], pixels[..., c], casting="same_kind")


@contextlib.contextmanager
def _quiet_native():
    from transfer.tf import native_stderr_quiet

    with native_stderr_quiet():
        yield


def convert(model, batch_size: int, path: Path) -> float:
    """Export ``model`` as a SavedModel with a fixed batch, convert it to TFLite at ``path``
    (written to a temporary file and renamed); returns the seconds it took."""
    from transfer.tf import tf

    started = time.perf_counter()
    shape = [batch_size, *model.input_shape[1:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_left_by_killed(path.parent)
    workdir = Path(tempfile.mkdtemp(prefix=temp_prefix("convert"), dir=path.parent))
    # a KERAS_HOME holding "[" (or not UTF-8) is given to TensorFlow through a link: its
    # SavedModel's variables are found through a glob ("Failed to find any matching files")
    alias = None
    try:
        tf_work, alias = tf_reachable(workdir)
        with _quiet_native():
            model.export(str(tf_work / "saved_model"), format="tf_saved_model",
                         input_signature=[tf.TensorSpec(shape, tf.float32)], verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(str(tf_work / "saved_model"))
            blob = converter.convert()
        # a signal raised inside the converter's native code can be swallowed there, the
        # conversion going on to the end: the run stops here all the same
        raise_if_interrupted()
        tmp = workdir / path.name
        tmp.write_bytes(blob)
        to_disk(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if alias is not None:
            shutil.rmtree(alias, ignore_errors=True)  # the link, not what it points to
    return time.perf_counter() - started


def _pixels(model) -> str:
    """"224 px" for a model on square images (a run may convert two sizes), else its shape."""
    shape = tuple(model.input_shape[1:])
    return f"{shape[0]} px" if len(shape) == 3 and shape[0] == shape[1] else str(shape)


def few_images(images: int, views: int = 1) -> str:
    """Why ``auto`` keeps TensorFlow for a pass of ``images`` (< MIN_IMAGES) base inputs,
    ``views`` of each photo (2: the photo and its mirror image)."""
    counted = (f"{images} views ({images // views} photos and their mirror images)"
               if views == 2 else f"{images} image(s)")
    return (f"{counted}, fewer than {MIN_IMAGES}: converting the model would cost more than it "
            "saves")


def has_gpu() -> bool:
    from transfer.tf import tf

    return bool(tf.config.list_physical_devices("GPU"))


def _rate(engine, batch: np.ndarray, repeats: int = 2) -> float:
    """Images/s of ``engine`` on ``batch`` after one warm-up call."""
    engine(batch)
    started = time.perf_counter()
    for _ in range(repeats):
        engine(batch)
    return repeats * len(batch) / max(time.perf_counter() - started, 1e-9)


# What the interpreter says of a file that is not a whole converted model (cut short, zeroed,
# garbled); "Didn't find op for builtin opcode" and the like are whole files it cannot run.
DAMAGED = ("flatbuffer", "allocation is null", "schema version", "identifier")


def _damaged(path: Path, exc: Exception) -> bool:
    return (path.stat().st_size == 0 or isinstance(exc, UnicodeError)  # a garbled name
            or any(word in str(exc).lower() for word in DAMAGED))


def _unavailable(exc: Exception, folder: Path) -> str:
    """Why the TFLite engine could not be had, in a line: a full cache disk said as such (it
    was 400 characters of TensorFlow's op names, twice)."""
    import errno

    text = without_op_name(str(exc)).strip()
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in text:
        return f"TFLite unavailable (no space left on the disk of {folder})"
    return f"TFLite unavailable ({type(exc).__name__}: {text})".splitlines()[0]


def _stamp(path: Path) -> str:
    """A file's size and modification time: whether it is still the file seen before."""
    with contextlib.suppress(OSError):
        found = path.stat()
        return f"{found.st_size} {found.st_mtime_ns}"
    return ""


def _read(path: Path) -> str | None:
    with contextlib.suppress(OSError, UnicodeError):
        return path.read_text(encoding="utf-8")
    return None


def _difference(engine, batch: np.ndarray, expected: np.ndarray) -> float:
    """The largest absolute difference between ``engine``'s output on ``batch`` and
    ``expected`` (TensorFlow's)."""
    return float(np.max(np.abs(engine(batch) - expected))) if expected.size else 0.0


def _agrees(diff: float, scale: float) -> bool:
    """Parity: within PARITY_TOLERANCE of the largest feature (at least 1)."""
    return bool(np.isfinite(diff)) and diff <= PARITY_TOLERANCE * scale


def _unwritable(folder: Path) -> str | None:
    """Why no file can be written in ``folder`` (created if need be), or None when one can."""
    from transfer.inference import writable_folder

    try:
        writable_folder(folder)
    except OSError as exc:
        return f"{exc.strerror or exc}: {exc.filename or folder}"
    return None


def _converted(model, batch_size: int, path: Path, info: EngineInfo, reporter: Reporter):
    """The TFLite engine of ``model``: the cached file, or, when there is none or it is
    damaged (cut short, not a flatbuffer), the model converted now and cached. When the cache
    folder cannot be written (a read-only KERAS_HOME a class shares), the model is converted
    in a temporary folder for this run alone: slower next time, but no slower than TensorFlow
    (converting 5 s against a pass 2-5x faster; ``auto`` keeps TensorFlow for small passes)."""
    if path.is_file():
        try:
            engine = TFLiteEngine(path)
            info.converted_file = str(path)
            return engine
        except ValueError as exc:
            if not _damaged(path, exc):
                raise  # a whole file this interpreter cannot run: converting again won't help
            reporter.warn(f"the cached TFLite file {path} is damaged ({exc}); converting again")
            with contextlib.suppress(OSError):  # a read-only cache: converted for this run
                path.unlink(missing_ok=True)
    why = _unwritable(path.parent)
    if why is None:
        reporter.info(f"converting the model at {_pixels(model)} to TFLite (once; cached in "
                      f"{path.parent})")
        info.conversion_seconds = convert(model, batch_size, path)
        engine = TFLiteEngine(path)
        info.converted_file = str(path)
        return engine
    # the size named: a run converting at two sizes (224, then 288 to validate) says it twice
    reporter.warn(f"the TFLite cache cannot be written ({why}); converting the model at "
                  f"{_pixels(model)} for this run only (set KERAS_HOME to a folder you can "
                  "write to keep it)")
    scratch = Path(tempfile.mkdtemp(prefix="transfer-tflite-"))
    try:
        info.conversion_seconds = convert(model, batch_size, scratch / path.name)
        content = (scratch / path.name).read_bytes()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return TFLiteEngine(content=content)  # converted_file stays None: nothing was cached


def open_engine(model, first_batch: np.ndarray, *, requested: str = "auto", key: dict,
                batch_size: int = 32, reporter: Reporter | None = None,
                images: int | None = None, views: int = 1):
    """(engine, info): the engine to run ``model`` with, checked on ``first_batch``.

    Args:
        model: a Keras model from raw pixels to features (frozen).
        first_batch: the pass's first batch; the TFLite engine must match TensorFlow on it.
        requested: "auto", "tf" or "tflite".
        key: what identifies the function (base, alpha, weights sha256, size...): the cache key
            of the converted file.
        batch_size: the converted model's fixed batch.
        reporter: where warnings go.
        images: how many inputs the pass will run, when known: ``auto`` keeps TensorFlow
            below ``MIN_IMAGES``.
        views: inputs per photo (2 with test-time flips), for the message saying so.

    Returns:
        An engine (callable on a batch of raw pixels, uint8 or float32) and its EngineInfo.

    Raises:
        TransferError: for an unknown engine name.
    """
    reporter = reporter or Reporter()
    if requested not in ENGINES:
        raise TransferError(f"--engine must be one of {', '.join(ENGINES)}, not {requested!r}")
    info = EngineInfo(requested=requested, batch_size=batch_size, threads=cpu_threads())
    tf_engine = TFEngine(model)
    if requested == "tf" or (requested == "auto" and has_gpu()):
        info.fallback = "a GPU is present" if requested == "auto" else None
        return tf_engine, info
    if requested == "auto" and images is not None and images < MIN_IMAGES:
        info.fallback = few_images(images, views)
        return tf_engine, info
    digest = cache_key(**key, batch=batch_size, input=list(model.input_shape[1:]))
    path = cache_dir() / f"{digest}.tflite"
    choice_file = path.with_suffix(".auto.json")
    remembered: dict = {}
    if requested == "auto" and choice_file.is_file():
        with contextlib.suppress(OSError, ValueError):
            remembered = json.loads(choice_file.read_text(encoding="utf-8"))
        if not isinstance(remembered, dict):  # damaged by hand: measured again
            remembered = {}
        if remembered.get("threads") != info.threads:  # measured with other cores (taskset,
            remembered = {}  # a container's quota, another machine sharing KERAS_HOME): again
        if remembered.get("choice") == "tf":
            info.measured = remembered.get("measured", {})
            info.fallback = "TensorFlow measured faster on this machine"
            return tf_engine, info
    if (requested == "auto" and images is not None and images < UNCACHED_MIN_IMAGES
            and not path.is_file()):
        why = _unwritable(path.parent)
        if why is not None:
            info.fallback = (f"the TFLite cache cannot be written ({why}): converting on every "
                             f"run costs more than it saves on {images} images")
            return tf_engine, info
    # parity on the converted model's first batch (batch_size images), TensorFlow called
    # eagerly: the same function as predict_on_batch, without tracing it (which cost a next
    # run 0.5 s per engine, and a run converts one engine per size)
    check = np.asarray(first_batch[:batch_size], "float32")
    expected = np.asarray(model(check, training=False))
    if not np.isfinite(expected).all():  # a diverged model: nothing to hold a conversion to
        info.fallback = (f"the model's {NOT_NUMBERS} on the first batch: nothing to check a "
                         "conversion against")
        return tf_engine, info
    try:
        lite = _converted(model, batch_size, path, info, reporter)
    except Exception as exc:  # a conversion or interpreter failure: TensorFlow still works
        raise_if_interrupted()  # unless it was a Ctrl-C the converter's callback turned into it
        info.fallback = _unavailable(exc, path.parent)
        reporter.warn(f"{info.fallback}; using TensorFlow")
        return tf_engine, info
    info.interpreter = lite.interpreter_name
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    diff = _difference(lite, check, expected)
    mismatch = path.with_suffix(".mismatch")  # a fresh conversion that failed parity too
    if (not _agrees(diff, scale) and info.converted_file and not info.conversion_seconds
            and _read(mismatch) != _stamp(path)):
        # a cached file damaged where the interpreter does not look (its weights): it loads
        # and computes something else; converted again, once, rather than TensorFlow forever
        # (not again for a file whose fresh conversion failed as well: a conversion every
        # run)
        reporter.warn(f"the cached TFLite file {path} differs from TensorFlow by {diff:.3g}; "
                      "converting again")
        with contextlib.suppress(OSError):  # a read-only cache: the same file, refused below
            path.unlink(missing_ok=True)
        try:
            lite = _converted(model, batch_size, path, info, reporter)
        except Exception as exc:
            raise_if_interrupted()
            info.fallback = _unavailable(exc, path.parent)
            reporter.warn(f"{info.fallback}; using TensorFlow")
            return tf_engine, info
        diff = _difference(lite, check, expected)
    if not _agrees(diff, scale) and info.converted_file and info.conversion_seconds:
        with contextlib.suppress(OSError):  # converted now, and no better: not again
            mismatch.write_text(_stamp(path), encoding="utf-8")
    info.parity_max_abs_diff = diff
    if not _agrees(diff, scale):
        info.fallback = (f"TFLite differs from TensorFlow by {diff:.3g} on the first batch "
                         f"(> {PARITY_TOLERANCE:g} x {scale:.3g})")
        reporter.warn(f"{info.fallback}; using TensorFlow")
        return tf_engine, info
    if requested == "auto" and remembered.get("choice") == "tflite":
        info.measured = remembered.get("measured", {})  # measured once; parity every run
    elif requested == "auto":
        info.measured = {"tf": round(_rate(tf_engine, first_batch), 2),
                         "tflite": round(_rate(lite, first_batch), 2)}
        choice = "tflite" if info.measured["tflite"] >= info.measured["tf"] else "tf"
        with contextlib.suppress(OSError):
            from transfer.files import write_json

            write_json(choice_file, {"choice": choice, "measured": info.measured,
                                     "threads": info.threads})
        if choice == "tf":
            info.fallback = "TensorFlow measured faster on this machine"
            return tf_engine, info
    info.name = "tflite"
    return lite, info
