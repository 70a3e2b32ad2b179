"""One way to load a model and run it on images, for predict, evaluate, explain, export and a
web server.

    from transfer.inference import BundleClassifier
    classifier = BundleClassifier("models/latest")     # load once ...
    probs = classifier.classify(["a.jpg", "b.png"])    # ... classify many times: (N, classes)

A classifier is a loaded model plus the recipe for its input and the meaning of its outputs:

- ``BundleClassifier``: a trained bundle; ``meta.json`` says how to read an image (size,
  channels, how training resized, digit fitting) and what the outputs are (class names).
- ``ImageNetClassifier``: a registered base's pretrained ImageNet classifier (1000 classes).

Both offer ``prepare(file) -> (model input, notes)``, ``outputs(batch)`` (the model's raw
outputs), ``probabilities(batch)`` ((N, classes), a sigmoid column made into two),
``ranked(probs, k)`` (best labels first) and ``classify(files or arrays)``. Model calls hold
a lock, so one classifier can serve requests from several threads.

``classify_files`` reads files in threads and classifies them in batches, with one result per
file (an error instead of a crash for a file that is not a usable image); ``gather`` turns
files, folders (recursed) and globs into the list of files to read.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import bases, bundle, images
from transfer.constants import is_image_name
from transfer.errors import TransferError
from transfer.metrics import class_probabilities
from transfer.progress import Reporter
from transfer.settings import INVERT, PredictSettings

BATCH_SIZE = PredictSettings.batch_size  # the one default lives in the settings
THREADS = 8  # image decoding threads at most (Pillow releases the GIL while decoding)


# --------------------------------------------------------------------------- inputs


def folder_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursed, sorted); hidden folders and files, system files
    and Grad-CAM pictures are left out."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def gather(paths: list[str | Path]) -> list[tuple[str, Path | None, str | None]]:
    """(name to show, file, error) for every image PATHS name: files, folders, globs.

    A folder without images and a glob matching nothing get an error row; a named file is
    kept as it is (a missing or unusable one fails when it is opened, with the reason).
    """
    rows: list[tuple[str, Path | None, str | None]] = []
    for raw in paths:
        text = str(raw)
        path = Path(text)
        if path.is_dir():
            found = folder_images(path)
            if not found:
                rows.append((text, None, "folder has no images"))
            rows.extend((str(p), p, None) for p in found)
        elif path.exists() or not glob.has_magic(text):
            rows.append((text, path, None))
        else:
            files = [m for m in sorted(Path(m) for m in glob.glob(text, recursive=True))
                     if m.is_file()]
            if not files:
                rows.append((text, None, "no file matches this pattern"))
            rows.extend((str(m), m, None) for m in files)
    return rows


# --------------------------------------------------------------------------- classifiers


class Classifier:
    """What every classifier offers; subclasses set the model and the input recipe."""

    mode = ""
    name = ""
    base = ""
    class_names: list[str] | None = None
    model = None

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def prepare(self, source) -> tuple[np.ndarray, dict]:
        """(the model's input for one image file or its bytes, notes about the image)."""
        raise NotImplementedError

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw outputs for a batch of prepared inputs."""
        with self._lock:
            return np.asarray(self.model.predict_on_batch(self._model_input(batch)))

    def _model_input(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype="float32")

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, classes) float64 probabilities for a batch of prepared inputs."""
        return class_probabilities(self.outputs(batch))

    def ranked(self, probs: np.ndarray, k: int) -> list[list[dict]]:
        """The ``k`` best labels of each row of ``probs``, best first."""
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[{"label": self.class_names[j], "probability": float(p[j])} for j in row]
                for p, row in zip(probs, order, strict=True)]

    def classify(self, inputs, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(N, classes) probabilities of image files, image bytes or prepared arrays.

        Args:
            inputs: a list of paths, bytes or arrays (one prepared input, or a batch of them
                along the first axis); a single path or array is also accepted.
            batch_size: inputs per model call.

        Returns:
            float64 probabilities, one row per image, in input order.

        Raises:
            TransferError: an input is not a usable image (the message names it).
        """
        if isinstance(inputs, str | Path | bytes | np.ndarray):
            inputs = [inputs]
        arrays = []
        for item in inputs:
            if isinstance(item, np.ndarray):
                arrays.extend(item if item.ndim == 4 else [item])
                continue
            try:
                arrays.append(self.prepare(item)[0])
            except images.ImageError as exc:
                shown = item if isinstance(item, str | Path) else "image"
                raise TransferError(f"{shown}: {exc}") from None
        if not arrays:
            return np.zeros((0, len(self.class_names or ()) or 1000))
        return np.concatenate([self.probabilities(np.stack(arrays[i:i + batch_size]))
                               for i in range(0, len(arrays), batch_size)])


class BundleClassifier(Classifier):
    """A trained bundle: its model, its class names, its input recipe."""

    mode = "bundle"

    def __init__(self, bundle_dir: Path, invert: str | None = None):
        """Load ``bundle_dir`` (Keras safe_mode, checked against its meta.json).

        Raises:
            TransferError: no bundle there, a broken bundle, or ``invert`` for a colour model.
        """
        super().__init__()
        bundle_dir = Path(bundle_dir)
        self.model, self.meta = bundle.load(bundle_dir)
        self.path = bundle_dir
        self.name = (f"{bundle_dir} -> {bundle_dir.resolve().name}" if bundle_dir.is_symlink()
                     else str(bundle_dir))
        self.base = self.meta.get("base", "")
        self.class_names = list(self.meta["class_names"])
        if invert is not None and invert not in INVERT:
            raise TransferError(f"--invert must be one of {', '.join(INVERT)}, not {invert!r}")
        if invert is not None and self.meta.get("channels", 3) != 1:
            raise TransferError("--invert applies to digit models (transfer mnist) only")
        self.invert = invert

    def prepare(self, source) -> tuple[np.ndarray, dict]:
        return images.model_input(source, self.meta, self.invert)


class ImageNetClassifier(Classifier):
    """A registered base's pretrained ImageNet classifier (1000 classes)."""

    mode = "imagenet"
    class_names = None

    def __init__(self, base: str = PredictSettings.base, alpha: float = PredictSettings.alpha,
                 weights: str | None = "imagenet"):
        """Build the base with its ImageNet top (``weights=None``: random weights, for tests).

        Raises:
            TransferError: a base without an ImageNet classifier, a bad alpha, or weights that
                cannot be downloaded (the message names the file to put in the Keras cache).
        """
        super().__init__()
        self.spec = bases.get(base)
        if not self.spec.pretrained:
            raise TransferError(f"{base} has no ImageNet classifier; choose one of "
                                f"{', '.join(b for b in bases.BASES if bases.BASES[b].pretrained)}")
        self.alpha = bases.check_alpha(self.spec, alpha)
        self.model = bases.build(self.spec, alpha=self.alpha, weights=weights, include_top=True,
                                 offline_hint="or choose another --base (`transfer bases` "
                                 "lists them)")
        self.base = base
        width = f" alpha {self.alpha}" if self.spec.has_alpha else ""
        self.name = f"{self.spec.keras_class}{width} (ImageNet)"
        self._preprocess = bases.preprocess_numpy(self.spec.preprocess)

    def prepare(self, source) -> tuple[np.ndarray, dict]:
        image = images.open_image(source)
        notes = {"width": image.size[0], "height": image.size[1], "mode": image.mode}
        return images.rgb_array(image, self.spec.size), notes

    def _model_input(self, batch: np.ndarray) -> np.ndarray:
        return self._preprocess(np.asarray(batch, dtype="float32"))

    def ranked(self, probs: np.ndarray, k: int) -> list[list[dict]]:
        return imagenet_labels(probs, k)


def imagenet_labels(probs: np.ndarray, k: int) -> list[list[dict]]:
    """Top-k ImageNet labels per row, with Keras's class index (downloaded once, cached)."""
    from transfer.tf import keras

    try:
        decoded = keras.applications.imagenet_utils.decode_predictions(
            np.asarray(probs, dtype="float32"), top=k)
    except Exception as exc:
        raise TransferError(
            f"cannot read Keras's ImageNet class index ({exc}); put imagenet_class_index.json "
            f"into {bases.keras_cache_dir()} (KERAS_HOME)") from exc
    return [[{"label": label, "probability": float(p), "synset": synset}
             for synset, label, p in row] for row in decoded]


def open_classifier(settings: PredictSettings | None = None, *, reporter: Reporter | None = None,
                    **options) -> tuple[Classifier, str | None]:
    """The classifier ``settings`` ask for: ``model``, else ``imagenet`` with ``base`` and
    ``alpha``, else ``models_dir/latest``, else ImageNet mode (the fallback, said and returned).

    Args:
        settings: a PredictSettings (its ``paths`` are not needed); or give its fields as
            keywords (``model=...``, ``imagenet=True, base=..., alpha=...``, ``invert=...``).
        reporter: told about the fallback to ImageNet mode.

    Returns:
        (classifier, why ImageNet mode was used without --imagenet, or None).

    Raises:
        TransferError: --model with --imagenet, a broken bundle, an unknown base.
    """
    s = settings if settings is not None else PredictSettings(**options)
    if settings is not None and options:
        s = s.replace(**options)
    reporter = reporter or Reporter()
    if s.imagenet:
        if s.model is not None:
            raise TransferError("give either --model or --imagenet, not both")
        return ImageNetClassifier(s.base, s.alpha), None
    model = s.model
    if model is None:
        latest = Path(s.models_dir) / "latest"
        if not latest.exists():
            reason = (f"no trained model at {latest}; classifying with the ImageNet classifier "
                      f"of {s.base} (train one with `transfer train`, or pass --model DIR)")
            reporter.warn(reason)
            return ImageNetClassifier(s.base, s.alpha), reason
        model = latest
    return BundleClassifier(Path(model), s.invert), None


# --------------------------------------------------------------------------- batches


@dataclass
class Classified:
    probabilities: np.ndarray | None  # (classes,) for a usable image
    notes: dict | None  # what the image was (width, height, mode, ...)
    error: str | None  # why the file could not be used


def classify_files(classifier: Classifier, files: list[Path], batch_size: int = BATCH_SIZE,
                   reporter: Reporter | None = None, description: str = "Classifying"
                   ) -> list[Classified]:
    """One result per file, in order: images decoded in threads, classified in batches; a file
    that is not a usable image gets its reason instead of probabilities."""
    reporter = reporter or Reporter()

    def load(path):
        try:
            return classifier.prepare(path), None
        except images.ImageError as exc:
            return None, str(exc)

    results: list[Classified] = []
    with reporter.task(description, total=len(files)) as advance, \
            ThreadPoolExecutor(min(THREADS, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), batch_size):
            loaded = list(pool.map(load, files[start:start + batch_size]))
            arrays = [prepared[0] for prepared, error in loaded if error is None]
            probs = iter(classifier.probabilities(np.stack(arrays)) if arrays else ())
            results += [Classified(None, None, error) if error is not None
                        else Classified(next(probs), prepared[1], None)
                        for prepared, error in loaded]
            advance(len(loaded))
    return results


# --------------------------------------------------------------------------- outputs


def writable_folder(folder: Path) -> Path:
    """Make ``folder`` (and its parents) and check that a file can be written in it, before
    any slow work; an OSError names ``folder`` (not a hidden temporary file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)  # its OSError names the folder it failed on
    try:
        handle, probe = tempfile.mkstemp(prefix=".transfer-write-check-", dir=folder)
    except OSError as exc:
        raise type(exc)(exc.errno or errno.EACCES, exc.strerror or "cannot write",
                        str(folder)) from None
    os.close(handle)
    os.unlink(probe)
    return folder
