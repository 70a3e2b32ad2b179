"""The one-file HTML report of a run: ``report.html`` in a bundle or an evaluation folder.

    from transfer.report import write_report
    write_report(Path("models/latest"))                      # -> models/latest/report.html
    write_report(Path("reports/test"), Path("test.html"))   # an `evaluate --output` folder

Everything is inside the one file (pictures as base64 ``data:`` URIs, the style inline, no
script, no link to the network), so it can be mailed, opened offline or served as it is. It
shows what the folder holds and skips what it lacks without a word (a bundle never evaluated
has no confusion matrix yet); what is there but broken, or was expected but is gone, is skipped
with one line where it would be, which ``write_report(..., notes=[])`` hands back too
("Grad-CAM skipped: the validation folder data/validate is gone", a picture that is no PNG, a
confusion matrix of another size than the classes, a garbled history.csv):

- the run: kind, base, classes, created, the command and the resolved settings (meta.json);
- the data: images per class and split (fetch-data's manifest, else the folders, else the
  counts in meta.json) and the files skipped (by fetch-data, by evaluate);
- learning curves (curves.png and history.csv);
- the evaluation (report.json): accuracy, loss, ROC AUC, the per-class table and the
  confusion matrix, the most confident mistakes (misclassified.png); for `transfer mnist`
  bundles the test confusion matrix from meta.json;
- a few Grad-CAM overlays computed on validation images (``gradcams``, default 4);
- the other pictures a run drew (samples, filters, feature maps, noise);
- timings, feature cache, versions and engine.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from transfer import bundle
from transfer.constants import COMPARE_JSON
from transfer.errors import TransferError, env_number, raise_if_interrupted
from transfer.metrics import below, unbalanced

REPORT_HTML = "report.html"
GENERATOR = '<meta name="generator" content="transfer">'  # marks the pages it may replace
GRADCAMS = 4  # Grad-CAM overlays computed for a bundle's report
# photos a Grad-CAM batch holds: the default's four in one, the tape's activations bounded
# when TRANSFER_REPORT_GRADCAMS asks for many (InceptionV3 at 299 px, with flips)
GRADCAM_BATCH = 8
THUMB_SIDE = 224  # px: the longest side of a Grad-CAM picture in the report
PICTURES = bundle.PICTURES  # other pictures a run may have drawn, with a caption

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2430; background: #f6f7f9; }
main { max-width: 1000px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #d9dde3;
     padding-bottom: .25rem; }
.sub { color: #5a6473; margin: 0 0 1rem; }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; }
.card { background: #fff; border: 1px solid #d9dde3; border-radius: 8px; padding: .6rem .9rem;
        min-width: 9rem; }
.card b { display: block; font-size: 1.35rem; }
.card span { color: #5a6473; font-size: .85rem; }
.scroll { overflow-x: auto; max-width: 100%; }  /* a table wider than the page scrolls */
table { border-collapse: collapse; background: #fff; margin: .4rem 0 1rem; }
th, td { border: 1px solid #d9dde3; padding: .3rem .6rem; text-align: right; }
th { background: #eef1f5; }
td.l, th.l { text-align: left; }
td.diag { background: #dff3e4; font-weight: 600; }
td.off { background: #fbe4e4; }
pre { background: #fff; border: 1px solid #d9dde3; border-radius: 6px; padding: .6rem .8rem;
      overflow-x: auto; font-size: .85rem; white-space: pre-wrap; word-break: break-all; }
img { max-width: 100%; height: auto; background: #fff; border: 1px solid #d9dde3;
      border-radius: 6px; }
figure { margin: .5rem 0 1rem; }
figcaption { color: #5a6473; font-size: .85rem; }
.grid { display: flex; flex-wrap: wrap; gap: .75rem; }
.grid figure { width: 230px; margin: 0; }
.muted { color: #5a6473; }
.warn { color: #8a3b00; font-weight: 600; }
details summary { cursor: pointer; color: #2456a6; }
footer { color: #5a6473; font-size: .8rem; margin-top: 2.5rem; }
"""


# --------------------------------------------------------------------------- small pieces


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None


def read_object(path: Path) -> dict | None:
    """The JSON object in ``path``; None when there is no such file; TransferError when it is
    there but empty, garbled or not an object (it was said to be missing)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TransferError(f"{path} cannot be read ({exc.strerror or exc})") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise TransferError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise TransferError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


# report.json's fields the page reads, and what each must be (``null`` is accepted)
_EVALUATION_TYPES = {"accuracy": (int, float), "loss": (int, float), "roc_auc": (int, float),
                     "seconds": (int, float), "images": int, "training_images": int,
                     "per_class": dict, "macro_avg": dict, "engine": dict, "gate": dict,
                     "confusion_matrix": list, "class_names": list, "skipped": list,
                     "worst_mistakes": list, "bundle": str, "model": str, "data_dir": str,
                     "created": str, "kind": str, "bundle_created": str,
                     "training_metrics": dict, "balanced_accuracy": (int, float)}
_GATE_TYPES = {"accuracy": (int, float), "threshold": (int, float), "passed": bool}


def check_evaluation_types(evaluation: dict, path: Path) -> None:
    """TransferError naming the first field of an evaluation's report.json that has the wrong
    type (a hand edit, another tool's file), as ``bundle.check_meta_types`` does for meta."""
    bundle.check_field_types(evaluation, _EVALUATION_TYPES, path)
    if evaluation.get("gate") is not None:  # as evaluate writes it: all three (the page says it)
        bundle.check_field_types(evaluation["gate"], _GATE_TYPES, f"{path}: gate",
                                 required=tuple(_GATE_TYPES))
    rows = evaluation.get("per_class") or {}
    if not all(isinstance(row, dict) for row in rows.values()):
        raise TransferError(f"{path}: per_class must map each class to an object")
    for item in evaluation.get("skipped") or []:
        if not isinstance(item, dict):
            raise TransferError(f"{path}: skipped must list objects, not "
                                f"{json.dumps(item)[:80]}")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:`` URI of some bytes (base64)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def skipped_lines(notes: list[str], *texts: str) -> str:
    """The lines saying what a section left out (``texts``), for the place on the page where
    it would be; kept in ``notes`` too, for the caller to say (the CLI prints them)."""
    notes.extend(texts)
    return "".join(f'<p class="warn skipped">{_e(text)}</p>' for text in texts)


def png_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be shown as a PNG picture (a text file, a PNG cut short), or None:
    embedded as data:image/png, a browser showed a broken image without a word."""
    from PIL import Image

    if not data.startswith(PNG_SIGNATURE):
        return "the file is not a PNG picture"
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.verify()  # every chunk's checksum, without decoding the pixels
    except Exception:  # PIL's OSError, SyntaxError, struct.error ... for a damaged file
        return "the PNG is cut short or damaged"
    return None


def _picture(path: Path, caption: str, notes: list[str]) -> str:
    """The picture at ``path`` inlined with its caption; a file that cannot be read or is no
    whole PNG is a line saying so (kept in ``notes``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return skipped_lines(notes, f"{path.name} skipped: it cannot be read "
                                    f"({exc.strerror or exc})")
    problem = png_problem(data)
    if problem is not None:
        return skipped_lines(notes, f"{path.name} skipped: {problem}")
    return (f'<figure><img src="{data_uri(data)}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


SKIPPED_LISTED = 200  # rows of the page's table of skipped files


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if 0 < abs(value) < 10 ** -digits:  # a parity difference of 3.3e-05 read "0.000"
            return f"{value:.2g}"
        return f"{value:.{digits}f}"
    return _e(value)


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>'
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{cell}</td>'
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def _card(value, label: str) -> str:
    return f'<div class="card"><b>{value}</b><span>{_e(label)}</span></div>'


def overlay_png(picture: np.ndarray, heatmap: np.ndarray, view: str = "pair",
                alpha: float = 0.45) -> bytes:
    """A PNG of ``picture`` ((H, W, 3) uint8) beside the same picture overlaid with
    ``heatmap`` (0..1, any size; resized bilinearly, coloured with matplotlib's jet), or the
    overlay alone (``view="overlay"``).

    Args:
        picture: the image shown.
        heatmap: Grad-CAM weights in [0, 1].
        view: "pair" (image | overlay) or "overlay".
        alpha: weight of the heatmap's colours in the overlay.

    Returns:
        The PNG file's bytes.
    """
    from matplotlib import colormaps
    from PIL import Image

    picture = np.asarray(picture, dtype="uint8")
    h, w = picture.shape[:2]
    heat = Image.fromarray((np.clip(np.nan_to_num(heatmap), 0, 1) * 255).astype("uint8")).resize(
        (w, h), Image.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255.0
    overlay = ((1 - alpha) * picture + alpha * colours).clip(0, 255).astype("uint8")
    if view == "overlay":
        out = overlay
    else:
        gap = np.full((h, 8, 3), 255, dtype="uint8")
        out = np.concatenate([picture, gap, overlay], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(out).save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- reading a folder


def _count_images(folder: Path, names: list[str]) -> dict[str, int] | None:
    from transfer.files import images_under

    if not folder.is_dir():
        return None
    counts = {}
    for name in names:
        sub = folder / name
        counts[name] = len(images_under(sub)) if sub.is_dir() else 0
    return counts


def _split_counts(counts: dict) -> dict[str, dict[str, int]]:
    """split -> class -> images, as meta.json's data.counts and fetch-data's manifest hold
    them (splits that are not such a table left out)."""
    return {str(split): {str(k): int(v) for k, v in per_class.items()}
            for split, per_class in counts.items() if isinstance(per_class, dict)}


def data_counts(meta: dict | None) -> tuple[dict[str, dict[str, int]], list[dict], str]:
    """(images per split and class, skipped files, where the numbers come from).

    What training used (meta.json's data.counts) when it recorded it; with fetch-data's
    manifest beside the folders, its other splits (the held-out test part) and the files it
    skipped, when it counts the folders training read as training did. It counts otherwise
    when it was fetched again since, or photos were moved: then it is said, not shown."""
    meta = meta or {}
    names = list(meta.get("class_names") or [])
    data = meta.get("data") or {}
    counts: dict[str, dict[str, int]] = {}
    skipped: list[dict] = []
    source = ""
    recorded = data.get("counts")  # what training used, per class (train's, mnist's)
    used = (_split_counts(recorded) if isinstance(recorded, dict)
            and all(isinstance(per_class, dict) for per_class in recorded.values()) else {})
    folders = {split: bundle.data_folder(meta, f"{split}_dir") for split in ("train", "validate")}
    roots = {f.parent for f in folders.values() if f}
    if used:
        counts, source = dict(used), "meta.json (the images training used)"
    for root in sorted(roots):
        manifest = _read_json(root / "manifest.json")
        if not (isinstance(manifest, dict) and manifest.get("tool") == "transfer fetch-data"):
            continue
        listed = _split_counts(manifest.get("counts") or {})
        where = root / "manifest.json"
        # the manifest's split of each folder training read (validate_dir may be data/test)
        read = {split: folders[split].name if folders.get(split) else split for split in used}
        if not used:  # a bundle that recorded no counts: the manifest's
            counts, source = listed, f"{where} (transfer fetch-data)"
        elif len(set(read.values())) < len(read) or any(read[s] not in listed for s in used):
            continue  # it does not count these folders as training split them (a split in
            # memory of one of its folders; a manifest without counts): nothing to compare
        elif all(listed.get(read[split]) == per_class for split, per_class in used.items()):
            for split, per_class in listed.items():
                if split not in read.values():
                    counts.setdefault(split, per_class)  # the held-out test part
            source = f"{where} (transfer fetch-data), as training counted"
        else:
            source = (f"meta.json (the images training used; {where} counts other numbers "
                      "now: fetched again, or photos moved since)")
            continue
        skipped = [s for s in manifest.get("skipped") or [] if isinstance(s, dict)]
    if not counts and names:
        for split, folder in folders.items():
            if folder:
                found = _count_images(Path(folder), names)
                if found is not None:
                    counts[split] = found
        if counts:
            source = "the image folders as they are now"
    if not counts:
        totals = {k[:-len("_images")]: v for k, v in data.items()
                  if k.endswith("_images") and isinstance(v, int)}
        training = meta.get("training") or {}
        if isinstance(training.get("train_images"), int):
            totals.setdefault("train", training["train_images"])
        if totals:
            counts = {split: {"all classes": n} for split, n in totals.items()}
            source = "meta.json (totals)"
    return counts, skipped, source


def _history(folder: Path) -> tuple[list[str], list[list[str]], str | None]:
    """history.csv's header and rows, and why it is left out when it is there but is no table
    of numbers per epoch (saved again by a spreadsheet, garbled): it vanished without a word."""
    import csv

    try:
        with open(folder / "history.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        return [], [], None
    except OSError as exc:
        return [], [], f"it cannot be read ({exc.strerror or exc})"
    except UnicodeDecodeError:
        return [], [], "it is not UTF-8 text (saved again by a spreadsheet?)"
    except csv.Error as exc:
        return [], [], f"it is not a CSV table ({exc})"
    if not any(rows):
        return [], [], "it is empty"
    header = rows[0]
    if not header or header[0].strip().lower() != "epoch":  # as training and Keras write it
        return [], [], "it is not a table of epochs (its first column is not 'epoch')"
    if len(rows) < 2:
        return [], [], "it holds no epoch"
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            return [], [], f"line {line} has {len(row)} fields, the header {len(header)}"
        if not row[0].strip().isdigit():
            return [], [], f"line {line}'s epoch is {row[0][:40]!r}, not a whole number"
    return header, rows[1:], None


def _validation_images(meta: dict, per_class: int) -> list[tuple[Path, str]]:
    """Up to ``per_class`` images of each class the bundle was validated on: its validation
    folder, or the split training made in memory of a folder of class folders, made again."""
    from transfer.evaluate import bundle_images

    names = list(meta.get("class_names") or [])
    try:
        found = bundle_images(meta, "validate") or []
    except (KeyError, TypeError, ValueError, OSError, TransferError):  # an odd or older meta
        return []
    return _first_of_each_class(found, names, per_class)


def _first_of_each_class(found: list[tuple[Path, int]], names: list[str], per_class: int
                         ) -> list[tuple[Path, str]]:
    """The first ``per_class`` of ``found`` (image, class index) of each class, with its
    class name."""
    picked, taken = [], dict.fromkeys(range(len(names)), 0)
    for path, label in found:
        if taken.get(label, per_class) < per_class:
            taken[label] += 1
            picked.append((Path(path), names[label]))
    return picked


def _no_validation_photos(meta: dict) -> str | None:
    """Why a bundle that names the photos it was validated on has none to show now: the
    folder is gone (the data moved) or holds none of its classes; None when it names none (a
    digit bundle: its validation digits were never files)."""
    in_memory = (meta.get("data") or {}).get("split") == "in-memory"
    folder = bundle.data_folder(meta, "root" if in_memory else "validate_dir")
    if folder is None:
        return None
    what = "data folder" if in_memory else "validation folder"
    if not folder.is_dir():
        return f"the {what} {folder} is gone"
    return f"no photo of the bundle's classes was found in the {what} {folder}"


def _evaluated_images(folder: Path, names: list[str], per_class: int
                      ) -> tuple[list[tuple[Path, str]], str | None]:
    """Up to ``per_class`` images of each class of ``folder``, the folder an evaluation
    scored, found as evaluate found them (``evaluate.labelled_files``: a class folder whose
    accents macOS stored decomposed is its class), and None; or [] and why there are none:
    evaluate would refuse the folder now (a class folder added or emptied since), or it holds
    no photo of the bundle's classes."""
    from transfer.evaluate import labelled_files

    try:
        found = labelled_files(folder, names)
    except TransferError as exc:
        return [], str(exc)
    except OSError as exc:
        return [], f"the evaluated folder {folder} cannot be read ({exc.strerror or exc})"
    chosen = _first_of_each_class(found, names, per_class)
    return chosen, None if chosen else ("no photo of the bundle's classes was found in the "
                                        f"evaluated folder {folder}")


def evaluated_folder(evaluation: dict | None) -> Path | None:
    """The folder of class folders an evaluation scored, when it is not the bundle's own
    validation split (then the bundle's validation photos are the ones evaluated) and is
    still there: where its report.json says, found as evaluate finds an earlier
    evaluation's (``evaluate.earlier_data_dirs``: an older report.json names it relative to
    where it ran). None otherwise: the bundle's validation photos are drawn instead."""
    from transfer.evaluate import earlier_data_dirs

    if not isinstance(evaluation, dict) or evaluation.get("is_training_validation_folder"):
        return None
    try:  # where it ran first (the last found): a folder of that name here is another
        return next((p for p in reversed(earlier_data_dirs(evaluation)) if p.is_dir()), None)
    except (TypeError, ValueError, OSError):  # an odd report.json: no folder to draw from
        return None


def gradcam_figures(bundle_dir: Path, meta: dict, count: int = GRADCAMS,
                    classifier=None, notes: list[str] | None = None,
                    evaluated: Path | None = None) -> list[str]:
    """HTML figures of Grad-CAM overlays on up to ``count`` validation images (the classes in
    turn), or images of ``evaluated`` (the folder an evaluation scored); [] when there is no
    such folder or the model cannot be traced. ``classifier``: a ``BundleClassifier`` of this
    bundle the caller holds (train's, evaluate's), used when its model.keras is still the file
    it holds, so the model is not loaded a second time. ``notes``: given, why there are none
    is added to it ("Grad-CAM skipped: ..."), when the bundle has what they are drawn from but
    it is broken or gone."""
    said = notes if notes is not None else []
    if count <= 0:
        return []
    if not (Path(bundle_dir) / "model.keras").is_file():
        said.append("Grad-CAM skipped: the bundle's model.keras is missing")
        return []
    names = list(meta.get("class_names") or [])
    if not names:
        return []
    per_class = max(1, -(-count // len(names)))
    refused = None
    if evaluated is not None:
        chosen, refused = _evaluated_images(Path(evaluated), names, per_class)
    else:
        chosen = _validation_images(meta, per_class)
    # interleave the classes: cat, dog, cat, dog ...
    by_class: dict[str, list] = {}
    for path, name in chosen:
        by_class.setdefault(name, []).append(path)
    order = []
    for i in range(per_class):
        order += [(paths[i], name) for name, paths in by_class.items() if i < len(paths)]
    order = order[:count]
    if not order:
        why = refused if evaluated is not None else _no_validation_photos(meta)
        if why is not None:
            said.append(f"Grad-CAM skipped: {why}")
        return []
    from PIL import Image

    from transfer import images, plots
    from transfer.explain import gradcam, gradcams
    from transfer.inference import BundleClassifier

    if not holds_bundle(classifier, Path(bundle_dir)):
        try:
            classifier = BundleClassifier(Path(bundle_dir))
        except TransferError as exc:  # model.keras cut short, another model's ...
            said.append(f"Grad-CAM skipped: {exc}")
            return []

    def batch_maps(batch: list) -> list:
        """[(path, truth, array, (heatmap, probs, index), layer)] of the photos of ``batch``
        that can be read and traced: the batch in one pass, or, when that fails, photo by
        photo (one odd photo costs its own figure, not the batch's)."""
        ready = []
        for path, truth in batch:
            try:
                ready.append((path, truth, classifier.prepare(path)[0]))
            except TransferError:
                continue
        if not ready:
            return []
        try:
            maps, layer = gradcams(classifier.model, classifier.meta,
                                   np.stack([array for _, _, array in ready]))
            return [(*one, done, layer) for one, done in zip(ready, maps, strict=True)]
        except TransferError:
            alone = []
            for path, truth, array in ready:
                try:
                    *done, layer = gradcam(classifier.model, classifier.meta, array)
                except TransferError:
                    continue
                alone.append((path, truth, array, tuple(done), layer))
            return alone

    # in batches: the eager per-layer cost once a batch, not once a photo; the arrays and
    # the tape's activations of one batch at a time
    drawn = (row for start in range(0, len(order), GRADCAM_BATCH)
             for row in batch_maps(order[start:start + GRADCAM_BATCH]))
    figures = []
    for path, truth, array, (heatmap, probs, _), layer in drawn:
        if classifier.meta.get("channels", 3) == 1:
            digit = np.asarray(array, dtype="float32")[..., 0].clip(0, 255).astype("uint8")
            shown = np.repeat(np.asarray(Image.fromarray(digit).resize(
                (THUMB_SIDE, THUMB_SIDE), Image.NEAREST))[..., None], 3, axis=-1)
        else:
            shown = images.picture(path, THUMB_SIDE)  # drafted: a phone photo is never whole
        png = overlay_png(shown, heatmap, view="overlay")
        predicted = names[int(np.argmax(probs))]
        # a uniform tint is an empty map (no region raises the class), or a diverged model's
        state = {"empty": "; empty map: no region raises the class",
                 "nan": "; not a number"}.get(plots.map_state(heatmap), "")
        caption = (f"{path.name}: true {truth}, predicted {predicted} "
                   f"{float(np.max(probs)):.2f} (Grad-CAM at {layer}{state})")
        figures.append(f'<figure><img class="gradcam" src="{data_uri(png)}" '
                       f'alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')
    if not figures:
        said.append(f"Grad-CAM skipped: none of the {len(order)} "
                    f"{'evaluated' if evaluated is not None else 'validation'} photos could be "
                    "read and traced")
    return figures


def holds_bundle(classifier, bundle_dir: Path) -> bool:
    """Whether ``classifier`` is a plain ``BundleClassifier`` of ``bundle_dir`` whose
    model.keras is still the file it holds (not replaced by a later run since)."""
    from transfer.inference import BundleClassifier

    if not isinstance(classifier, BundleClassifier) or classifier.invert is not None:
        return False
    try:
        same = Path(classifier.path).resolve() == Path(bundle_dir).resolve()
    except OSError:
        return False
    return same and classifier.unchanged()


# --------------------------------------------------------------------------- the page


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>' if body else ""


def _confusion_table(matrix: list[list[int]], names: list[str]) -> str:
    head = '<th class="l">true \\ predicted</th>' + "".join(f"<th>{_e(n)}</th>" for n in names)
    body = ""
    for i, row in enumerate(matrix):
        tds = "".join(
            f'<td class="{"diag" if i == j else ("off" if v else "")}">{_e(v)}</td>'
            for j, v in enumerate(row))
        body += f'<tr><th class="l">{_e(names[i] if i < len(names) else i)}</th>{tds}</tr>'
    return (f'<div class="scroll"><table class="confusion"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def averaged_note(meta: dict, header: list[str], rows: list[list[str]]) -> str:
    """A line saying why the cards' validation accuracy is not history.csv's last one, when
    the run ended on averaged weights (``transfer mnist``'s moving average): the cards are the
    saved model's, the per-epoch numbers the raw weights' (0.9267 above, 0.9167 below, without
    a word). "" when the weights were not averaged or the numbers agree."""
    momentum = (meta.get("training") or {}).get("weight_average_momentum")
    saved = (meta.get("metrics") or {}).get("val_accuracy")
    if not momentum or not isinstance(saved, int | float) or "val_accuracy" not in header:
        return ""
    try:
        raw = float(rows[-1][header.index("val_accuracy")])
    except (ValueError, IndexError):
        return ""
    if _num(float(saved)) == _num(raw):
        return ""
    return (f'<p class="muted averaged">The validation accuracy and loss above (accuracy '
            f"{_num(float(saved))}) are the saved model's, whose weights are the moving average "
            "of the training steps; history.csv's are the raw weights' (accuracy "
            f"{_num(raw)} at the last epoch).</p>")


def matrix_problem(matrix, names: list[str]) -> str | None:
    """Why ``matrix`` cannot be shown as the confusion matrix of ``names`` (a hand edit,
    another run's file): not a square table of counts, one per class (a 2 x 2 for 10 classes
    was a garbled table); None when it can."""
    if not (isinstance(matrix, list) and matrix and all(
            isinstance(row, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                          and v >= 0 for v in row) for row in matrix)):
        return "it is not a table of counts"
    widths = {len(row) for row in matrix}
    if len(widths) > 1:
        return "its rows are of different lengths"
    size = len(names) or len(matrix)
    if len(matrix) != size or widths != {size}:
        return (f"it is {len(matrix)} x {widths.pop()}, but there are {len(names)} class "
                "names")
    return None


def mistakes_made(evaluation: dict) -> int | None:
    """How many images the evaluation got wrong, from its confusion matrix (None: it has no
    whole one)."""
    matrix = evaluation.get("confusion_matrix")
    try:
        return int(sum(sum(row) for row in matrix) - sum(row[i] for i, row in enumerate(matrix)))
    except (TypeError, IndexError):
        return None


def no_mistakes_picture(evaluation: dict, folder: Path, notes: list[str]) -> str:
    """What the mistakes section says of an evaluation whose folder holds no
    misclassified.png: none were made, none drawn (``--worst 0``), or the picture is gone;
    nothing for a report.json that records no mistakes at all (an older one)."""
    if "worst_mistakes" not in evaluation:
        return ""
    wrong = mistakes_made(evaluation)
    if wrong == 0 or (wrong is None and evaluation.get("accuracy") == 1):
        return (f"<p class=\"muted\">No mistakes: all {_e(evaluation.get('images'))} images "
                "were classified right.</p>")
    if not evaluation["worst_mistakes"]:
        counted = f"{wrong} mistake{'' if wrong == 1 else 's'}, " if wrong else ""
        return f"<p class=\"muted\">No picture (--worst 0): {counted}none drawn.</p>"
    return skipped_lines(notes, f"misclassified.png is gone from {folder}: the mistakes are "
                                "listed without their photos")


def retrained_since(evaluation: dict, meta: dict) -> bool:
    """Whether the bundle of ``meta`` is no longer the one ``evaluation`` (report.json)
    evaluated: trained again at the same path (its creation time, or for evaluations that
    did not record it, its metrics differ)."""
    if evaluation.get("bundle_created") is not None:
        return evaluation["bundle_created"] != meta.get("created")
    then = evaluation.get("training_metrics")
    return isinstance(then, dict) and then != meta.get("metrics")


def render_report(folder: Path, gradcams: int = GRADCAMS, classifier=None,
                  notes: list[str] | None = None) -> str:
    """The report of a bundle or an evaluation folder as one self-contained HTML page.

    Args:
        folder: a bundle (meta.json, and report.json once evaluated) or an `evaluate
            --output` folder (report.json; its bundle is read too when it still exists).
        gradcams: Grad-CAM overlays to compute on the bundle's validation images (0: none).
        classifier: the bundle's ``BundleClassifier`` when the caller holds it (see
            ``gradcam_figures``).
        notes: given, what the page left out of what the folder holds but is broken, or was
            expected but is gone, is added to it: the lines said on the page (a folder never
            evaluated adds none for that).

    Returns:
        The HTML text (UTF-8, no external resource).

    Raises:
        TransferError: ``folder`` is neither a bundle nor an evaluation folder.
    """
    from transfer import __version__

    folder = Path(folder)
    said = notes if notes is not None else []
    if not folder.is_dir():
        from transfer.settings import not_a_report_folder

        raise TransferError(not_a_report_folder(folder))
    if (folder / COMPARE_JSON).is_file() and not (folder / bundle.META).is_file():
        from transfer import compare

        return compare.render_page(compare.read(folder), folder)
    meta = read_object(folder / "meta.json")
    if meta is not None:
        bundle.check_meta_types(meta, folder / "meta.json")  # a field named, as predict does
    evaluation = read_object(folder / "report.json")
    if (evaluation is not None and meta is None and evaluation.get("kind") != "transfer-evaluate"
            and not {"accuracy", "class_names", "confusion_matrix"} & set(evaluation)):
        # a report.json of the user's own (an evaluation from before "kind" has its fields):
        # an empty "evaluation" page was made of it
        raise TransferError(f"{folder / 'report.json'} is not one transfer wrote (neither "
                            "\"kind\": \"transfer-evaluate\" nor an evaluation's accuracy in "
                            "it): nothing to report")
    if evaluation is not None:
        check_evaluation_types(evaluation, folder / "report.json")
    if meta is None and evaluation is None:
        inside = sorted(p.name for p in folder.iterdir()  # not `latest`, a link to one of them
                        if p.is_dir() and p.name != bundle.LATEST and bundle.is_bundle(p))
        if inside:  # a comparison cut short (it writes compare.json last), or a models folder
            raise TransferError(
                f"{folder} holds bundles ({', '.join(inside)}) but neither meta.json (a bundle), "
                "report.json (an evaluation) nor compare.json (a comparison, written when all "
                f"its runs are done): report one of them (transfer report {folder / inside[0]}), "
                "or run the comparison again")
        raise TransferError(f"{folder} holds neither meta.json (a bundle), report.json (an "
                            "evaluation) nor compare.json (a comparison): nothing to report")
    bundle_dir = folder if meta is not None else None
    retrained = None  # (the bundle, when it was trained again) after this evaluation
    lost = ""  # why the evaluated bundle is not read: gone or damaged since
    if meta is None:  # an evaluate --output folder: its bundle itself, not what latest is now
        named = evaluation.get("bundle") or evaluation.get("model")
        other = _read_json(Path(named) / "meta.json") if named else None
        if named and not (Path(named) / "meta.json").is_file():
            lost = skipped_lines(said, f"The evaluated bundle {named} is gone: its settings, "
                                       "curves and Grad-CAMs are left out")
        elif named and not isinstance(other, dict):
            lost = skipped_lines(said, f"{Path(named) / 'meta.json'} is damaged: the evaluated "
                                       "bundle's settings, curves and Grad-CAMs are left out")
        try:  # that bundle damaged since: report without
            if isinstance(other, dict):
                bundle.check_meta_types(other, Path(named) / "meta.json")
                if retrained_since(evaluation, other):
                    retrained = (named, other.get("created"))
                else:
                    meta, bundle_dir = other, Path(named)
        except TransferError as exc:
            lost = skipped_lines(said, f"{exc}: the evaluated bundle's settings, curves and "
                                       "Grad-CAMs are left out")
    meta = meta or {}
    names = list(meta.get("class_names") or (evaluation or {}).get("class_names") or [])
    metrics = meta.get("metrics") or {}
    title = bundle.shown_name(folder)
    parts: list[str] = []

    # ---- summary
    cards = []
    if evaluation:
        gate = evaluation.get("gate") or {}
        cards.append(_card(below(gate["accuracy"], gate["threshold"])  # never "0.9000" < 0.9
                           if gate.get("passed") is False
                           else _num(evaluation.get("accuracy")), "evaluated accuracy"))
        if evaluation.get("balanced_accuracy") is not None:
            cards.append(_card(_num(evaluation["balanced_accuracy"]), "balanced accuracy"))
        cards.append(_card(_num(evaluation.get("loss")), "evaluated loss"))
        if evaluation.get("roc_auc") is not None:
            cards.append(_card(_num(evaluation["roc_auc"]), "ROC AUC"))
        cards.append(_card(_e(evaluation.get("images")), "images evaluated"))
    # the balanced accuracy where the classes are unbalanced, as train's last line says it
    # (the page left it out: on 40/30/12/40/8 flowers, 0.73 accuracy, 0.68 balanced)
    validate = ((meta.get("data") or {}).get("counts") or {}).get("validate")
    balanced = (isinstance(validate, dict) and validate
                and all(type(n) is int for n in validate.values()) and unbalanced(validate))
    for key, label in (("test_accuracy", "test accuracy"), ("val_accuracy",
                                                            "validation accuracy"),
                       ("val_balanced_accuracy", "validation balanced accuracy"),
                       ("val_loss", "validation loss"), ("best_epoch", "best epoch"),
                       ("epochs_run", "epochs run")):
        if metrics.get(key) is not None and (key != "val_balanced_accuracy" or balanced):
            cards.append(_card(_num(metrics[key]), label))
    kind = meta.get("kind") or ("evaluation" if evaluation else "")
    facts = [f"{_e(kind)} run" if kind else ""]
    if meta.get("base"):
        alpha = f" alpha {meta['alpha']}" if meta.get("alpha") not in (None, 1.0) else ""
        facts.append(f"base <b>{_e(meta['base'])}</b>{_e(alpha)}")
    if names:
        facts.append(f"{len(names)} classes: <b class=\"classes\">"
                     f"{_e(', '.join(names))}</b>")
    if meta.get("created"):
        facts.append(f"created {_e(meta['created'])}")
    sub = " · ".join(f for f in facts if f)
    parts.append(f"<h1>{_e(title)}</h1><p class=\"sub\">{sub}</p>")
    if cards:
        parts.append(f'<div class="cards">{"".join(cards)}</div>')

    # ---- the run
    run = ""
    if meta.get("command"):
        run += f"<p>Command:</p><pre>{_e(meta['command'])}</pre>"
    if evaluation:
        from transfer.evaluate import evaluated_on

        split = evaluation.get("subset")  # "validate": split in memory from one folder
        training_folder = (" (the training validation folder)"
                           if evaluation.get("is_training_validation_folder") and not split
                           else "")
        on = evaluated_on(f"<b>{_e(evaluation.get('data_dir'))}</b>", split)
        named, led_to = evaluation.get("model"), evaluation.get("bundle")
        if named and led_to and Path(led_to).name != Path(named).name:
            # a link (models/latest) names another bundle once a later run moves it
            named = f"{named} -> {Path(led_to).name}"
        run += (f"<p>Evaluated <b>{_e(named)}</b> on {on}{training_folder}"
                + (f", {_e(evaluation['created'])}" if evaluation.get("created") else "")
                + ".</p>")
        gate = evaluation.get("gate") or {}
        if gate.get("passed") is False:
            run += (f"<p class=\"warn\">Accuracy gate failed: "
                    f"{below(gate['accuracy'], gate['threshold'])} is below "
                    f"--assert-accuracy-at-least {gate['threshold']:g} (exit code 3).</p>")
        elif gate.get("passed") is True:
            run += (f"<p>Accuracy gate passed: {_num(gate['accuracy'])}, at least "
                    f"--assert-accuracy-at-least {gate['threshold']:g}.</p>")
        run += lost
        if retrained is not None:
            run += (f"<p class=\"warn\">{_e(retrained[0])} was trained again since this "
                    f"evaluation (created {_e(retrained[1] or '?')}): its settings, curves and "
                    "Grad-CAMs are another model's, and are left out.</p>")
        if evaluation.get("training_images"):
            run += (f"<p class=\"warn\">{evaluation['training_images']} of the "
                    f"{evaluation.get('images')} images are this model's training images: the "
                    "accuracy on them overstates how it does on new photos.</p>")
    tuned = (meta.get("training") or {}).get("fine_tune_result")
    if bundle.fine_tune_undone(tuned):
        run += (f"<p class=\"warn\">Fine-tuning was undone: it did not lower the validation "
                f"loss ({_num(tuned['fine_tuned']['val_loss'])} against "
                f"{_num(tuned['frozen']['val_loss'])} before it), so this model is the frozen "
                "base with its head.</p>")
    if meta.get("settings"):
        run += ("<details open><summary>Resolved settings</summary><pre class=\"settings\">"
                f"{_e(json.dumps(meta['settings'], indent=2, sort_keys=True))}</pre></details>")
    recipe = {k: meta[k] for k in ("image_size", "test_time", "channels", "preprocessing", "output",
                                   "pipeline", "augmentation", "head", "training", "weights",
                                   "keras_class", "dataset", "seed") if k in meta}
    if recipe:
        run += ("<details><summary>Model and training recipe (meta.json)</summary><pre>"
                f"{_e(json.dumps(recipe, indent=2))}</pre></details>")
    parts.append(_section("The run", run, "run"))

    # ---- data
    counts, skipped, source = data_counts(meta)
    data_html = ""
    if counts:
        classes = list(dict.fromkeys(c for per in counts.values() for c in per))
        rows = [[_e(split), *[_e(per.get(c, 0)) for c in classes], _e(sum(per.values()))]
                for split, per in counts.items()]
        data_html += (_table(["split", *classes, "total"], rows)
                      + f'<p class="muted">From {_e(source)}.</p>')
    data = meta.get("data") or {}
    if data.get("source") or data.get("test_images"):
        data_html += (f"<p>Source: {_e(data.get('source', '-'))}; test images: "
                      f"{_e(data.get('test_images', '-'))}.</p>")
    # skipped by fetch-data (left out of the split), by training (in the folders it read, not
    # readable), by evaluate (in the folder it read): a file both skipped is listed once
    by_training = [s for s in meta.get("skipped") or [] if isinstance(s, dict)]
    by_evaluate = [s for s in (evaluation or {}).get("skipped") or [] if isinstance(s, dict)]
    # training's paths are as it was given them (relative to the folder it ran in, meta's
    # data.cwd), evaluate's absolute: compared where they lead (one file was listed twice)
    ran_in = data.get("cwd") if isinstance(data.get("cwd"), str) else ""

    def where(s: dict, folder: str = "") -> str:
        return os.path.normpath(os.path.join(folder, str(s.get("file"))))

    listed = {where(s, folder) for s in by_training for folder in ("", ran_in)}
    by_evaluate = [s for s in by_evaluate if where(s) not in listed]
    if skipped or by_training or by_evaluate:
        rows = [[_e(s.get("name") or s.get("file")), _e(s.get("class", "")),
                 "fetch-data", _e(s.get("reason"))] for s in skipped]
        rows += [[_e(s.get("file")), "", "train", _e(s.get("reason"))] for s in by_training]
        rows += [[_e(s.get("file")), "", "evaluate", _e(s.get("reason"))] for s in by_evaluate]
        listed = (f" (the first {SKIPPED_LISTED} listed)"
                  if len(rows) > SKIPPED_LISTED else "")
        data_html += (f"<p>{len(rows)} file(s) skipped{listed}:</p>"
                      + _table(["file", "class", "skipped by", "reason"],
                               rows[:SKIPPED_LISTED], left=4))
    elif counts:
        data_html += "<p class=\"muted\">No file was skipped.</p>"
    parts.append(_section("Data", data_html, "data"))

    # ---- learning curves
    curves = ""
    if bundle_dir is not None and (bundle_dir / "curves.png").is_file():
        curves += _picture(bundle_dir / "curves.png", "accuracy and loss per epoch, training "
                                                      "vs validation", said)
    header, rows, problem = _history(bundle_dir) if bundle_dir is not None else ([], [], None)
    if problem is not None:
        curves += skipped_lines(said, f"history.csv skipped: {problem}")
    if rows:
        def cell(text):  # as the cards write a number (a loss of 1.2e-05 read 0.0000)
            try:
                return _num(float(text)) if "." in text or "e" in text else _e(text)
            except ValueError:
                return _e(text)

        curves += averaged_note(meta, header, rows)
        curves += ("<details><summary>history.csv</summary>"
                   + _table(header, [[cell(c) for c in row] for row in rows]) + "</details>")
    parts.append(_section("Learning curves", curves, "curves"))

    # ---- evaluation
    evaluated = ""
    matrix = (evaluation or {}).get("confusion_matrix") or meta.get("confusion_matrix")
    problem = matrix_problem(matrix, names) if matrix else None
    table, macro, images = ((evaluation or {}).get("per_class"),
                            (evaluation or {}).get("macro_avg") or {},
                            (evaluation or {}).get("images"))
    if not table and matrix and problem is None:  # mnist's test digits (meta.json): from it
        from transfer.metrics import macro_average, per_class

        table = per_class(np.asarray(matrix), names)
        macro, images = macro_average(table), int(np.asarray(matrix).sum())
    if table:
        rows = [[_e(name), _num(r.get("precision")), _num(r.get("recall")), _num(r.get("f1")),
                 _e(r.get("support"))] for name, r in table.items()]
        if macro:
            rows.append(["<i>macro average</i>", _num(macro.get("precision")),
                         _num(macro.get("recall")), _num(macro.get("f1")), _e(images)])
        evaluated += _table(["class", "precision", "recall", "F1", "support"], rows)
        from transfer.metrics import macro_note

        note = macro_note(table) if macro else None
        if note:
            evaluated += f'<p class="muted">{_e(note[0].upper() + note[1:])}.</p>'
    if problem is not None:
        evaluated += skipped_lines(said, f"Confusion matrix skipped: {problem}")
    elif matrix:
        which = "evaluation" if evaluation and evaluation.get("confusion_matrix") else \
            "the test images (meta.json)"
        evaluated += (f"<p>Confusion matrix on {_e(which)} (rows: true class, columns: "
                      "predicted):</p>" + _confusion_table(matrix, names))
    # the folder's own picture only: an evaluation folder without one showed its bundle's
    # (the validation split's) as this evaluation's
    if (folder / "confusion.png").is_file():
        evaluated += _picture(folder / "confusion.png", "confusion matrix", said)
    elif (evaluation or {}).get("confusion_matrix") and problem is None:
        evaluated += skipped_lines(said, f"confusion.png is gone from {folder}: the table "
                                         "above is this evaluation's matrix")
    if not evaluated:
        evaluated = ("<p class=\"muted\">Not evaluated yet: <code>transfer evaluate</code> "
                     "adds accuracy per class, the confusion matrix and the worst mistakes."
                     "</p>")
    parts.append(_section("Evaluation", evaluated, "evaluation"))

    # ---- mistakes
    mistakes = ""
    if (folder / "misclassified.png").is_file():
        mistakes += _picture(folder / "misclassified.png", "the most confident mistakes", said)
    elif evaluation:  # never the bundle's: its validation split's mistakes, not these
        mistakes += no_mistakes_picture(evaluation, folder, said)
    worst = (evaluation or {}).get("worst_mistakes") or []
    if worst:
        rows = [[_e(Path(str(w.get("file"))).name), _e(w.get("true")), _e(w.get("predicted")),
                 _num(w.get("probability"))] for w in worst if isinstance(w, dict)]
        mistakes += _table(["file", "true", "predicted", "probability"], rows)
    parts.append(_section("Misclassified examples", mistakes, "mistakes"))

    # ---- Grad-CAM
    why: list[str] = []
    scored = evaluated_folder(evaluation)  # its photos, not the bundle's validation split
    figures = (gradcam_figures(bundle_dir, meta, gradcams, classifier, why, scored)
               if bundle_dir is not None else [])
    gone = (evaluation and not evaluation.get("is_training_validation_folder")
            and scored is None and gradcams > 0 and bundle_dir is not None)
    if gone:  # the evaluated folder gone since: the bundle's validation photos, said
        note = (f"Grad-CAM: the evaluated folder {evaluation.get('data_dir')} is gone; "
                + ("drawn on the bundle's validation photos instead" if figures else
                   "nothing else to draw on"))
        if figures:
            said.append(note)  # the page's caption says it
        else:
            why.insert(0, note)  # the section says it (and why the bundle's photos are not)
    if figures:
        whose = ("" if not evaluation else
                 "<p>On photos of the bundle's validation split, the photos evaluated.</p>"
                 if evaluation.get("is_training_validation_folder") else
                 f"<p>On photos of the evaluated folder {_e(scored)}.</p>"
                 if scored is not None else
                 "<p>On photos of the bundle's validation split, not of the evaluated folder "
                 f"{_e(evaluation.get('data_dir'))}, which is gone.</p>")
        parts.append(_section("Grad-CAM: where the model looked",
                              f'{whose}<div class="grid">{"".join(figures)}</div>', "gradcam"))
    elif why:
        parts.append(_section("Grad-CAM: where the model looked", skipped_lines(said, *why),
                              "gradcam"))

    # ---- other pictures
    gallery = "".join(_picture(bundle_dir / name, caption, said)
                      for name, caption in PICTURES.items()
                      if bundle_dir is not None and (bundle_dir / name).is_file())
    if gallery and bundle_dir != folder:  # an evaluation folder's page: whose they are
        gallery = ("<p>The evaluated bundle's own pictures, drawn at its training, not by "
                   "this evaluation.</p>" + gallery)
    parts.append(_section("More pictures", gallery, "pictures"))

    # ---- timings and engine
    engine = ""
    timings = dict(meta.get("timings") or {})
    if meta.get("feature_cache"):
        timings["feature_cache"] = meta["feature_cache"]
    # the training's engine and the evaluation's, each named as such: an evaluation page
    # showed the training's engine and images/s as if they were its own
    workers = meta.get("workers") if isinstance(meta.get("workers"), int) else 1
    trained = "training" if workers <= 1 else f"training (the chief's share of {workers} workers)"
    for whose, engine_meta in ((trained, meta.get("engine")),
                               ("evaluation", (evaluation or {}).get("engine"))):
        if isinstance(engine_meta, dict):
            timings.update({f"{whose} engine {k}": v for k, v in engine_meta.items()
                            if not isinstance(v, dict | list)})
        elif engine_meta:
            timings[f"{whose} engine"] = engine_meta
    for item in meta.get("per_worker") or [] if workers > 1 else []:  # each worker's part
        if isinstance(item, dict):
            timings.update({f"worker {item.get('rank', '?')} {k}": v for k, v in item.items()
                            if k.endswith("_images") and isinstance(v, int)})
    if evaluation and evaluation.get("seconds") is not None:
        timings["evaluation_seconds"] = evaluation["seconds"]
    if timings:
        engine += _table(["timing", "value"],
                         [[_e(k.replace("_", " ")), _num(v, 3) if not isinstance(v, list)
                           else _e(", ".join(map(str, v)))] for k, v in timings.items()])
    versions = dict(meta.get("versions") or {})
    training = meta.get("training") or {}
    for key in ("distribute", "replicas"):
        if training.get(key) is not None:
            versions[key] = training[key]
    if versions:
        engine += _table(["engine", "value"], [[_e(k), _e(v)] for k, v in versions.items()])
    parts.append(_section("Timings and engine", engine, "engine"))

    made = time.strftime("%Y-%m-%d %H:%M:%S %z")  # from the bundle, not models/latest's link
    footer = (f"<footer>Made by transfer {_e(__version__)} on {_e(made)} "
              f"(Python {_e(platform.python_version())}) from {_e(bundle.lasting(folder))}; "
              "<code>transfer report</code> rebuilds it.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"{GENERATOR}<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{_e(title)}: transfer report</title><style>{STYLE}</style></head>"
            f"<body><main>{''.join(parts)}{footer}</main></body></html>\n")


def made_by_transfer(path: Path) -> bool:
    """Whether the file at ``path`` is a page this tool wrote (the generator tag at its head;
    for pages written before the tag, a report's footer or a comparison's title), which it
    may replace."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read()
    except OSError:
        return False
    return (GENERATOR.encode() in head or b"<title>compare: " in head
            or b"<footer>Made by transfer " in tail)


HTML_SUFFIXES = (".html", ".htm")  # what a report may be written as: a page a browser opens
# the files that make a folder a bundle, an evaluation or a comparison (each has its report)
FOLDER_FILES = {bundle.META: "bundle", "report.json": "evaluation", COMPARE_JSON: "comparison"}


def _real(path: Path) -> Path:
    """``path`` with its links followed (``files.resolved``); a link loop as written."""
    from transfer.files import resolved

    return resolved(path) or Path(os.path.abspath(path))


def _own_folders(folder: Path) -> set[Path]:
    """The folders whose files the report of ``folder`` is made from: the folder, and for an
    evaluation folder the bundle its report.json names."""
    folders = {_real(folder)}
    if not (folder / bundle.META).is_file():
        evaluation = _read_json(folder / "report.json")
        named = evaluation.get("bundle") if isinstance(evaluation, dict) else None
        if isinstance(named, str) and named:
            folders.add(_real(Path(named)))
    return folders


def check_output(folder: Path, target: Path, force: bool = False) -> None:
    """Refuse a ``target`` the report of ``folder`` must not be written to, even with
    ``force``: a folder, one of the files the report is made from (a bundle's meta.json,
    model.keras, pictures ...; the bundle was unreadable after), a file that is not an .html
    page (``--output x.png`` held HTML), another bundle's, evaluation's or comparison's own
    report.html (``--force`` put another model's page in a bundle, which serve then showed
    for it); and without ``force`` any other page in such a folder (its report.html was
    replaced by this folder's page, a page transfer wrote, so it was not refused); then as
    ``check_replaceable``."""
    folder, target = Path(folder), Path(target)
    if target.is_dir():
        raise TransferError(f"{target} is a folder; name an .html file")
    if target.is_file() and _real(target.parent) in _own_folders(folder) and (
            target.suffix.lower() not in HTML_SUFFIXES):
        raise TransferError(f"--output {target} is a file of {folder}'s folder (its meta.json, "
                            "model, pictures or your own): a report never writes over it, even "
                            "with --force; name an .html file")
    if target.suffix.lower() not in HTML_SUFFIXES:
        raise TransferError(f"--output {target}: a report is an HTML page; name a file ending "
                            "in .html")
    # a link is written through (``replacing``): the checks are of the file it leads to
    written = _real(target) if target.is_symlink() else target
    if written.suffix.lower() not in HTML_SUFFIXES:  # mine.html -> models/b/meta.json
        raise TransferError(f"--output {target} is a link to {written}, which is not an "
                            ".html page: a report never writes over it, even with --force")
    home = written.parent
    if _real(home) != _real(folder):
        held = next((name for name in FOLDER_FILES if (home / name).is_file()), None)
        if held is not None and written.name.lower() == REPORT_HTML:
            # that folder's own page (serve links a bundle's report to it): never another's
            raise TransferError(
                f"--output {target} is the page of {home}, another {FOLDER_FILES[held]} "
                f"folder: a report never writes {folder}'s page over it, even with --force "
                f"(transfer report {home} rebuilds that one; --output another file for "
                f"{folder}'s)")
        if held is not None and not force:
            raise TransferError(
                f"--output {target} is in {home}, another {FOLDER_FILES[held]} folder (it holds "
                f"{held}), where {folder}'s page would pass for its own; use --force to write "
                "it there anyway (or --output a file outside it)")
    check_replaceable(target, force)


def check_replaceable(target: Path, force: bool = False) -> None:
    """Refuse an existing ``target`` that is not a transfer report, unless ``force``."""
    if target.is_dir():
        raise TransferError(f"{target} is a folder; name an .html file")
    if not force and target.exists() and not made_by_transfer(target):
        raise TransferError(f"{target} exists and is not a transfer report; use --force to "
                            "replace it (or --output another file)")


def gradcams_wanted(gradcams: int | None = None) -> int:
    """Grad-CAM overlays for a report: ``gradcams``, else ``$TRANSFER_REPORT_GRADCAMS``, else
    ``GRADCAMS`` (each costs a forward and a backward pass; 0 makes the report instant)."""
    if gradcams is not None:
        from transfer.settings import whole

        if not whole(gradcams):  # a keyword of write_report (the CLI has no such option)
            raise TransferError(f"gradcams must be a whole number, not {gradcams!r}")
        return max(0, gradcams)
    return int(env_number("TRANSFER_REPORT_GRADCAMS", GRADCAMS))


def write_report(folder, output: Path | None = None, *, gradcams: int | None = None,
                 force: bool = False, classifier=None, notes: list[str] | None = None) -> Path:
    """Write the one-file HTML report of a bundle or an evaluation folder.

    Args:
        folder: a bundle or an `evaluate --output` folder (see ``render_report``); or a
            ``ReportSettings`` (its folder, output and force).
        output: the HTML file to write; default ``folder/report.html``.
        gradcams: Grad-CAM overlays to compute on the bundle's validation images (0: none;
            default ``gradcams_wanted()``, as train, mnist and evaluate wrote it).
        force: replace ``output`` even when it is not a report this tool wrote (an earlier
            transfer report is always replaced).
        classifier: the bundle's ``BundleClassifier`` when the caller holds it (train's,
            evaluate's): its model is not loaded again for the Grad-CAM overlays.
        notes: a list to which what the page left out is added, one line each, as the page
            says it ("Grad-CAM skipped: the validation folder data/validate is gone"): parts
            the folder holds but are broken, or were expected and are gone (see
            ``render_report``), for the caller to print as warnings.

    Returns:
        The path written.

    Raises:
        TransferError: ``folder`` is neither a bundle nor an evaluation folder; ``output`` is
            a folder, one of the files the report is made from or not an .html file; or,
            without ``force``, another file, or a page in another bundle, evaluation or
            comparison folder (``check_output``); or its folder does not accept a new
            file (checked before the page is made).
        OSError: the file cannot be written (a disk full while writing).
    """
    from transfer.files import replacing, utf8_text
    from transfer.settings import ReportSettings, not_a_report_folder, writable

    if isinstance(folder, ReportSettings):  # as the other commands take their settings
        s = folder.validated()
        folder, output, force = s.folder, s.output if output is None else output, force or s.force
    folder = Path(folder)
    if not folder.is_dir():  # said as such before its report.html's folder is probed
        raise TransferError(not_a_report_folder(folder))
    target = Path(output) if output is not None else folder / REPORT_HTML
    check_output(folder, target, force)
    writable("output", target, file=True, given=output is not None)  # before the slow page
    text = render_report(folder, gradcams_wanted(gradcams), classifier, notes)
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as tmp:
        # a page that says it is UTF-8 is: a name that is not (os.fsdecode's surrogates) has
        # a replacement mark, as a browser showed its raw bytes (the CSVs keep the bytes)
        Path(tmp).write_text(utf8_text(text), encoding="utf-8")
    return target


def write_quietly(folder: Path, reporter=None, *, gradcams: int | None = None,
                  force: bool = False, classifier=None) -> Path | None:
    """``write_report`` at the end of train, mnist and evaluate: their real outputs are already
    in place, so a report that cannot be made is a warning, never a failed run. Grad-CAM
    overlays: ``gradcams_wanted(gradcams)``, as ``write_report`` takes them; ``classifier``
    as it takes it."""
    notes: list[str] = []
    try:
        path = write_report(folder, gradcams=gradcams, force=force, classifier=classifier,
                            notes=notes)
        if reporter is not None:  # what the page skips, said on the console too
            for note in notes:
                reporter.warn(f"report.html: {note}")
        return path
    except Exception as exc:  # the report is a view of files already written
        raise_if_interrupted()  # but a Ctrl-C a library turned into an error stops the run
        if reporter is not None:
            reporter.warn(f"report.html not written ({type(exc).__name__}: {exc})")
        return None
