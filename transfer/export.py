"""`transfer export`: a bundle's model as .keras, TensorFlow SavedModel or TFLite, checked.

    from transfer.export import export
    result = export(Path("models/latest"), format="tflite", output=Path("cats.tflite"))
    result.max_abs_diff, result.passed
    export(ExportSettings(format="savedmodel"))        # the same, as the CLI calls it

The exported model is written to a temporary path, run on a few real images (the bundle's
validation images, or ``check_images``) and compared with the Keras model; only when the largest
absolute difference is within the format's tolerance is it renamed into place. Each export
carries the bundle's ``meta.json`` (class names, input size, preprocessing): beside the file as
``<file>.meta.json``, inside a SavedModel as ``assets.extra/meta.json`` (with
``assets.extra/labels.txt``: the class names, one a line, in output order).

A ``.tflite`` file says what its outputs mean by itself, two ways (``tflite_class_names``
reads them back):

- the flatbuffer's ``metadata`` list has an entry ``transfer_meta`` whose buffer is the meta
  JSON (class names in output order, input size, preprocessing, the export's mode);
- a zip archive appended to the flatbuffer (TFLite's "associated files" convention, which
  the interpreter ignores) holds ``labels.txt`` (one class per line, output order) and
  ``meta.json``: ``zipfile.ZipFile("model.tflite").read("labels.txt")`` works.

``quantize`` (TFLite only) converts with dynamic-range int8 weights, float16 weights, or full
int8 (weights and activations, calibrated on up to ``CALIBRATION_IMAGES`` images of the
bundle's training folder read through the one image reader; float32 input and output, see
``_tflite``). A quantized model cannot match the float one to 1e-3, so it is checked by
``quantized_check`` instead, on the validation split, and its accuracy and size are reported
beside the float TFLite model's (``ExportResult.comparison``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import bundle, images
from transfer.errors import DIVERGED, NOT_NUMBERS, TransferError
from transfer.evaluate import bundle_images
from transfer.files import (
    entries_to_disk,
    free_name,
    new_folders_kept_on_success,
    refuse_existing,
    sweep_left_by_killed,
    temp_prefix,
    tf_reachable,
    tf_safe,
    to_disk,
)
from transfer.inference import BATCH_SIZE, BundleClassifier, folder_images, writable_folder
from transfer.progress import Reporter
from transfer.settings import ExportSettings

TOLERANCE = {"keras": 1e-6, "savedmodel": 1e-5, "tflite": 1e-3}
DEFAULT_NAMES = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite"}
TFLITE_METADATA = "transfer_meta"  # the flatbuffer metadata entry holding the meta JSON
LABELS = "labels.txt"  # the associated file: class names, one a line, in output order

CALIBRATION_IMAGES = 300  # int8: training images the converter calibrates activations on
COMPARE_IMAGES = 1000  # quantized: validation images compared at most (spread over classes)
# quantized_check's thresholds (its docstring says why)
CONFIDENT = 0.8
MIN_CONFIDENT_AGREEMENT = 0.95
MIN_AGREEMENT = 0.7
MAX_ACCURACY_DROP = 0.05
SIGN_TEST_Z = 2.33  # one-sided 1%
INT8_GOAL = 0.01  # full int8 this far below the float model: try the depthwise-float variant


def labels_text(names) -> bytes:
    """``labels.txt``: the class names, one a line, UTF-8; a name that is not UTF-8 (a
    Latin-1 folder's "chi\\xe9ns", held as a surrogate) as the folder's own bytes; a line
    break inside a name (a folder can be named so) written as ``\\n`` (``\\r``), so that
    line N stays output N (it took two lines, and every label after it was off by one)."""
    lines = (name.replace("\n", "\\n").replace("\r", "\\r") for name in names)
    return "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")


def tries_float_depthwise(float_right: int, quant_right: int, images: int) -> bool:
    """Full int8 got at least ``INT8_GOAL`` of ``images`` fewer right than the float model, so
    the depthwise-float variant is tried too. Counted in images: as a difference of two float
    accuracies, 8 of 800 came out 0.0100000000000000009 (tried) and could as well have come out
    just under 0.01 (not tried). At exactly one point it is worth trying: on the tour's bundle
    full int8 lost 8 of 800 validation photos (0.9537) and the variant 1 (0.9625), for 9 KB
    more (323,585 bytes against 314,541; the float file 869,206)."""
    from fractions import Fraction

    return Fraction(float_right - quant_right, images) >= Fraction(str(INT8_GOAL))


def default_name(fmt: str, quantize: str | None = None) -> str:
    """The export's file name in ``MODEL/export/``: a quantized TFLite model is named after its
    mode (``model-int8.tflite``), so that it and the float one live side by side."""
    if fmt == "tflite" and quantize not in (None, "none"):
        return f"model-{quantize}.tflite"
    return DEFAULT_NAMES[fmt]

@dataclass
class ExportResult:
    path: Path
    meta_path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    n_images: int
    check_source: str  # where the check images came from
    quantize: str = "none"
    # quantized TFLite only: the float and the quantized model on the validation split
    comparison: dict | None = None

    @property
    def passed(self) -> bool:
        if self.comparison is not None:
            return bool(self.comparison["passed"])
        return self.max_abs_diff <= self.tolerance


def check_inputs(classifier: BundleClassifier, paths: list[Path] | None, n: int = 8,
                 reporter: Reporter | None = None) -> tuple[np.ndarray, str]:
    """(a batch of real prepared images, where they came from) for the round-trip check:
    the given files (up to ``n`` from each given folder, spread over its sub-folders: the
    first 8 of data/validate were all cats), else ``n`` validation images. An image that
    cannot be read (a truncated JPEG) is skipped, said to ``reporter``, and the next one of
    its folder taken instead, as predict and evaluate skip one: it aborted the export."""
    source = "given images"
    if not paths:
        labelled, source = _validation(classifier)
        if not labelled:
            problem = getattr(classifier, "digit_problem", None)  # a digit bundle's data moved
            raise TransferError("no images to check the export with: " + (
                f"the data this model was trained on cannot be read ({problem})" if problem
                else "the bundle's validation folder is missing") + "; pass --check-images PATH")
        per_class = _per_class(labelled, len(classifier.class_names))
        groups = [(_spread(per_class, len(labelled)), n)]  # in turn, the first n readable
    else:
        groups = []
        for path in paths:
            if not isinstance(path, str | os.PathLike):  # an image in memory (an array)
                groups.append(([path], 1))
            elif Path(path).is_dir():  # spread over its sub-folders: data/validate's classes
                inside: dict[Path, list[Path]] = {}
                for image in folder_images(path):
                    inside.setdefault(image.parent, []).append(image)
                everything = list(inside.values())
                groups.append((_spread(everything, sum(map(len, everything))), n))
            else:
                groups.append(([Path(path)], 1))
    if not any(candidates for candidates, _ in groups):
        shown = ", ".join(str(path) for path in paths)
        raise TransferError(f"no images to check the export with in {shown} (no image files "
                            "found there); give --check-images photos or folders of photos")
    arrays, unreadable = [], []
    for candidates, wanted in groups:
        taken = 0
        for item in candidates:
            if taken == wanted:
                break
            try:
                arrays.append(classifier.prepare(item)[0])
                taken += 1
            except TransferError as exc:
                unreadable.append((item, exc))
    if not arrays:
        item, exc = unreadable[0]
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise TransferError(f"check image {_shown(item)}: {exc}{more}; no readable image is "
                            "left to check the export with") from None
    if unreadable:
        listed = "; ".join(f"{_shown(item)}: {exc}" for item, exc in unreadable[:3])
        more = f"; and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
        (reporter or Reporter()).warn(
            f"skipped {len(unreadable)} check image{'' if len(unreadable) == 1 else 's'} that "
            f"cannot be read: {listed}{more}")
    return np.stack(arrays).astype("float32"), source


def _shown(item) -> str:
    """A check image as a message names it: its path (an image in memory: "an array")."""
    return str(item) if isinstance(item, str | os.PathLike) else "an array"


def _savedmodel(model, path: Path) -> None:
    from transfer.tf import root_logger_kept

    # Keras prints the endpoint signature; absl gives the root logger a handler
    with contextlib.redirect_stdout(io.StringIO()), root_logger_kept():
        model.export(str(path), format="tf_saved_model", verbose=False)


def _run_savedmodel(path: Path, x: np.ndarray) -> np.ndarray:
    from transfer.tf import tf

    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(x)))


def _tflite(model, path: Path, workdir: Path, quantize: str = "none",
            calibration: np.ndarray | None = None) -> None:
    """Convert ``model`` to TFLite at ``path``, quantized as asked.

    - ``dynamic``: int8 weights, float activations (dequantized on the fly); no data needed.
    - ``float16``: float16 weights, float32 compute on CPU.
    - ``int8``: int8 weights and activations (builtin int8 ops only, so a model that cannot
      be fully quantized fails here rather than silently staying float), activation ranges
      calibrated on ``calibration``, one image at a time. Input and output stay float32:
      the model takes RGB pixels 0-255 and has its preprocessing inside, so float I/O keeps
      the calling convention (and the meta's input recipe) of the float export, and one
      quantize op at the input and one dequantize at the output cost nothing next to the
      convolutions; int8 output would also round every probability to a step of 1/256.
    - ``int8-depthwise-float``: int8 as above except the depthwise convolutions, which stay
      float (their weights are a few kilobytes of a MobileNet, so the size hardly changes);
      ``_quantized`` tries it too when full int8 loses a point or more (measured on the
      genuine MobileNet-0.25 cats/dogs bundle, 140 held-out photos: full int8 0.886, int16
      activations with int8 weights 0.886, depthwise kept float 0.921 = the float model;
      TFLite's quantization debugger put the largest errors on depthwise and pointwise
      weights).
    """
    import warnings

    from transfer.tf import native_stderr_quiet, tf

    saved = workdir / "saved_model"
    if not saved.exists():
        _savedmodel(model, saved)
    # the converter's MLIR pass log; and the quantization debugger's tf.lite.Interpreter
    # notice ("deprecated, use LiteRT"), a warning that reached a notebook's stderr
    with native_stderr_quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*Interpreter is deprecated")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize.startswith("int8"):
            def representative():
                for image in calibration:
                    yield [image[None].astype("float32")]

            converter.representative_dataset = representative
        if quantize == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            if quantize == "int8-depthwise-float":
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=representative,
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(
                        denylisted_ops=["DEPTHWISE_CONV_2D"]))
                path.write_bytes(compact(debugger.get_nondebug_quantized_model()))
            else:
                path.write_bytes(compact(converter.convert()))
        except Exception as exc:  # the converter raises many types; one line says which mode
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TransferError(f"TFLite conversion ({quantize}) failed: {first}") from None


def compact(data: bytes) -> bytes:
    """The TFLite flatbuffer ``data`` rewritten smaller, computing exactly the same:
    each constant listed once (``share_constants``) and the inner tensors' names dropped
    (``drop_inner_names``)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    share_constants(model)
    drop_inner_names(model)
    return packed(model)


def packed(model) -> bytes:
    """The TFLite flatbuffer of ``model`` (a ``ModelT``), each distinct numeric vector written
    once and shared by every table that holds it.

    TensorFlow's own packing (``flatbuffer_utils.convert_object_to_bytearray``) writes a
    vector per table. Every int8 tensor carries a scale and a zero point per channel, and the
    weights' zero points are all 0 stored as int64: on the MobileNet-0.25 default bundle,
    45 KB of zero points (77 distinct vectors among 182) and 22 KB of scales in a 316 KB
    int8 file; packed this way it is 271 KB (the scales are mostly each convolution's own).
    A flatbuffer may point any number of tables at one vector (the reader follows offsets;
    nothing is written through them), so the outputs are bit-identical. Only numeric
    vectors other than uint8 are shared: the weights' own buffers (uint8) are left as they
    are, ``share_constants`` already lists each constant once.
    """
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self, size: int):
            super().__init__(size)
            self.written: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
            if x.dtype == np.uint8:
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self.written:
                self.written[key] = super().CreateNumpyVector(x)
            return self.written[key]

    builder = SharingBuilder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def drop_inner_names(model) -> None:
    """Clear the names of every tensor but the inputs and outputs of the flatbuffer
    ``model`` (a ``ModelT``, changed in place).

    The converter names each tensor after the TensorFlow op it came from
    (``model_1/mobilenet_0.25_224/conv_pw_3_bn/FusedBatchNormV3;...``): about 24 KB of a
    350 KB int8 MobileNet-0.25, that no interpreter needs. It finds tensors by index; the
    inputs' and outputs' names (``get_input_details()``) and the signature are kept.
    """
    for graph in model.subgraphs:
        kept = {int(i) for ids in (graph.inputs, graph.outputs) if ids is not None
                for i in ids}  # NumPy arrays: ``or []`` would read [0] as empty
        for i, tensor in enumerate(graph.tensors):
            if i not in kept:
                tensor.name = None


def share_constants(model) -> None:
    """List each constant tensor of the flatbuffer ``model`` (a ``ModelT``) once, in place.

    With test-time flips the saved model calls the base twice (photo, mirror image). The
    converter keeps one buffer per weight, but a quantized model gets a tensor entry per call
    site, each with its own copy of the per-channel scales and zero points (12 bytes a
    channel): on MobileNet-0.25 at 288 px about 40 KB of a 373 KB int8 file. Tensors with the
    same buffer, type, shape and quantization are the same constant; the operators are
    pointed at the first one and the others dropped (indices renumbered in the operators, the
    subgraph and its signature). The arithmetic is untouched: the outputs are bit-identical.
    """
    def identity(t) -> tuple:
        q = t.quantization
        quant = None if q is None else (q.quantizedDimension, *(
            None if v is None else np.asarray(v).tobytes()
            for v in (q.scale, q.zeroPoint, q.min, q.max)))
        return (t.buffer, t.type, None if t.shape is None else np.asarray(t.shape).tobytes(),
                quant)

    for index, graph in enumerate(model.subgraphs):
        first, alias = {}, {}
        for i, t in enumerate(graph.tensors):
            content = model.buffers[t.buffer].data if t.buffer else None
            if content is not None and len(content) and not t.isVariable:
                alias[i] = first.setdefault(identity(t), i)
        keep = [i for i in range(len(graph.tensors)) if alias.get(i, i) == i]
        if len(keep) == len(graph.tensors):
            continue
        position = {old: new for new, old in enumerate(keep)}

        def renumber(ids, position=position, alias=alias):
            return None if ids is None else [i if i < 0 else position[alias.get(i, i)]
                                             for i in ids]

        for op in graph.operators:
            op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
            op.intermediates = renumber(op.intermediates)
        graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == index:
                for entry in (signature.inputs or []) + (signature.outputs or []):
                    entry.tensorIndex = renumber([entry.tensorIndex])[0]
        graph.tensors = [graph.tensors[i] for i in keep]


def embed_metadata(path: Path, meta: dict) -> None:
    """Make the .tflite at ``path`` say what its outputs mean: the meta JSON as the flatbuffer
    metadata entry ``transfer_meta``, then ``labels.txt`` and ``meta.json`` in a zip archive
    appended to the file (the interpreter reads the flatbuffer and ignores what follows)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    text = json.dumps(meta, indent=2, default=str).encode()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    path.write_bytes(packed(model))
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:  # appended after it
        archive.writestr(LABELS, labels_text(meta["class_names"]))
        archive.writestr(bundle.META, text)


def tflite_metadata(path: Path) -> dict:
    """The meta JSON inside a .tflite written by ``export`` (from the flatbuffer's metadata,
    read with TensorFlow's generated schema only, no interpreter).

    Raises:
        TransferError: the file has no ``transfer_meta`` entry.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == TFLITE_METADATA:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    raise TransferError(f"{path} carries no {TFLITE_METADATA} metadata (not exported by "
                        "transfer?)")


def tflite_class_names(path: Path) -> list[str]:
    """The class names of a .tflite written by ``export``, in output order."""
    return list(tflite_metadata(path)["class_names"])


def _interpreter(path: Path):
    import warnings

    from transfer.tf import native_stderr_quiet

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - LiteRT is a dependency where it installs
        from transfer.tf import tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    with warnings.catch_warnings(), native_stderr_quiet():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's move-to-LiteRT notice
        return Interpreter(model_path=str(path))


def _run_tflite(path: Path, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The model's outputs for ``x``, ``batch_size`` images per call (float32 I/O)."""
    from transfer.tf import native_stderr_quiet

    interpreter = _interpreter(path)
    detail = interpreter.get_input_details()[0]
    outputs, shape = [], None
    for start in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[start:start + batch_size], dtype=detail["dtype"])
        if batch.shape != shape:
            interpreter.resize_tensor_input(detail["index"], list(batch.shape))
            with native_stderr_quiet():
                interpreter.allocate_tensors()  # "Created TensorFlow Lite XNNPACK delegate"
            shape = batch.shape
        interpreter.set_tensor(detail["index"], batch)
        interpreter.invoke()
        outputs.append(np.array(
            interpreter.get_tensor(interpreter.get_output_details()[0]["index"])))
    return np.concatenate(outputs)


def _per_class(labelled: list[tuple[Path, int]], n_classes: int) -> list[list[Path]]:
    return [[path for path, label in labelled if label == k] for k in range(n_classes)]


def _validation(classifier: BundleClassifier) -> tuple[list[tuple[Path, int]], str]:
    """(image, class index) of the bundle's validation images (its validation folder, or its
    validation split made in memory again, or a digit bundle's test set), and where they
    are; empty when it has none."""
    data = classifier.meta.get("data") or {}
    digits = _digit_images(classifier, "test")
    if digits is not None:
        return digits
    labelled = bundle_images(classifier.meta, "validate") or []
    if data.get("split") == "in-memory":
        return labelled, f"the validation split of {bundle.data_folder(classifier.meta, 'root')}"
    return labelled, str(bundle.validate_dir(classifier.meta))


def _digit_images(classifier: BundleClassifier, split: str
                  ) -> tuple[list[tuple[np.ndarray, int]], str] | None:
    """(digit image, class index) of the ``split`` ("train" or "test") of the data a digit
    bundle (``transfer mnist``) was trained on, read again from its source (an npz or IDX
    folder, or Keras's download), as arrays for the one reader; None for other bundles or
    when the source cannot be read."""
    meta = classifier.meta
    source = (meta.get("data") or {}).get("source")
    if meta.get("channels", 3) != 1 or not source:
        return None
    # read once for the check, the calibration and the comparison of one export
    if not hasattr(classifier, "digit_data"):
        from transfer import mnist

        path = None if str(source).startswith("keras.datasets.") else Path(source)
        try:
            classifier.digit_data = mnist.load(meta.get("dataset", "mnist"), path)
        except TransferError as exc:  # said by check_inputs when nothing else is given
            classifier.digit_data, classifier.digit_problem = None, str(exc)
    if classifier.digit_data is None:
        return None
    (x_train, y_train), (x_test, y_test) = classifier.digit_data
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return [(x[i], int(y[i])) for i in range(len(x))], f"the {split} images of {source}"


def _spread(per_class: list[list[Path]], n: int) -> list[Path]:
    """Up to ``n`` files taking one of each class in turn (every class represented)."""
    longest = max((len(files) for files in per_class), default=0)
    return [files[i] for i in range(longest) for files in per_class if i < len(files)][:n]


def _prepare_all(classifier: BundleClassifier, files: list[Path]) -> list[np.ndarray | None]:
    """Each file through the one image reader (in threads); None for an unusable one."""
    def load(path):
        try:
            return classifier.prepare(path)[0]
        except (images.ImageError, TransferError):
            return None

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(load, files))


def calibration_images(classifier: BundleClassifier, n: int = CALIBRATION_IMAGES
                       ) -> tuple[np.ndarray, str]:
    """(up to ``n`` prepared images from the bundle's training folder, spread over the
    classes, that folder) for int8 calibration; unreadable files are passed over.

    Raises:
        TransferError: the training folder is missing or has no readable image.
    """
    data = classifier.meta.get("data") or {}
    digits = _digit_images(classifier, "train")
    labelled = digits[0] if digits else bundle_images(classifier.meta, "train")
    train = digits[1] if digits else bundle.data_folder(
        classifier.meta, "root" if data.get("split") == "in-memory" else "train_dir")
    if not labelled:
        problem = getattr(classifier, "digit_problem", None)  # a digit bundle's data moved
        if problem:  # its source is named: changing folder would not help
            raise TransferError("int8 quantization calibrates on the bundle's training images, "
                                f"but the data this model was trained on cannot be read "
                                f"({problem}); put it back, or use --quantize dynamic or "
                                "float16")
        raise TransferError("int8 quantization calibrates on the bundle's training images, but "
                            f"its training folder {train or '(not named in meta.json)'} is "
                            "missing; export from the folder you trained in, or use --quantize "
                            "dynamic or float16")
    files = _spread(_per_class(labelled, len(classifier.class_names)), n)
    arrays = [a for a in _prepare_all(classifier, files) if a is not None]
    if not arrays:
        raise TransferError(f"no readable training image in {train} to calibrate int8 on")
    return np.stack(arrays).astype("float32"), str(train)


def comparison_images(classifier: BundleClassifier, fallback: np.ndarray, fallback_source: str,
                      n: int = COMPARE_IMAGES) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(prepared images, their class indices or None, where from) to compare the float and
    the quantized model on: the bundle's validation split (up to ``n``, spread over the
    classes), else the check images, unlabelled."""
    labelled, source = _validation(classifier)
    if labelled:
        chosen = _spread([[(item, label) for item, label in labelled if label == k]
                          for k in range(len(classifier.class_names))], n)
        prepared = _prepare_all(classifier, [item for item, _ in chosen])
        pairs = [(a, label) for (_, label), a in zip(chosen, prepared, strict=True)
                 if a is not None]
        if pairs:
            return (np.stack([a for a, _ in pairs]).astype("float32"),
                    np.asarray([label for _, label in pairs]), source)
    return fallback, None, fallback_source


# fewer images than this (or none the float model is sure of) and a quantized export's check
# is said to say little: on 2 images a collapsed int8 model can agree by chance
FEW_TO_COMPARE = 20


def quantized_check(float_probs: np.ndarray, quant_probs: np.ndarray,
                    labels: np.ndarray | None) -> dict:
    """Whether a quantized model is a faithful copy of the float one, from their class
    probabilities on the same images (and the true classes, when known).

    Quantization moves probabilities far more than 1e-3, so an image near the decision
    boundary may change class while the model is sound. Measured on genuine photos with
    MobileNet-0.25 bundles: on two trainings of the cats/dogs test bundle (100 validation
    images) full int8 moved a probability by up to 0.35-0.42 and changed 5-8 images, of which
    0-2 of the ~75-80 the float model gave 0.8 or more (accuracy 0.90 -> 0.91 and
    0.91 -> 0.89); on a weak five-class flowers model (40 images, float accuracy 0.625) int8
    and dynamic-range both changed 6 images, none the float model was sure of (int8 lost 3
    images, 7.5 points; dynamic none). A broken export is different in kind: calibrated on
    pixels in 0-1 instead of 0-255, int8 changed 54 of 100 cats/dogs images and 36 of 40
    flowers, most of them images the float model gave 0.9 or more, and fell to chance. So
    the export passes only when all of these hold:

    - confident images keep their class: of the images the float model gives at least
      ``CONFIDENT`` (0.8) to its top class, at most 5% (``1 - MIN_CONFIDENT_AGREEMENT``), and
      at least one, may change (measured: 0-3% sound; 89% and about 60% broken);
    - ``agreement`` >= ``MIN_AGREEMENT`` (0.7) over all images (sound 0.85-1.0 even for the
      weak model; broken 0.10 and 0.46, or the share of the one class a collapsed model
      answers): the floor when few images are confident;
    - no real accuracy loss: refused when ``accuracy_drop`` (float minus quantized) is over
      ``MAX_ACCURACY_DROP`` (5 points) *and* the loss is more than noise: of the images where
      the two disagree, the quantized model is wrong on ``lost`` and right on ``gained``;
      a sound model loses about as many as it gains, so ``lost - gained`` above
      2.33 * sqrt(lost + gained) (a one-sided sign test at 1%) is a real loss. On a hundred
      images one point is one image; the int8 goal (less than a point below the float
      model) is reported, not gated (``_quantized`` tries the depthwise-float variant when
      full int8 loses a point or more: ``tries_float_depthwise``).

    Returns:
        the measured values (agreement, confident_images, confident_changed,
        confident_agreement, max_abs_diff, accuracy_drop, lost, gained), the thresholds and
        ``passed``.
    """
    reference = float_probs.argmax(axis=1)
    predicted = quant_probs.argmax(axis=1)
    same = predicted == reference
    confident = float_probs.max(axis=1) >= CONFIDENT
    changed = int((confident & ~same).sum())
    result = {
        "agreement": float(same.mean()),
        "confident_images": int(confident.sum()),
        "confident_changed": changed,
        "confident_agreement": float(same[confident].mean()) if confident.any() else None,
        "max_abs_diff": float(np.max(np.abs(quant_probs - float_probs))),
        "accuracy_drop": None, "lost": None, "gained": None,
    }
    real_loss = False
    if labels is not None:
        lost = int(((reference == labels) & (predicted != labels)).sum())
        gained = int(((reference != labels) & (predicted == labels)).sum())
        drop = (lost - gained) / len(labels)
        result.update(accuracy_drop=float(drop), lost=lost, gained=gained)
        real_loss = drop > MAX_ACCURACY_DROP and lost - gained > SIGN_TEST_Z * math.sqrt(
            lost + gained)
    allowed = max(1, math.floor((1 - MIN_CONFIDENT_AGREEMENT) * result["confident_images"]))
    result["thresholds"] = {"confident": CONFIDENT, "confident_changed_at_most": allowed,
                            "min_agreement": MIN_AGREEMENT,
                            "max_accuracy_drop": MAX_ACCURACY_DROP,
                            "sign_test_z": SIGN_TEST_Z}
    # a model whose outputs are not numbers agreed with itself on "class 0" everywhere
    result["non_finite"] = int((~np.isfinite(quant_probs)).any(axis=1).sum())
    result["passed"] = bool(result["agreement"] >= MIN_AGREEMENT and changed <= allowed
                            and not real_loss and not result["non_finite"])
    return result


def _embedded_meta(meta: dict, model: Path, quantize: str, variant: str | None = None) -> dict:
    record = {"format": "tflite", "quantize": quantize,
              "source_bundle": str(bundle.lasting(model))}
    if variant is not None and variant != quantize:
        record["variant"] = variant  # int8 with float depthwise convolutions
    return {**meta, "export": record}


def _right(probs: np.ndarray, labels: np.ndarray) -> int:
    return int(np.sum(probs.argmax(axis=1) == labels))


def _accuracy(probs: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(np.mean(probs.argmax(axis=1) == labels))


def _quantized(classifier: BundleClassifier, quantize: str, staged: Path, work: Path,
               x: np.ndarray, expected: np.ndarray, source: str, model: Path,
               reporter: Reporter, calibrated: tuple[np.ndarray, str] | None
               ) -> tuple[np.ndarray, dict]:
    """Convert the float TFLite model (checked against Keras to ``TOLERANCE["tflite"]`` as a
    float export is) and the quantized one into ``staged``; compare the two on the
    validation split. ``calibrated``: int8's (images, their folder), as
    ``calibration_images`` gives them (read before any conversion); None otherwise.
    Returns (the quantized model's outputs on ``x``, the comparison)."""
    from transfer.metrics import class_probabilities

    floating = work / "float.tflite"
    _tflite(classifier.model, floating, work)
    embed_metadata(floating, _embedded_meta(classifier.meta, model, "none"))
    float_diff = float(np.max(np.abs(_run_tflite(floating, x).reshape(expected.shape)
                                     - expected)))
    if not float_diff <= TOLERANCE["tflite"]:  # NaN too
        raise TransferError(f"the float tflite conversion differs from the Keras model by "
                            f"{float_diff:.3g} (> {TOLERANCE['tflite']:g}) on {len(x)} images, "
                            "before quantization; nothing was written")
    calibration, calibration_source = calibrated or (None, None)
    if quantize == "int8":
        reporter.info(f"calibrating int8 on {len(calibration)} images of {calibration_source}")
    _tflite(classifier.model, staged, work, quantize, calibration)
    cx, labels, compare_source = comparison_images(classifier, x, source)
    reporter.info(f"comparing the float and the {quantize} model on {len(cx)} images from "
                  f"{compare_source}")
    float_probs = class_probabilities(_run_tflite(floating, cx))
    quant_probs = class_probabilities(_run_tflite(staged, cx))
    variant, tried = quantize, {}
    if quantize == "int8" and labels is not None:
        drop = _accuracy(float_probs, labels) - _accuracy(quant_probs, labels)
        if tries_float_depthwise(_right(float_probs, labels), _right(quant_probs, labels),
                                 len(labels)):  # keep the closer of the two
            reporter.info(f"full int8's accuracy is {100 * drop:.1f} points below the float "
                          "model's; trying int8 with float depthwise convolutions")
            other = work / "int8-depthwise-float.tflite"
            _tflite(classifier.model, other, work, "int8-depthwise-float", calibration)
            other_probs = class_probabilities(_run_tflite(other, cx))
            tried = {"int8": _accuracy(quant_probs, labels),  # accuracy of each variant
                     "int8-depthwise-float": _accuracy(other_probs, labels)}
            if tried["int8-depthwise-float"] > tried["int8"]:
                os.replace(other, staged)
                quant_probs, variant = other_probs, "int8-depthwise-float"
    embed_metadata(staged, _embedded_meta(classifier.meta, model, quantize, variant))
    actual = _run_tflite(staged, x)
    float_bytes, quant_bytes = floating.stat().st_size, staged.stat().st_size
    comparison = {
        "images": len(cx), "source": compare_source, "labelled": labels is not None,
        "io": "float32",
        "calibration_images": None if calibration is None else len(calibration),
        "calibration_source": calibration_source,
        "float": {"accuracy": _accuracy(float_probs, labels), "bytes": float_bytes,
                  "max_abs_diff": float_diff},
        "quantized": {"mode": quantize, "variant": variant,
                      "accuracy": _accuracy(quant_probs, labels), "bytes": quant_bytes,
                      **({"tried": tried} if tried else {})},
        "size_ratio": quant_bytes / float_bytes,
        **quantized_check(float_probs, quant_probs, labels),
    }
    # the check's rules hold, but on so few images (2 unlabelled, none the float model was
    # sure of, passed "vacuously") they cannot tell a broken copy from a sound one
    sure = comparison["confident_images"]
    if len(cx) < FEW_TO_COMPARE:
        kind = "" if labels is not None else "unlabelled "
        more = ("a larger validation split" if labels is not None else
                "the bundle's validation folder, or --check-images FOLDER")
        reporter.warn(f"the check says little: only {len(cx)} {kind}image"
                      f"{'' if len(cx) == 1 else 's'} from {compare_source} ({sure} the float "
                      f"model is sure of); a check that can fail needs a few dozen ({more})")
    elif not sure:
        reporter.warn(f"the check says little: the float model is sure ({CONFIDENT:g} or more) "
                      f"of none of the {len(cx)} images from {compare_source}, so only its "
                      f"agreement with the quantized one ({comparison['agreement']:.0%}) was "
                      "checked")
    return actual, comparison


def _refusal(quantize: str, c: dict) -> str:
    """One line saying which of quantized_check's conditions failed."""
    t = c["thresholds"]
    failed = []
    if c.get("non_finite"):
        failed.append(f"its outputs are not numbers (NaN or infinite) for {c['non_finite']} "
                      "images")
    if c["confident_changed"] > t["confident_changed_at_most"]:
        failed.append(f"{c['confident_changed']} of the {c['confident_images']} images the "
                      f"float model is sure of changed class (at most "
                      f"{t['confident_changed_at_most']} may)")
    if c["agreement"] < t["min_agreement"]:
        failed.append(f"same class as the float model on {c['agreement']:.0%} of images "
                      f"(< {t['min_agreement']:.0%})")
    if c["accuracy_drop"] is not None and c["accuracy_drop"] > t["max_accuracy_drop"] and \
            c["lost"] - c["gained"] > t["sign_test_z"] * math.sqrt(c["lost"] + c["gained"]):
        failed.append(f"accuracy {c['quantized']['accuracy']:.3f} against "
                      f"{c['float']['accuracy']:.3f}")
    # what changes a model less: float16 keeps every weight to 3 digits, dynamic stores
    # weights in int8 but computes in float, int8 computes in int8 too
    gentler = {"int8": "--quantize float16 or dynamic, which change",
               "dynamic": "--quantize float16, which changes"}.get(quantize)
    advice = (f"try {gentler} a model less" if gentler else
              "the float model (no --quantize) is the faithful one")
    return (f"the {quantize} export is not a faithful copy of the float model: "
            f"{'; '.join(failed)}, on {c['images']} images of {c['source']}; nothing was "
            f"written ({advice}; a model unsure of most images, near chance, is hard to copy "
            "faithfully)")


def _run_keras(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(bundle.load_keras(path).predict_on_batch(x))


@contextlib.contextmanager
def _output_folder(folder: Path, bundle_folder: Path | None):
    """``new_folders_kept_on_success(folder)``, checked writable before any work. When the
    output is the default one inside ``bundle_folder`` and it cannot be made or written (a
    read-only bundle: it said "Permission denied: ro/b/export"), one line says so and the
    way out, --output."""
    ready = False
    try:
        with new_folders_kept_on_success(folder):
            writable_folder(folder)
            ready = True
            yield folder
    except OSError as exc:
        if ready or bundle_folder is None:
            raise
        raise TransferError(f"cannot write the export into the bundle {bundle_folder} "
                            f"({exc.strerror or exc}); use --output PATH to write it "
                            "elsewhere") from None


def export(settings: ExportSettings | Path, *, reporter: Reporter | None = None,
           **options) -> ExportResult:
    """Export a bundle's model as .keras, a TensorFlow SavedModel or TFLite, checked first.

    The export is staged beside its target, run on real images and compared with the Keras
    model; only within ``TOLERANCE[format]`` is it moved into place, with the bundle's meta.
    A quantized TFLite export (``quantize`` dynamic, float16 or int8) is compared with the
    float TFLite model on the validation split instead (``quantized_check``), and its
    accuracy and size beside the float one's are returned in ``ExportResult.comparison``.

    Args:
        settings: an ExportSettings; or the bundle folder, with ``format=``, ``output=``,
            ``check_images=``, ``force=`` as keywords.
        reporter: told what is being exported (silent by default).
        **options: ExportSettings fields, applied over ``settings``.

    Returns:
        ExportResult: where the export and its meta went, the largest absolute difference
        from the Keras model, the tolerance (``math.inf`` for a quantized export: its check
        is ``comparison``) and the images checked.

    Raises:
        TransferError: a bad setting, a broken bundle, an existing output (without
            ``force``), a folder that is not a SavedModel, no check images, or outputs that
            differ beyond the tolerance, or a quantized model that fails
            ``quantized_check`` (then nothing is written); int8 without the training folder.
        OSError: the output's folder cannot be made or written (its ``filename`` names it).
    """
    if not isinstance(settings, ExportSettings):
        settings = ExportSettings(model=settings, **options)  # its validated() checks it
    elif options:
        settings = settings.replace(**options)
    s = settings.validated()
    reporter = reporter or Reporter()
    fmt, model = s.format, Path(s.model)
    # the bundle (its meta.json) and the output are checked before the model (and
    # TensorFlow) loads: an existing export without --force is refused at once
    bundle.read_meta(model)
    output = Path(s.output) if s.output is not None else model / "export" / default_name(
        fmt, s.quantize)
    meta_path = (output / "assets.extra" / bundle.META if fmt == "savedmodel"
                 else output.with_name(output.name + ".meta.json"))
    sidecar = [] if fmt == "savedmodel" else [meta_path]  # a SavedModel holds its own meta
    # what --force cannot replace is said first: it said "use --force", then refused that
    if output.exists() and output.is_dir() != (fmt == "savedmodel"):
        raise TransferError(f"{output} exists and is a {'folder' if output.is_dir() else 'file'}"
                            "; choose another --output")
    if fmt == "savedmodel" and output.is_dir() and Path.cwd().resolve().is_relative_to(
            output.resolve()):  # replaced whole, it would leave the shell in a deleted folder
        raise TransferError(f"--output {output} is the folder you are in (or holds it); name "
                            f"a SavedModel folder inside it, e.g. --output "
                            f"{output / 'saved_model'}")
    empty = output.is_dir() and not any(output.iterdir())  # nothing to lose: taken
    if output.is_dir() and not empty and not (output / "saved_model.pb").exists():
        raise TransferError(f"{output} is a folder but not a SavedModel (it holds files of "
                            "yours); choose another --output")
    for path in [output, *sidecar]:  # a bundle's own file: never, --force or not
        own = bundle.own_file(path)
        if own is not None:
            raise TransferError(f"{path} is the bundle {own.parent}'s own {own.name}: an "
                                "export never writes over a bundle's files, even with "
                                "--force; choose another --output")
    for path in sidecar:  # found after the whole conversion, as an "Is a directory" line
        if path.is_dir():
            raise TransferError(f"{path} (where the export's meta.json goes) is a folder; "
                                "move it, or choose another --output")
    for path in [*([] if empty else [output]), *sidecar]:
        refuse_existing(path, s.force)
    classifier = BundleClassifier(model)
    keras_model, meta = classifier.model, classifier.meta
    # a quantized export with no validation split is compared on these: a folder given is
    # taken whole (up to COMPARE_IMAGES), not 8 of it, or the check said little whatever it was
    x, source = check_inputs(classifier, s.check_images,
                             COMPARE_IMAGES if s.quantize != "none" and s.check_images else 8,
                             reporter)
    # int8's calibration images: read now, so that a training folder gone is said before
    # seconds of conversion, not after
    calibrated = calibration_images(classifier) if s.quantize == "int8" else None
    # predict's batch (1000 photos in one call were gigabytes of activations)
    expected = np.concatenate([classifier.outputs(x[i:i + BATCH_SIZE])
                               for i in range(0, len(x), BATCH_SIZE)])
    if not np.isfinite(expected).all():  # the float check said "differ by nan" of the export
        raise TransferError(f"{model}'s own {NOT_NUMBERS} on the {len(x)} check images "
                            f"({source}): {DIVERGED} before exporting it (nothing was "
                            "written)")

    # the folders made for --output go again when the export fails or is interrupted
    with _output_folder(output.parent, model if s.output is None else None):
        sweep_left_by_killed(output.parent)
        work = Path(tempfile.mkdtemp(prefix=temp_prefix(output.name), dir=output.parent))
        alias = None
        try:
            # TensorFlow takes UTF-8 paths without glob characters only: a folder of a
            # Latin-1 USB stick, or "proj [v1]", is given to it through an alias, and the
            # export made under a name of its own
            tf_work, alias = tf_reachable(work)
            suffix = "".join(output.suffixes[-1:])
            # in a folder of its own: --output float.tflite (or meta.json, replaced, ...) was
            # the work folder's reference model, overwritten by the quantized one it is
            # compared with
            (tf_work / "out").mkdir()
            staged = tf_work / "out" / (output.name if tf_safe(output.name)
                                        else "export" + (suffix if tf_safe(suffix) else ""))
            reporter.info(f"exporting {model} as {fmt} and checking it on {len(x)} images ...")
            comparison = None
            if fmt == "keras":
                keras_model.save(staged)
                actual = _run_keras(staged, x)
            elif fmt == "savedmodel":
                _savedmodel(keras_model, staged)
                actual = _run_savedmodel(staged, x)
            elif s.quantize == "none":
                _tflite(keras_model, staged, tf_work)
                embed_metadata(staged, _embedded_meta(meta, model, "none"))
                actual = _run_tflite(staged, x)
            else:
                actual, comparison = _quantized(classifier, s.quantize, staged, tf_work, x,
                                                expected, source, model, reporter, calibrated)
            diff = float(np.max(np.abs(actual.reshape(expected.shape) - expected)))
            tolerance = TOLERANCE[fmt] if comparison is None else math.inf
            result = ExportResult(path=output, meta_path=meta_path, format=fmt, max_abs_diff=diff,
                                  tolerance=tolerance, n_images=len(x), check_source=source,
                                  quantize=s.quantize, comparison=comparison)
            if comparison is not None and not result.passed:
                raise TransferError(_refusal(s.quantize, comparison))
            if not result.passed:
                raise TransferError(f"the {fmt} export's outputs differ from the Keras model's by "
                                    f"{diff:.3g} (> {TOLERANCE[fmt]:g}) on {len(x)} images; "
                                    "nothing was written")
            export_meta = {**meta, "export": {
                "format": fmt, "quantize": s.quantize, "source_bundle": str(bundle.lasting(model)),
                "max_abs_diff": diff, "tolerance": None if comparison else TOLERANCE[fmt],
                "checked_images": len(x), "comparison": comparison}}
            if fmt == "savedmodel":
                (staged / "assets.extra").mkdir(exist_ok=True)
                bundle.write_json(staged / "assets.extra" / bundle.META, export_meta)
                (staged / "assets.extra" / LABELS).write_bytes(labels_text(meta["class_names"]))
            else:
                bundle.write_json(work / "meta.json", export_meta)
                os.replace(work / "meta.json", meta_path)
            to_disk(staged)  # whole on the disk before the old export is moved aside
            theirs = bundle.not_in_a_savedmodel(output) if output.is_dir() else []
            if theirs:  # the user's own files in the SavedModel replaced: kept, the folder whole
                aside = free_name(output.with_name(f"{output.name}.old"))
                os.replace(output, aside)
                reporter.warn(bundle.kept_aside("SavedModel", output, theirs, aside))
            elif output.is_dir():  # a file is replaced by the rename itself, never missing
                os.replace(output, work / "replaced")
            os.replace(staged, output)
            entries_to_disk(output.parent)
            return result
        finally:
            if alias is not None:  # the link in the temporary folder, not what it points to
                shutil.rmtree(alias, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
