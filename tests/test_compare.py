"""`transfer compare`: the course's runs on one split, their bundles, compare.json (values
equal to each bundle's own metrics), compare.png and the page; genuine MobileNet-0.25."""

from __future__ import annotations

import csv
import html
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from transfer import bundle
from transfer import compare as cmp
from transfer.compare import compare, render_section, run_settings
from transfer.errors import TransferError
from transfer.settings import CompareSettings

TINY = {"scratch": {"epochs": 2, "image_size": 32, "batch_size": 8},
        "frozen": {"epochs": 2}}


@pytest.fixture(scope="module")
def compared(tiny_split, mobilenet_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "runs"
    settings = CompareSettings(data_dir=tiny_split, output=out, runs=["scratch", "frozen"],
                               base="mobilenet", alpha=0.25)
    return compare(settings, overrides=TINY)


def test_both_bundles_and_the_comparison_are_written(compared):
    out = compared.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "compare.json", "compare.png", "frozen", "latest", "report.html", "scratch"]
    for run in ("scratch", "frozen"):
        assert bundle.is_bundle(out / run)
    assert json.loads((out / "scratch/meta.json").read_text())["base"] == "scratch"
    # data/train and data/validate: no fraction was held out (it said 0.2, the default)
    assert json.loads((out / "compare.json").read_text())["validation_split"] is None
    frozen = json.loads((out / "frozen/meta.json").read_text())
    assert (frozen["base"], frozen["alpha"]) == ("mobilenet", 0.25)
    with Image.open(out / "compare.png") as image:
        assert image.size == (1500, 420)
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "frozen" in page and "http" not in page
    # `transfer report` rebuilds it (its own page, also one written before the generator tag)
    from transfer.report import GENERATOR, made_by_transfer, write_report

    assert write_report(out) == out / "report.html"
    (out / "report.html").write_text(page.replace(GENERATOR, ""))
    assert made_by_transfer(out / "report.html")
    assert write_report(out) == out / "report.html" and GENERATOR in (
        out / "report.html").read_text()


def test_an_evaluation_into_the_comparisons_folder_is_refused(compared, tiny_split):
    """`evaluate --model runs/compare/frozen --output runs/compare` said it wrote report.html,
    but the page there stayed the comparison's (report.json beside compare.json): the
    evaluation never got a page. It is refused, even with --force, and nothing is written."""
    from transfer.evaluate import evaluate

    out = compared.output
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for force in (False, True):
        with pytest.raises(TransferError, match=r"is a comparison's folder \(compare.json\): "
                                                r"its report.html is the comparison's page"):
            evaluate(out / "frozen", data_dir=tiny_split / "validate", output=out, force=force)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_compare_json_holds_each_bundles_own_metrics(compared, tiny_split):
    from transfer.inference import BundleClassifier, classify_files

    data = json.loads(compared.json_path.read_text())
    assert data["kind"] == "transfer-compare" and list(data["runs"]) == ["scratch", "frozen"]
    assert data["runs"] == compared.runs
    for run, row in data["runs"].items():
        meta = json.loads((compared.output / run / "meta.json").read_text())
        assert (row["run"], row["base"], data["seed"]) == (run, meta["base"], meta["seed"])
        assert row["best_epoch"] == meta["metrics"]["best_epoch"]
        assert row["train_total_seconds"] == meta["timings"]["total_seconds"]
        # the curves drawn for each run are its own bundle's history.csv (values, not names)
        with open(compared.output / run / "history.csv", newline="", encoding="utf-8") as f:
            saved = list(csv.DictReader(f))
        assert {key: [str(v) for v in values] for key, values in
                data["histories"][run].items()} == {
            key: [line[key] for line in saved] for key in saved[0] if key != "epoch"}
        # each class's F1 is that class's: the bundle classifying the validation photos here
        classifier = BundleClassifier(compared.output / run)
        names = list(classifier.class_names)
        photos = sorted((tiny_split / "validate").glob("*/*"))
        truth = [names.index(p.parent.name) for p in photos]
        guess = [int(np.argmax(c.probabilities)) for c in classify_files(classifier, photos)]
        assert row["evaluated_accuracy"] == pytest.approx(
            np.mean(np.equal(truth, guess)), abs=1e-9)
        for k, name in enumerate(names):
            hit = sum(t == g == k for t, g in zip(truth, guess, strict=True))
            miss = sum((t == k) != (g == k) for t, g in zip(truth, guess, strict=True))
            assert row["per_class_f1"][name] == pytest.approx(
                2 * hit / (2 * hit + miss) if hit else 0.0), (run, name)
        assert row["feature_cache"] == meta["feature_cache"]
        assert row["test_time_flips"] is meta["test_time"]["flips"]
        assert row["bundle"] == str(compared.output / run)
        assert row["val_accuracy"] == meta["metrics"]["val_accuracy"]
        assert row["val_loss"] == meta["metrics"]["val_loss"]
        assert row["epochs_run"] == meta["metrics"]["epochs_run"] <= 2
        # the validation images classified as predict reads them: the same accuracy
        assert row["validation_images"] == 12
        assert row["evaluated_accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-9)
        assert set(row["per_class_f1"]) == {"cats", "dogs"}
        assert all(0 <= f <= 1 for f in row["per_class_f1"].values())
        assert row["macro_f1"] == pytest.approx(sum(row["per_class_f1"].values()) / 2)
        assert row["seconds"] >= meta["timings"]["total_seconds"] > 0
        assert len(data["histories"][run]["val_accuracy"]) == row["epochs_run"]
    # the frozen run trains the head only: MobileNet-0.25's 256 features + 1 bias
    assert data["runs"]["frozen"]["parameters_trained"] == 257
    scratch = data["runs"]["scratch"]
    assert scratch["parameters_trained"] > 100_000  # every weight but BatchNorm's averages
    assert scratch["parameters_total"] > scratch["parameters_trained"]
    assert data["runs"]["frozen"]["overrides"] == {"epochs": "2"}


def test_an_existing_comparison_is_refused_without_force(compared):
    written = [compared.output / name for name in (cmp.COMPARE_JSON, cmp.COMPARE_PNG,
                                                   cmp.COMPARE_HTML)]
    before = [path.read_bytes() for path in written]
    settings = CompareSettings(data_dir=compared.data["data_dir"], output=compared.output,
                               runs=["frozen"])
    with pytest.raises(TransferError, match="compare.json already exists; use --force"):
        compare(settings)
    # a report.html of the user's in a new output folder: kept, before any run
    mine = compared.output.parent / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("<p>notes</p>")
    with pytest.raises(TransferError, match="not a transfer report; use --force"):
        compare(settings.replace(output=mine))
    assert (mine / "report.html").read_text() == "<p>notes</p>"
    # a compare.png of the user's, with no compare.json: kept too (it was replaced)
    chart = compared.output.parent / "chart"
    chart.mkdir()
    (chart / "compare.png").write_bytes(b"my chart")
    with pytest.raises(TransferError, match="compare.png already exists; use --force"):
        compare(settings.replace(output=chart))
    assert (chart / "compare.png").read_bytes() == b"my chart"
    assert (compared.data["base"], compared.data["alpha"], compared.data["fine_tune"]) == (
        "mobilenet", 0.25, None)  # frozen and scratch: no fine-tuning
    assert [path.read_bytes() for path in written] == before  # the refused one: untouched


def test_a_comparison_replaced_then_interrupted_leaves_no_stale_compare_json(
        compared, tmp_path, monkeypatch):
    """compare --force stopped (Ctrl-C) while its first run retrains: compare.json, whose
    presence means the comparison is whole, is gone rather than describing the old runs."""
    out = tmp_path / "runs"
    shutil.copytree(compared.output, out, symlinks=True)  # `latest` stays the runs' link
    assert (out / cmp.COMPARE_JSON).is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transfer.training.train", interrupted)
    settings = CompareSettings(data_dir=compared.data["data_dir"], output=out,
                               runs=["scratch", "frozen"], force=True)
    assert (out / cmp.COMPARE_PNG).is_file() and (out / cmp.COMPARE_HTML).is_file()
    with pytest.raises(KeyboardInterrupt):
        compare(settings, overrides=TINY)
    assert not (out / cmp.COMPARE_JSON).exists()
    # nor the picture and the page of the old runs (they showed the old comparison)
    assert not (out / cmp.COMPARE_PNG).exists() and not (out / cmp.COMPARE_HTML).exists()
    from transfer.report import write_report

    assert (out / "latest").is_symlink()  # the runs' own link: not listed as a bundle
    with pytest.raises(TransferError, match=r"holds bundles \(frozen, scratch\) but neither "
                       r"meta.json .* nor compare.json \(a comparison, written when all its "
                       r"runs are done\): report one of them"):
        write_report(out)
    # a page of the user's own beside the comparison (not transfer's): kept, as --force
    # stopped before anything replaced it
    shutil.copy(compared.json_path, out / cmp.COMPARE_JSON)
    (out / cmp.COMPARE_HTML).write_text("<p>notes</p>")
    with pytest.raises(KeyboardInterrupt):
        compare(settings, overrides=TINY)
    assert not (out / cmp.COMPARE_JSON).exists()
    assert (out / cmp.COMPARE_HTML).read_text() == "<p>notes</p>"


def test_a_new_comparison_stopped_before_any_bundle_leaves_no_empty_folder(
        tiny_split, mobilenet_weights, tmp_path, monkeypatch):
    """Ctrl-C in the first run of a new comparison left its (empty) output folder behind;
    the folders compare made go again, and a folder the user had made is kept."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transfer.training.train", interrupted)
    out = tmp_path / "new" / "runs"
    with pytest.raises(KeyboardInterrupt):
        compare(CompareSettings(data_dir=tiny_split, output=out, runs=["scratch", "frozen"]),
                overrides=TINY)
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(KeyboardInterrupt):
        compare(CompareSettings(data_dir=tiny_split, output=mine, runs=["scratch", "frozen"]),
                overrides=TINY)
    assert mine.is_dir()


def test_overrides_that_move_a_runs_split_are_refused(tiny_split, tmp_path):
    """The runs' F1 is measured on the first run's validation images: a later run given
    another seed or validation split (the library's ``overrides``) trained on some of them
    and was scored on them, its F1 inflated beside its own val_accuracy."""
    settings = CompareSettings(data_dir=tiny_split, output=tmp_path / "cmp",
                               runs=["scratch", "frozen"])
    for field, value in (("seed", 7), ("validation_split", 0.5),
                         ("data_dir", tiny_split / "train"), ("train_dir", tiny_split / "train")):
        with pytest.raises(TransferError) as caught:
            compare(settings, overrides={**TINY, "frozen": {"epochs": 2, field: value}})
        assert str(caught.value).startswith(f"overrides of frozen change {field}: the runs of "
                                            "a comparison share one split"), caught.value
    assert not (tmp_path / "cmp").exists()  # refused before anything trained


def test_an_existing_bundle_is_refused_before_any_run_trains(tiny_split, tmp_path):
    out = tmp_path / "cmp"
    (out / "frozen").mkdir(parents=True)
    (out / "frozen" / "notes.txt").write_text("mine")
    settings = CompareSettings(data_dir=tiny_split, output=out, runs=["scratch", "frozen"])
    with pytest.raises(TransferError, match="frozen"):
        compare(settings, overrides=TINY)
    assert sorted(p.name for p in out.iterdir()) == ["frozen"]  # scratch never trained


def test_an_evaluations_folder_as_output_is_refused_without_force(tiny_split, tmp_path):
    """`compare --output DIR` over `evaluate --output DIR` replaced the evaluation's
    report.html with the comparison's page (beside the evaluation's report.json) without
    --force; it is refused before anything trains, and taken with --force."""
    out = tmp_path / "mystuff"
    out.mkdir()
    (out / "report.json").write_text('{"kind": "transfer-evaluate", "accuracy": 0.9}')
    settings = CompareSettings(data_dir=tiny_split, output=out, runs=["scratch", "frozen"])
    with pytest.raises(TransferError) as info:
        settings.validated()
    assert str(info.value) == (f"{out} holds an evaluation (report.json): the comparison's "
                               "report.html would replace its page; use --force or --output "
                               "another folder")
    assert settings.replace(force=True).validated().output == out


def test_the_runs_share_data_seed_and_base(tmp_path):
    settings = CompareSettings(data_dir=tmp_path / "data", output=tmp_path / "out", seed=7,
                               validation_split=0.25, fine_tune=40).validated()
    runs = {run: run_settings(settings, run) for run in settings.runs}
    assert {(s.data_dir, s.seed, s.validation_split) for s in runs.values()} == {
        (tmp_path / "data", 7, 0.25)}
    assert runs["scratch"].base == "scratch" and runs["scratch"].recipe() == "scratch"
    frozen, tuned = runs["frozen"], runs["fine-tuned"]
    assert (frozen.base, frozen.alpha, frozen.fine_tune) == ("mobilenet", 0.25, 0)
    # the fine-tuned run's head trains on the frozen run's cached features: same base input
    assert (tuned.base, tuned.alpha, tuned.image_size, tuned.augment) == (
        frozen.base, frozen.alpha, frozen.image_size, frozen.augment)
    assert (tuned.fine_tune, tuned.fine_tune_lr, tuned.fine_tune_epochs) == (
        40, cmp.FINE_TUNE_LR, cmp.FINE_TUNE_EPOCHS)
    assert [s.output for s in runs.values()] == [tmp_path / "out" / r for r in runs]


def test_options_the_chosen_runs_do_not_use_are_said(tmp_path):
    """--runs scratch --base vgg16 --alpha 0.5, --fine-tune 30 without the fine-tuned run:
    accepted without a word (compare.json recorded null for them)."""
    def said(**kw) -> list[str]:
        asked = CompareSettings(data_dir=tmp_path / "data", output=tmp_path / "out", **kw)
        return asked.unused(asked.validated().runs)

    assert said() == [] and said(runs="frozen,fine-tuned", fine_tune=30) == []
    assert said(runs="scratch", base="vgg16") == [
        "--base vgg16 unused: the scratch run trains a CNN from scratch, no pretrained base"]
    assert said(runs="scratch,frozen", fine_tune=30, alpha=0.5) == [
        "--fine-tune 30 unused: it is the fine-tuned run's, and --runs scratch,frozen has none"]
    # settings validated first (as the CLI passes them, the alpha filled in) say the same
    filled = CompareSettings(data_dir=tmp_path / "data", output=tmp_path / "out",
                             runs="scratch").validated()
    assert filled.alpha == 0.25 and filled.unused(filled.runs) == []
    assert said(runs="scratch", alpha=0.5) == [
        "--alpha 0.5 unused: the scratch run trains a CNN from scratch, no pretrained base"]


def test_a_folder_of_class_folders_is_split_once_for_every_run(tiny_split, tmp_path):
    """--data-dir as train takes it: one folder of class folders, split in memory; the
    validation images scored are the run's own (its meta's validation count)."""
    data = tmp_path / "photos"
    shutil.copytree(tiny_split / "train", data)
    result = compare(CompareSettings(data_dir=data, output=tmp_path / "out", runs=["scratch"],
                                     validation_split=0.25),
                     overrides={"scratch": {"epochs": 1, "image_size": 32}})
    meta = json.loads((tmp_path / "out/scratch/meta.json").read_text())
    assert meta["data"]["split"] == "in-memory"
    assert result.data["validation_split"] == meta["data"]["validation_split"] == 0.25
    row = result.runs["scratch"]
    assert row["validation_images"] == meta["data"]["validate_images"] == 6
    assert row["evaluated_accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-9)
    # no run used a base or fine-tuning: none recorded (compare.json said mobilenet 0.25, fine
    # tune 60, and the chart's title "mobilenet alpha 0.25", for a CNN from scratch alone)
    assert [result.data[k] for k in ("base", "alpha", "fine_tune", "fine_tune_lr")] == [None] * 4
    assert cmp.read(tmp_path / "out")["base"] is None


def test_any_pretrained_base_without_alpha_and_missing_weights_said_first(
        tiny_split, tmp_path, monkeypatch):
    """--base inception alone (compare's MobileNet width 0.25 was checked against it: "--alpha
    applies to mobilenet only"); its weights missing offline: one error before the scratch
    run's minutes, with compare's own way around (it has no --weights)."""
    from test_bases import offline

    for base in ("inception", "vgg16"):
        assert CompareSettings(data_dir=tmp_path / "data", output=tmp_path / "o", base=base
                               ).validated().alpha == 1.0
    assert CompareSettings(data_dir=tmp_path / "data",
                           output=tmp_path / "o").validated().alpha == 0.25
    with pytest.raises(TransferError, match="--alpha applies to mobilenet only"):
        CompareSettings(data_dir=tmp_path / "data", output=tmp_path / "o", base="inception",
                        alpha=0.5).validated()
    offline(monkeypatch)
    out = tmp_path / "cmp"
    settings = CompareSettings(data_dir=tiny_split, output=out, base="vgg16")
    with pytest.raises(TransferError) as caught:
        compare(settings, overrides=TINY)
    message = str(caught.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "choose another --base" in message and "--weights" not in message
    assert not out.exists() or not any(out.iterdir())  # nothing trained


def test_the_section_renders_without_a_picture():
    data = {"data_dir": "d", "seed": 1, "runs": {"frozen": {
        "val_accuracy": 0.9, "val_loss": 0.2, "per_class_f1": {"a": 0.8, "b": 1.0},
        "seconds": 3.2, "parameters_trained": 1234, "bundle": "x/frozen"}}}
    text = render_section(data)
    assert "F1 a" in text and "1,234" in text and "<img" not in text
    assert "<h2>Frozen</h2>" in text  # the runs it holds, not all three by name
    two = dict(data, runs={"scratch": data["runs"]["frozen"], **data["runs"]})
    assert "<h2>Scratch, frozen</h2>" in render_section(two)


def test_a_fine_tuned_run_whose_fine_tuning_was_undone_says_so(tmp_path, monkeypatch):
    """A fine-tuned run that kept its frozen model (fine-tuning raised the validation loss)
    must not read as fine-tuning's result: the page, the picture and the CLI's notes say so."""
    tuned = {"kept": False, "frozen": {"val_loss": 0.21, "val_accuracy": 0.93},
             "fine_tuned": {"val_loss": 0.35, "val_accuracy": 0.91}}
    row = {"val_accuracy": 0.93, "val_loss": 0.21, "per_class_f1": {"a": 0.9},
           "seconds": 3.0, "parameters_trained": 10, "bundle": "x/fine-tuned"}
    data = {"data_dir": "d", "seed": 1, "base": "mobilenet", "alpha": 0.25,
            "runs": {"frozen": dict(row, bundle="x/frozen", feature_cache="miss"),
                     "fine-tuned": dict(row, fine_tune_result=tuned, feature_cache="hit")}}
    said = ("fine-tuned: fine-tuning did not lower the validation loss (0.3500 against 0.2100 "
            "before it), so this run kept its frozen base and head")
    # its head trained on the frozen run's features, read from the cache: its time says so
    cached = ("fine-tuned: the features the head trained on were read from the cache (an "
              "earlier run computed them on these photos), so the seconds leave out that pass of "
              "the base over the photos")
    assert cmp.notes(data) == [cached, said]
    assert said in render_section(data) and html.escape(cached) in render_section(data)
    kept = dict(data, runs={"fine-tuned": dict(row, fine_tune_result=dict(tuned, kept=True))})
    assert cmp.notes(kept) == [] and "did not lower" not in render_section(kept)
    import matplotlib.axes

    seen, real = [], matplotlib.axes.Axes.bar_label

    def spy(self, container, labels=None, **kw):  # the labels drawn on the bars
        seen.append(list(labels))
        return real(self, container, labels=labels, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar_label", spy)
    cmp.plot(data, tmp_path / "c.png")
    assert seen[0] == ["0.930", "0.930\n(fine-tuning undone)"]
    assert seen[1] == ["3 s", "3 s\n(cached features)"]


def test_a_run_whose_features_were_partly_cached_says_so(tmp_path, monkeypatch):
    """train's feature_cache "partial: R of N features read, C computed" (a rerun after a
    Ctrl-C in the pass) is a cache hit in part: its seconds leave out part of the pass, and
    the table's notes and the chart said nothing (they looked for "hit" alone)."""
    row = {"val_accuracy": 0.9, "val_loss": 0.3, "per_class_f1": {"a": 0.9}, "seconds": 3.0,
           "parameters_trained": 10, "bundle": "x/frozen",
           "feature_cache": "partial: 72 of 84 features read, 12 computed"}
    data = {"data_dir": "d", "seed": 1, "base": "mobilenet", "alpha": 0.25,
            "runs": {"frozen": row, "scratch": dict(row, feature_cache="off")}}
    said = ("frozen: some of the features the head trained on were read from the cache (72 of "
            "84 features read, 12 computed), so the seconds leave out part of the pass of the "
            "base over the photos")
    assert cmp.notes(data) == [said] and said in render_section(data)
    import matplotlib.axes

    seen, real = [], matplotlib.axes.Axes.bar_label

    def spy(self, container, labels=None, **kw):
        seen.append(list(labels))
        return real(self, container, labels=labels, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar_label", spy)
    cmp.plot(data, tmp_path / "c.png")
    assert seen[1] == ["3 s\n(partly cached)", "3 s"]


def test_an_output_inside_the_photo_folder_is_refused_before_any_run(tmp_path):
    """compare --data-dir photos --output photos made photos/frozen and photos/latest, which
    the next train read as classes; --output photos/compare failed as 'a class with no
    images' and left the folder behind."""
    photos = tmp_path / "photos"
    for name in ("cats", "dogs"):
        (photos / name).mkdir(parents=True)
    for output in (photos, photos / "compare"):
        with pytest.raises(TransferError, match=r"is inside the data folder .*photos: what is "
                           r"written there would be read as photos next time"):
            CompareSettings(data_dir=photos, output=output).validated()
    assert sorted(p.name for p in photos.iterdir()) == ["cats", "dogs"]
    CompareSettings(data_dir=photos, output=tmp_path / "runs").validated()  # beside it: fine


def test_the_seconds_labels_stay_inside_their_panel(tmp_path, monkeypatch):
    """compare.png: the tallest bar's label ("64 s", or two lines with "cached features")
    sat on the panel's top border or spilled above it."""
    from transfer import compare, plots

    kept = []
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, *a, **k: (kept.append(fig),
                                                             real_save(fig, *a, **k)))
    row = {"val_accuracy": 0.9, "val_loss": 0.3, "per_class_f1": {"a": 0.9}, "bundle": "x"}
    data = {"data_dir": "d", "base": "mobilenet", "alpha": 0.25, "seed": 1, "runs": {
        "scratch": {**row, "seconds": 64.0},
        "frozen": {**row, "seconds": 60.0, "feature_cache": "hit"}}}
    compare.plot(data, tmp_path / "compare.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = kept[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    panel = fig.axes[1]
    top = panel.get_window_extent(renderer).y1
    labels = [t for t in panel.texts if " s" in t.get_text()]
    assert len(labels) == 2
    assert all(t.get_window_extent(renderer).y1 <= top for t in labels)
    # each run's bar is its own seconds, under its own label
    assert [bar.get_height() for bar in panel.patches] == [
        row["seconds"] for row in data["runs"].values()]
    for bar, label, row in zip(panel.patches, labels, data["runs"].values(), strict=True):
        box = bar.get_window_extent(renderer)
        assert box.x0 < label.get_window_extent(renderer).x0 < box.x1
        assert label.get_text().startswith(f"{row['seconds']:.0f} s")


def test_fine_tunings_single_view_curve_is_said_on_the_chart_and_in_the_notes(tmp_path,
                                                                            monkeypatch):
    """compare.png's fine-tuned curve stepped down at the dashed line (0.800 -> 0.625) while
    its bar said 0.800: the head's epochs are validated as the saved model (photo and mirror
    averaged), fine-tuning's on single views. The chart says so beside the line and the notes
    (CLI, page) say why; not for a run without test-time flips."""
    from transfer import plots

    kept = []
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, *a, **k: (kept.append(fig),
                                                             real_save(fig, *a, **k)))
    row = {"val_accuracy": 0.8, "val_loss": 0.5, "per_class_f1": {"a": 0.8}, "bundle": "x",
           "seconds": 10.0, "test_time_flips": True}
    histories = {"frozen": {"val_accuracy": [0.7, 0.8]},
                 "fine-tuned": {"val_accuracy": [0.7, 0.8, 0.625, 0.775],
                                "phase": ["head", "head", "fine-tune", "fine-tune"]}}
    data = {"data_dir": "d", "seed": 1, "runs": {"frozen": row, "fine-tuned": row},
            "histories": histories}
    cmp.plot(data, tmp_path / "compare.png")
    assert [(t.get_position()[0], t.get_text()) for t in kept[0].axes[2].texts] == [
        (2.7, plots.FINE_TUNE_SINGLE_VIEWS)]
    note = ("fine-tuned: its validation curve after the dashed line is fine-tuning's, measured "
            "on single photos; before the line, and in the bars and the table, the saved "
            "model's (each photo averaged with its mirror image), so part of the step at the "
            "line is that change of measure")
    assert cmp.notes(data) == [note] and html.escape(note) in render_section(data)
    plain = dict(data, runs={n: dict(row, test_time_flips=False) for n in data["runs"]})
    kept.clear()
    cmp.plot(plain, tmp_path / "plain.png")
    assert list(kept[0].axes[2].texts) == [] and cmp.notes(plain) == []


def test_the_frozen_curve_stays_in_sight_under_the_fine_tuned_one(tmp_path, monkeypatch):
    """`--runs frozen,fine-tuned`: the fine-tuned run's head phase is the frozen run's, and its
    line (the second run's, drawn wide) covered the frozen one exactly, so the legend named
    two curves no one could see (62 frozen-green pixels left); with `--runs fine-tuned,frozen`
    the fine-tuned head phase was the hidden one. Both are now in sight, whatever the order:
    the same pixels of each colour in the curves' panel (legend aside)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from transfer import plots

    kept = []
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, *a, **k: (kept.append(fig),
                                                             real_save(fig, *a, **k)))
    head = list(np.clip(0.6 + np.cumsum(np.random.default_rng(0).uniform(0, 0.03, 20)), 0,
                        0.95))
    histories = {"frozen": {"val_accuracy": head, "accuracy": [v + 0.02 for v in head]},
                 "fine-tuned": {"val_accuracy": head + [0.96] * 5,
                                "accuracy": [v + 0.02 for v in head] + [0.97] * 5,
                                "phase": ["head"] * 20 + ["fine-tune"] * 5}}
    row = {"val_accuracy": 0.9, "val_loss": 0.3, "per_class_f1": {"a": 0.9}, "bundle": "x",
           "seconds": 10.0}

    def seen(order: list[str]) -> tuple[int, int]:
        """Pixels of the frozen green and of the fine-tuned purple among the curves."""
        kept.clear()
        path = cmp.plot({"data_dir": "d", "seed": 1, "runs": dict.fromkeys(order, row),
                         "histories": {n: histories[n] for n in order}},
                        tmp_path / "compare.png")
        panel = kept[0].axes[2]
        renderer = FigureCanvasAgg(kept[0]).get_renderer()
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        height = pixels.shape[0]
        inside = np.zeros(pixels.shape[:2], bool)
        box, legend = (panel.get_window_extent(renderer),
                       panel.get_legend().get_window_extent(renderer))
        inside[int(height - box.y1):int(height - box.y0), int(box.x0):int(box.x1)] = True
        inside[int(height - legend.y1) - 2:int(height - legend.y0) + 2,
               int(legend.x0) - 2:int(legend.x1) + 2] = False
        return tuple(int(((np.abs(pixels - colour).sum(-1) < 40) & inside).sum())
                     for colour in ((27, 158, 119), (117, 112, 179)))

    first, second = seen(["frozen", "fine-tuned"]), seen(["fine-tuned", "frozen"])
    assert first == second, (first, second)
    assert first[0] > 500 and first[1] > 500, first


def test_no_run_is_timed_importing_tensorflow(tmp_path):
    """In a fresh `transfer compare` process TensorFlow is imported before the first run's
    clock starts: the first run's seconds would otherwise hold the process's 3-4 s import,
    and the comparison of times would favour the runs after it."""
    import subprocess
    import sys

    code = """
import sys
from pathlib import Path
from transfer import compare, training
from transfer.progress import Reporter

def first_run(settings, reporter=None):
    print("tensorflow imported:", "tensorflow" in sys.modules)
    raise SystemExit(0)

assert "tensorflow" not in sys.modules
training.train = first_run
compare._train_runs(Path(sys.argv[1]), {"scratch": None}, [], {}, Reporter())
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "tensorflow imported: True"


def test_the_table_says_how_long_each_run_ran_and_which_epoch_it_keeps(compared):
    """A run early stopping cut short (and the epoch it kept) was in compare.json alone."""
    from rich.console import Console

    from transfer.cli import compare_table

    console = Console(record=True, width=200)
    console.print(compare_table(compared.runs, "compare"))
    text = console.export_text()
    assert "epochs (kept)" in text
    header = next(line for line in text.splitlines() if "epochs (kept)" in line)
    columns = [cell.strip() for cell in header.strip().strip("┃").split("┃")]
    for run, row in compared.runs.items():
        line = next(line for line in text.splitlines() if line.strip("│ ").startswith(run))
        assert f"{row['epochs_run']} ({row['best_epoch']})" in line
        # every column under its own heading, each run's figures on its own line
        cells = dict(zip(columns, [cell.strip() for cell in line.strip().strip("│").split("│")],
                         strict=True))
        assert cells == {"run": run, "validation accuracy": f"{row['val_accuracy']:.4f}",
                         "loss": f"{row['val_loss']:.4f}", "macro F1": f"{row['macro_f1']:.4f}",
                         "epochs (kept)": f"{row['epochs_run']} ({row['best_epoch']})",
                         "seconds": f"{row['seconds']:.0f}",
                         "parameters trained": f"{row['parameters_trained']:,}"}


def test_the_page_has_the_tables_macro_f1_and_epochs(compared):
    """The comparison's report.html had per-class F1 but neither macro F1 nor "epochs
    (kept)", which the console's table and compare.json have."""
    import re

    page = (compared.output / "report.html").read_text()
    header = re.findall(r"<th[^>]*>([^<]*)</th>", page)
    assert "macro F1" in header and "epochs (kept)" in header
    rows = re.findall(r"<tr>(.*?)</tr>", page)[1:]
    for (run, row), cells in zip(compared.runs.items(), rows, strict=True):
        values = dict(zip(header, re.findall(r"<td[^>]*>([^<]*)</td>", cells), strict=True))
        assert values["run"] == run
        assert values["macro F1"] == f"{row['macro_f1']:.4f}"
        assert values["epochs (kept)"] == f"{row['epochs_run']} ({row['best_epoch']})"
        # the other columns too, each under its own heading (F1 of each class its own)
        assert (values["validation accuracy"], values["loss"]) == (
            f"{row['val_accuracy']:.4f}", f"{row['val_loss']:.4f}")
        assert {c: values[f"F1 {c}"] for c in row["per_class_f1"]} == {
            c: f"{f1:.4f}" for c, f1 in row["per_class_f1"].items()}
        assert (values["seconds"], values["parameters trained"], values["bundle"]) == (
            f"{row['seconds']:.0f}", f"{row['parameters_trained']:,}", run)


def test_unbalanced_classes_show_each_runs_balanced_accuracy(compared, tmp_path):
    """On unbalanced classes the comparison rested on accuracy alone (40/30/12/40/8 flowers:
    scratch 0.62 accuracy, 0.51 balanced, in its meta.json only). compare.json holds each
    run's balanced accuracy on the validation images; the table and the page show it where it
    differs from the accuracy (the tiny split is balanced: equal, not shown)."""
    import re

    from rich.console import Console

    from transfer.cli import compare_table

    runs = compared.runs
    assert all(row["balanced_accuracy"] == pytest.approx(row["evaluated_accuracy"])
               for row in runs.values())
    console = Console(record=True, width=200)
    console.print(compare_table(runs, "compare"))
    assert "balanced accuracy" not in console.export_text()
    assert "balanced accuracy" not in (compared.output / "report.html").read_text()
    data = json.loads((compared.output / "compare.json").read_text())
    data["runs"]["scratch"]["balanced_accuracy"] = 0.5083
    console = Console(record=True, width=200)
    console.print(compare_table(data["runs"], "compare"))
    text = console.export_text()
    line = next(line for line in text.splitlines() if "scratch" in line)
    assert "balanced accuracy" in text and "0.5083" in line
    page = cmp.render_page(data, compared.output)
    header = re.findall(r"<th[^>]*>([^<]*)</th>", page)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", re.findall(r"<tr>(.*?)</tr>", page)[1])
    assert dict(zip(header, cells, strict=True))["balanced accuracy"] == "0.5083"
