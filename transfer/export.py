"""`transfer export`: a bundle's model as .keras, TensorFlow SavedModel or TFLite, checked.

    from transfer.export import export
    result = export(Path("models/latest"), format="tflite", output=Path("cats.tflite"))
    result.max_abs_diff, result.passed
    export(ExportSettings(format="savedmodel"))        # the same, as the CLI calls it

The exported model is written to a temporary path, run on a few real images (the bundle's
validation images, or ``check_images``) and compared with the Keras model; only when the largest
absolute difference is within the format's tolerance is it renamed into place. Each export
carries the bundle's ``meta.json`` (class names, input size, preprocessing): beside the file as
``<file>.meta.json``, inside a SavedModel as ``assets.extra/meta.json``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import bundle, pipelines
from transfer.errors import TransferError
from transfer.files import refuse_existing
from transfer.inference import BundleClassifier, folder_images, writable_folder
from transfer.progress import Reporter
from transfer.settings import ExportSettings

TOLERANCE = {"keras": 1e-6, "savedmodel": 1e-5, "tflite": 1e-3}
DEFAULT_NAMES = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite"}


@dataclass
class ExportResult:
    path: Path
    meta_path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    n_images: int
    check_source: str  # where the check images came from

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def check_inputs(classifier: BundleClassifier, paths: list[Path] | None, n: int = 8
                 ) -> tuple[np.ndarray, str]:
    """(a batch of real prepared images, where they came from) for the round-trip check:
    the given files (up to ``n`` from each given folder), else ``n`` validation images."""
    meta = classifier.meta
    source = "given images"
    if not paths:
        validate = bundle.validate_dir(meta)
        if validate is None or not validate.is_dir():
            raise TransferError("no images to check the export with: the bundle's validation "
                                "folder is missing; pass --check-images PATH")
        per_class = [pipelines.image_files(validate / name) for name in meta["class_names"]]
        paths = [files[i] for i in range(n) for files in per_class if i < len(files)][:n]
        source = str(validate)
    files = []
    for path in paths:
        files += folder_images(path)[:n] if Path(path).is_dir() else [Path(path)]
    if not files:
        raise TransferError("no images to check the export with")
    arrays = []
    for path in files:
        try:
            arrays.append(classifier.prepare(path)[0])
        except TransferError as exc:
            raise TransferError(f"check image {path}: {exc}") from None
    return np.stack(arrays).astype("float32"), source


def _savedmodel(model, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the endpoint signature
        model.export(str(path), format="tf_saved_model", verbose=False)


def _run_savedmodel(path: Path, x: np.ndarray) -> np.ndarray:
    from transfer.tf import tf

    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(x)))


def _tflite(model, path: Path, workdir: Path) -> None:
    from transfer.tf import native_stderr_quiet, tf

    saved = workdir / "saved_model"
    _savedmodel(model, saved)
    with native_stderr_quiet():  # the converter's MLIR pass log
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        path.write_bytes(converter.convert())


def _run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    import warnings

    from transfer.tf import native_stderr_quiet, tf

    with warnings.catch_warnings(), native_stderr_quiet():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's move-to-LiteRT notice
        interpreter = tf.lite.Interpreter(model_path=str(path))
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], list(x.shape))
        interpreter.allocate_tensors()  # "Created TensorFlow Lite XNNPACK delegate"
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def _run_keras(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(bundle.load_keras(path).predict_on_batch(x))


def export(settings: ExportSettings | Path, *, reporter: Reporter | None = None,
           **options) -> ExportResult:
    """Export a bundle's model as .keras, a TensorFlow SavedModel or TFLite, checked first.

    The export is staged beside its target, run on real images and compared with the Keras
    model; only within ``TOLERANCE[format]`` is it moved into place, with the bundle's meta.

    Args:
        settings: an ExportSettings; or the bundle folder, with ``format=``, ``output=``,
            ``check_images=``, ``force=`` as keywords.
        reporter: told what is being exported (silent by default).
        **options: ExportSettings fields, applied over ``settings``.

    Returns:
        ExportResult: where the export and its meta went, the largest absolute difference
        from the Keras model, the tolerance and the images checked.

    Raises:
        TransferError: a bad setting, a broken bundle, an existing output (without
            ``force``), a folder that is not a SavedModel, no check images, or outputs that
            differ beyond the tolerance (then nothing is written).
        OSError: the output's folder cannot be made or written (its ``filename`` names it).
    """
    if not isinstance(settings, ExportSettings):
        settings = ExportSettings(model=Path(settings), **options)
    elif options:
        settings = settings.replace(**options)
    s = settings.validated()
    reporter = reporter or Reporter()
    fmt, model = s.format, Path(s.model)
    classifier = BundleClassifier(model)
    keras_model, meta = classifier.model, classifier.meta
    output = Path(s.output) if s.output is not None else model / "export" / DEFAULT_NAMES[fmt]
    meta_path = (output / "assets.extra" / bundle.META if fmt == "savedmodel"
                 else output.with_name(output.name + ".meta.json"))
    sidecar = [] if fmt == "savedmodel" else [meta_path]  # a SavedModel holds its own meta
    for path in [output, *sidecar]:
        refuse_existing(path, s.force)
    if output.exists() and output.is_dir() != (fmt == "savedmodel"):
        raise TransferError(f"{output} exists and is a {'folder' if output.is_dir() else 'file'}"
                            "; choose another --output")
    if output.is_dir() and not (output / "saved_model.pb").exists():
        raise TransferError(f"{output} is a folder but not a SavedModel; refusing to replace it")
    x, source = check_inputs(classifier, s.check_images)
    expected = classifier.outputs(x)

    writable_folder(output.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        staged = work / output.name
        reporter.info(f"exporting {model} as {fmt} and checking it on {len(x)} images ...")
        if fmt == "keras":
            keras_model.save(staged)
            actual = _run_keras(staged, x)
        elif fmt == "savedmodel":
            _savedmodel(keras_model, staged)
            actual = _run_savedmodel(staged, x)
        else:
            _tflite(keras_model, staged, work)
            actual = _run_tflite(staged, x)
        diff = float(np.max(np.abs(actual.reshape(expected.shape) - expected)))
        result = ExportResult(path=output, meta_path=meta_path, format=fmt, max_abs_diff=diff,
                              tolerance=TOLERANCE[fmt], n_images=len(x), check_source=source)
        if not result.passed:
            raise TransferError(f"the {fmt} export's outputs differ from the Keras model's by "
                                f"{diff:.3g} (> {TOLERANCE[fmt]:g}) on {len(x)} images; "
                                "nothing was written")
        export_meta = {**meta, "export": {"format": fmt, "source_bundle": str(model),
                                          "max_abs_diff": diff, "tolerance": TOLERANCE[fmt],
                                          "checked_images": len(x)}}
        if fmt == "savedmodel":
            (staged / "assets.extra").mkdir(exist_ok=True)
            bundle.write_json(staged / "assets.extra" / bundle.META, export_meta)
        else:
            bundle.write_json(work / "meta.json", export_meta)
            os.replace(work / "meta.json", meta_path)
        if output.exists():
            old = work / "replaced"
            os.replace(output, old)
        os.replace(staged, output)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
