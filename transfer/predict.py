"""`transfer predict`: classify image files with a trained bundle or an ImageNet classifier.

    from transfer.predict import predict
    result = predict(["photos/"], model="models/latest")
    for item in result.items:
        print(item.file, item.label, item.probability, item.error)

A bundle's ``meta.json`` says everything about its input (size, channels, how training resized)
and its outputs (class names in index order); nothing is re-guessed here. ImageNet mode uses a
registered base's own ImageNet classifier (``include_top=True``) and Keras's class index.
Files that cannot be read become error rows; the others are still classified, in batches.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from transfer import bases, bundle, images
from transfer.errors import TransferError
from transfer.files import replacing
from transfer.metrics import class_probabilities
from transfer.pipelines import GRADCAM_SUFFIX, IMAGE_SUFFIXES
from transfer.progress import Reporter

FORMATS = ("table", "json", "csv")
IMAGE_SUFFIXES_PREDICT = (*IMAGE_SUFFIXES, ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Prediction:
    file: str
    label: str | None = None
    probability: float | None = None
    top: list[dict] = field(default_factory=list)  # best first: {"label", "probability", ...}
    probabilities: dict[str, float] | None = None  # every class (bundle mode)
    image: dict | None = None  # width, height, mode (and "inverted" for digit bundles)
    error: str | None = None


@dataclass
class Predictions:
    mode: str  # "bundle" or "imagenet"
    model: str  # bundle folder, or the ImageNet classifier's name
    base: str
    class_names: list[str] | None  # None in ImageNet mode (1000 classes)
    items: list[Prediction]
    fallback: str | None = None  # why ImageNet mode was used although no --imagenet

    @property
    def failed(self) -> int:
        return sum(item.error is not None for item in self.items)

    def as_dict(self) -> dict:
        return {"mode": self.mode, "model": self.model, "base": self.base,
                "class_names": self.class_names, "fallback": self.fallback,
                "failed": self.failed, "predictions": [asdict(i) for i in self.items]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        k = max((len(i.top) for i in self.items), default=1)
        header = ["file", "label", "probability"]
        for rank in range(2, k + 1):
            header += [f"label_{rank}", f"probability_{rank}"]
        classes = self.class_names or []
        header += [f"probability_{name}" for name in classes]
        header += ["error"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for item in self.items:
            row = [item.file, item.label or "", _num(item.probability)]
            for rank in range(1, k):
                entry = item.top[rank] if rank < len(item.top) else {}
                row += [entry.get("label", ""), _num(entry.get("probability"))]
            row += [_num((item.probabilities or {}).get(name)) for name in classes]
            row += [item.error or ""]
            writer.writerow(row)
        return buffer.getvalue()

    def render(self, fmt: str) -> str:
        if fmt == "json":
            return self.to_json()
        if fmt == "csv":
            return self.to_csv()
        raise TransferError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")


def _num(value) -> str:
    return "" if value is None else f"{value:.6f}"


# --------------------------------------------------------------------------- inputs


def gather(paths: list[str | Path]) -> list[tuple[str, Path | None, str | None]]:
    """(name to show, file, error) for every image PATH names: files, folders, globs."""
    rows: list[tuple[str, Path | None, str | None]] = []
    for raw in paths:
        text = str(raw)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_SUFFIXES_PREDICT
                           and not p.name.endswith(GRADCAM_SUFFIX)
                           and not any(part.startswith(".") for part in
                                       p.relative_to(path).parts))
            if not found:
                rows.append((text, None, "folder has no images"))
            rows.extend((str(p), p, None) for p in found)
        elif path.exists() or not glob.has_magic(text):
            rows.append((text, path, None))  # a missing file fails when it is opened
        else:
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                rows.append((text, None, "no file matches this pattern"))
            rows.extend((str(m), m, None) for m in files)
    return rows


# --------------------------------------------------------------------------- classifiers


class BundleClassifier:
    """A trained bundle: its model, its class names, its input recipe."""

    mode = "bundle"

    def __init__(self, bundle_dir: Path, invert: str | None = None):
        self.model, self.meta = bundle.load(bundle_dir)
        bundle_dir = Path(bundle_dir)
        self.name = (f"{bundle_dir} -> {bundle_dir.resolve().name}" if bundle_dir.is_symlink()
                     else str(bundle_dir))
        self.base = self.meta.get("base", "")
        self.class_names = list(self.meta["class_names"])
        if invert is not None and invert not in images.INVERT_CHOICES:
            raise TransferError(f"--invert must be one of {', '.join(images.INVERT_CHOICES)}, "
                                f"not {invert!r}")
        if invert is not None and self.meta.get("channels", 3) != 1:
            raise TransferError("--invert applies to digit models (transfer mnist) only")
        self.invert = invert

    def prepare(self, path: Path):
        return images.model_input(path, self.meta, self.invert)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return class_probabilities(self.model.predict_on_batch(batch))

    def ranked(self, probs: np.ndarray, k: int) -> list[list[dict]]:
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[{"label": self.class_names[j], "probability": float(p[j])} for j in row]
                for p, row in zip(probs, order, strict=True)]


class ImageNetClassifier:
    """A registered base's pretrained ImageNet classifier (1000 classes)."""

    mode = "imagenet"
    class_names = None

    def __init__(self, base: str = "inception", alpha: float = 1.0,
                 weights: str | None = "imagenet"):
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

    def prepare(self, path: Path):
        image = images.open_image(path)
        notes = {"width": image.size[0], "height": image.size[1], "mode": image.mode}
        return images.rgb_array(image, self.spec.size), notes

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(self._preprocess(batch)), dtype="float64")

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


def open_classifier(model: Path | None = None, imagenet: bool = False, base: str = "inception",
                    alpha: float = 1.0, invert: str | None = None,
                    models_dir: Path = Path("models"), reporter: Reporter | None = None):
    """(classifier, fallback reason): the bundle asked for, else ImageNet mode when no bundle
    exists and none was named."""
    reporter = reporter or Reporter()
    if imagenet:
        if model is not None:
            raise TransferError("give either --model or --imagenet, not both")
        return ImageNetClassifier(base, alpha), None
    if model is None:
        latest = Path(models_dir) / "latest"
        if not latest.exists():
            reason = (f"no trained model at {latest}; classifying with the ImageNet classifier "
                      f"of {base} (train one with `transfer train`, or pass --model DIR)")
            reporter.warn(reason)
            return ImageNetClassifier(base, alpha), reason
        model = latest
    return BundleClassifier(Path(model), invert), None


# --------------------------------------------------------------------------- predict


@dataclass
class Classified:
    probabilities: np.ndarray | None  # (classes,) for a usable image
    notes: dict | None  # what the image was (width, height, mode, ...)
    error: str | None  # why the file could not be used


def classify_files(classifier, files: list[Path], batch_size: int = 32,
                   reporter: Reporter | None = None, description: str = "Classifying"
                   ) -> list[Classified]:
    """One result per file, in order: images decoded in threads, classified in batches."""
    reporter = reporter or Reporter()

    def load(path):
        try:
            return classifier.prepare(path), None
        except images.ImageError as exc:
            return None, str(exc)

    results: list[Classified] = []
    with reporter.task(description, total=len(files)) as advance, \
            ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(files), batch_size):
            loaded = list(pool.map(load, files[start:start + batch_size]))
            arrays = [prepared[0] for prepared, error in loaded if error is None]
            probs = iter(classifier.probabilities(np.stack(arrays)) if arrays else ())
            results += [Classified(None, None, error) if error is not None
                        else Classified(next(probs), prepared[1], None)
                        for prepared, error in loaded]
            advance(len(loaded))
    return results




def predict(paths: list[str | Path], model: Path | None = None, imagenet: bool = False,
            base: str = "inception", alpha: float = 1.0, top: int | None = None,
            batch_size: int = 32, invert: str | None = None, models_dir: Path = Path("models"),
            reporter: Reporter | None = None, classifier=None) -> Predictions:
    """Classify every image in ``paths`` (files, folders, globs); bad files get error rows."""
    reporter = reporter or Reporter()
    if not paths:
        raise TransferError("give at least one image, folder or glob")
    if batch_size < 1:
        raise TransferError("--batch-size must be at least 1")
    fallback = None
    if classifier is None:
        classifier, fallback = open_classifier(model, imagenet, base, alpha, invert, models_dir,
                                               reporter)
    n_classes = len(classifier.class_names) if classifier.class_names else 1000
    k = top if top is not None else (3 if classifier.mode == "imagenet" else 1)
    if k < 1:
        raise TransferError("--top must be at least 1")
    k = min(k, n_classes)
    rows = gather(paths)
    items = [Prediction(file=name, error=error) for name, _, error in rows]
    todo = [i for i, (_, _, error) in enumerate(rows) if error is None]
    classified = classify_files(classifier, [rows[i][1] for i in todo], batch_size, reporter)
    done = [(i, c) for i, c in zip(todo, classified, strict=True) if c.error is None]
    for i, c in zip(todo, classified, strict=True):
        items[i].error, items[i].image = c.error, c.notes
    if done:
        probs = np.stack([c.probabilities for _, c in done])
        for (i, c), ranked in zip(done, classifier.ranked(probs, k), strict=True):
            items[i].top = ranked
            items[i].label = ranked[0]["label"]
            items[i].probability = ranked[0]["probability"]
            if classifier.class_names:
                items[i].probabilities = {name: float(v) for name, v in
                                          zip(classifier.class_names, c.probabilities,
                                              strict=True)}
    return Predictions(mode=classifier.mode, model=classifier.name, base=classifier.base,
                       class_names=classifier.class_names, items=items, fallback=fallback)


def write_text(path: Path, text: str, force: bool = False) -> Path:
    """Write ``text`` to ``path`` via a temporary file; refuse to replace without force."""
    path = Path(path)
    if path.exists() and not force:
        raise TransferError(f"{path} already exists; use --force to replace it")
    if path.is_dir():
        raise TransferError(f"{path} is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(text)
    return path
