"""`transfer predict`: classify image files with a trained bundle or an ImageNet classifier.

    from transfer.predict import predict
    result = predict(["photos/"], model="models/latest")
    for item in result.items:
        print(item.file, item.label, item.probability, item.error)

    from transfer.settings import PredictSettings          # the same, as the CLI calls it
    result = predict(PredictSettings(paths=["photos/"], top=2))

Loading the model, reading the images and running them is ``transfer.inference``'s; this module
turns the probabilities into rows (top-k labels, every class's probability, error rows for
files that cannot be read) and renders them as JSON or CSV. ``engine`` (``auto``, ``tf`` or
``tflite``) chooses what runs a bundle's model; what ran is ``result.engine`` (also in the
JSON): ``auto`` converts the model to TFLite only for a large folder (see
``transfer.inference.ModelEngine``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from transfer import errors, images
from transfer.errors import TransferError
from transfer.files import (
    is_device_or_pipe,
    nan_as_null,
    refuse_existing,
    replacing,
    standard_stream,
    write_stream,
)
from transfer.inference import (
    ModelEngine,
    classify_files,
    gather,
    given_classifier,
    open_classifier,
    writable_folder,
)
from transfer.progress import Reporter
from transfer.settings import PREDICT_FORMATS, PredictSettings


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
    engine: dict | None = None  # what ran the model (engines.EngineInfo.as_dict())

    @property
    def failed(self) -> int:
        return sum(item.error is not None for item in self.items)

    def as_dict(self) -> dict:
        """JSON-ready: a probability that is not a number (a model whose training diverged)
        is None, so that strict readers (a browser, serve's JSON answers) take it."""
        return nan_as_null({"mode": self.mode, "model": self.model, "base": self.base,
                            "class_names": self.class_names, "fallback": self.fallback,
                            "failed": self.failed, "engine": self.engine,
                            "predictions": [asdict(i) for i in self.items]})

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        k = max((len(i.top) for i in self.items), default=1)
        header = ["file", "label", "probability"]
        for rank in range(2, k + 1):
            header += [f"label_{rank}", f"probability_{rank}"]
        classes = self.class_names or []
        # p(<class>), as in the table: never the name of a rank's column (a class "2")
        header += [f"p({name})" for name in classes]
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
        raise TransferError(f"--format {fmt!r} is not rendered here; choose "
                            f"{', '.join(f for f in PREDICT_FORMATS if f != 'table')} "
                            "(the CLI draws the table)")


def _num(value) -> str:
    return "" if value is None else f"{value:.6f}"


def predict(settings: PredictSettings | list[str | Path], *, reporter: Reporter | None = None,
            classifier=None, **options) -> Predictions:
    """Classify every image that ``settings.paths`` names (files, folders, globs), or holds
    (the bytes of a file, a Pillow image, an array of pixels 0-255: shown as "image N").

    Args:
        settings: a PredictSettings, or the paths themselves with the other settings as
            keywords (``predict(["photos/"], model=..., top=2)``).
        reporter: progress and the ImageNet-fallback warning (silent by default).
        classifier: an already loaded classifier (``transfer.inference``) to reuse; it
            decides model, imagenet, base, alpha and invert (giving those too is an error).
        **options: PredictSettings fields, applied over ``settings``.

    Returns:
        Predictions: one row per image in order; a file that cannot be read (missing, not an
        image, empty, truncated, too small), an empty folder or a glob matching nothing gets a
        row with its ``error``, and the others are still classified. With ``output``, they
        are also written there as JSON or CSV (``format``, or the file's suffix), as
        ``transfer predict --output`` writes them.

    Raises:
        TransferError: a bad setting (before anything loads), an existing ``output`` without
            ``force``, ``output`` in the CLI's table format, or a model that cannot be opened.
    """
    if not isinstance(settings, PredictSettings):
        paths = list(images.one_or_many(settings))  # predict(42): refused as a path
        settings = PredictSettings(paths=paths, **options)
    elif options:
        settings = settings.replace(**options)
    s = settings.validated()
    if s.output is not None and s.format == "table":
        raise TransferError(f"the table is drawn by the CLI; to write {s.output} from Python "
                            "choose format='json' or 'csv' (or name it .json or .csv), or use "
                            "the Predictions returned")
    reporter = reporter or Reporter()
    fallback = None
    defaults = PredictSettings(paths=settings.paths)
    chosen = [key for key in ("model", "imagenet", "base", "alpha", "invert")
              if getattr(settings, key) != getattr(defaults, key)]
    if classifier is not None and chosen:
        raise TransferError(f"predict got a classifier and also {', '.join(chosen)}: the "
                            "classifier decides those; drop one or the other")
    if classifier is not None:
        given_classifier(classifier, "predict")
    rows = once(gather(s.paths))
    if classifier is None:
        try:
            classifier, fallback = open_classifier(s, reporter=reporter)
        except TransferError as exc:  # a photo named wrong is said too, not after the fix
            unread = [(name, error or "no such file") for name, image, error in rows
                      if error is not None or (isinstance(image, Path) and not image.exists())]
            if not unread:
                raise
            said = "; ".join(f"{name}: {error}" for name, error in unread[:3])
            more = f" and {len(unread) - 3} more" if len(unread) > 3 else ""
            which = "the image" if len(rows) == 1 else f"{len(unread)} of the {len(rows)} images"
            raise TransferError(f"{exc}. Besides, {which} named cannot be read: {said}{more}"
                                ) from None
    n_classes = len(classifier.class_names) if classifier.class_names else 1000
    k = s.top if s.top is not None else (3 if classifier.mode == "imagenet" else 1)
    k = min(k, n_classes)
    items = [Prediction(file=name, error=error) for name, _, error in rows]
    todo = [i for i, (_, _, error) in enumerate(rows) if error is None]
    engine = ModelEngine(classifier, s.engine, len(todo), reporter)
    classified = classify_files(classifier, [rows[i][1] for i in todo], s.batch_size, reporter,
                                engine=engine)
    done = [(i, c) for i, c in zip(todo, classified, strict=True) if c.error is None]
    for i, c in zip(todo, classified, strict=True):
        items[i].error, items[i].image = c.error, c.notes
    for i, c in done:  # NaN was "the first class" at probability nan
        if not np.isfinite(c.probabilities).all():
            items[i].error = NOT_NUMBERS
    done = [(i, c) for i, c in done if items[i].error is None]
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
    result = Predictions(mode=classifier.mode, model=classifier.name, base=classifier.base,
                         class_names=classifier.class_names, items=items, fallback=fallback,
                         engine=engine.info.as_dict())
    if s.output is not None:  # as `transfer predict --output` writes it
        write_text(s.output, result.render(s.format), force=s.force)
    return result


# a row whose probabilities are not numbers: a model whose training diverged
NOT_NUMBERS = errors.NOT_NUMBERS_FOR_IT


def once(rows: list[tuple[str, object, str | None]]) -> list[tuple[str, object, str | None]]:
    """``gather``'s rows with each file once, however often it is named (a folder and a file
    in it, a folder and its glob, two spellings), as explain does: a photo counted twice was
    two rows and two in the summary. So is each error row of a path (``img/*`` and
    ``img/emptydir``: "folder has no images" twice; a HEIC photo named and in its folder).
    Photos in memory are each their own."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        name, image, error = row
        path = image if isinstance(image, Path) else name if image is None else None
        if path is not None:
            # the name made absolute, links not followed: two files linked to one photo (a
            # class folder of links) are two rows, as a folder listing shows them
            key = os.path.abspath(path)
            if key in seen:
                continue
            seen.add(key)
        kept.append(row)
    return kept


def write_text(path: Path, text: str, force: bool = False) -> Path:
    """Write ``text`` to ``path`` via a temporary file beside it (a symbolic link's target is
    the file written; a device or a pipe, ``/dev/stdout``, is written to directly).

    Raises:
        TransferError: ``path`` exists (without ``force``) or is a folder.
        OSError: the folder cannot be written; its ``filename`` is that folder.
    """
    path = Path(path)
    stream = standard_stream(path)
    if stream is not None:  # /dev/stdout sent to a file: opened anew, it was truncated
        write_stream(stream, text)
        return path
    if is_device_or_pipe(path):  # /dev/null, a pipe
        # names that are not UTF-8 as the file system holds them (their bytes), as below
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as stream:
            stream.write(text)
        return path
    refuse_existing(path, force)
    if path.is_dir():
        raise TransferError(f"{path} is a folder")
    writable_folder(path.resolve().parent)
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    return path
