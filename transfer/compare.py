"""`transfer compare`: the course's three runs on one split, side by side.

    from transfer.compare import compare
    from transfer.settings import CompareSettings

    result = compare(CompareSettings(data_dir="data", output="runs/compare"))
    print(result.runs["frozen"]["val_accuracy"], result.runs["scratch"]["seconds"])

Each run is a ``transfer.training.train`` call on the same data with the same seed (so the
same split when ``data_dir`` holds the class folders):

- ``scratch``: the CNN from scratch (``--base scratch``) with its recipe;
- ``frozen``: a new head on the frozen pretrained ``base``;
- ``fine-tuned``: the same, then its top ``fine_tune`` layers trained too (``FINE_TUNE_LR``
  for ``FINE_TUNE_EPOCHS``). Its head trains on the same cached features as ``frozen``.

Each bundle goes to ``OUT/<run>/``. Then every bundle is classified on the validation images
(the reader ``transfer predict`` uses) for its per-class F1, and ``OUT/compare.json``,
``OUT/compare.png`` (accuracy and time side by side, the validation curves overlaid) and
``OUT/report.html`` are written, each atomically.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer import bundle, plots
from transfer.constants import COMPARE_JSON, COMPARE_PNG
from transfer.errors import TransferError
from transfer.files import new_folders_kept_on_success, replacing, utf8_text, write_json
from transfer.progress import Reporter
from transfer.settings import CompareSettings, TrainSettings, given

COMPARE_HTML = "report.html"
# The fine-tuned run's second phase. Measured with MobileNet-0.25 on the cats/dogs split, on
# the 200 photos it leaves out: 0.941 frozen -> 0.954 fine-tuned at 224 px (issue 17); with
# train's default test-time flips at 288 px, 0.945 frozen -> 0.970 fine-tuned (issue 12); with
# its FixRes default (head at 224 px, model at 288 px), 0.960 frozen -> 0.970 fine-tuned.
FINE_TUNE_LR = 1e-4
FINE_TUNE_EPOCHS = 8
SCHEMA_VERSION = 1
DESCRIPTIONS = {
    "scratch": "the CNN from scratch (every weight learned from these photos)",
    "frozen": "a new head on the frozen ImageNet base",
    "fine-tuned": "the frozen run, then the base's top layers trained too",
}


@dataclass
class CompareResult:
    """What ``compare`` produced: the output folder and one row per run (compare.json's)."""

    output: Path
    runs: dict = field(default_factory=dict)  # run name -> row (see ``row_of``)
    data: dict = field(default_factory=dict)  # the whole compare.json

    @property
    def json_path(self) -> Path:
        return self.output / COMPARE_JSON

    @property
    def png_path(self) -> Path:
        return self.output / COMPARE_PNG


def run_settings(settings: CompareSettings, run: str) -> TrainSettings:
    """The TrainSettings of one run of a comparison (everything else: train's defaults)."""
    common = dict(data_dir=Path(settings.data_dir), validation_split=settings.validation_split,
                  seed=settings.seed, output=Path(settings.output) / run,
                  models_dir=Path(settings.output), force=settings.force,
                  command=f"transfer compare (run {run})")
    if run == "scratch":
        return TrainSettings(base="scratch", weights="none", **common)
    if run == "frozen":
        return TrainSettings(base=settings.base, alpha=settings.alpha, **common)
    if run == "fine-tuned":
        return TrainSettings(base=settings.base, alpha=settings.alpha,
                             fine_tune=settings.fine_tune, fine_tune_lr=FINE_TUNE_LR,
                             fine_tune_epochs=FINE_TUNE_EPOCHS, **common)
    raise TransferError(f"unknown run {run!r}")


def ensure_weights(runs, reporter=None) -> None:
    """The ImageNet weights the runs need, downloaded now (Keras's cache) when they are not
    cached: offline, one error names the file before any run trains, with compare's way
    around it (it has no --weights). Keras's download lines go to ``reporter`` (nothing for
    a silent one)."""
    from transfer import bases

    for run in runs:
        spec = bases.get(run.base)
        if spec.pretrained and run.weights == "imagenet" and \
                bases.cached_weights(spec, run.alpha) is None:
            bases.build(spec, alpha=run.alpha, weights="imagenet", offline_hint=(
                "or choose another --base (`transfer bases` shows whose weights are cached)"),
                reporter=reporter)


# TrainSettings fields that decide the split: the same for every run of a comparison
SPLIT_FIELDS = ("data_dir", "train_dir", "validate_dir", "validation_split", "seed")


def compare(settings: CompareSettings, reporter: Reporter | None = None,
            overrides: dict | None = None) -> CompareResult:
    """Train each of ``settings.runs`` on the same split, write the bundles and the comparison.

    Args:
        settings: the comparison (checked here again: an existing compare.json without
            ``force`` is refused before anything trains).
        reporter: progress and messages; silent by default.
        overrides: per run, TrainSettings fields to change (e.g. ``{"scratch": {"epochs":
            2}}``): for tests and experiments; the comparison records them. The fields of
            the split (``SPLIT_FIELDS``) are refused: every run is scored on one split.

    Returns:
        CompareResult: the output folder and one row per run.

    Raises:
        TransferError: a bad setting or override, an existing comparison or bundle without
            ``force``, or whatever ``train`` refuses (missing folders, unreadable images, ...).
    """
    from transfer.training import plan

    asked = given(settings, CompareSettings, "compare")
    settings = asked.validated()
    reporter = reporter or Reporter()
    for line in asked.unused(settings.runs):
        reporter.warn(line)
    overrides = overrides or {}
    for run, changed in overrides.items():  # every run is scored on the first run's split
        moved = [key for key in changed if key in SPLIT_FIELDS]
        if moved:
            raise TransferError(f"overrides of {run} change {', '.join(moved)}: the runs of a "
                                "comparison share one split (their F1 is measured on the "
                                "first run's validation images); set data_dir, "
                                "validation_split and seed on the CompareSettings")
    out = Path(settings.output)
    planned = {}
    for run in settings.runs:
        planned[run] = run_settings(settings, run).replace(**overrides.get(run, {}))
        planned[run].validated()  # every run's settings checked before the first one trains
    ensure_weights(planned.values(), reporter)  # offline, fail before the scratch run's minutes
    # the validation images every run is scored on (one seed: one split for all runs)
    first = plan(planned[settings.runs[0]].validated())
    validation = [(sample.path, sample.label) for sample in first.usable("validate")]
    with new_folders_kept_on_success(out):  # stopped before a bundle landed: no empty folder
        rows, histories = _train_runs(out, planned, validation, overrides, reporter)
    pretrained = any(run != "scratch" for run in settings.runs)  # else no base was used
    tuned = "fine-tuned" in settings.runs
    data = {
        "schema_version": SCHEMA_VERSION,
        "kind": "transfer-compare",
        "data_dir": str(settings.data_dir),
        "base": settings.base if pretrained else None,
        "alpha": settings.alpha if pretrained else None,
        "seed": settings.seed,
        # the fraction held out when the class folders were split in memory; a folder split
        # into train/ and validate/ already leaves it unused (train warns), so it is null
        "validation_split": settings.validation_split if first.split == "in-memory" else None,
        "fine_tune": settings.fine_tune if tuned else None,
        "fine_tune_lr": FINE_TUNE_LR if tuned else None,
        "fine_tune_epochs": FINE_TUNE_EPOCHS if tuned else None,
        "runs": rows,
        "histories": {run: {k: v for k, v in h.items()} for run, h in histories.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with replacing(out / COMPARE_PNG) as tmp:
        plot(data, tmp)
    with replacing(out / COMPARE_HTML) as tmp:
        Path(tmp).write_text(utf8_text(render_page(data, out)), encoding="utf-8")
    write_json(out / COMPARE_JSON, data)  # last: its presence means the comparison is whole
    return CompareResult(out, rows, data)


def _train_runs(out: Path, planned: dict, validation: list, overrides: dict,
                reporter: Reporter) -> tuple[dict, dict]:
    """Train each planned run in turn: (compare.json's rows, the runs' histories)."""
    # TensorFlow imported before any run is timed: in a fresh `transfer compare` process the
    # first run would otherwise count the process's 3-4 s import as its own work
    import transfer.tf  # noqa: F401
    from transfer.training import train

    # a comparison being replaced (--force) stops claiming to be whole before its first bundle
    # is replaced: interrupted, the folder holds no compare.json describing other bundles, nor
    # the picture and page drawn from it
    if (out / COMPARE_JSON).is_file():
        from transfer.report import made_by_transfer

        (out / COMPARE_JSON).unlink()
        (out / COMPARE_PNG).unlink(missing_ok=True)
        if (out / COMPARE_HTML).is_file() and made_by_transfer(out / COMPARE_HTML):
            (out / COMPARE_HTML).unlink()
    rows, histories = {}, {}
    for run, train_settings in planned.items():
        reporter.info(f"compare: {run}: {DESCRIPTIONS[run]}")
        started = time.perf_counter()
        result = train(train_settings, reporter=reporter)
        seconds = time.perf_counter() - started
        rows[run] = row_of(run, result, seconds, validation, reporter)
        histories[run] = result.history
        if overrides.get(run):
            rows[run]["overrides"] = {k: str(v) for k, v in overrides[run].items()}
    return rows, histories


def row_of(run: str, result, seconds: float, validation: list, reporter: Reporter) -> dict:
    """compare.json's row of one run: the bundle's own metrics and timings, its per-class F1
    on the validation images, and the parameters it trained."""
    from transfer.inference import BundleClassifier

    meta = result.meta
    metrics = meta.get("metrics") or {}
    classifier = BundleClassifier(result.bundle)
    evaluation = validation_report(classifier, validation, reporter, run)
    timings = meta.get("timings") or {}
    tuned = (meta.get("training") or {}).get("fine_tune_result")
    return {
        "run": run,
        "description": DESCRIPTIONS[run],
        "base": meta.get("base"),
        "bundle": str(result.bundle),
        "val_accuracy": metrics.get("val_accuracy"),
        "val_loss": metrics.get("val_loss"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs_run": metrics.get("epochs_run"),
        "per_class_f1": {name: row["f1"] for name, row in evaluation["per_class"].items()},
        "macro_f1": evaluation["macro_f1"],
        "evaluated_accuracy": evaluation["accuracy"],
        # the mean of the per-class recalls (shown where it differs: unbalanced classes)
        "balanced_accuracy": evaluation["balanced_accuracy"],
        "validation_images": evaluation["images"],
        "seconds": round(seconds, 3),
        "train_total_seconds": timings.get("total_seconds"),  # train's own, in meta.json
        # "hit": the base's pass over the photos was an earlier run's, read from the cache
        "feature_cache": meta.get("feature_cache"),
        "parameters_trained": trainable_parameters(classifier.model),
        "parameters_total": int(classifier.model.count_params()),
        # fine-tuning kept, or undone because it did not lower the validation loss
        **({"fine_tune_result": tuned} if tuned else {}),
        # the saved model averages photo and mirror: so do the head's epochs' validation
        # figures, not fine-tuning's (single views; see plots.FINE_TUNE_SINGLE_VIEWS)
        "test_time_flips": bool((meta.get("test_time") or {}).get("flips")),
    }


def _cache_label(cache) -> str:
    """The second line of a run's seconds on the chart: its features read from the cache."""
    if cache == "hit":
        return "\n(cached features)"
    return "\n(partly cached)" if str(cache or "").startswith("partial") else ""


def _loss(value) -> str:
    """A loss of compare.json: null is what a diverged run's NaN was written as."""
    return "not a number" if value is None else f"{value:.4f}"


def notes(data: dict) -> list[str]:
    """What a reader of the table must know besides its numbers: runs whose seconds leave
    out the feature pass (a cache hit), a fine-tuned run whose fine-tuning was undone (it holds
    the frozen run's model)."""
    said = []
    runs = data.get("runs") or {}
    cached = [name for name, row in runs.items() if row.get("feature_cache") == "hit"]
    if cached:
        said.append(f"{', '.join(cached)}: the features the head trained on were read from "
                    "the cache (an earlier run computed them on these photos), so the seconds "
                    "leave out that pass of the base over the photos")
    for name, row in runs.items():  # an earlier run stopped midway left part of them
        if str(row.get("feature_cache") or "").startswith("partial"):
            said.append(f"{name}: some of the features the head trained on were read from the "
                        f"cache ({row['feature_cache'].removeprefix('partial: ')}), so the "
                        "seconds leave out part of the pass of the base over the photos")
    for name, row in (data.get("runs") or {}).items():
        phases = ((data.get("histories") or {}).get(name) or {}).get("phase") or []
        if row.get("test_time_flips") and "fine-tune" in phases:
            said.append(f"{name}: its validation curve after the dashed line is fine-tuning's, "
                        "measured on single photos; before the line, and in the bars and the "
                        "table, the saved model's (each photo averaged with its mirror image), "
                        "so part of the step at the line is that change of measure")
        tuned = row.get("fine_tune_result")
        if bundle.fine_tune_undone(tuned):
            said.append(f"{name}: fine-tuning did not lower the validation loss "
                        f"({_loss(tuned['fine_tuned']['val_loss'])} against "
                        f"{_loss(tuned['frozen']['val_loss'])} before it), so this run kept "
                        "its frozen base and head")
    return said


def validation_report(classifier, files: list, reporter: Reporter, run: str) -> dict:
    """Accuracy and per-class precision/recall/F1 of a bundle on ``files`` ((path, label) of
    the validation images), read as ``transfer predict`` and ``transfer evaluate`` read them."""
    from transfer import metrics
    from transfer.inference import classify_files

    classified = classify_files(classifier, [path for path, _ in files], reporter=reporter,
                                description=f"compare: {run} on the validation images")
    labels, probs = [], []
    for (_, label), c in zip(files, classified, strict=True):
        if c.error is None:
            labels.append(label)
            probs.append(c.probabilities)
    if not probs:
        raise TransferError("no readable validation image")
    y, probs = np.asarray(labels), np.stack(probs)
    predicted = probs.argmax(axis=1)
    names = list(classifier.class_names)
    matrix = metrics.confusion_matrix(y, predicted, len(names))
    per_class = metrics.per_class(matrix, names)
    return {"images": int(len(y)), "accuracy": float(np.mean(predicted == y)),
            "balanced_accuracy": metrics.balanced_accuracy(matrix),
            "per_class": per_class, "macro_f1": metrics.macro_average(per_class)["f1"]}


def trainable_parameters(model) -> int:
    """Weights the run trained: the trainable ones of its final model (a frozen base's are
    not; BatchNormalization frozen while fine-tuning is not)."""
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


# --------------------------------------------------------------------------- pictures


# compare.png's curves: marker, marker size, line width, z-order of each run
LINE_STYLES = {"scratch": ("o", 7, 3.2, 2.0), "frozen": ("s", 7, 3.2, 2.1),
               "fine-tuned": ("D", 4, 1.4, 2.2)}


@plots.drawn
def plot(data: dict, path: Path) -> Path:
    """compare.png: validation accuracy and seconds per run side by side, then the validation
    accuracy per epoch of every run overlaid (fine-tuning epochs continue the frozen ones)."""
    runs = data["runs"]
    names = list(runs)
    colours = {"scratch": "#d95f02", "frozen": "#1b9e77", "fine-tuned": "#7570b3"}
    colour = [colours.get(n, "#666666") for n in names]
    fig, axes = plots.subplots(1, 3, figsize=(15, 4.2),
                               gridspec_kw={"width_ratios": [1, 1, 1.6]})
    accuracy = [runs[n]["val_accuracy"] or 0.0 for n in names]
    bars = axes[0].bar(names, accuracy, color=colour)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("validation accuracy")
    undone = [bundle.fine_tune_undone(runs[n].get("fine_tune_result")) for n in names]
    axes[0].bar_label(bars, labels=[f"{a:.3f}" + ("\n(fine-tuning undone)" if u else "")
                                    for a, u in zip(accuracy, undone, strict=True)])
    seconds = [runs[n]["seconds"] for n in names]
    bars = axes[1].bar(names, seconds, color=colour)
    axes[1].set_ylabel("seconds (the whole run)")
    # room above the tallest bar for its label (two lines with "cached features")
    axes[1].set_ylim(0, max(seconds, default=0) * 1.25 or 1)
    axes[1].bar_label(bars, labels=[f"{s:.0f} s" + _cache_label(runs[n].get("feature_cache"))
                                    for s, n in zip(seconds, names, strict=True)])
    for ax in axes[:2]:
        ax.grid(axis="y", alpha=0.3)
    ax = axes[2]
    # the fine-tuned run's head phase is the frozen run's (same seed): whatever the order of
    # --runs, it is drawn on top, thinner and with a smaller marker, so that the frozen line
    # beneath stays in sight (its train line too)
    for name, c in zip(names, colour, strict=True):
        marker, size, width, zorder = LINE_STYLES.get(name, LINE_STYLES["frozen"])
        history = data.get("histories", {}).get(name) or {}
        values = history.get("val_accuracy") or []
        epochs = list(range(1, len(values) + 1))
        if values:
            ax.plot(epochs, values, "-", marker=marker, markersize=size, linewidth=width,
                    color=c, zorder=zorder, label=f"{name} (validation)")
        train_values = history.get("accuracy") or []
        if train_values:
            ax.plot(list(range(1, len(train_values) + 1)), train_values, ":", color=c,
                    alpha=0.7, linewidth=0.8 * width, zorder=zorder,
                    label=f"{name} (train)")
        phases = history.get("phase") or []
        if "fine-tune" in phases:
            start = phases.index("fine-tune") + 0.5
            ax.axvline(start, color=c, linestyle="--", alpha=0.5)
            if runs[name].get("test_time_flips"):
                plots.single_views_from(ax, start, c)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    base = data.get("base")  # None: only the CNN from scratch ran
    fig.suptitle(f"compare on {data['data_dir']}" + (f": {base}" if base else "")
                 + (f" alpha {data['alpha']}" if base == "mobilenet" else ""))
    plots.save(fig, path)
    return Path(path)


def epochs_cell(row: dict) -> str:
    """How long a run ran and which epoch it keeps ("12 (9)": early stopping, the best epoch
    restored), "-" when not recorded: the CLI's table and the page's."""
    if row.get("epochs_run") and row.get("best_epoch"):
        return f"{row['epochs_run']} ({row['best_epoch']})"
    return "-"


def render_section(data: dict, png: Path | None = None) -> str:
    """The comparison as an HTML section (a table of the runs and compare.png inline), for
    ``transfer.report``'s page of a comparison or a bundle inside one."""
    from transfer.report import data_uri

    def e(value) -> str:
        return html.escape("" if value is None else str(value), quote=True)

    def num(value, digits=4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    runs = data.get("runs") or {}
    classes = sorted({c for row in runs.values() for c in (row.get("per_class_f1") or {})})
    balanced = shows_balanced(runs)
    header = ["run", "validation accuracy", *(["balanced accuracy"] if balanced else []),
              "loss", "macro F1", *[f"F1 {c}" for c in classes],
              "epochs (kept)", "seconds", "parameters trained", "bundle"]
    body = ""
    for name, row in runs.items():
        f1 = row.get("per_class_f1") or {}
        cells = [e(name), num(row.get("val_accuracy")),
                 *([num(row.get("balanced_accuracy"))] if balanced else []),
                 num(row.get("val_loss")),
                 num(row.get("macro_f1")), *[num(f1.get(c)) for c in classes],
                 e(epochs_cell(row)), num(row.get("seconds"), 0),
                 "-" if row.get("parameters_trained") is None
                 else f"{row['parameters_trained']:,}",
                 e(Path(row["bundle"]).name if row.get("bundle") else "-")]
        body += "<tr>" + "".join(f'<td class="{"l" if i == 0 else ""}">{c}</td>'
                                 for i, c in enumerate(cells)) + "</tr>"
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{e(h)}</th>'
                   for i, h in enumerate(header))
    # scrolled inside its box, as the report's tables are: on a phone the page overflowed
    table = (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}'
             "</tbody></table></div>")
    picture = ""
    if png is not None and Path(png).is_file():
        picture = (f'<figure><img src="{data_uri(Path(png).read_bytes())}" '
                   'alt="accuracy and time per run, validation curves overlaid">'
                   "<figcaption>accuracy and time per run; validation (solid) and training "
                   "(dotted) accuracy per epoch</figcaption></figure>")
    said = "".join(f'<p class="warn">{e(note)}</p>' for note in notes(data))
    title = ", ".join(runs).capitalize() or "Comparison"  # the runs it holds, in order
    return (f'<section id="compare"><h2>{e(title)}</h2>'
            f"<p>The same split of {e(data.get('data_dir'))}, the same seed "
            f"({e(data.get('seed'))}).</p>{table}{said}{picture}</section>")


def render_page(data: dict, folder: Path, png: Path | None = None) -> str:
    """A one-file HTML page of a comparison (the report's style, no external resource)."""
    from transfer.report import GENERATOR, STYLE

    png = png if png is not None else Path(folder) / COMPARE_PNG
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"{GENERATOR}<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>compare: {html.escape(str(data.get('data_dir')))}</title>"
            f"<style>{STYLE}</style></head><body><main>{render_section(data, png)}"
            "</main></body></html>\n")


def shows_balanced(runs: dict) -> bool:
    """Whether a run's balanced accuracy differs from its accuracy on the validation images
    (unbalanced classes; on balanced ones the two are equal): then the table and page show
    it beside the accuracy (on 40/30/12/40/8 flowers, scratch 0.62 accuracy, 0.51 balanced)."""
    return any(isinstance(row, dict)
               and isinstance(row.get("balanced_accuracy"), int | float)
               and isinstance(row.get("evaluated_accuracy"), int | float)
               and abs(row["balanced_accuracy"] - row["evaluated_accuracy"]) >= 5e-5
               for row in runs.values())


# compare.json's fields the page reads, and what each must be (``null`` is accepted)
_COMPARE_TYPES = {"runs": dict, "histories": dict, "data_dir": str, "base": str,
                  "alpha": (int, float), "seed": int}
_RUN_TYPES = {"val_accuracy": (int, float), "val_loss": (int, float), "seconds": (int, float),
              "balanced_accuracy": (int, float), "evaluated_accuracy": (int, float),
              "parameters_trained": int, "per_class_f1": dict, "bundle": str,
              "feature_cache": str, "fine_tune_result": dict, "test_time_flips": bool,
              "macro_f1": (int, float), "epochs_run": int, "best_epoch": int}


def read(folder: Path) -> dict:
    """compare.json of a comparison folder, its fields that the page reads checked: an empty,
    garbled or mistyped file is one TransferError naming the file and the field, as a damaged
    meta.json or report.json is."""
    from transfer.bundle import check_field_types
    from transfer.report import read_object

    path = Path(folder) / COMPARE_JSON
    data = read_object(path)
    if data is None:
        raise TransferError(f"{folder} has no {COMPARE_JSON}: run `transfer compare`")
    check_field_types(data, _COMPARE_TYPES, path, required=("runs",))
    for name, row in data["runs"].items():
        if not isinstance(row, dict):
            raise TransferError(f"{path}: runs.{name} must be an object, not "
                                f"{json.dumps(row)[:80]}")
        check_field_types(row, _RUN_TYPES, f"{path}: runs.{name}")
        check_field_types(row.get("per_class_f1") or {},
                          dict.fromkeys(row.get("per_class_f1") or {}, (int, float)),
                          f"{path}: runs.{name}.per_class_f1")
        tuned = row.get("fine_tune_result")
        if bundle.fine_tune_undone(tuned):  # the note quotes both losses
            where = f"{path}: runs.{name}.fine_tune_result"
            phases = ("fine_tuned", "frozen")
            check_field_types(tuned, dict.fromkeys(phases, dict), where, required=phases)
            for phase in phases:  # null: a diverged run's NaN, as compare wrote it
                check_field_types(tuned[phase], {"val_loss": (int, float)}, f"{where}.{phase}")
    return data
