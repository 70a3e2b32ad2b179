"""transfer evaluate on real held-out photos (the metrics themselves: test_metrics.py)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import Recorder, require_asset, split_images
from five_class import TEST_COUNTS, bundle_data, five_class_bundle, in_memory_bundle
from PIL import Image
from typer.testing import CliRunner
from unwritable import names_path, unwritable_folder

from transfer import metrics, pipelines
from transfer.cli import app
from transfer.errors import TransferError
from transfer.evaluate import evaluate
from transfer.predict import predict
from transfer.settings import EvaluateSettings

runner = CliRunner()


@pytest.fixture(scope="module")
def flowers5(tmp_path_factory, mobilenet_weights):
    """A five-class bundle on genuine flower photos (tests/five_class.py)."""
    return five_class_bundle(tmp_path_factory)


def read_suspects(folder: Path) -> list[dict]:
    with open(folder / "suspects.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_on_held_out_photos(trained_bundle, small_split, tmp_path):
    out = tmp_path / "report"
    result = evaluate(trained_bundle.bundle, data_dir=small_split / "test", output=out)
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    matrix = np.asarray(report["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == report["images"] == 40
    assert matrix.sum(axis=1).tolist() == [20, 20]
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 40)
    assert report["per_class"]["cats"]["support"] == 20
    for name, row in report["per_class"].items():
        i = ["cats", "dogs"].index(name)
        assert row["precision"] == pytest.approx(matrix[i, i] / matrix[:, i].sum())
        assert row["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum())
    assert 0.5 < report["roc_auc"] <= 1 and report["roc_auc_positive_class"] == "dogs"
    assert report["is_training_validation_folder"] is False
    # 40 images: auto keeps TensorFlow (tests/test_inference_engines.py converts the model)
    assert report["engine"]["requested"] == "auto" and report["engine"]["name"] == "tf"
    assert report["engine"]["images"] == 40 and report["engine"]["images_per_second"] > 0
    # the same images through predict give the same labels (one input path for both)
    predicted = predict([small_split / "test"], model=trained_bundle.bundle)
    labels = [["cats", "dogs"].index(i.label) for i in predicted.items]
    truth = [["cats", "dogs"].index(c) for _, c in split_images(small_split / "test")]
    assert metrics.confusion_matrix(truth, labels, 2).tolist() == report["confusion_matrix"]
    # ROC AUC from predict's p(dogs), counted pair by pair (0.5 < AUC <= 1 let an AUC of the
    # hard labels pass: 0.925 for 1.0)
    p_dogs = [i.probabilities["dogs"] for i in predicted.items]
    dogs = [p for p, t in zip(p_dogs, truth, strict=True) if t == 1]
    cats = [p for p, t in zip(p_dogs, truth, strict=True) if t == 0]
    pairs = np.mean([(d > c) + 0.5 * (d == c) for d in dogs for c in cats])
    assert report["roc_auc"] == pytest.approx(pairs, abs=1e-6)
    for name in ("confusion.png", "misclassified.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 200
    mistakes = report["worst_mistakes"]
    assert len(mistakes) == min(16, 40 - int(np.trace(matrix)))
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes),
                                                          reverse=True)
    assert all(m["true"] != m["predicted"] for m in mistakes)


def test_default_folder_reproduces_the_training_metrics(trained_bundle, tmp_path):
    """On the bundle's own validation folder, evaluate (predict's image reading) gives the
    accuracy and loss that training measured with its Keras pipeline."""
    copy = tmp_path / "bundle"
    shutil.copytree(trained_bundle.bundle, copy)
    result = evaluate(copy)
    trained = trained_bundle.meta["metrics"]
    assert result.output == copy and (copy / "report.json").exists()
    assert result.report["is_training_validation_folder"] is True
    assert result.report["images"] == trained_bundle.meta["data"]["validate_images"] == 100
    assert result.report["accuracy"] == pytest.approx(trained["val_accuracy"], abs=1e-6)
    assert result.report["loss"] == pytest.approx(trained["val_loss"], abs=1e-4)
    evaluate(copy)  # the same evaluation again replaces its own outputs
    cli = runner.invoke(app, ["evaluate", "--model", str(copy)])
    assert cli.exit_code == 0, cli.output
    assert "training reported validation accuracy" in cli.output
    assert "precision" in cli.output and "ROC AUC" in cli.output


def test_the_confusion_title_names_the_bundle_not_latest(trained_bundle, small_split,
                                                         tmp_path, monkeypatch):
    """Evaluated through models/latest, confusion.png was titled "latest on ...": a name
    that moves on to the next bundle. It names the bundle the link leads to, as the page
    does."""
    from transfer import plots

    bundle_dir = tmp_path / "mobilenet-20261205-120000"
    shutil.copytree(trained_bundle.bundle, bundle_dir)
    (tmp_path / "latest").symlink_to(bundle_dir.name)
    titles, real = [], plots.confusion
    monkeypatch.setattr(plots, "confusion", lambda matrix, names, path, title="": (
        titles.append(title), real(matrix, names, path, title))[1])
    evaluate(tmp_path / "latest", data_dir=small_split / "test", output=tmp_path / "a")
    evaluate(bundle_dir, data_dir=small_split / "test", output=tmp_path / "b")
    assert [t.split(" on ")[0] for t in titles] == [bundle_dir.name] * 2
    assert titles[0] == titles[1]
    # the page says which bundle the link led to (it said "Evaluated models/latest", and
    # went on saying so once the link had moved to another bundle)
    through = (tmp_path / "a" / "report.html").read_text(encoding="utf-8")
    assert f"Evaluated <b>{tmp_path / 'latest'} -&gt; {bundle_dir.name}</b>" in through
    assert f"Evaluated <b>{bundle_dir}</b>" in (tmp_path / "b" / "report.html").read_text(
        encoding="utf-8")


def test_evaluate_loads_the_model_once_its_report_included(trained_bundle, small_split,
                                                           tmp_path, monkeypatch):
    """The report's Grad-CAM overlays are traced with the model evaluate loaded (through
    models/latest too), not with a second load of model.keras."""
    from transfer import bundle

    bundle_dir = tmp_path / "mobilenet-20261206-120000"
    shutil.copytree(trained_bundle.bundle, bundle_dir)
    (tmp_path / "latest").symlink_to(bundle_dir.name)
    monkeypatch.setenv("TRANSFER_REPORT_GRADCAMS", "2")  # the suite's default is 0
    loads: list = []
    real = bundle.load_keras
    monkeypatch.setattr(bundle, "load_keras", lambda path: loads.append(path) or real(path))
    evaluate(tmp_path / "latest", data_dir=small_split / "test", output=tmp_path / "out")
    assert (tmp_path / "out" / "report.html").read_text().count('class="gradcam"') == 2
    assert len(loads) == 1


def test_a_diverged_model_has_no_accuracy_and_a_missing_class_is_said(trained_bundle,
                                                                      small_split, tmp_path):
    """A bundle whose training diverged (saved with a warning) answers NaN, argmax's first
    class: evaluate reported that class's share as its accuracy (0.5 here) and passed
    --assert-accuracy-at-least 0.5. It is refused, nothing written. And a class with no
    folder at all (an empty one is refused) was left out without a word."""
    from conftest import diverged_copy

    broken = diverged_copy(trained_bundle.bundle, tmp_path / "diverged")
    with pytest.raises(TransferError) as caught:
        evaluate(broken, data_dir=small_split / "test", output=tmp_path / "ev",
                 assert_accuracy_at_least=0.5)
    assert str(caught.value) == (
        f"{broken}'s outputs are not numbers (NaN or infinite) for 40 of the 40 images, so it "
        "has no accuracy to measure: its training diverged; train it again with a lower "
        "--learning-rate (nothing was written)")
    assert not (tmp_path / "ev").exists()
    cats = tmp_path / "only-cats"
    shutil.copytree(small_split / "test" / "cats", cats / "cats")
    recorder = Recorder()
    report = evaluate(trained_bundle.bundle, data_dir=cats, output=tmp_path / "ev2",
                      reporter=recorder).report
    assert recorder.warnings == [
        f"{cats} has no images of dogs (no class folder): the accuracy and balanced accuracy "
        "are the other classes' alone; in the macro F1 such a class counts 0 when the model "
        "predicts it"]
    assert report["per_class"]["dogs"]["support"] == 0 and report["images"] == 20
    # so it does (it said the macro F1 was the cats' alone)
    from transfer import metrics

    cats_f1 = report["per_class"]["cats"]["f1"]
    dogs_said = report["per_class"]["dogs"]["f1"]
    assert report["macro_avg"]["f1"] == pytest.approx(
        cats_f1 if dogs_said is None else (cats_f1 + dogs_said) / 2)
    assert metrics.macro_average({"cats": {"precision": 1.0, "recall": 0.95, "f1": 0.974},
                                  "dogs": {"precision": 0.0, "recall": None, "f1": 0.0}}
                                 )["f1"] == pytest.approx(0.487)


def test_evaluate_errors(trained_bundle, small_split, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(trained_bundle.bundle, copy)
    evaluate(copy)
    with pytest.raises(TransferError, match="from another evaluation; use --force"):
        evaluate(copy, data_dir=small_split / "test")
    evaluate(copy, data_dir=small_split / "test", force=True)
    # another model's evaluation of the same folder in one --output: kept without --force
    other = tmp_path / "other"
    shutil.copytree(trained_bundle.bundle, other)
    shared = tmp_path / "shared"
    evaluate(copy, data_dir=small_split / "test", output=shared)
    evaluate(copy, data_dir=small_split / "test", output=shared)  # the same one: replaced
    with pytest.raises(TransferError, match="from another evaluation; use --force"):
        evaluate(other, data_dir=small_split / "test", output=shared)
    assert json.loads((shared / "report.json").read_text())["model"] == str(copy)
    # named through a link (models/latest) that moves on to another bundle: told apart
    latest = tmp_path / "latest"
    latest.symlink_to(copy.name)
    through = tmp_path / "through-latest"
    evaluate(latest, data_dir=small_split / "test", output=through)
    evaluate(copy, data_dir=small_split / "test", output=through)  # the same bundle
    latest.unlink()
    latest.symlink_to(other.name)
    with pytest.raises(TransferError, match="from another evaluation; use --force"):
        evaluate(latest, data_dir=small_split / "test", output=through)
    # a missing data folder is what is said, not the earlier outputs in the bundle
    with pytest.raises(TransferError, match="no data folder"):
        evaluate(copy, data_dir=tmp_path / "nope")
    # a report.html that transfer did not write is kept without --force
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("<p>my own page</p>")
    with pytest.raises(TransferError, match="not a transfer report; use --force"):
        evaluate(copy, data_dir=small_split / "test", output=mine)
    assert sorted(p.name for p in mine.iterdir()) == ["report.html"]
    assert (mine / "report.html").read_text() == "<p>my own page</p>"
    evaluate(copy, data_dir=small_split / "test", output=mine, force=True)
    assert "transfer report" in (mine / "report.html").read_text()
    odd = tmp_path / "odd"
    for name in ("cats", "horses"):
        (odd / name).mkdir(parents=True)
        shutil.copy(next((small_split / "test/cats").iterdir()), odd / name / "a.jpg")
    with pytest.raises(TransferError, match="does not know: horses"):
        evaluate(copy, data_dir=odd, output=tmp_path / "o1")
    # a fetch-data split's root (train/, validate/, test/): which folder to give, said
    with pytest.raises(TransferError, match=re.escape(
            f"does not know: test, train, validate; its classes are cats, dogs; it holds a "
            f"split: give --data-dir {small_split / 'test'} or {small_split / 'validate'}")):
        evaluate(copy, data_dir=small_split, output=tmp_path / "o1")
    with pytest.raises(TransferError, match="no data folder"):
        evaluate(copy, data_dir=tmp_path / "missing", output=tmp_path / "o2")
    (tmp_path / "flat").mkdir()
    with pytest.raises(TransferError, match="no class subfolders"):
        evaluate(copy, data_dir=tmp_path / "flat", output=tmp_path / "o3")
    # one class only, with an unreadable file: evaluated, the bad file listed as skipped
    single = tmp_path / "single/cats"
    single.mkdir(parents=True)
    for path in sorted((small_split / "test/cats").iterdir())[:5]:
        shutil.copy(path, single)
    (single / "broken.jpg").write_bytes(b"not a jpeg")
    (single / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")  # an iPhone's, a raw one
    (single / "IMG_0002.dng").write_bytes(b"II*\0")
    recorder = Recorder()
    report = evaluate(copy, data_dir=tmp_path / "single", output=tmp_path / "o4",
                      reporter=recorder).report
    assert report["images"] == 5 and len(report["skipped"]) == 3  # HEIC and raw said, too
    reasons = {Path(item["file"]).name: item["reason"] for item in report["skipped"]}
    assert reasons["IMG_0001.HEIC"].startswith("HEIC (an iPhone's photos) is not a format "
                                               "transfer reads; convert them to JPEG")
    assert "IMG_0002.dng" in reasons and len(recorder.warnings) == 4  # the 3, the class
    assert recorder.warnings[-1].startswith(f"{tmp_path / 'single'} has no images of dogs")
    assert report["roc_auc"] is None and report["per_class"]["dogs"]["recall"] is None
    assert np.asarray(report["confusion_matrix"]).sum() == 5
    # nothing readable: the reasons come before the one error line; no empty output folder
    bad = tmp_path / "allbad/cats"
    bad.mkdir(parents=True)
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    recorder = Recorder()
    with pytest.raises(TransferError, match="no readable image in"):
        evaluate(copy, data_dir=tmp_path / "allbad", output=tmp_path / "o5/deeper",
                 reporter=recorder)
    assert recorder.warnings == [f"skipped {bad / 'a.jpg'}: not an image (Pillow cannot "
                                 "identify it)"]
    assert not (tmp_path / "o5").exists()
    # an output inside the data folder would be read as photos by the next evaluation
    with pytest.raises(TransferError, match=r"--output .*single/cats is inside the data folder "
                       r".*single: what is written there would be read as photos next time"):
        evaluate(copy, data_dir=tmp_path / "single", output=single)


def test_settings_object_worst_and_output_failures(trained_bundle, small_split, tmp_path):
    settings = EvaluateSettings(model=trained_bundle.bundle, data_dir=small_split / "test",
                                output=tmp_path / "two", worst=1)
    report = evaluate(settings).report
    errors = report["images"] - round(report["accuracy"] * report["images"])
    assert errors >= 1  # a model that never errs would not test --worst
    assert len(report["worst_mistakes"]) == 1
    assert evaluate(trained_bundle.bundle, data_dir=small_split / "test",
                    output=tmp_path / "three").report["confusion_matrix"] == \
        report["confusion_matrix"]
    # --output naming a file: one clear error, before anything loads, the file untouched
    taken = tmp_path / "notes.txt"
    taken.write_text("keep")
    with pytest.raises(TransferError, match=r"--output .*notes.txt is a file, not a folder"):
        evaluate(settings.replace(output=taken))
    assert taken.read_text() == "keep"
    with pytest.raises((TransferError, OSError)) as caught:  # under a file: named
        evaluate(settings.replace(output=taken / "reports"))
    assert names_path(caught.value, taken)
    with pytest.raises(TransferError, match="--batch-size must be at least 1"):
        evaluate(settings, batch_size=0)
    # a read-only output folder: the OSError names it, nothing is written
    with unwritable_folder(tmp_path / "locked") as locked:
        with pytest.raises((TransferError, OSError)) as caught:
            evaluate(settings.replace(output=locked))
        assert names_path(caught.value, locked)
        assert list(locked.iterdir()) == []


def test_five_unbalanced_classes_by_hand(flowers5, tmp_path):
    """Per-class recall and F1, balanced accuracy and macro F1 of a five-class bundle on
    unbalanced held-out flowers (12/3/8/2/6), computed here from predict's labels."""
    data = bundle_data(flowers5) / "test"
    names = flowers5.meta["class_names"]
    report = evaluate(flowers5.bundle, data_dir=data, output=tmp_path / "r").report
    assert report["class_names"] == names and len(names) == 5
    items = predict([data], model=flowers5.bundle).items
    truth = np.array([names.index(Path(i.file).parent.name) for i in items])
    labels = np.array([names.index(i.label) for i in items])
    assert len(items) == report["images"] == sum(TEST_COUNTS.values())
    recalls, f1s = [], []
    for k, name in enumerate(names):
        tp = int(np.sum((truth == k) & (labels == k)))
        support, chosen = int(np.sum(truth == k)), int(np.sum(labels == k))
        recalls.append(tp / support)
        f1s.append(0.0 if tp == 0 else 2 / (chosen / tp + support / tp))
        row = report["per_class"][name]
        assert row["support"] == support == TEST_COUNTS[name]
        assert row["recall"] == pytest.approx(recalls[-1])
        assert row["precision"] == (pytest.approx(tp / chosen) if chosen else None)
        assert row["f1"] == pytest.approx(f1s[-1])
    assert report["accuracy"] == pytest.approx(np.mean(truth == labels))
    assert report["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert report["macro_f1"] == pytest.approx(np.mean(f1s))
    assert report["macro_f1"] == report["macro_avg"]["f1"]
    assert 0.2 < report["accuracy"] < 1  # learned something, and made mistakes to list
    assert report["roc_auc"] is None and np.asarray(report["confusion_matrix"]).shape == (5, 5)
    assert report["gate"] is None  # no --assert-accuracy-at-least


def test_a_matrix_too_wide_for_the_console_prints_the_top_confusions(flowers5, tmp_path,
                                                                       monkeypatch):
    """On a console too narrow for five named columns (as 60 classes are for any console),
    evaluate prints the most frequent confusions, as counted in report.json, not a matrix of
    blank columns; a wide console still gets the matrix."""
    from rich.console import Console

    from transfer import cli

    data = bundle_data(flowers5) / "test"
    monkeypatch.setattr(cli, "out", Console(width=60))
    narrow = runner.invoke(app, ["evaluate", "--model", str(flowers5.bundle), "--data-dir",
                                 str(data), "--output", str(tmp_path / "r")])
    assert narrow.exit_code == 0, narrow.output
    report = json.loads((tmp_path / "r/report.json").read_text())
    names, matrix = report["class_names"], report["confusion_matrix"]
    pairs = sorted(((matrix[t][p], names[t], names[p]) for t in range(5) for p in range(5)
                    if t != p and matrix[t][p]), key=lambda c: (-c[0], names.index(c[1]),
                                                               names.index(c[2])))
    assert pairs and "Most frequent confusions" in narrow.output
    assert "Confusion matrix" not in narrow.output
    rows = [line.split("│")[1:4] for line in narrow.output.splitlines()
            if line.count("│") == 4 and line.split("│")[1].strip() in names]
    listed = [(int(n), t.strip(), p.strip()) for t, p, n in rows
              if p.strip() in names and n.strip().isdigit()]
    assert listed == pairs[:15]
    monkeypatch.setattr(cli, "out", Console(width=200))
    wide = runner.invoke(app, ["evaluate", "--model", str(flowers5.bundle), "--data-dir",
                               str(data), "--output", str(tmp_path / "r")])
    assert "Confusion matrix" in wide.output and "Most frequent" not in wide.output


@pytest.mark.parametrize("worst", [3, 100])
def test_suspects_csv_lists_the_most_confident_mistakes(flowers5, worst, tmp_path):
    data = bundle_data(flowers5) / "test"
    out = tmp_path / "r"
    report = evaluate(flowers5.bundle, data_dir=data, output=out, worst=worst).report
    mistakes = report["images"] - int(np.trace(np.asarray(report["confusion_matrix"])))
    rows = read_suspects(out)
    assert len(rows) == len(report["worst_mistakes"]) == min(worst, mistakes) > 0
    assert list(rows[0]) == ["file", "true", "predicted", "predicted_probability",
                             "true_probability"]
    confidence = [float(r["predicted_probability"]) for r in rows]
    assert confidence == sorted(confidence, reverse=True)
    # each row agrees with predict on that one file, and is a mistake
    for row in rows:
        (item,) = predict([row["file"]], model=flowers5.bundle).items
        assert Path(row["file"]).parent.name == row["true"] != row["predicted"] == item.label
        assert float(row["predicted_probability"]) == pytest.approx(
            item.probabilities[row["predicted"]], abs=2e-6)
        assert float(row["true_probability"]) == pytest.approx(
            item.probabilities[row["true"]], abs=2e-6)
        assert float(row["true_probability"]) < float(row["predicted_probability"])
    if worst > mistakes:  # every mistake listed: the rest of the images were right
        listed = {r["file"] for r in rows}
        items = predict([data], model=flowers5.bundle).items
        assert all((i.file in listed) == (Path(i.file).parent.name != i.label) for i in items)
    with Image.open(out / "misclassified.png") as image:
        assert image.format == "PNG"


def test_worst_zero_draws_no_picture_of_mistakes(trained_bundle, small_split, tmp_path):
    """`evaluate --worst 0` wrote a blank misclassified.png titled "the 0 most confident of
    6 mistakes"; none is drawn now, and an earlier evaluation's in that folder is removed
    (it would pass for this one's)."""
    out = tmp_path / "out"
    evaluate(trained_bundle.bundle, data_dir=small_split / "test", output=out)
    assert (out / "misclassified.png").is_file()
    report = evaluate(trained_bundle.bundle, data_dir=small_split / "test", output=out,
                      worst=0).report
    assert report["worst_mistakes"] == []
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "report.html",
                                                     "report.json", "suspects.csv"]
    assert read_suspects(out) == []


def test_a_ctrl_c_while_the_report_is_written_says_which_report_html_is_there(
        trained_bundle, small_split, tmp_path, monkeypatch):
    """A Ctrl-C in the second or two after report.json and suspects.csv landed, while
    report.html was being made, left the earlier evaluation's page beside the new files without
    a word (train says the same case). The interrupt stops the run, and a warning says the
    report.html there is the earlier one's and how to write it."""
    from transfer import report as html_report

    out = tmp_path / "out"
    evaluate(trained_bundle.bundle, data_dir=small_split / "test", output=out, worst=2)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # the Ctrl-C, where it landed in the reviewer's runs

    monkeypatch.setattr(html_report, "write_quietly", interrupted)
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        evaluate(trained_bundle.bundle, data_dir=small_split / "test", output=out, worst=3,
                 force=True, reporter=recorder)
    assert recorder.warnings == [
        f"interrupted after the evaluation was written in {out}; its report.html was not (the "
        f"one there is an earlier evaluation's) (transfer report {out} writes it)"]


def test_accuracy_gate_is_recorded_not_raised(trained_bundle, small_split, tmp_path):
    data = small_split / "test"
    accuracy = evaluate(trained_bundle.bundle, data_dir=data,
                        output=tmp_path / "a").report["accuracy"]
    assert accuracy < 1.0
    result = evaluate(trained_bundle.bundle, data_dir=data, output=tmp_path / "pass",
                      assert_accuracy_at_least=accuracy)
    assert result.report["gate"] == {"threshold": accuracy, "accuracy": accuracy,
                                     "passed": True}
    assert not result.gate_failed
    result = evaluate(EvaluateSettings(model=trained_bundle.bundle, data_dir=data,
                                       output=tmp_path / "fail",
                                       assert_accuracy_at_least=1.0))
    assert result.report["gate"] == {"threshold": 1.0, "accuracy": accuracy, "passed": False}
    assert result.gate_failed
    written = json.loads((tmp_path / "fail" / "report.json").read_text())
    assert written["gate"]["passed"] is False  # the report is written all the same
    assert (tmp_path / "fail" / "suspects.csv").exists()
    with pytest.raises(TransferError, match="assert_accuracy_at_least|assert-accuracy"):
        evaluate(trained_bundle.bundle, data_dir=data, output=tmp_path / "bad",
                 assert_accuracy_at_least=1.5)


def test_default_data_of_a_folder_split_in_memory(tmp_path_factory, mobilenet_weights,
                                                  tmp_path):
    """A bundle trained on one folder of class folders: evaluate with no --data-dir takes its
    validation split, made again exactly as training made it, and reproduces training's
    validation accuracy."""
    trained = in_memory_bundle(tmp_path_factory)
    data = trained.meta["data"]
    assert data["split"] == "in-memory" and data["validate_dir"] is None
    copy = tmp_path / "bundle"
    shutil.copytree(trained.bundle, copy)
    result = evaluate(copy)
    report = result.report
    _, validate = pipelines.split_in_memory(Path(data["root"]), trained.meta["class_names"],
                                            data["validation_split"], data["seed"])
    assert sorted(result.files) == sorted(s.path for s in validate)
    assert report["images"] == data["validate_images"] == 9
    assert report["subset"] == "validate" and report["data_dir"] == data["root"]
    assert report["is_training_validation_folder"] is True
    assert report["accuracy"] == pytest.approx(trained.meta["metrics"]["val_accuracy"],
                                               abs=1e-6)
    # --data-dir still means every image of that folder
    everything = evaluate(copy, data_dir=Path(data["root"]), output=tmp_path / "all").report
    assert everything["images"] == 36 and everything["subset"] is None
    # the whole folder is another evaluation than its validation split: not replaced
    # without --force (it was, silently: the bundle's report then counted training photos)
    with pytest.raises(TransferError, match="from another evaluation; use --force"):
        evaluate(copy, data_dir=Path(data["root"]))
    said = " ".join(runner.invoke(app, ["evaluate", "--model", str(copy)]).output.split())
    assert f"on the validation split of {data['root']} (9 images)" in said
    # the bundle lists its training images: none in its validation split, 27 in the folder
    assert report["training_images"] == 0 and everything["training_images"] == 27


def test_training_images_shown_again_are_counted_and_said(tmp_path_factory, tmp_path):
    """The user's folder grew after training (10 more daisies) and evaluate splits it again:
    some of the new split's validation images are ones the model trained on. The run warns
    with the count, report.json and report.html carry it."""
    trained = in_memory_bundle(tmp_path_factory)
    root = tmp_path / "my_photos"
    shutil.copytree(trained.meta["data"]["root"], root)
    copy = tmp_path / "bundle"
    shutil.copytree(trained.bundle, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["data"]["root"] = str(root)
    (copy / "meta.json").write_text(json.dumps(meta))
    flowers = sorted((Path(require_asset("data/flowers")) / "daisy").glob("*.jpg"))
    for path in flowers[:10]:  # photos the fixture did not take (it took the last 12)
        shutil.copy(path, root / "daisy" / path.name)
    recorder = Recorder()
    result = evaluate(copy, reporter=recorder)
    _, validate = pipelines.split_in_memory(root, meta["class_names"], 0.25, meta["seed"])
    trained_names = {p.name for p, _ in trained_files(trained.bundle)}
    expected = sum(s.path.name in trained_names for s in validate)
    assert expected > 0  # the new split did move training photos into validation
    assert result.report["training_images"] == expected
    assert any(f"{expected} of the {result.report['images']} images are this model's "
               "training images" in w for w in recorder.warnings), recorder.warnings
    assert (f"{expected} of the {result.report['images']} images are this model's training "
            "images") in (copy / "report.html").read_text()
    said = " ".join(runner.invoke(app, ["evaluate", "--model", str(copy)]).output.split())
    assert (f"training reported validation accuracy {meta['metrics']['val_accuracy']:.4f} on "
            f"the split it made then (this one holds {expected} of its training images)") in said


def test_a_validation_folder_that_changed_since_training_is_said(trained_bundle, small_split,
                                                                  tmp_path):
    """Photos added to data/validate after training: evaluate's accuracy no longer matches
    the one training reported, and nothing said why."""
    folder = tmp_path / "validate"
    shutil.copytree(small_split / "validate", folder)
    for path, cls in split_images(small_split / "test", 2):
        shutil.copy(path, folder / cls / f"new-{path.name}")
    copy = tmp_path / "bundle"
    shutil.copytree(trained_bundle.bundle, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["data"]["validate_dir"] = str(folder)
    (copy / "meta.json").write_text(json.dumps(meta))
    then = meta["data"]["validate_images"]
    said = " ".join(runner.invoke(app, ["evaluate", "--model", str(copy)]).output.split())
    assert (f"training reported validation accuracy {meta['metrics']['val_accuracy']:.4f} on "
            f"{then} images (this evaluation has {then + 4}: the folder changed since)") in said
    # an unreadable file among the same photos: skipped by both, no change to say
    for path, cls in split_images(small_split / "test", 2):
        (folder / cls / f"new-{path.name}").unlink()
    (folder / "cats" / "broken.jpg").write_bytes(b"not a photo")
    said = " ".join(runner.invoke(app, ["evaluate", "--model", str(copy), "--force"])
                    .output.split())
    assert "training reported validation accuracy" in said and "changed since" not in said


def trained_files(bundle_dir: Path) -> list[tuple[Path, str]]:
    with open(bundle_dir / "train-files.csv", newline="") as handle:
        return [(Path(row["file"]), row["class"]) for row in csv.DictReader(handle)]


def test_relative_folders_are_found_from_a_notebook_one_folder_down(trained_bundle, small_split,
                                                                    tmp_path, monkeypatch):
    """Trained in project/ with --data-dir data (meta.json says data/validate), evaluated from
    project/notebooks/: the validation folder is found from the folder training ran in. A
    bundle from before meta.json kept that folder says where to run from."""
    from transfer import bundle

    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "data").symlink_to(small_split, target_is_directory=True)
    copy = project / "models" / "run"
    shutil.copytree(trained_bundle.bundle, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["data"].update(train_dir="data/train", validate_dir="data/validate", cwd=str(project))
    (copy / "meta.json").write_text(json.dumps(meta))
    monkeypatch.chdir(project / "notebooks")
    result = evaluate(Path("../models/run"))
    assert result.report["images"] == 100 and result.report["is_training_validation_folder"]
    assert result.report["accuracy"] == pytest.approx(
        trained_bundle.meta["metrics"]["val_accuracy"], abs=1e-6)
    assert bundle.data_folder(meta, "train_dir") == project / "data/train"
    assert bundle.data_folder(meta, "root") == Path(meta["data"]["root"])
    # run from another project with a data/validate of its own: not the one it trained against
    other = tmp_path / "other"
    (other / "data/validate").mkdir(parents=True)
    monkeypatch.chdir(other)
    assert bundle.data_folder(meta, "validate_dir") == project / "data/validate"
    shutil.move(project, tmp_path / "moved")  # the project moved: the folder from here
    assert bundle.data_folder(meta, "validate_dir") == Path("data/validate")
    shutil.move(tmp_path / "moved", project)
    monkeypatch.chdir(project / "notebooks")
    del meta["data"]["cwd"]  # an older bundle: the path as named, relative to here
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TransferError, match="validation folder data/validate is missing"):
        evaluate(Path("../models/run"), force=True)


def test_the_same_evaluation_from_another_folder_replaces_its_outputs(trained_bundle,
                                                                     small_split, tmp_path,
                                                                     monkeypatch):
    """`cd notebooks; transfer evaluate --model ../models/latest` was refused "already has
    report.json ... from another evaluation; use --force" after the same evaluation from the
    project folder: report.json's data_dir ("data/test") was compared from the new folder.
    It also records the folder's absolute path; an older report (the relative path alone) is
    read from the folder it ran in. A report.json transfer never wrote is said as such."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "data").symlink_to(small_split, target_is_directory=True)
    shutil.copytree(trained_bundle.bundle, project / "models/run")
    (project / "models/latest").symlink_to("run")
    monkeypatch.chdir(project)
    first = evaluate(Path("models/latest"), data_dir=Path("data/test")).report
    monkeypatch.chdir(project / "notebooks")
    again = evaluate(Path("../models/latest"), data_dir=Path("../data/test")).report
    assert again["accuracy"] == first["accuracy"]
    assert first["data_dir"] == "data/test"  # as given: the file stays readable
    assert first["data_dir_absolute"] == str(project / "data/test")
    # a report.json from before data_dir_absolute: its data_dir from where it ran
    report = project / "models/run/report.json"
    older = {key: value for key, value in first.items() if key != "data_dir_absolute"}
    report.write_text(json.dumps(older))
    evaluate(Path("../models/latest"), data_dir=Path("../data/test"))
    report.write_text(json.dumps(older))
    with pytest.raises(TransferError, match="from another evaluation; use --force"):
        evaluate(Path("../models/latest"), data_dir=Path("../data/validate"))
    # a file of that name that transfer did not write: what it is, not "another evaluation"
    for text, why in (("my notes", "not JSON, or unreadable"),
                      ('{"notes": "mine"}', 'no "kind": "transfer-evaluate" in it')):
        mine = project / "mine"
        mine.mkdir(exist_ok=True)
        (mine / "report.json").write_text(text)
        with pytest.raises(TransferError, match=r"^\.\./mine already has report\.json; its "
                           r"report\.json is not one transfer wrote \(" + re.escape(why)
                           + r"\); use --force"):
            evaluate(Path("../models/latest"), data_dir=Path("../data/test"), output="../mine")
        assert (mine / "report.json").read_text() == text


def test_a_training_image_is_known_by_its_bytes_not_its_name(trained_bundle, tmp_path):
    """Data sets that number their files in every class (00000.ppm, IMG_0001.jpg) hold
    different photos of one name and size: only the same bytes count as a training image
    shown again, under any class folder. Where the training image is gone (or an older list
    keeps no paths), name and size count, within the file's class when it is known."""
    from transfer.evaluate import seen_in_training

    trained = sorted((Path(trained_bundle.meta["data"]["train_dir"]) / "cats").glob("*.jpg"))
    copy, other = tmp_path / "dogs" / trained[0].name, tmp_path / "cats" / trained[1].name
    copy.parent.mkdir()
    other.parent.mkdir()
    shutil.copy(trained[0], copy)  # a training photo, shown under another class
    data = bytearray(trained[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same name and size, other bytes: another photo
    other.write_bytes(bytes(data))
    new = tmp_path / "cats" / "new.jpg"
    shutil.copy(next((Path(trained_bundle.meta["data"]["validate_dir"]) / "cats").iterdir()),
                new)
    assert seen_in_training(trained_bundle.bundle, [copy, other, new]) == 1
    assert seen_in_training(trained_bundle.bundle, [trained[2]], ["cats"]) == 1  # itself
    older = tmp_path / "older"
    older.mkdir()
    with open(trained_bundle.bundle / "train-files.csv", newline="") as handle:
        rows = [row[:3] for row in csv.reader(handle)]
    with open(older / "train-files.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert seen_in_training(older, [copy, other, new]) == 2
    # knowing each file's class (as evaluate does), name and size count only in that class
    assert seen_in_training(older, [copy, other, new], ["dogs", "cats", "cats"]) == 1


def test_a_split_made_again_from_another_folder_leaves_out_the_same_files(tmp_path,
                                                                           monkeypatch):
    """A folder split in memory, found through meta.json's cwd from a notebook one folder
    down: the files training left out (recorded relative to where it ran) stay out, so the
    split made again is the one training used, photo for photo."""
    from conftest import png_bytes

    from transfer.evaluate import bundle_images

    project = tmp_path / "project"
    for name in ("cats", "dogs"):
        (project / "photos" / name).mkdir(parents=True)
        for i in range(10):
            (project / "photos" / name / f"{i:02d}.png").write_bytes(png_bytes(size=(16, 16)))
    (project / "photos/cats/05.png").write_bytes(b"")  # training skipped it
    (project / "notebooks").mkdir()
    meta = {"class_names": ["cats", "dogs"],
            "data": {"split": "in-memory", "root": "photos", "validation_split": 0.2,
                     "seed": 0, "cwd": str(project)},
            "skipped": [{"file": "photos/cats/05.png", "reason": "empty file"}]}
    monkeypatch.chdir(project)
    there = [(path.resolve(), label) for path, label in bundle_images(meta, "validate")]
    monkeypatch.chdir(project / "notebooks")
    here = [(path.resolve(), label) for path, label in bundle_images(meta, "validate")]
    assert here == there and project / "photos/cats/05.png" not in {p for p, _ in here}


def test_phone_sized_mistakes_are_classified_and_shown_in_draft_mode(trained_bundle,
                                                                   small_split, tmp_path,
                                                                   monkeypatch):
    """Photos too large to decode whole (Pillow's limit lowered so that 2000 x 1500 is over
    twice it) are classified at their draft scale, and the misclassified.png thumbnails of
    the worst mistakes are drafted too: a whole decode there had refused them and ended the
    evaluation. Every photo is filed under the other class, so the model's right answers are
    mistakes here."""
    data = tmp_path / "swapped"
    photos = split_images(small_split / "test", 3)
    for path, name in photos:
        wrong = data / ("dogs" if name == "cats" else "cats")
        wrong.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as small:
            small.convert("RGB").resize((2000, 1500), Image.BILINEAR).save(wrong / path.name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 800_000)
    out = tmp_path / "report"
    report = evaluate(trained_bundle.bundle, data_dir=data, output=out, worst=100).report
    assert report["images"] == len(photos) == 6 and report["skipped"] == []
    assert len(report["worst_mistakes"]) == 6 - int(np.trace(report["confusion_matrix"])) > 0
    with Image.open(out / "misclassified.png") as shown:
        assert shown.format == "PNG"


def test_a_mistake_named_in_latin1_is_listed_in_suspects_csv(trained_bundle, small_split,
                                                            tmp_path):
    """A photo named in Latin-1 ("chien\\xe9.jpg", not UTF-8) among the mistakes ended evaluate
    with a UnicodeEncodeError while suspects.csv was written, and nothing was written. Its
    name is kept as the file system holds it."""
    data = tmp_path / "held-out"
    photos = split_images(small_split / "test", 3)
    for path, name in photos:
        (data / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, data / name / path.name)
    dogs = [path for path, name in photos if name == "dogs"]
    latin1 = [os.fsdecode(bytes(data / "cats") + b"/chien%d\xe9.jpg" % i) for i in range(3)]
    for dog, name in zip(dogs, latin1, strict=True):
        shutil.copy(dog, name)  # dogs filed as cats: mistakes where the model is right
    out = tmp_path / "report"
    report = evaluate(trained_bundle.bundle, data_dir=data, output=out, worst=100).report
    assert report["images"] == len(photos) + 3
    with open(out / "suspects.csv", encoding="utf-8", errors="surrogateescape",
              newline="") as f:
        listed = [row["file"] for row in csv.DictReader(f)]
    assert set(latin1) & set(listed)


def test_an_output_that_is_another_bundle_or_holds_the_bundles_own_pictures_is_refused(
        trained_bundle, small_split, mnist_quick, tmp_path):
    """`evaluate --model A --output B` (B another bundle) wrote A's evaluation into B's
    report, shown as B's own; an MNIST bundle's confusion.png and misclassified.png (its test
    set's, drawn by `transfer mnist`) were "from another evaluation", and --force replaced
    them. Both are refused, even with --force, and nothing is written."""
    other = tmp_path / "other-bundle"
    shutil.copytree(trained_bundle.bundle, other)
    before = sorted(p.name for p in other.iterdir())
    for force in (False, True):
        with pytest.raises(TransferError, match=r"--output .*other-bundle is another bundle: "
                                                r"its report would show this evaluation"):
            evaluate(trained_bundle.bundle, data_dir=small_split / "test", output=other,
                     force=force)
    assert sorted(p.name for p in other.iterdir()) == before
    digits = tmp_path / "mnist-cnn"
    shutil.copytree(mnist_quick[0].bundle, digits)
    pictures = {name: (digits / name).read_bytes() for name in ("confusion.png",
                                                                 "misclassified.png")}
    folder = tmp_path / "digits"
    rng = np.random.default_rng(0)
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
            folder / str(digit) / "noise.png")
    for force in (False, True):
        with pytest.raises(TransferError, match=r"holds confusion.png, misclassified.png of "
                                                r"its own training .*--output DIR"):
            evaluate(digits, data_dir=folder, force=force)
    assert {name: (digits / name).read_bytes() for name in pictures} == pictures
    assert not (digits / "report.json").exists()
    # the evaluation written elsewhere, as the message says
    assert evaluate(digits, data_dir=folder, output=tmp_path / "eval").report["images"] == 10
    # without --data-dir: what it was measured on, and what to pass (it said "does not name a
    # validation folder; pass --data-dir" of a bundle whose test digits were never files);
    # the advice taken, the evaluation is written (--output too: its pictures stay)
    accuracy = json.loads((digits / "meta.json").read_text())["metrics"]["test_accuracy"]
    with pytest.raises(TransferError) as caught:
        evaluate(digits)
    assert str(caught.value) == (
        f"{digits} was trained by transfer mnist and measured then on its test digits (test "
        f"accuracy {accuracy:.4f} in its meta.json); to evaluate it on images of your own, pass "
        "--data-dir DIR (a folder of images per class, named as its classes) and --output DIR "
        "(the bundle keeps its pictures)")
    with pytest.raises(TransferError, match=r"measured then on its test digits .*classes\)$"):
        evaluate(digits, output=tmp_path / "eval3")
    with pytest.raises(TransferError, match=r"\(the bundle keeps its pictures\)$"):
        evaluate(digits, output=digits)  # --output naming the bundle: as if none was given
    assert evaluate(digits, data_dir=folder, output=tmp_path / "eval3").report["images"] == 10


def test_avif_photos_are_evaluated_and_a_class_with_none_readable_is_refused(
        trained_bundle, small_split, tmp_path):
    """A class folder of genuine AVIF photos (Pillow reads them) was skipped, a warning each,
    and the accuracy computed on the other class alone, exit 0. They are read now (as is a
    JPEG named .heic), and a class folder with no photo transfer can read is one clear error
    naming it, not a one-class score."""
    from PIL import features

    cats = sorted((small_split / "test/cats").iterdir())[:4]
    dogs = sorted((small_split / "test/dogs").iterdir())[:4]
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    (data / "dogs").mkdir()
    for path in dogs:
        shutil.copy(path, data / "dogs")
    shutil.copy(cats[0], data / "cats/IMG_0.heic")  # a JPEG, named as an iPhone's photo
    for path in cats[1:]:
        if features.check("avif"):
            Image.open(path).save(data / "cats" / f"{path.stem}.avif", quality=90)
        else:
            shutil.copy(path, data / "cats")
    recorder = Recorder()
    report = evaluate(trained_bundle.bundle, data_dir=data, output=tmp_path / "out",
                      reporter=recorder).report
    assert report["skipped"] == [] and recorder.warnings == []
    assert report["per_class"]["cats"]["support"] == 4 == report["per_class"]["dogs"]["support"]
    assert report["images"] == 8 and np.asarray(report["confusion_matrix"]).sum() == 8
    # a class holding only what transfer cannot read: refused, naming the folder and why
    for name in os.listdir(data / "cats"):
        (data / "cats" / name).unlink()
    (data / "cats/IMG_1.HEIC").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic")
    with pytest.raises(TransferError, match=r"class folder .*data/cats has no image transfer "
                       r"can read: it holds only 1 \.heic file \(HEIC .*the accuracy be the "
                       r"other classes' alone"):
        evaluate(trained_bundle.bundle, data_dir=data, output=tmp_path / "o2")
    (data / "cats/IMG_1.HEIC").write_bytes(b"not a photo either")
    (data / "cats/broken.jpg").write_bytes(b"not a jpeg")
    recorder = Recorder()
    with pytest.raises(TransferError, match=r"class folder .*data/cats has no image transfer "
                       r"can read: its 2 files were all skipped"):
        evaluate(trained_bundle.bundle, data_dir=data, output=tmp_path / "o3/deeper",
                 reporter=recorder)
    assert len(recorder.warnings) == 2 and not (tmp_path / "o3").exists()
    assert not (tmp_path / "o2").exists()


def test_class_folders_whose_accents_are_stored_otherwise_are_the_same_classes(tmp_path):
    """A bundle trained on Linux ("Rosé petals", NFC) and a folder copied from a Mac (NFD):
    evaluate refused it as "class folder(s) the model does not know: Rosé petals; its
    classes are Rosé petals, ..." (and the other way round)."""
    import unicodedata

    from transfer.evaluate import labelled_files, unread_in

    flowers = require_asset("data/flowers")
    nfc, nfd = "Rosé petals", unicodedata.normalize("NFD", "Rosé petals")
    assert nfc != nfd
    for folder_name, names in ((nfd, [nfc, "daisy"]), (nfc, [nfd, "daisy"])):
        root = tmp_path / ("nfd" if folder_name == nfd else "nfc")
        for name, source in ((folder_name, "roses"), ("daisy", "daisy")):
            (root / name).mkdir(parents=True)
            for photo in sorted((flowers / source).iterdir())[:2]:
                shutil.copy(photo, root / name / photo.name)
        files = labelled_files(root, names)
        assert sorted((path.parent.name == "daisy", label) for path, label in files) == [
            (False, 0), (False, 0), (True, 1), (True, 1)]
        (root / folder_name / "IMG_1.HEIC").write_bytes(b"not read")  # listed as skipped
        assert [Path(u["file"]).name for u in unread_in(root, names)] == ["IMG_1.HEIC"]
