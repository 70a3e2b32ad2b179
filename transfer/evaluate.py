"""`transfer evaluate`: a bundle's accuracy on a folder of class subfolders, with pictures.

    from transfer.evaluate import evaluate
    result = evaluate(Path("models/latest"))            # the bundle's validation folder
    print(result.report["accuracy"], result.report["per_class"])
    evaluate(EvaluateSettings(data_dir=Path("data/test"), output=Path("reports/test")))

Images are listed as training lists them (sorted class folders, sorted files) and read through
``transfer.inference`` exactly as ``transfer predict`` reads them, so labels and predictions
cannot drift apart. Writes
``report.json``, ``confusion.png``, ``misclassified.png`` (the ``worst`` most confident
mistakes: true class, predicted class, probability; not drawn for ``worst`` 0, and an earlier
one removed) and ``suspects.csv`` (the same mistakes,
most confident first: the photos to look at for a wrong label) into the bundle or ``output``.

``engine`` (``auto``, ``tf`` or ``tflite``) chooses what runs the model; the report records
what ran (``report["engine"]``: name, images/s, parity with TensorFlow, why not TFLite).
``auto`` converts the model to TFLite only for a large folder, and the results match
TensorFlow's within ``engines.PARITY_TOLERANCE`` of probability (``transfer.inference``).

With ``assert_accuracy_at_least`` the report records the gate,
``report["gate"] = {"threshold", "accuracy", "passed"}``; ``evaluate`` does not raise when it
fails (the report is still written): the CLI prints the report, then one line, and exits 3.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import bundle, images, metrics, pipelines, plots
from transfer.constants import (
    COMPARE_JSON,
    TEST_FOLDERS,
    UNREAD_HINT,
    VALIDATE_FOLDERS,
    unread_line,
    unread_photo,
    unread_summary,
)
from transfer.errors import DIVERGED, NOT_NUMBERS, TransferError
from transfer.files import new_folders_kept_on_success, replacing, write_json
from transfer.inference import (
    BundleClassifier,
    ModelEngine,
    classify_files,
    writable_folder,
)
from transfer.progress import Reporter
from transfer.settings import EvaluateSettings, outside_data

REPORT = "report.json"
SUSPECTS = "suspects.csv"
MISCLASSIFIED = "misclassified.png"  # not drawn with worst 0
OUTPUTS = (REPORT, "confusion.png", MISCLASSIFIED, SUSPECTS)
SUSPECT_COLUMNS = ("file", "true", "predicted", "predicted_probability", "true_probability")


@dataclass
class EvaluateResult:
    report: dict
    output: Path
    files: list[Path]

    @property
    def gate_failed(self) -> bool:
        """True when ``assert_accuracy_at_least`` was given and the accuracy is below it."""
        gate = self.report.get("gate")
        return gate is not None and not gate["passed"]


def gate(accuracy: float, threshold: float | None) -> dict | None:
    """The record of ``--assert-accuracy-at-least``: passed when accuracy >= threshold."""
    if threshold is None:
        return None
    return {"threshold": float(threshold), "accuracy": float(accuracy),
            "passed": bool(accuracy >= threshold)}


def write_suspects(path: Path, mistakes: list[dict]) -> None:
    """``suspects.csv``: one row per mistake, in the order given (most confident first)."""
    # a name that is not UTF-8 is written as the file system holds it (its bytes)
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUSPECT_COLUMNS)
        writer.writeheader()
        for m in mistakes:
            writer.writerow({"file": m["file"], "true": m["true"], "predicted": m["predicted"],
                             "predicted_probability": f"{m['probability']:.6f}",
                             "true_probability": f"{m['true_probability']:.6f}"})


def labelled_files(data_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    """(image, class index in the bundle) for every image under data_dir's class folders."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TransferError(f"no data folder {data_dir}")
    folders = pipelines.class_folders(data_dir)  # a class linked to a drive gone: refused
    if not folders:
        raise TransferError(f"{data_dir} has no class subfolders (one per class, named as the "
                            f"model's classes: {', '.join(class_names)})")
    index = _class_index(class_names)
    unknown = [f for f in folders if unicodedata.normalize("NFC", f) not in index]
    if unknown:
        from transfer.archive import is_split_name

        held = [str(data_dir / f) for f in folders
                if f.lower() in (*VALIDATE_FOLDERS, *TEST_FOLDERS)]
        hint = (f"; it holds a split: give --data-dir {' or '.join(held)}"
                if held and all(is_split_name(f) for f in folders) else "")
        raise TransferError(f"{data_dir} has class folder(s) the model does not know: "
                            f"{', '.join(unknown)}; its classes are {', '.join(class_names)}"
                            + hint)
    found = {name: pipelines.image_files(data_dir / name) for name in folders}
    files = [(path, index[unicodedata.normalize("NFC", name)]) for name in folders
             for path in found[name]]
    if not files:
        unread = unread_in(data_dir, class_names)
        if unread:
            raise TransferError(f"{data_dir} has no images transfer can read in its class "
                                f"folders: {len(unread)} HEIC or camera raw files; {UNREAD_HINT}")
        raise TransferError(f"{data_dir} has no images in its class folders")
    for name in folders:
        if not found[name]:
            unread = unread_summary([str(data_dir / name / rel) for rel in
                                     pipelines.unread_photos(data_dir / name)])
            raise TransferError(no_class_images(data_dir / name, (
                f"it holds only {unread}, which transfer cannot read; {UNREAD_HINT}"
                if unread else "it holds no images")))
    return files


def no_class_images(folder: Path, why: str) -> str:
    """The refusal of a class folder with no image to score: the accuracy would be the other
    classes' alone (it was, with exit 0, when a class held only photos that were skipped)."""
    return (f"class folder {folder} has no image transfer can read: {why}. Its class would "
            "go unmeasured and the accuracy be the other classes' alone; add photos it can "
            "read, or move the folder out of the data folder to evaluate the others")


def unscored(data_dir: Path, files: list[tuple[Path, int]], labels: list[int],
             skipped: list[dict[str, str]]) -> None:
    """TransferError naming the first class folder of ``data_dir`` whose files were all
    skipped (``labels``: the classes of the images read; ``skipped``: what was not), said as
    many as they were, their reasons warned above."""
    for label in sorted({label for _, label in files} - set(labels)):
        path = next(path for path, cls in files if cls == label)
        folder = Path(data_dir) / path.relative_to(data_dir).parts[0]
        count = sum(Path(item["file"]).is_relative_to(folder) for item in skipped)
        files_were = "its one file was" if count == 1 else f"its {count} files were all"
        raise TransferError(no_class_images(folder, f"{files_were} skipped (the reasons are "
                                                    "above)"))


def _class_index(class_names: list[str]) -> dict[str, int]:
    """{class name in NFC: its index}: a name's accents as macOS stores them (NFD) or as Linux
    and Windows type them (NFC) are one class whichever side the folder or bundle was made on."""
    return {unicodedata.normalize("NFC", name): i for i, name in enumerate(class_names)}


def unread_in(data_dir: Path, class_names: list[str]) -> list[dict[str, str]]:
    """The photos in ``data_dir``'s class folders in a format the reader does not take (HEIC,
    camera raw): skipped with their reason, as train and predict say them, never silently."""
    index = _class_index(class_names)
    folders = sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir()
                     and unicodedata.normalize("NFC", p.name) in index) \
        if Path(data_dir).is_dir() else []
    # unread_photos read their headers already: their names say the kind
    return [{"file": str(data_dir / name / rel), "reason": unread_line(unread_photo(rel))}
            for name in folders for rel in pipelines.unread_photos(data_dir / name)]


def bundle_images(meta: dict, which: str) -> list[tuple[Path, int]] | None:
    """(image, class index) of the images a bundle trained on (``which="train"``) or was
    validated on (``"validate"``): the class folders of the folder training named, or, for a
    folder of class folders split in memory, that same seeded split made again (the files
    training found unreadable left out, as it left them out). None when the bundle names no
    such data or it is gone."""
    data = meta.get("data") or {}
    names = list(meta["class_names"])
    if data.get("split") == "in-memory":
        root = bundle.data_folder(meta, "root")
        if root is None or not root.is_dir():
            return None
        skipped = {item["file"] for item in meta.get("skipped") or []
                   if isinstance(item, dict) and "file" in item}
        if root != Path(data["root"]):  # found from the folder training ran in: its paths too
            skipped = {str(Path(data["cwd"]) / name) for name in skipped}
        train, validate = pipelines.split_in_memory(root, names, data["validation_split"],
                                                    data["seed"], skipped,
                                                    data.get("split_order", "shuffle"))
        return [(sample.path, sample.label) for sample in
                (train if which == "train" else validate)]
    folder = bundle.data_folder(meta, f"{which}_dir")
    if folder is None or not folder.is_dir():
        return None
    return [(path, i) for i, name in enumerate(names) if (folder / name).is_dir()
            for path in pipelines.image_files(folder / name)]


def _default_data_dir(meta: dict, model: Path, output_given: bool = True) -> Path:
    validate = bundle.validate_dir(meta)
    if validate is None and meta.get("kind") == "mnist":  # its test images are no files
        accuracy = (meta.get("metrics") or {}).get("test_accuracy")
        measured = (f" (test accuracy {accuracy:.4f} in its meta.json)"
                    if isinstance(accuracy, float) else "")
        images = "digits" if meta.get("dataset") == "mnist" else "images"
        # its own confusion.png and misclassified.png are never replaced: --output too
        elsewhere = "" if output_given else " and --output DIR (the bundle keeps its pictures)"
        raise TransferError(f"{model} was trained by transfer mnist and measured then on its "
                            f"test {images}{measured}; to evaluate it on images of your own, "
                            "pass --data-dir DIR (a folder of images per class, named as its "
                            f"classes){elsewhere}")
    if validate is None:
        raise TransferError(f"{model} does not name a validation folder; pass --data-dir")
    if not validate.is_dir():
        raise TransferError(f"the bundle's validation folder {validate} is missing (evaluate "
                            "from the folder you trained in, or pass --data-dir)")
    return validate


def seen_in_training(model: Path, files: list[Path],
                     classes: list[str] | None = None) -> int | None:
    """How many of ``files`` (of ``classes``, each file's class; None: unknown) the bundle
    trained on (its ``train-files.csv``): a refetched split, a class folder split again after
    photos were added, or the training folder itself. A file counts when it is a training
    image with its name and size (the same file, or the same bytes); where that training image
    is gone (or the list predates paths), a training image of its name, size and class. None
    when the bundle keeps no such list."""
    trained = bundle.train_files(model)
    if trained is None:
        return None
    def size(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:  # a broken link: no photo, trained on or not
            return -1

    return sum(_same_photo(path, cls, trained.get((path.name, size(path)), []))
               for path, cls in zip(files, classes or [None] * len(files), strict=True))


def _same_photo(path: Path, cls: str | None, candidates: list[tuple[str, Path | None]]) -> bool:
    """Whether ``path`` is one of ``candidates`` ((class, path) of training images of its name
    and size): one still there with the same bytes, or, of its class, one no longer there to
    compare with."""
    import filecmp

    unchecked = False
    for klass, candidate in candidates:
        if candidate is not None and candidate.is_file():
            if os.path.samefile(path, candidate) or filecmp.cmp(path, candidate, shallow=False):
                return True
        elif cls is None or klass == cls:
            unchecked = True
    return unchecked


def _same_folder(a, b) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def evaluated_on(data_dir, subset: str | None) -> str:
    """What an evaluation ran on, in words: its folder, or "the validation split of" it (a
    folder of class folders, split in memory as training split it; report.json's subset)."""
    return f"the validation split of {data_dir}" if subset == "validate" else str(data_dir)


def _check_outputs(output: Path, data_dir: Path, model: Path, force: bool,
                   subset: str | None = None) -> None:
    """Refuse to replace earlier outputs unless force, or they were this same evaluation's
    (the same model on the same folder); a report.html there must be one of transfer's
    (``report.made_by_transfer``)."""
    from transfer import bundle
    from transfer import report as html_report

    a_bundle = (output / bundle.META).is_file()
    if a_bundle and not _same_folder(output, model):  # never, even with --force
        raise TransferError(f"--output {output} is another bundle: its report would show "
                            f"this evaluation of {model} as its own; choose a folder of the "
                            "evaluation's own")
    if (output / COMPARE_JSON).is_file():  # never: the page there is the comparison's
        raise TransferError(f"--output {output} is a comparison's folder ({COMPARE_JSON}): "
                            "its report.html is the comparison's page; choose a folder of the "
                            "evaluation's own")
    html_report.check_replaceable(output / html_report.REPORT_HTML, force)
    existing = [name for name in OUTPUTS if (output / name).exists()]
    if not existing:
        return
    try:
        previous = json.loads((output / REPORT).read_text(encoding="utf-8-sig"))
        # the bundle itself, not the name it was given (models/latest moves on)
        before = previous.get("bundle") or previous.get("model")
        evaluated = previous.get("kind") == "transfer-evaluate"
        same = (evaluated and any(_same_folder(data_dir, earlier)
                                  for earlier in earlier_data_dirs(previous))
                and _same_folder(model, before)
                # the validation split of a folder is not the whole folder
                and previous.get("subset") == subset)
    except (OSError, ValueError, AttributeError, TypeError):
        previous, evaluated, same = None, False, False
    if a_bundle and not evaluated:  # the bundle's own pictures (transfer mnist's test set)
        raise TransferError(f"{output} holds {', '.join(existing)} of its own training "
                            "(transfer mnist draws its test set's); an evaluation would "
                            "replace them: write it elsewhere with --output DIR")
    if not same and not force:
        raise TransferError(f"{output} already has {', '.join(existing)}"
                            f"{_whose(output, previous, evaluated)}; use --force to replace "
                            "them or --output DIR")


def _whose(output: Path, previous, evaluated: bool) -> str:
    """Whose outputs ``output`` holds, in the refusal to replace them: another evaluation's;
    or, when its report.json is none (a user's notes of that name), what that file is."""
    if evaluated:
        return " from another evaluation"
    if not (output / REPORT).exists():
        return f" and no {REPORT} saying which evaluation wrote them"
    why = ("not JSON, or unreadable" if previous is None
           else 'no "kind": "transfer-evaluate" in it')
    return f"; its {REPORT} is not one transfer wrote ({why})"


def earlier_data_dirs(previous: dict) -> list[Path]:
    """Where the data folder of an earlier report.json is: its ``data_dir_absolute`` (written
    since evaluate from another folder was refused as "another evaluation": ``data_dir`` is
    as it was given, relative to where that evaluation ran); for an older report, its
    ``data_dir`` from the folder it ran in (found from its ``model``, relative, and the
    ``bundle`` that led to), and from here."""
    data_dir = previous.get("data_dir")
    if previous.get("data_dir_absolute"):
        return [Path(previous["data_dir_absolute"])]
    if not isinstance(data_dir, str) or Path(data_dir).is_absolute():
        return [Path(data_dir)] if isinstance(data_dir, str) else []
    found = [Path(data_dir)]
    model, bundle_dir = previous.get("model"), previous.get("bundle")
    if isinstance(model, str) and isinstance(bundle_dir, str) and not Path(model).is_absolute():
        for ran_in in Path(bundle_dir).parents:  # models/latest led to /x/models/mobilenet-...
            if _same_folder(ran_in / model, bundle_dir):
                found.append(ran_in / data_dir)
                break
    return found


def evaluate(settings: EvaluateSettings | Path | None = None, *,
             reporter: Reporter | None = None, **options) -> EvaluateResult:
    """Accuracy, balanced accuracy, loss, per-class precision/recall/F1/support, macro F1,
    ROC AUC (two classes), the confusion matrix and the most confident mistakes of a bundle
    on a folder of class subfolders.

    Args:
        settings: an EvaluateSettings; or the bundle folder (``evaluate(Path("models/x"))``);
            or None for the defaults. Its ``data_dir`` defaults to the bundle's validation
            folder, its ``output`` to the bundle.
        reporter: progress and skipped-file warnings (silent by default).
        **options: EvaluateSettings fields, applied over ``settings``.

    Returns:
        EvaluateResult: the report (also written as report.json beside confusion.png,
        misclassified.png and suspects.csv in the output folder), that folder, and the files
        evaluated. A failed accuracy gate is recorded in ``report["gate"]`` (and
        ``result.gate_failed``), not raised.

    Raises:
        TransferError: a bad setting, an output that is a file, a broken bundle, a data folder
            whose class folders the model does not know, no readable image, or another
            evaluation's outputs in the output folder (without ``force``).
        OSError: the output folder cannot be written (its ``filename`` names it).
    """
    if settings is None:
        settings = EvaluateSettings(**options)
    elif not isinstance(settings, EvaluateSettings):
        settings = EvaluateSettings(model=settings, **options)  # its validated() checks it
    elif options:
        settings = settings.replace(**options)
    s = settings.validated()
    reporter = reporter or Reporter()
    model = Path(s.model)
    # the data folder and the outputs are checked from meta.json, before TensorFlow loads
    # (a folder mistyped, another evaluation's report there: said in a fraction of a second)
    meta = bundle.read_meta(model)
    checked = _checked_plan(s, model, meta)
    classifier = BundleClassifier(model)
    if classifier.meta != meta:  # the bundle replaced meanwhile (train --force): its own
        checked = _checked_plan(s, model, classifier.meta)
    data_dir, files, in_memory, output = checked
    unread = [] if in_memory else unread_in(data_dir, classifier.class_names)
    with new_folders_kept_on_success(output):  # an empty folder is not left by a failure
        writable_folder(output)
        return _evaluate(s, reporter, classifier, files, unread, data_dir, in_memory, output)


def _checked_plan(s: EvaluateSettings, model: Path, meta: dict
                  ) -> tuple[Path, list[tuple[Path, int]], bool, Path]:
    """(data folder, its labelled images, whether they are the bundle's validation split made
    in memory, output folder) of evaluating the bundle ``model`` of ``meta``, every one
    checked (meta.json and the files alone: no TensorFlow)."""
    names = list(meta["class_names"])
    data = meta.get("data") or {}
    in_memory = s.data_dir is None and data.get("split") == "in-memory"
    if in_memory:  # the validation images of a folder split in memory at training
        data_dir = bundle.data_folder(meta, "root") or Path("")
        files = bundle_images(meta, "validate")
        if files is None:
            raise TransferError(f"the bundle's photo folder {data_dir} is missing (evaluate "
                                "from the folder you trained in, or pass --data-dir)")
        if not files:
            raise TransferError(f"the bundle's validation split of {data_dir} has no images; "
                                "pass --data-dir")
    else:
        data_dir = (Path(s.data_dir) if s.data_dir is not None
                    else _default_data_dir(meta, model, s.output is not None
                                           and not _same_folder(s.output, model)))
        # a missing or unknown data folder is said before any output clash
        files = labelled_files(data_dir, names)
    output = Path(s.output) if s.output is not None else model
    outside_data("output", output, data_dir)
    _check_outputs(output, data_dir, model, s.force, "validate" if in_memory else None)
    return data_dir, files, in_memory, output


def _evaluate(s: EvaluateSettings, reporter: Reporter, classifier: BundleClassifier,
              files: list[tuple[Path, int]], unread: list[dict[str, str]], data_dir: Path,
              in_memory: bool, output: Path) -> EvaluateResult:
    model, meta, names = Path(s.model), classifier.meta, classifier.class_names
    started = time.perf_counter()
    engine = ModelEngine(classifier, s.engine, len(files), reporter)
    where = evaluated_on(data_dir, "validate" if in_memory else None)
    classified = classify_files(classifier, [path for path, _ in files], s.batch_size, reporter,
                                f"Evaluating on {where}", engine=engine)
    kept, labels, probs, skipped, thumbs = [], [], [], list(unread), {}
    for (path, label), c in zip(files, classified, strict=True):
        if c.error is not None:
            skipped.append({"file": str(path), "reason": c.error})
            continue
        kept.append(path)
        labels.append(label)
        probs.append(c.probabilities)
    for item in skipped:  # said first: when none is readable, the reasons are the answer
        reporter.warn(f"skipped {item['file']}: {item['reason']}")
    if not kept:
        raise TransferError(f"no readable image in {data_dir}")
    if not in_memory:
        unscored(data_dir, files, labels, skipped)
    present = {label for _, label in files}
    absent = [name for k, name in enumerate(names) if k not in present]
    if absent:  # an empty folder is refused; a class without one went unsaid
        reporter.warn(f"{where} has no images of {', '.join(absent)}"
                      f"{'' if in_memory else ' (no class folder)'}: the accuracy and "
                      "balanced accuracy are the other classes' alone; in the macro F1 such a "
                      "class counts 0 when the model predicts it")
    seen = seen_in_training(model, kept, [names[label] for label in labels])
    if seen:
        reporter.warn(f"{seen} of the {len(kept)} images are this model's training images "
                      "(same file name, size and bytes): the accuracy on them overstates how "
                      "it does on new photos")
    probs = np.stack(probs)
    broken = int((~np.isfinite(probs)).any(axis=1).sum())
    if broken:  # NaN is argmax's first class: the accuracy was that class's share, gate passed
        raise TransferError(f"{model}'s {NOT_NUMBERS} for {broken} of the {len(probs)} "
                            f"images, so it has no accuracy to measure: {DIVERGED} (nothing "
                            "was written)")
    y = np.asarray(labels)
    predicted = probs.argmax(axis=1)
    matrix = metrics.confusion_matrix(y, predicted, len(names))
    per_class = metrics.per_class(matrix, names)
    report = {
        "kind": "transfer-evaluate",
        "model": str(model),
        "bundle": str(model.resolve()),  # the folder itself, whatever link named it
        "base": meta.get("base"),
        "data_dir": str(data_dir),
        # the same, from anywhere: an evaluation from another folder is recognised as this one
        "data_dir_absolute": os.path.abspath(data_dir),
        # "validate": the bundle's validation split of data_dir (made in memory at training);
        # None: every image of data_dir's class folders
        "subset": "validate" if in_memory else None,
        "images": int(len(y)),
        "accuracy": float(np.mean(predicted == y)),
        "loss": metrics.log_loss(y, probs),
        "per_class": per_class,
        "macro_avg": metrics.macro_average(per_class),
        "macro_f1": metrics.macro_average(per_class)["f1"],
        "balanced_accuracy": metrics.balanced_accuracy(matrix),
        "roc_auc": metrics.roc_auc(y, probs[:, 1]) if len(names) == 2 else None,
        "roc_auc_positive_class": names[1] if len(names) == 2 else None,
        "class_names": names,
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class",
        "gate": gate(float(np.mean(predicted == y)), s.assert_accuracy_at_least),
        "skipped": skipped,
        "training_metrics": meta.get("metrics"),
        "bundle_created": meta.get("created"),  # which training of the bundle was evaluated
        # the validation images training scored (its val_accuracy's), to compare with images
        "training_validate_images": (meta.get("data") or {}).get("validate_images"),
        "engine": engine.info.as_dict(),
        "is_training_validation_folder": in_memory or _same_folder(data_dir,
                                                                   bundle.validate_dir(meta)),
        # how many of the images the model trained on (None: the bundle keeps no list)
        "training_images": seen,
        "seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    wrong = metrics.confident_mistakes(probs, y, s.worst)
    for i in wrong:
        thumbs[i] = images.picture(kept[i], 160)  # drafted: a phone photo is never whole
    report["worst_mistakes"] = [
        {"file": str(kept[i]), "true": names[y[i]], "predicted": names[predicted[i]],
         "probability": float(probs[i, predicted[i]]),
         "true_probability": float(probs[i, y[i]])} for i in wrong]

    n_wrong = int((predicted != y).sum())
    boxes = plots.glyph_warning(names, "confusion.png and misclassified.png")
    if boxes:  # matplotlib draws boxes without a word
        reporter.warn(boxes)
    # --worst 0: no picture of mistakes (a blank one said "the 0 most confident of 6")
    written = [name for name in OUTPUTS if name != MISCLASSIFIED or s.worst > 0]
    with contextlib.ExitStack() as stack:  # all of them are renamed into place, or none
        tmp = {name: stack.enter_context(replacing(output / name)) for name in written}
        plots.confusion(matrix, names, tmp["confusion.png"],
                        title=f"{bundle.shown_name(model)} on {where}: accuracy "
                              f"{report['accuracy']:.4f}")
        if MISCLASSIFIED in tmp:
            plots.image_grid([thumbs[i] for i in wrong],
                             [f"true {names[y[i]]}\npred {names[predicted[i]]} "
                              f"{probs[i, predicted[i]]:.2f}" for i in wrong],
                             tmp[MISCLASSIFIED],
                             cols=min(10, max(4, math.ceil(math.sqrt(len(wrong))))),
                             title=(f"the {len(wrong)} most confident of {n_wrong} mistakes"
                                    if n_wrong else "no mistakes"))
        write_suspects(tmp[SUSPECTS], report["worst_mistakes"])
        write_json(tmp[REPORT], report)
    if MISCLASSIFIED not in written:  # an earlier evaluation's would pass for this one's
        (output / MISCLASSIFIED).unlink(missing_ok=True)
    from transfer import report as html_report

    earlier = (output / "report.html").is_file()
    try:
        html_report.write_quietly(output, reporter, force=s.force, classifier=classifier)
    except KeyboardInterrupt:  # report.json and the pictures are in place: say what is not
        if reporter is not None:
            reporter.warn(f"interrupted after the evaluation was written in {output}; its "
                          "report.html was not" + (" (the one there is an earlier evaluation's)"
                                                   if earlier else "")
                          + f" (transfer report {output} writes it)")
        raise
    return EvaluateResult(report=report, output=output, files=kept)
