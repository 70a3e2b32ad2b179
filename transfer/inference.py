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
file (an error instead of a crash for a file that is not a usable image), the next batch
decoding while the model runs this one; ``gather`` turns files, folders (recursed) and globs
into the list of files to read.

``ModelEngine`` runs a bundle's whole model (raw pixels -> probabilities) through
``transfer.engines`` for a large folder (``--engine`` of predict and evaluate): ``tf`` is the
Keras model itself; ``tflite`` converts the model once (cached under
``$KERAS_HOME/transfer/tflite``, keyed by model.keras's SHA-256 and size, so a copied bundle
reuses it; a file changed since it was loaded is not converted), checks it against TensorFlow
on the first batch (probabilities within ``engines.PARITY_TOLERANCE``) and falls back to
TensorFlow with a warning when it differs; ``auto`` keeps TensorFlow for fewer than
``ENGINE_MIN_IMAGES`` images (converting costs seconds; a few images gain nothing from it),
and otherwise lets ``engines.open_engine`` pick the faster on this machine (timed on the first
batch; a TensorFlow win is remembered per model). ImageNet mode always runs on TensorFlow.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import bases, bundle, images
from transfer import engines as engines_module
from transfer.constants import (
    is_ignored_folder,
    is_image_name,
    is_own_picture,
    unread_file,
    unread_line,
    unread_photo,
)
from transfer.errors import TransferError
from transfer.files import images_under, photos_under, unreachable_folder
from transfer.metrics import class_probabilities
from transfer.progress import Reporter
from transfer.seeds import keeps_random_state
from transfer.settings import ENGINES, INVERT, PredictSettings

BATCH_SIZE = PredictSettings.batch_size  # the one default lives in the settings
THREADS = 8  # image decoding threads at most (Pillow releases the GIL while decoding)
# the converted model's fixed batch (a shorter batch is padded, then cut): 8, as the feature
# pass's (features.CONVERTED_BATCH); the flipped MobileNet-0.25 bundle at 288 px ran 285
# photos/s on XNNPACK at batch 8 against 261 at batch 32 (2026-12-04)
ENGINE_BATCH = 8
# ``auto`` considers converting the model for this many images or more (the one rule lives in
# engines). Measured on 2 cores: a MobileNet-0.25 bundle converts in about 5 s, once (the file
# is cached), then runs at about 620 images/s on TFLite against 230 on TensorFlow (a pass,
# decoding included: about 260 against 220 on 800 photos); InceptionV3 converts in about 18 s
# and is no faster on TFLite there, which auto's measurement finds.
ENGINE_MIN_IMAGES = engines_module.MIN_IMAGES


# --------------------------------------------------------------------------- inputs


def folder_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (recursed, sorted); hidden folders and files, system files
    and Grad-CAM pictures are left out."""
    return images_under(folder)  # links followed, as in training


def gather(paths: list[str | Path]) -> list[tuple[str, Path | None, str | None]]:
    """(name to show, file, error) for every image PATHS name: files, folders, globs; an
    image in memory (bytes, a Pillow image, an array: ``images.in_memory``) is itself, shown
    as "image N" (its place among PATHS).

    A folder without images and a glob matching nothing get an error row; a named file is
    kept as it is (a missing or unusable one fails when it is opened, with the reason).
    """
    rows: list[tuple[str, Path | None, str | None]] = []
    for number, raw in enumerate(paths, 1):
        if not isinstance(raw, str | os.PathLike):  # bytes, a Pillow image, an array
            rows.append((f"image {number}", raw, None))  # read (or refused) as it is opened
            continue
        text = str(raw)
        path = Path(text)
        try:
            rows.extend(_rows_of(text, path))
        except OSError as exc:  # a name too long, a folder this user may not enter
            rows.append(_unreadable_row(text, exc))
    return rows


def named_among(paths: list, target) -> bool:
    """Whether the file ``target`` (links followed) is one of the files ``paths`` name, as
    ``gather`` finds them: a folder's photos, a glob's, and files it cannot read (a HEIC
    photo is an error row, and still a photo)."""
    from transfer.files import resolved

    if not Path(target).exists():  # a new file (or a broken link): no photo (no folder walk)
        return False
    wanted = resolved(Path(target))
    if wanted is None:
        return False
    for name, image, _ in gather(paths):
        # a file, or a file that cannot be read (its row has no image); not a photo in memory
        path = image if isinstance(image, Path) else Path(name) if image is None else None
        if path is not None and path.exists() and resolved(path) == wanted:
            return True
    return False


def _unreadable_row(name: str, exc: OSError) -> tuple[str, None, str]:
    """The row of a path that cannot be read, or a folder inside one that cannot be listed."""
    return (name, None, f"cannot be read ({exc.strerror or exc})")


def _rows_of(text: str, path: Path) -> list[tuple[str, Path | None, str | None]]:
    """``gather``'s rows for one path, folder or glob."""
    rows: list[tuple[str, Path | None, str | None]] = []
    if path.is_dir():
        unlisted: list[tuple[str, OSError]] = []  # folders that cannot be listed: a row each
        found, unread = photos_under(path, unlisted)  # one walk; a JPEG named .heic found
        if not found and not unread and not unlisted:
            rows.append((text, None, "folder has no images"))
        rows.extend((str(p), p, None) for p in found)
        # the listing read their headers already: their names say the kind
        rows.extend((str(p), None, unread_line(unread_photo(str(p)))) for p in unread)
        rows.extend(_unreadable_row(str(path / rel), exc) for rel, exc in unlisted)
    elif path.exists() or not glob.has_magic(text):  # missing: said when it is opened
        rows.append(_file_row(text, path) if path.is_file() else (text, path, None))
    else:
        matched = _matches(text)
        if not matched:
            rows.append((text, None, "no file matches this pattern"))
        seen: set[str] = set()  # "photos/**" matches folders and the files in them: once each
        for m in matched:  # a folder matched is read as a named one (as the shell passes it)
            lost = unreachable_folder(m)  # a link named as a folder, leading nowhere
            for row in (_rows_of(str(m), m) if m.is_dir() else
                        [_unreadable_row(str(m), lost)] if lost else [_file_row(str(m), m)]):
                if row[0] not in seen:
                    seen.add(row[0])
                    rows.append(row)
    return rows


def _file_row(name: str, path: Path) -> tuple[str, Path | None, str | None]:
    """A named or globbed file's row: the file, or an error row for a photo in a format the
    reader does not take (HEIC, camera raw), in the words a folder's such photos get."""
    reason = unread_reason(path)
    return (name, None, reason) if reason else (name, path, None)


def unread_reason(path: Path) -> str | None:
    """Why a photo in a format the reader does not take (HEIC, camera raw) gets no answer, the
    same words for a file named, globbed or found in a folder; None for other files, and for
    a file so named that Pillow opens (a JPEG renamed .heic: it was refused by its name while
    its bytes classified fine). ``constants.unread_file`` decides, as for every listing."""
    kind = unread_file(path)
    return unread_line(kind) if kind else None


def _matches(pattern: str) -> list[Path]:
    """The files and folders a glob matches (not the tool's own pictures, nor ``__MACOSX/``
    and the like). The longest leading run of folders that exist as written
    ("Urlaub [2023]/*.jpg", "Urlaub [2023]/**/*.jpg") is those folders: their brackets are
    their names."""
    parts = Path(pattern).parts
    known = 0  # how many leading parts name an existing folder as written
    while known < len(parts) - 1 and os.path.isdir(os.path.join(*parts[:known + 1])):
        known += 1
    if known and glob.has_magic(os.path.join(*parts[:known])):
        pattern = os.path.join(glob.escape(os.path.join(*parts[:known])), *parts[known:])
    found = glob.glob(pattern, recursive=True)
    return [m for m in sorted(Path(m) for m in found)
            if (m.is_file() and not is_own_picture(m.name))
            or (m.is_dir() and not is_ignored_folder(m.name))
            # a broken link or a link loop named as a photo: its error row, as in a folder
            # (it was dropped: exit 0, no word; "no file matches" when it was all there was)
            or (m.is_symlink() and not m.exists() and is_image_name(m.name))
            or unreachable_folder(m) is not None]  # a folder's row too, as in a folder


def glob_root(pattern: str) -> Path:
    """The folder a glob's matches lie below: its leading parts that are no pattern, or that
    name an existing folder as written (``photos/*/*.jpg`` -> ``photos``)."""
    parts = Path(pattern).parts
    fixed = 0
    while fixed < len(parts) - 1 and (not glob.has_magic(parts[fixed])
                                      or os.path.isdir(os.path.join(*parts[:fixed + 1]))):
        fixed += 1
    return Path(*parts[:fixed]) if fixed else Path(".")


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

    @property
    def read_side(self) -> int | None:
        """The size ``prepare`` reads a photo for (``images.open_image``'s ``size``; None:
        decoded whole): what decides how many pixels a JPEG decodes to."""
        return None

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
        # stable: of two classes tied, the first, as argmax (evaluate, explain, serve) takes it
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[{"label": self.class_names[j], "probability": float(p[j])} for j in row]
                for p, row in zip(probs, order, strict=True)]

    def input_shape(self) -> tuple:
        """The shape of one prepared input (``prepare``'s array): (size, size, channels)."""
        return tuple(self.model.input_shape[1:])

    def classify(self, inputs, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(N, classes) probabilities of images: files, their bytes, photos in memory (Pillow
        images, NumPy arrays of pixels 0-255 of any size), or prepared inputs.

        Args:
            inputs: a list of paths, bytes, Pillow images or arrays; a single one is also
                accepted. An array shaped as ``input_shape()`` (or a batch of them along a
                first axis) is taken as prepared: what ``prepare`` returns, pixels 0-255 at
                the model's size; for a grey model (a digit bundle's 28 x 28 x 1) also without
                its channel axis, as MNIST's arrays come (``as_prepared``). Any other array
                is a photo, read as a file would be (``images.in_memory``).
            batch_size: inputs per model call.

        Returns:
            float64 probabilities, one row per image, in input order.

        Raises:
            TransferError: an input is not a usable image (the message names it); the
                batches before it have run. Images are prepared as they come and run a
                batch at a time, so a long list (or a generator) of files holds one batch of
                pixels in memory, not all of them.
        """
        inputs = images.one_or_many(inputs)
        shape = self.input_shape()
        pending: list = []  # prepared images not run yet: at most a batch is held in memory
        out: list[np.ndarray] = []

        def run(everything: bool = False) -> None:
            while len(pending) >= batch_size or (everything and pending):
                batch, pending[:batch_size] = pending[:batch_size], []
                out.append(self.probabilities(np.stack(batch)))

        for number, item in enumerate(inputs, 1):
            shown = item if isinstance(item, str | Path) else f"image {number}"
            prepared = as_prepared(item, shape)
            try:
                if prepared is not None:
                    images.refuse_scaled(prepared)
                    pending.extend(prepared)
                else:
                    pending.append(self.prepare(item)[0])
            except images.ImageError as exc:
                raise TransferError(f"{shown}: {exc}") from None
            run()
        run(everything=True)
        if not out:
            return np.zeros((0, len(self.class_names or ()) or 1000))
        return np.concatenate(out)

    __call__ = classify  # classifier(["a.jpg"]) as classifier.classify(["a.jpg"])


def as_prepared(item, shape: tuple) -> np.ndarray | None:
    """``item`` as a batch of prepared inputs of ``shape`` (a classifier's ``input_shape()``),
    or None when it is not one (a photo, a path). An array of ``shape``, or a batch of them;
    for a grey model, also without the channel axis: MNIST's (N, 28, 28) and one (28, 28)
    digit, which were refused ("no photo") or read as a photo and fitted again, so one digit
    scored differently with and without its channel axis."""
    if not isinstance(item, np.ndarray):
        return None
    if item.shape[-len(shape):] == shape and item.ndim in (len(shape), len(shape) + 1):
        return item if item.ndim == len(shape) + 1 else item[None]
    grey = shape[-1:] == (1,)
    if grey and item.shape[-2:] == shape[:2] and item.ndim in (len(shape) - 1, len(shape)):
        return item[..., None] if item.ndim == len(shape) else item[None, ..., None]
    return None


def check_invert(meta: dict, invert: str | None) -> None:
    """``invert`` (None, or one of ``INVERT``) for the bundle of ``meta``: a digit model's
    only. Decided by meta.json alone (explain says it before the model loads)."""
    if invert is not None and invert not in INVERT:
        raise TransferError(f"--invert must be one of {', '.join(INVERT)}, not {invert!r}")
    if invert is not None and meta.get("channels", 3) != 1:
        raise TransferError("--invert applies to digit models (transfer mnist) only")


class BundleClassifier(Classifier):
    """A trained bundle: its model, its class names, its input recipe."""

    mode = "bundle"

    def __init__(self, bundle_dir: Path, invert: str | None = None, *, model=None):
        """Load ``bundle_dir`` (Keras safe_mode, checked against its meta.json). ``model``:
        the bundle's model already in memory (train's, which it has just written there): not
        loaded again, only checked against meta.json.

        Raises:
            TransferError: no bundle there, a broken bundle, or ``invert`` for a colour model.
        """
        super().__init__()
        bundle_dir = Path(bundle_dir)
        # the model.keras read (see engine_key), even when a replaced bundle was read again
        self.model, self.meta, self._loaded_stat = (
            bundle.load_with_stat(bundle_dir) if model is None else bundle.adopt(bundle_dir, model))
        self.path = bundle_dir
        self.name = (f"{bundle_dir} -> {bundle_dir.resolve().name}" if bundle_dir.is_symlink()
                     else str(bundle_dir))
        self.base = self.meta.get("base", "")
        self.class_names = list(self.meta["class_names"])
        check_invert(self.meta, invert)
        self.invert = invert

    def prepare(self, source) -> tuple[np.ndarray, dict]:
        return images.model_input(source, self.meta, self.invert)

    @property
    def read_side(self) -> int | None:
        return images.draft_side(self.meta)

    def engine_key(self) -> dict | None:
        """What identifies the loaded model for the converted-model cache: model.keras's
        SHA-256 and size; None when the file changed since it was loaded (a bundle replaced
        meanwhile: a conversion of the loaded model must not be cached under the new file's
        key)."""
        from transfer.files import sha256_file

        try:
            sha256 = sha256_file(self.path / bundle.MODEL)
        except OSError:
            return None
        if not self.unchanged():
            return None
        return {"kind": "bundle-model", "model_sha256": sha256, "bytes": self._loaded_stat[0]}

    def unchanged(self) -> bool:
        """Whether the bundle's model.keras is still the file this classifier holds (not
        replaced since it was loaded, or written by train)."""
        return (self._loaded_stat is not None
                and bundle.file_stat(self.path / bundle.MODEL) == self._loaded_stat)


class ImageNetClassifier(Classifier):
    """A registered base's pretrained ImageNet classifier (1000 classes)."""

    mode = "imagenet"
    class_names = None

    @keeps_random_state  # building the layers draws initial weights from Python's random
    def __init__(self, base: str = PredictSettings.base, alpha: float = PredictSettings.alpha,
                 weights: str | None = "imagenet", reporter=bases.ON_STDERR):
        """Build the base with its ImageNet top (``weights=None``: random weights, for tests);
        ``reporter`` hears of Keras's downloads of its weights and class index
        (``bases.downloads_said_to``: None or a silent one, nobody).

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
                                 "lists them)", reporter=reporter)
        check_imagenet_class_index(reporter)  # offline, every image was classified before it failed
        self.base = base
        width = f" alpha {self.alpha}" if self.spec.has_alpha else ""
        self.name = f"{self.spec.keras_class}{width} (ImageNet)"
        self._preprocess = bases.preprocess_numpy(self.spec.preprocess)

    def prepare(self, source) -> tuple[np.ndarray, dict]:
        image = images.open_image(source, self.spec.size)
        return images.rgb_array(image, self.spec.size), images.notes_of(image)

    @property
    def read_side(self) -> int | None:
        return self.spec.size

    def _model_input(self, batch: np.ndarray) -> np.ndarray:
        return self._preprocess(np.asarray(batch, dtype="float32"))

    def ranked(self, probs: np.ndarray, k: int) -> list[list[dict]]:
        return imagenet_labels(probs, k)


def imagenet_labels(probs: np.ndarray, k: int, reporter=bases.ON_STDERR) -> list[list[dict]]:
    """Top-k ImageNet labels per row, with Keras's class index (downloaded once, cached; its
    download said to ``reporter``, as ``bases.downloads_said_to`` says)."""
    from transfer.tf import keras

    try:
        with bases.downloads_said_to(reporter):
            decoded = keras.applications.imagenet_utils.decode_predictions(
                np.asarray(probs, dtype="float32"), top=k)
    except Exception as exc:
        raise TransferError(
            f"cannot read Keras's ImageNet class index ({exc}); put imagenet_class_index.json "
            f"into {bases.keras_cache_dir()} (KERAS_HOME); offline, download it on a machine "
            f"that is online from {IMAGENET_CLASS_INDEX_URL}") from exc
    return [[{"label": label, "probability": float(p), "synset": synset}
             for synset, label, p in row] for row in decoded]


# where Keras downloads it from (keras.applications.imagenet_utils.CLASS_INDEX_PATH)
IMAGENET_CLASS_INDEX_URL = ("https://storage.googleapis.com/download.tensorflow.org/data/"
                            "imagenet_class_index.json")


def check_imagenet_class_index(reporter=bases.ON_STDERR) -> None:
    """TransferError (``imagenet_labels``' words: where to put the file) when Keras's ImageNet
    class index can be neither read from the Keras cache nor downloaded; once read, Keras
    keeps it for every later call. Checked when an ImageNet classifier is made, before any
    image is read: offline, every image was classified first and then the run failed."""
    imagenet_labels(np.zeros((1, 1000), "float32"), 1, reporter)


def given_classifier(classifier, function: str, kind: type | None = None):
    """``classifier`` when it is a loaded one of ``kind`` (default any ``Classifier``); else one
    TransferError saying what to pass (a path, or open_classifier's whole (classifier,
    fallback) pair, failed with an AttributeError deep inside)."""
    kind = kind or Classifier
    if isinstance(classifier, kind):
        return classifier
    if isinstance(classifier, tuple) and classifier and isinstance(classifier[0], Classifier):
        why = "open_classifier's whole (classifier, fallback) pair" + (
            ": pass its first item" if isinstance(classifier[0], kind) else
            f", whose classifier, of {classifier[0].name}, is not a trained bundle's")
    elif isinstance(classifier, Classifier):
        why = f"the classifier of {classifier.name}, which is not a trained bundle"
    else:
        why = repr(classifier)
    raise TransferError(f"{function}'s classifier= takes a {kind.__name__} (as "
                        f"open_classifier(model=...) gives it first), not {why}")


def open_classifier(settings: PredictSettings | None = None, *, reporter: Reporter | None = None,
                    **options) -> tuple[Classifier, str | None]:
    """The classifier ``settings`` ask for: ``model``, else ``imagenet`` with ``base`` and
    ``alpha``, else ``models_dir/latest``, else ImageNet mode (the fallback, said and returned).

    Args:
        settings: a PredictSettings (its ``paths`` are not needed); or give its fields as
            keywords (``model=...``, ``imagenet=True, base=..., alpha=...``, ``invert=...``).
        reporter: told about the fallback to ImageNet mode, and Keras's downloads of its
            weights and class index (silent by default).

    Returns:
        (classifier, why ImageNet mode was used without --imagenet, or None).

    Raises:
        TransferError: --model with --imagenet, a broken bundle, an unknown base.
    """
    from transfer.settings import given

    s = given(settings, PredictSettings, "open_classifier") if settings is not None \
        else PredictSettings(**options)
    if settings is not None and options:
        s = s.replace(**options)
    s.classifier_validated()  # model=5 was a TypeError deep in pathlib, imagenet="no" true
    reporter = reporter or Reporter()
    if s.imagenet:
        if s.model is not None:
            raise TransferError("give either --model or --imagenet, not both")
        if s.invert is not None:  # a colour bundle refuses it too: it was ignored in silence
            raise TransferError("--invert applies to digit models (transfer mnist) only, not "
                                "to the ImageNet classifier")
        return ImageNetClassifier(s.base, s.alpha, reporter=reporter), None
    model = s.model
    if model is None:
        latest = Path(s.models_dir) / "latest"
        if latest.is_symlink() and not latest.exists():  # a bundle moved or deleted since
            raise TransferError(bundle.no_bundle(latest))
        if not latest.exists():
            if s.invert is not None:
                raise TransferError(f"--invert applies to digit models (transfer mnist) only, "
                                    f"and there is no trained model at {latest}")
            return _imagenet_fallback(latest, s, reporter)
        model = latest
    if s.base != PredictSettings.base or s.alpha != PredictSettings.alpha:
        # ignored in silence (--base), or "--alpha applies to mobilenet only, not inception"
        # for a MobileNet bundle: the bundle's base is its own
        given = " and ".join(f"--{k}" for k, v in (("base", s.base), ("alpha", s.alpha))
                             if v != getattr(PredictSettings, k))
        verb = "choose" if " and " in given else "chooses"
        raise TransferError(f"{given} {verb} the ImageNet classifier (with --imagenet); the "
                            f"bundle {model} brings its own base: leave {given} out, or add "
                            "--imagenet")
    return BundleClassifier(Path(model), s.invert), None


def _imagenet_fallback(latest: Path, s: PredictSettings, reporter: Reporter
                       ) -> tuple[Classifier, str]:
    """ImageNet mode for want of a bundle at ``latest``, said once: as a warning when its
    classifier is made, or first in the error when it cannot be (a notebook in a sub-folder,
    offline, got only "ImageNet weights ... could not be downloaded", with no word of the
    fallback unless it passed a reporter)."""
    hint = "(train one with `transfer train`, or pass --model DIR)"
    spec = bases.get(s.base)
    reason = (f"no trained model at {latest}; classifying with the ImageNet classifier of "
              f"{s.base} {hint}")
    download = (spec.pretrained
                and bases.cached_weights(spec, s.alpha, include_top=True) is None)
    if download:
        # its weights are downloaded first: a bar of 92 MB with no word of why came first (a
        # warning, as without a download; said as an attempt: the download may fail)
        reporter.warn(f"no trained model at {latest}; falling back to the ImageNet classifier "
                      f"of {s.base} {hint}, whose weights are downloaded first")
    try:
        classifier = ImageNetClassifier(s.base, s.alpha, reporter=reporter)
    except TransferError as exc:
        raise TransferError(f"no trained model at {latest.absolute()} {hint}, and the ImageNet "
                            f"fallback to {s.base}'s classifier failed: {exc}") from exc
    if not download:
        reporter.warn(reason)
    return classifier, reason


# --------------------------------------------------------------------------- engines


class ModelEngine:
    """A classifier's model on batches of prepared inputs, run by the engine ``requested``
    (``auto``, ``tf`` or ``tflite``; see the module's docstring), opened on the first batch
    it is given. ``info`` (an ``engines.EngineInfo``) says what ran, why, its parity with
    TensorFlow and, once ``record`` is called, its images/s."""

    def __init__(self, classifier: Classifier, requested: str = "auto", images: int = 0,
                 reporter: Reporter | None = None):
        """Decide what may run (nothing is converted before the first batch).

        Args:
            classifier: the loaded classifier (its model runs on TensorFlow unless converted).
            requested: "auto", "tf" or "tflite".
            images: how many images the run will classify (``auto`` keeps TensorFlow below
                ``ENGINE_MIN_IMAGES``; ``tflite`` converts whatever the number).
            reporter: the conversion's note and the fallback warnings.

        Raises:
            TransferError: an unknown engine name.
        """
        from transfer.engines import EngineInfo, cpu_threads

        if requested not in ENGINES:
            raise TransferError(f"--engine must be one of {', '.join(ENGINES)}, "
                                f"not {requested!r}")
        self.classifier, self.requested = classifier, requested
        self.reporter = reporter or Reporter()
        self.info = EngineInfo(requested=requested, batch_size=ENGINE_BATCH,
                               threads=cpu_threads())
        self._engine = None  # the TFLite engine, once opened and checked
        self._pending = False  # to open at the first batch
        self._batch: int | None = None  # images per call when it may convert (batch_size)
        self._open_seconds = 0.0  # conversion, parity check, auto's measurement
        self._images = images  # auto's rules for the pass (a cache that cannot be written)
        if requested == "tf":
            return
        if not isinstance(classifier, BundleClassifier):
            self.info.fallback = "ImageNet mode runs on TensorFlow"
            if requested == "tflite":
                self.reporter.warn("--engine tflite applies to trained bundles; ImageNet mode "
                                   "runs on TensorFlow")
        elif requested == "auto" and images < ENGINE_MIN_IMAGES:
            self.info.fallback = engines_module.few_images(images)
        else:
            self._pending = True

    @property
    def name(self) -> str:
        return self.info.name

    def batch_size(self, requested: int) -> int:
        """Images per model call: ``requested``, or when the model may be converted, that
        rounded up to a multiple of the converted model's fixed batch (a short batch is padded:
        batches of 1 would run 8 images each, and make auto's measurement unfair)."""
        if not self._pending and self._engine is None:
            self.info.batch_size = requested  # TensorFlow runs it: what is recorded too
            return requested
        self._batch = -(-requested // ENGINE_BATCH) * ENGINE_BATCH
        return self._batch

    def _open(self, batch: np.ndarray) -> None:
        self._pending = False
        started = time.perf_counter()
        try:
            self._open_engine(batch)
        finally:
            self._open_seconds = time.perf_counter() - started
            if self._engine is None and self._batch:  # TensorFlow after all
                self.info.batch_size = self._batch  # runs the batches it was given

    def _open_engine(self, batch: np.ndarray) -> None:
        from transfer import engines

        c = self.classifier
        key = c.engine_key()
        if key is None:
            self.info.fallback = f"{c.path / bundle.MODEL} changed since it was loaded"
            self.reporter.warn(f"{self.info.fallback}; using TensorFlow")
            return
        with c._lock:  # the parity check and auto's measurement call the shared Keras model
            engine, self.info = engines.open_engine(
                c.model, c._model_input(batch), requested=self.requested, key=key,
                batch_size=ENGINE_BATCH, reporter=self.reporter, images=self._images)
        if self.info.name == "tflite":
            self._engine = engine

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities of a batch of prepared inputs, as
        ``Classifier.probabilities`` gives them (within the parity tolerance)."""
        if self._pending:
            self._open(batch)
        if self._engine is None:
            return self.classifier.probabilities(batch)
        return class_probabilities(self._engine(self.classifier._model_input(batch)))

    def record(self, images: int, seconds: float) -> None:
        """The pass's images and wall time (decoding included; opening the engine, which
        ``info.conversion_seconds`` and ``measured`` account for, left out), for images/s."""
        self.info.images = int(images)
        self.info.seconds = max(float(seconds) - self._open_seconds, 0.0)


def engine_summary(info: dict) -> str:
    """One line about an ``EngineInfo.as_dict()``: what ran, its speed, and why not TFLite."""
    detail = ""
    if info.get("name") == "tflite":
        detail = (f" ({info.get('interpreter')}, {info.get('threads')} threads, parity "
                  f"{info.get('parity_max_abs_diff') or 0:.1e})")
    speed = (f", {info['images_per_second']:g} images/s" if info.get("images_per_second")
             else "")
    why = f"; {info['fallback']}" if info.get("fallback") else ""
    return f"engine {info.get('name')}{detail}{speed}{why}"


# --------------------------------------------------------------------------- batches


@dataclass
class Classified:
    probabilities: np.ndarray | None  # (classes,) for a usable image
    notes: dict | None  # what the image was (width, height, mode, ...)
    error: str | None  # why the file could not be used


def classify_files(classifier: Classifier, files: list[Path], batch_size: int = BATCH_SIZE,
                   reporter: Reporter | None = None, description: str = "Classifying",
                   engine: ModelEngine | None = None) -> list[Classified]:
    """One result per file, in order: images decoded in threads (the next batch while the
    model runs this one), classified in batches; a file that is not a usable image gets its
    reason instead of probabilities. ``engine`` (a ``ModelEngine`` of ``classifier``) runs
    the model instead of the classifier itself (in batches of a multiple of the converted
    model's batch when it may convert), and gets the pass's images and time."""
    reporter = reporter or Reporter()
    run = classifier.probabilities
    if engine is not None:
        run, batch_size = engine.probabilities, engine.batch_size(batch_size)

    # one open stream given twice (an upload classified twice in one list) is read by one
    # thread at a time: two reading it at once each saw the other's seeks ("truncated")
    streams = {id(f): threading.Lock() for f in files if hasattr(f, "read")}

    def load(path):
        try:
            with streams.get(id(path), contextlib.nullcontext()):
                return classifier.prepare(path), None
        except images.ImageError as exc:
            return None, str(exc)

    results: list[Classified] = []
    started, classified = time.perf_counter(), 0
    chunks = iter([files[i:i + batch_size] for i in range(0, len(files), batch_size)])
    with reporter.task(description, total=len(files)) as advance, \
            ThreadPoolExecutor(min(THREADS, os.cpu_count() or 1)) as pool:
        pending: deque = deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append([pool.submit(load, path) for path in chunk])

        submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()  # one batch ahead: bounded memory, decoding overlaps the model
            loaded = [future.result() for future in futures]
            arrays = [prepared[0] for prepared, error in loaded if error is None]
            probs = iter(run(np.stack(arrays)) if arrays else ())
            classified += len(arrays)
            results += [Classified(None, None, error) if error is not None
                        else Classified(next(probs), prepared[1], None)
                        for prepared, error in loaded]
            advance(len(loaded))
    if engine is not None:
        engine.record(classified, time.perf_counter() - started)
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
