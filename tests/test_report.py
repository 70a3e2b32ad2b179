"""report.html: one self-contained file for a bundle (trained, evaluated or not) and for an
evaluation folder, on the real trained bundle."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer.errors import TransferError
from transfer.report import PICTURES, render_report, write_report


class Links(HTMLParser):
    """Every src/href, every <img>, the text, and whether any <script> is there."""

    def __init__(self):
        super().__init__()
        self.urls, self.images, self.text, self.scripts, self.stack = [], [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        for key in ("src", "href"):
            if attrs.get(key):
                self.urls.append(attrs[key])
        if tag == "img":
            self.images.append(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parsed(text: str) -> Links:
    links = Links()
    links.feed(text)
    return links


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def assert_self_contained(text: str) -> Links:
    links = parsed(text)
    for url in links.urls:
        assert url.startswith("data:") or url.startswith("#"), url
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert "@import" not in text and "url(" not in text  # no CSS fetches either
    assert links.scripts == 0
    return links


@pytest.fixture()
def bundle_copy(trained_bundle, tmp_path):
    copy = tmp_path / "mobilenet-copy"
    shutil.copytree(trained_bundle.bundle, copy)
    (copy / "report.html").unlink(missing_ok=True)
    return copy


def test_report_of_a_bundle_never_evaluated(bundle_copy, trained_bundle, monkeypatch):
    for name in ("report.json", "confusion.png", "misclassified.png"):
        (bundle_copy / name).unlink(missing_ok=True)
    monkeypatch.setenv("TRANSFER_REPORT_GRADCAMS", "3")  # as train and evaluate read it
    path = write_report(bundle_copy)
    assert path == bundle_copy / "report.html"
    text = path.read_text(encoding="utf-8")
    links = assert_self_contained(text)
    words = " ".join(links.text)
    assert "cats, dogs" in words and "mobilenet" in words
    assert "Not evaluated yet" in words and 'class="confusion"' not in text
    curves = [img for img in links.images if "accuracy and loss" in img.get("alt", "")]
    assert len(curves) == 1
    with Image.open(bundle_copy / "curves.png") as original, decoded(curves[0]["src"]) as shown:
        assert shown.size == original.size
    # the command and the resolved settings, the data per class and split, timings
    settings = trained_bundle.meta["settings"]
    assert html.escape(f'"base": "{settings["base"]}"') in text and "learning_rate" in text
    assert "validate" in words and "Timings and engine" in words
    # the sizes the model was trained and is tested at (the settings' train_size is null)
    assert html.escape('"train_size": 224') in text and html.escape('"size": 224') in text
    # balanced classes: no balanced accuracy card; unbalanced ones (as train's last line
    # says it): the card (the page left it out)
    assert "validation balanced accuracy" not in text
    meta = json.loads((bundle_copy / "meta.json").read_text(encoding="utf-8"))
    meta["data"]["counts"]["validate"] = {"cats": 40, "dogs": 8}
    meta["metrics"]["val_balanced_accuracy"] = 0.6789
    (bundle_copy / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    unbalanced = write_report(bundle_copy, bundle_copy / "unbalanced.html", gradcams=0)
    assert "0.6789</b><span>validation balanced accuracy" in unbalanced.read_text("utf-8")
    # Grad-CAM overlays computed on the validation photos, as many as asked
    gradcams = [img for img in links.images if img.get("class") == "gradcam"]
    assert len(gradcams) == 3
    for img in gradcams:
        with decoded(img["src"]) as picture:
            assert max(picture.size) <= 224 and picture.mode == "RGB"


def test_report_of_an_evaluated_bundle_has_the_confusion_matrix(bundle_copy):
    from transfer.evaluate import evaluate

    result = evaluate(bundle_copy, force=True)
    text = write_report(bundle_copy).read_text(encoding="utf-8")
    assert_self_contained(text)
    matrix = result.report["confusion_matrix"]
    table = re.search(r'<table class="confusion">(.*?)</table>', text, re.S).group(1)
    cells = [int(v) for v in re.findall(r"<td[^>]*>(\d+)</td>", table)]
    assert cells == [v for row in matrix for v in row]
    assert sum(cells) == result.report["images"]
    assert "precision" in text and "macro average" in text
    assert f"{result.report['accuracy']:.4f}" in text
    assert "the most confident mistakes" in text  # misclassified.png, inlined
    assert "Not evaluated yet" not in text


def test_report_of_an_evaluation_folder(trained_bundle, small_split, tmp_path):
    from transfer.evaluate import evaluate

    out = tmp_path / "eval"
    report = evaluate(trained_bundle.bundle, data_dir=small_split / "test", output=out,
                      assert_accuracy_at_least=0.5).report
    assert (out / "report.html").is_file()  # evaluate writes its report itself
    target = write_report(out, tmp_path / "pages" / "test.html")
    assert target == tmp_path / "pages" / "test.html"
    text = target.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert str(small_split / "test") in text and 'class="confusion"' in text
    assert "accuracy and loss" in text  # the bundle's curves, found through report.json
    # the balanced accuracy and the gate, which report.json holds and the page left out
    assert f"{report['balanced_accuracy']:.4f}</b><span>balanced accuracy" in text
    assert (f"Accuracy gate passed: {report['accuracy']:.4f}, at least "
            "--assert-accuracy-at-least 0.5.") in text
    # a gate failed by less than the card's 4 decimals showed "0.9000 evaluated accuracy"
    # under a threshold of 0.9 and no word of the gate (CI exited 3)
    saved = json.loads((out / "report.json").read_text())
    threshold = round(report["accuracy"], 4)
    saved["gate"] = {"threshold": threshold, "accuracy": threshold - 4e-6, "passed": False}
    (out / "report.json").write_text(json.dumps(saved))
    text = write_report(out, tmp_path / "pages" / "failed.html").read_text(encoding="utf-8")
    shown = f"{threshold - 4e-6:.6f}"  # 0.924996, which 4 decimals showed as 0.9250
    assert f"{shown}</b><span>evaluated accuracy" in text
    assert (f"Accuracy gate failed: {shown} is below --assert-accuracy-at-least "
            f"{saved['gate']['threshold']:g} (exit code 3).") in text


def test_an_evaluation_of_a_folder_named_in_latin_1_has_its_report(trained_bundle,
                                                                   small_split, tmp_path):
    """A folder whose name is not UTF-8 (an old Latin-1 "café" from a camera card or a zip):
    evaluate wrote report.json and the CSVs, but report.html failed (UnicodeEncodeError on
    the name). The page is written, valid UTF-8 as it says it is: the name with a
    replacement mark where its odd byte was, as a browser showed the raw byte (the CSVs keep
    the bytes)."""
    import os

    from transfer.evaluate import evaluate

    data = tmp_path / os.fsdecode(b"caf\xe9")
    shutil.copytree(small_split / "test", data)
    out = tmp_path / "eval"
    evaluate(trained_bundle.bundle, data_dir=data, output=out)
    page = (out / "report.html").read_bytes()
    assert "caf\ufffd" in page.decode("utf-8") and b'class="confusion"' in page
    assert b"caf\xe9" not in page


def test_partial_and_wrong_folders(tmp_path):
    with pytest.raises(TransferError) as info:  # the three folders it reports are named
        write_report(tmp_path)
    assert str(info.value) == (f"{tmp_path} holds neither meta.json (a bundle), report.json (an "
                               "evaluation) nor compare.json (a comparison): nothing to report")
    with pytest.raises(TransferError, match="no such bundle"):
        write_report(tmp_path / "missing")
    theirs = tmp_path / "theirs"  # a report.json of the user's own: an empty page was made
    theirs.mkdir()
    (theirs / "report.json").write_text('{"mine": 1}')
    with pytest.raises(TransferError) as info:
        write_report(theirs)
    assert str(info.value) == (f"{theirs / 'report.json'} is not one transfer wrote (neither "
                               '"kind": "transfer-evaluate" nor an evaluation\'s accuracy in '
                               "it): nothing to report")
    assert list(theirs.iterdir()) == [theirs / "report.json"]
    minimal = tmp_path / "minimal"
    minimal.mkdir()
    (minimal / "meta.json").write_text(json.dumps({
        "schema_version": 1, "class_names": ["a<b", "c&d"], "image_size": 32,
        "preprocessing": {}, "metrics": {"val_accuracy": 0.5}}))
    text = render_report(minimal)
    assert "a&lt;b" in text and "c&amp;d" in text and "a<b" not in text
    assert_self_contained(text)
    with pytest.raises(TransferError, match="is a folder"):
        write_report(minimal, tmp_path)



def test_a_file_that_is_not_a_transfer_report_is_kept_without_force(bundle_copy, tmp_path,
                                                                     monkeypatch):
    """`transfer report --output` replaces its own reports, refuses anyone else's file (one
    line, exit 1, the file unchanged), and replaces it with --force."""
    from typer.testing import CliRunner

    from transfer.cli import app
    from transfer.report import made_by_transfer

    monkeypatch.setenv("TRANSFER_REPORT_GRADCAMS", "0")
    theirs = tmp_path / "notes.html"
    theirs.write_text("# my notes\n")
    with pytest.raises(TransferError, match="not a transfer report; use --force"):
        write_report(bundle_copy, theirs, gradcams=0)
    cli = CliRunner().invoke(app, ["report", str(bundle_copy), "--output", str(theirs)])
    assert cli.exit_code == 1 and cli.stderr.strip().count("\n") == 0
    assert cli.stderr.startswith("error:") and "not a transfer report" in cli.stderr
    assert theirs.read_text() == "# my notes\n"
    ours = write_report(bundle_copy, tmp_path / "page.html", gradcams=0)
    assert made_by_transfer(ours)
    assert write_report(bundle_copy, ours, gradcams=0) == ours  # its own report: replaced
    older = tmp_path / "older.html"  # a report from before the generator tag: its footer
    older.write_text(ours.read_text().replace('<meta name="generator" content="transfer">', ""))
    assert made_by_transfer(older) and not made_by_transfer(theirs)
    forced = CliRunner().invoke(app, ["report", str(bundle_copy), "--output", str(theirs),
                                      "--force"])
    assert forced.exit_code == 0, forced.output
    assert made_by_transfer(theirs)


def test_a_report_is_not_written_into_another_bundle_nor_over_its_own_files(bundle_copy,
                                                                           tmp_path):
    """`transfer report m1d --output bad_out/report.html` replaced the report of bad_out,
    another bundle, with m1d's page (a page transfer wrote: no --force asked); `--output
    m1c/meta.json --force` wrote HTML over the bundle's meta.json (the bundle was unreadable
    after); `--output x.png` wrote HTML into a .png. Each is one line, the files unchanged."""
    from typer.testing import CliRunner

    from transfer.cli import app

    def run(*args):
        result = CliRunner().invoke(app, ["report", *map(str, args)],
                                    env={"TRANSFER_REPORT_GRADCAMS": "0"})
        return result.exit_code, result.stderr.strip()

    other = tmp_path / "other"
    shutil.copytree(bundle_copy, other)
    write_report(other, gradcams=0)
    theirs = (other / "report.html").read_bytes()
    code, said = run(bundle_copy, "--output", other / "page.html")
    assert code == 1 and "\n" not in said and said.startswith("error:")
    assert f"is in {other}, another bundle folder (it holds meta.json)" in said
    assert "--force" in said and not (other / "page.html").exists()
    evaluation = tmp_path / "ev"  # an evaluation's or a comparison's folder too
    evaluation.mkdir()
    (evaluation / "report.json").write_text("{}")
    with pytest.raises(TransferError, match="another evaluation folder"):
        write_report(bundle_copy, evaluation / "page.html", gradcams=0)
    assert not (evaluation / "page.html").exists()
    # its own page: never, even with --force (`--force` put the other model's page in the
    # bundle, which serve then showed for it)
    for force in ([], ["--force"]):
        code, said = run(bundle_copy, "--output", other / "report.html", *force)
        assert code == 1 and "\n" not in said and "even with --force" in said, said
        assert f"the page of {other}, another bundle folder" in said
        assert (other / "report.html").read_bytes() == theirs
    # nor through a link to it (written through, as every output is)
    (tmp_path / "page.html").symlink_to(other / "report.html")
    for force in ([], ["--force"]):
        code, said = run(bundle_copy, "--output", tmp_path / "page.html", *force)
        assert code == 1 and f"the page of {other}, another bundle folder" in said, said
        assert (other / "report.html").read_bytes() == theirs
    # another page in it: with --force only
    assert run(bundle_copy, "--output", other / "page.html", "--force")[0] == 0
    assert f"from {bundle_copy}" in (other / "page.html").read_text(encoding="utf-8")
    # the folder's own files: never, even with --force; an output that is no .html page: never
    for name in ("meta.json", "model.keras", "curves.png", "history.csv"):
        before = (bundle_copy / name).read_bytes()
        code, said = run(bundle_copy, "--output", bundle_copy / name, "--force")
        assert code == 1 and "\n" not in said
        assert "'s folder (its meta.json, model, pictures or your own)" in said
        assert "even with --force" in said
        assert (bundle_copy / name).read_bytes() == before
    for name in ("x.png", "page", "notes.txt"):
        code, said = run(bundle_copy, "--output", tmp_path / name, "--force")
        assert code == 1 and "a report is an HTML page" in said and ".html" in said
        assert not (tmp_path / name).exists()
    # nor through a link named .html to another bundle's meta.json (its name was checked,
    # not the file it leads to: the bundle was unreadable after)
    (tmp_path / "mine.html").symlink_to(other / "meta.json")
    before = (other / "meta.json").read_bytes()
    code, said = run(bundle_copy, "--output", tmp_path / "mine.html", "--force")
    assert code == 1 and "\n" not in said, said
    assert f"is a link to {other / 'meta.json'}, which is not an .html page" in said
    assert (other / "meta.json").read_bytes() == before
    # its own folder (another page name too) and a plain folder are fine, as before
    assert write_report(bundle_copy, bundle_copy / "again.htm", gradcams=0).is_file()
    assert write_report(bundle_copy, tmp_path / "pages" / "r.html", gradcams=0).is_file()


def test_an_evaluation_of_a_bundle_trained_again_since_leaves_that_bundle_out(
        bundle_copy, small_split, tmp_path):
    """evaluate --output reports/ev, then train --output <same bundle> --force: the page
    showed the old evaluated accuracy beside the new model's validation accuracy, command,
    settings, curves and Grad-CAMs, without a word."""
    from transfer.evaluate import evaluate

    out = tmp_path / "ev"
    evaluate(bundle_copy, data_dir=small_split / "test", output=out)
    same = write_report(out, tmp_path / "same.html", gradcams=0).read_text(encoding="utf-8")
    assert "Resolved settings" in same and "trained again" not in same
    meta_path = bundle_copy / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["created"] = "2099-01-01T00:00:00+0000"  # what a retraining at that path writes
    meta["metrics"]["val_accuracy"] = 0.325
    meta_path.write_text(json.dumps(meta))
    report_path = out / "report.json"
    evaluated = json.loads(report_path.read_text())
    for recorded in (True, False):  # evaluations before bundle_created: their metrics differ
        if not recorded:
            del evaluated["bundle_created"]
            report_path.write_text(json.dumps(evaluated))
        text = write_report(out, tmp_path / "again.html", force=True,
                            gradcams=0).read_text(encoding="utf-8")
        said = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())
        assert (f"{bundle_copy} was trained again since this evaluation (created "
                "2099-01-01T00:00:00+0000): its settings, curves and Grad-CAMs are another "
                "model's, and are left out.") in said
        assert "Resolved settings" not in text and "0.3250" not in text
        assert f"{evaluated['accuracy']:.4f}" in text and 'class="confusion"' in text


def test_the_footer_names_the_bundle_a_link_led_to(bundle_copy, tmp_path, monkeypatch):
    """`transfer report runs/c1/latest`: the footer said "from runs/c1/latest", a link that
    moves on to the next bundle trained, not the bundle the page shows."""
    def footer(folder) -> str:
        text = render_report(folder, gradcams=0)
        return html.unescape(re.search(r"<footer>(.*?)</footer>", text, re.S).group(1))

    (tmp_path / "latest").symlink_to(bundle_copy.name)
    monkeypatch.chdir(tmp_path)
    assert f" from {bundle_copy.name}; " in footer(Path("latest"))
    assert f" from {bundle_copy.resolve()}; " in footer(tmp_path / "latest")
    assert f" from {bundle_copy}; " in footer(bundle_copy)  # not a link: as given


def test_a_digit_bundles_averaged_validation_accuracy_is_told_apart_from_its_history(
        mnist_quick, tmp_path):
    """`transfer mnist` ends on the moving average of its weights: the cards showed its
    validation accuracy (0.9267) right above history.csv's last epoch, the raw weights'
    (0.9167), without a word. A sentence says which is which when they differ."""
    import csv

    def averaged(folder) -> list[str]:
        page = html.unescape(render_report(folder, gradcams=0))
        return re.findall(r'<p class="muted averaged">(.*?)</p>', page, re.S)

    folder = tmp_path / "digits"
    shutil.copytree(mnist_quick[1] / "mnist-cnn", folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["training"]["weight_average_momentum"]  # the default averages
    with open(folder / "history.csv", newline="", encoding="utf-8") as handle:
        raw = float(list(csv.DictReader(handle))[-1]["val_accuracy"])
    saved = meta["metrics"]["val_accuracy"]
    assert f"{saved:.4f}" != f"{raw:.4f}"  # one epoch: the average is not the last weights
    assert averaged(folder) == [
        f"The validation accuracy and loss above (accuracy {saved:.4f}) are the saved model's, "
        "whose weights are the moving average of the training steps; history.csv's are the raw "
        f"weights' (accuracy {raw:.4f} at the last epoch)."]
    meta["training"]["weight_average_momentum"] = 0  # --ema 0: one set of weights, no word
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    assert averaged(folder) == []


def test_a_digit_bundles_page_has_the_per_class_table_of_its_test_digits(mnist_quick):
    """README: every mnist page has the per-class table; the page drew the 10-class confusion
    matrix of the test digits (meta.json) but no precision/recall/F1, which only an
    evaluation's report.json gave. Computed from that matrix, each cell checked here."""
    folder = mnist_quick[1] / "mnist-cnn"
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    matrix = np.array(meta["confusion_matrix"])
    page = html.unescape(render_report(folder, gradcams=0))
    table = re.search(r"<th[^>]*>class</th><th[^>]*>precision</th>.*?<tbody>(.*?)</tbody>",
                      page, re.S)
    assert table, "no per-class table on the digit bundle's page"
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row)
            for row in re.findall(r"<tr>(.*?)</tr>", table.group(1))]
    assert [row[0] for row in rows] == meta["class_names"] + ["<i>macro average</i>"]
    for i, row in enumerate(rows[:-1]):
        tp, support, predicted = matrix[i, i], matrix[i].sum(), matrix[:, i].sum()
        assert row[1:] == [f"{tp / predicted:.4f}", f"{tp / support:.4f}",
                           f"{2 * tp / (support + predicted):.4f}", str(support)]
    assert rows[-1][-1] == str(matrix.sum())


def test_image_counts_look_into_sub_folders_as_training_does(tmp_path):
    """daisy/2023/1.jpg is a daisy for train and fetch-data: the report counts it too."""
    from transfer.report import _count_images

    for rel in ("daisy/a.jpg", "daisy/2023/b.jpg", "daisy/.hidden/c.jpg", "roses/d.png",
                "roses/__MACOSX/e.jpg", "roses/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert _count_images(tmp_path, ["daisy", "roses", "tulips"]) == {
        "daisy": 2, "roses": 1, "tulips": 0}


def test_image_counts_are_those_training_used_after_fetch_data_ran_again(tmp_path):
    """fetch-data's manifest, read as it is now, replaced what training recorded: a bundle
    trained on 30 + 30 showed 40 + 40 (and another split's skipped files) after the folder
    was fetched again. The manifest still gives the test part and skipped files while its
    counts are training's."""
    from transfer.report import data_counts

    data = tmp_path / "data"
    trained = {"train": {"cats": 30, "dogs": 30}, "validate": {"cats": 15, "dogs": 15}}
    meta = {"class_names": ["cats", "dogs"],
            "data": {"train_dir": str(data / "train"), "validate_dir": str(data / "validate"),
                     "counts": trained}}
    data.mkdir()
    manifest = {"tool": "transfer fetch-data", "counts": {**trained, "test": {"cats": 5,
                                                                              "dogs": 5}},
                "skipped": [{"file": "cat.666.jpg", "reason": "truncated"}]}
    (data / "manifest.json").write_text(json.dumps(manifest))
    counts, skipped, source = data_counts(meta)
    assert counts == manifest["counts"] and skipped == manifest["skipped"]
    assert source == f"{data / 'manifest.json'} (transfer fetch-data), as training counted"
    manifest["counts"]["train"] = {"cats": 40, "dogs": 40}
    (data / "manifest.json").write_text(json.dumps(manifest))
    counts, skipped, source = data_counts(meta)
    assert counts == trained and skipped == []
    assert source.startswith("meta.json (the images training used; ")
    assert f"{data / 'manifest.json'} counts other numbers now" in source
    # validated on data/test (--validate-dir): compared with the manifest's test counts, not
    # said to be another split; that fetch is the one training read
    manifest["counts"]["train"] = trained["train"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    on_test = {"train": trained["train"], "validate": manifest["counts"]["test"]}
    meta["data"].update(validate_dir=str(data / "test"), counts=on_test)
    counts, skipped, source = data_counts(meta)
    assert counts == on_test  # the test photos shown once, as the validation training did
    assert skipped == manifest["skipped"] and source.endswith("as training counted")
    # a split made in memory of data/train (both splits read it), or a manifest that
    # records no counts: nothing to compare, and nothing said to have changed
    split_here = {"train": {"cats": 24, "dogs": 24}, "validate": {"cats": 6, "dogs": 6}}
    meta["data"].update(validate_dir=str(data / "train"), counts=split_here)
    assert data_counts(meta) == (split_here, [], "meta.json (the images training used)")
    meta["data"].update(validate_dir=str(data / "validate"), counts=trained)
    del manifest["counts"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert data_counts(meta) == (trained, [], "meta.json (the images training used)")


@pytest.mark.parametrize("name, content, message", [
    ("meta.json", "", "meta.json is not valid JSON"),
    ("meta.json", {"timings": 7}, "meta.json: timings must be an object, not 7"),
    ("meta.json", {"data": [1]}, "meta.json: data must be an object, not [1]"),
    ("meta.json", {"class_names": "cats,dogs"}, "meta.json: class_names must be a list"),
    ("report.json", "{garbled", "report.json is not valid JSON"),
    ("report.json", {"per_class": [1, 2]}, "report.json: per_class must be an object, not [1, 2]"),
    ("report.json", {"skipped": 5}, "report.json: skipped must be a list, not 5"),
    ("report.json", {"bundle": 7}, "report.json: bundle must be a string, not 7"),
    ("report.json", {"gate": {"threshold": 0.9, "accuracy": "0.8", "passed": False}},
     "report.json: gate: accuracy must be a number, not \"0.8\""),
    ("report.json", {"gate": {"threshold": 0.9, "accuracy": 0.8}},
     "report.json: gate: passed must be true or false, not null"),
    ("report.json", {"balanced_accuracy": "high"},
     "report.json: balanced_accuracy must be a number, not \"high\""),
])
def test_a_damaged_meta_or_report_json_is_one_error_naming_it(trained_bundle, tmp_path, name,
                                                              content, message):
    """A meta.json or report.json whose fields have the wrong type ended `transfer report` with
    a TypeError or AttributeError (predict named the field in one line); an empty or garbled
    one was "holds neither meta.json nor report.json", though the file is there."""
    folder = tmp_path / "bundle"
    shutil.copytree(trained_bundle.bundle, folder)
    if name == "report.json":  # an evaluation folder: report.json alone
        (folder / "meta.json").unlink()
        good = {"accuracy": 0.9, "images": 10, "class_names": ["cats", "dogs"]}
    else:
        good = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    text = content if isinstance(content, str) else json.dumps({**good, **content})
    (folder / name).write_text(text, encoding="utf-8")
    with pytest.raises(TransferError) as info:
        render_report(folder)
    assert message in str(info.value)


GOOD_COMPARISON = {"data_dir": "flowers", "base": "mobilenet", "alpha": 0.25, "seed": 42,
                   "runs": {"frozen": {"val_accuracy": 0.9, "val_loss": 0.3, "seconds": 12.5,
                                       "parameters_trained": 1285, "bundle": "cmp/frozen",
                                       "per_class_f1": {"daisy": 0.8, "roses": 0.95}}},
                   "histories": {"frozen": {"val_accuracy": [0.8, 0.9]}}}


@pytest.mark.parametrize("content, message", [
    ('{"runs": [', "compare.json is not valid JSON"),
    ("[]", "compare.json holds a JSON list, not an object"),
    ({"runs": [1, 2]}, "compare.json: runs must be an object, not [1, 2]"),
    ({"runs": {"frozen": 7}}, "compare.json: runs.frozen must be an object, not 7"),
    ({"runs": {"frozen": {"val_accuracy": "x"}}},
     "compare.json: runs.frozen: val_accuracy must be a number, not \"x\""),
    ({"runs": {"frozen": {"per_class_f1": {"daisy": "high"}}}},
     "compare.json: runs.frozen.per_class_f1: daisy must be a number, not \"high\""),
    ({"runs": {"frozen": {"test_time_flips": 1}}},
     "compare.json: runs.frozen: test_time_flips must be true or false, not 1"),
    ({"runs": {"tuned": {"fine_tune_result": {"kept": False, "frozen": {"val_loss": 0.2}}}}},
     "compare.json: runs.tuned.fine_tune_result: fine_tuned must be an object, not null"),
    # a ValueError traceback ("Unknown format code 'f'"); a cell of HTML put in the page
    ({"runs": {"frozen": {"macro_f1": "0.9"}}},
     "compare.json: runs.frozen: macro_f1 must be a number, not \"0.9\""),
    ({"runs": {"frozen": {"epochs_run": "<img src=x onerror=alert(1)>", "best_epoch": 1}}},
     "compare.json: runs.frozen: epochs_run must be a whole number, not \"<img src=x "
     "onerror=alert(1)>\""),
])
def test_a_damaged_compare_json_is_one_error_naming_it(tmp_path, content, message):
    """`transfer report` on a comparison whose compare.json is garbled or has a field of the
    wrong type ended in a JSONDecodeError, AttributeError or ValueError traceback; it now
    names the file and the field in one line, as for meta.json and report.json."""
    from typer.testing import CliRunner

    from transfer.cli import app

    folder = tmp_path / "cmp"
    folder.mkdir()
    (folder / "compare.json").write_text(json.dumps(GOOD_COMPARISON), encoding="utf-8")
    assert "<table>" in render_report(folder)  # the good one renders
    text = content if isinstance(content, str) else json.dumps({**GOOD_COMPARISON, **content})
    (folder / "compare.json").write_text(text, encoding="utf-8")
    with pytest.raises(TransferError) as info:
        render_report(folder)
    assert message in str(info.value), str(info.value)
    result = CliRunner().invoke(app, ["report", str(folder), "--output", str(tmp_path / "r.html")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: ") and message in result.output.replace("\n", " ")
    assert not (tmp_path / "r.html").exists()


def test_a_comparison_as_compare_writes_a_diverged_run_renders(tmp_path):
    """compare.json as compare writes it for a fine-tuning that diverged (its NaN loss written
    as null) was refused by `transfer report` as damaged ("fine_tuned: val_loss must be a
    number, not null"); and the nulls read() accepts for seconds, parameters trained and
    bundle crashed the page with a TypeError traceback. They read "-" and "not a number"."""
    from typer.testing import CliRunner

    from transfer.cli import app
    from transfer.files import write_json

    folder = tmp_path / "cmp"
    folder.mkdir()
    frozen = GOOD_COMPARISON["runs"]["frozen"]
    runs = {"frozen": {**frozen, "seconds": None, "parameters_trained": None, "bundle": None},
            "fine-tuned": {**frozen, "fine_tune_result": {
                "kept": False, "fine_tuned": {"val_loss": float("nan")},
                "frozen": {"val_loss": 0.30125}}}}
    write_json(folder / "compare.json", {**GOOD_COMPARISON, "runs": runs})
    assert '"val_loss": null' in (folder / "compare.json").read_text()
    page = html.unescape(render_report(folder))
    said = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert ("fine-tuned: fine-tuning did not lower the validation loss (not a number against "
            "0.3013 before it)") in said
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>.*?</tr>",
                                                                          page)]
    by_run = {cells[0]: cells for cells in rows if cells}
    assert by_run["frozen"][-3:] == ["-", "-", "-"]  # seconds, parameters trained, bundle
    assert by_run["fine-tuned"][-3:] == ["12", "1,285", "frozen"]
    result = CliRunner().invoke(app, ["report", str(folder), "--output", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").is_file()


def test_an_evaluation_page_names_whose_engine_each_row_is(trained_bundle, small_split,
                                                         tmp_path, monkeypatch):
    """An evaluation's page showed the training's engine and images/s (meta.json) as the
    only engine figures, as if they were the evaluation's; the evaluation's own were not shown."""
    from transfer.evaluate import evaluate

    report = evaluate(trained_bundle.bundle, data_dir=small_split / "test",
                      output=tmp_path / "eval", engine="tf").report
    page = html.unescape(render_report(tmp_path / "eval"))
    rows = dict(re.findall(r"<tr><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td></tr>", page))
    assert rows["evaluation engine name"] == report["engine"]["name"] == "tf"
    assert rows["evaluation engine images"] == str(report["engine"]["images"])
    assert rows["training engine name"] == trained_bundle.meta["engine"]["name"]
    assert "engine name" not in rows  # no row says "engine" without saying whose
    from transfer.report import _num

    assert _num(3.3e-05, 3) == "3.3e-05" and _num(0.25, 3) == "0.250"  # it read "0.000"
    # the Grad-CAM pictures are of the evaluated photos, and say so (they were the bundle's
    # validation split's, skipped when that had moved while the evaluated photos were there)
    assert "Grad-CAM: where the model looked" in page
    assert f"On photos of the evaluated folder {small_split / 'test'}." in page
    captions = re.findall(r"<figcaption>([^:<]+): true", page)
    assert captions and set(captions) <= {p.name for p in (small_split / "test").rglob("*.jpg")}
    assert not set(captions) & {p.name for p in (small_split / "validate").rglob("*.jpg")}
    # a report.json of an older version (no data_dir_absolute): its folder found as evaluate
    # finds an earlier evaluation's
    written = json.loads((tmp_path / "eval/report.json").read_text())
    del written["data_dir_absolute"]
    (tmp_path / "eval/report.json").write_text(json.dumps(written))
    assert f"On photos of the evaluated folder {small_split / 'test'}." in html.unescape(
        render_report(tmp_path / "eval", gradcams=1))
    # a class folder added since: why evaluate would refuse it now (it said "no photo of the
    # bundle's classes was found")
    shutil.copytree(small_split / "test", tmp_path / "moved")
    evaluate(trained_bundle.bundle, data_dir=tmp_path / "moved", output=tmp_path / "eval2",
             engine="tf")
    (tmp_path / "moved/birds").mkdir()
    notes = []
    render_report(tmp_path / "eval2", gradcams=1, notes=notes)
    assert notes == [f"Grad-CAM skipped: {tmp_path / 'moved'} has class folder(s) the model "
                     "does not know: birds; its classes are cats, dogs"]
    # the evaluated folder gone since: the bundle's validation photos, said as such
    shutil.rmtree(tmp_path / "moved")
    notes = []
    page = html.unescape(render_report(tmp_path / "eval2", gradcams=1, notes=notes))
    assert notes == [f"Grad-CAM: the evaluated folder {tmp_path / 'moved'} is gone; drawn on "
                     "the bundle's validation photos instead"]
    assert (f"On photos of the bundle's validation split, not of the evaluated folder "
            f"{tmp_path / 'moved'}, which is gone.") in page
    # an older report.json names its folder relative to where evaluate ran: a folder of that
    # name where the report is rebuilt is another one (the first found was drawn)
    ran_in, elsewhere = tmp_path / "ran", tmp_path / "elsewhere"
    for root in (ran_in, elsewhere):
        root.mkdir()
    shutil.copytree(small_split / "test", ran_in / "data")
    shutil.copytree(small_split / "validate", elsewhere / "data")
    shutil.copytree(trained_bundle.bundle, ran_in / "models/b")
    monkeypatch.chdir(ran_in)
    evaluate(Path("models/b"), data_dir=Path("data"), output=ran_in / "ev", engine="tf")
    older = json.loads((ran_in / "ev/report.json").read_text())
    del older["data_dir_absolute"]
    (ran_in / "ev/report.json").write_text(json.dumps(older))
    monkeypatch.chdir(elsewhere)
    page = html.unescape(render_report(ran_in / "ev", gradcams=2))
    drawn = set(re.findall(r"<figcaption>([^:<]+): true", page))
    assert drawn and drawn <= {p.name for p in (small_split / "test").rglob("*.jpg")}
    assert f"On photos of the evaluated folder {ran_in / 'data'}." in page


def test_an_evaluation_of_an_in_memory_split_says_so_as_the_command_did(tmp_path):
    """evaluate printed "on the validation split of fx (40 images)"; its page said "on fx
    (the training validation folder)", as if the whole folder had been evaluated."""
    out = tmp_path / "ev"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({
        "model": "models/fx", "bundle": str(tmp_path / "gone" / "fx"), "data_dir": "fx",
        "subset": "validate", "is_training_validation_folder": True, "images": 40,
        "accuracy": 0.525, "class_names": ["a", "b"], "created": "2026-12-06T10:00:00+0000"}))
    said = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", render_report(out))).split())
    assert "Evaluated models/fx on the validation split of fx , 2026-12-06" in said
    assert "training validation folder" not in said


def test_a_multi_worker_bundle_says_whose_engine_figures_they_are(bundle_copy):
    """Two workers: "training engine images 48" (the chief's share) stood beside the whole
    cluster's images/s, unlabelled, and meta.json's per_worker was not shown."""
    meta = json.loads((bundle_copy / "meta.json").read_text())
    meta["workers"] = 2
    meta["per_worker"] = [{"rank": 0, "address": "127.0.0.1:1", "feature_images": 48},
                          {"rank": 1, "address": "127.0.0.1:2", "feature_images": 42}]
    (bundle_copy / "meta.json").write_text(json.dumps(meta))
    page = html.unescape(render_report(bundle_copy, gradcams=0))
    rows = dict(re.findall(r"<tr><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td></tr>", page))
    assert rows["training (the chief's share of 2 workers) engine name"] == meta["engine"]["name"]
    assert "training engine name" not in rows
    assert (rows["worker 0 feature images"], rows["worker 1 feature images"]) == ("48", "42")


def test_the_command_recorded_can_be_pasted_back_into_a_shell(monkeypatch):
    """`--data-dir "my flowers"` was recorded as `--data-dir my flowers` in meta.json and the
    report's Command box: pasted back, two arguments."""
    import shlex
    import sys

    from transfer import cli

    argv = ["train", "--data-dir", "/tmp/my flowers", "--output", "it's"]
    monkeypatch.setattr(sys, "argv", ["transfer", *argv])
    line = cli._command_line()
    assert shlex.split(line) == ["transfer", *argv]


def test_grad_cam_figures_in_several_batches_keep_each_photos_caption(bundle_copy,
                                                                      monkeypatch):
    """More overlays than a batch holds: every photo gets its figure, in the classes' turn,
    with the prediction the model makes of that photo alone."""
    from transfer import report
    from transfer.explain import gradcam
    from transfer.inference import BundleClassifier

    monkeypatch.setattr(report, "GRADCAM_BATCH", 2)
    meta = json.loads((bundle_copy / "meta.json").read_text())
    figures = report.gradcam_figures(bundle_copy, meta, count=5)
    assert len(figures) == 5
    captions = [html.unescape(re.search(r"<figcaption>(.*?)</figcaption>", f).group(1))
                for f in figures]
    assert [c.split("true ")[1].split(",")[0] for c in captions] == [
        "cats", "dogs", "cats", "dogs", "cats"]
    classifier = BundleClassifier(bundle_copy)
    folder = Path(meta["data"]["validate_dir"])
    for caption in captions:
        name, truth = caption.split(":")[0], caption.split("true ")[1].split(",")[0]
        _, probs, index, _ = gradcam(classifier.model, classifier.meta,
                                     classifier.prepare(folder / truth / name)[0])
        assert (f"predicted {meta['class_names'][index]} {float(probs.max()):.2f} "
                "(Grad-CAM at conv_pw_13_relu)") in caption


def test_an_empty_grad_cam_map_is_said_in_its_caption(bundle_copy):
    """A Grad-CAM with nothing on it (no region raises the predicted class's score) is drawn as
    a uniform tint; explain's picture and serve's header said so, the report's caption did not.
    The head made to predict dogs on every photo while every region lowers dogs' score (a
    large bias, a negative kernel): each predicted class's map is empty."""
    import keras
    import numpy as np

    from transfer import bundle, report

    model = keras.saving.load_model(bundle_copy / bundle.MODEL, compile=False)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([-np.abs(kernel) - 1e-3, bias + 1e3])
    model.save(bundle_copy / bundle.MODEL)
    meta = json.loads((bundle_copy / "meta.json").read_text())
    figures = report.gradcam_figures(bundle_copy, meta, count=2)
    captions = [html.unescape(re.search(r"<figcaption>(.*?)</figcaption>", f).group(1))
                for f in figures]
    assert len(captions) == 2
    for caption in captions:
        assert caption.endswith("predicted dogs 1.00 (Grad-CAM at conv_pw_13_relu; empty map: "
                                "no region raises the class)"), caption


def test_a_photo_grad_cam_cannot_trace_costs_its_own_figure_not_its_batchs(bundle_copy,
                                                                          monkeypatch):
    """When a batch cannot be traced, its photos are traced one by one: only the photo that
    fails alone loses its figure; the batches before and after keep theirs."""
    from transfer import explain, report

    real = explain.gradcams
    meta = json.loads((bundle_copy / "meta.json").read_text())
    every = report.gradcam_figures(bundle_copy, meta, count=5)
    odd = html.unescape(re.search(r"<figcaption>(.*?)</figcaption>", every[2]).group(1))
    odd_name = odd.split(":")[0]
    seen: list = []

    def picky(model, meta_, arrays, *args, **kwargs):
        seen.append(len(arrays))
        if len(arrays) > 1 and len(seen) == 2:  # the second batch, as a batch
            raise TransferError("this model is not a simple chain of layers")
        if len(arrays) == 1 and len(seen) == 3:  # its first photo alone (the third photo)
            raise TransferError("this model is not a simple chain of layers")
        return real(model, meta_, arrays, *args, **kwargs)

    monkeypatch.setattr(report, "GRADCAM_BATCH", 2)
    monkeypatch.setattr(explain, "gradcams", picky)
    figures = report.gradcam_figures(bundle_copy, meta, count=5)
    assert seen == [2, 2, 1, 1, 1]  # batch 1, batch 2 refused, its two photos, batch 3
    assert figures == every[:2] + every[3:]
    assert odd_name not in " ".join(figures)


def test_the_grad_cams_of_a_held_classifier_are_those_of_the_bundle_loaded_again(
        bundle_copy, monkeypatch):
    """A caller holding the bundle's classifier (train, evaluate) lends it to the report: the
    figures are the ones a fresh load draws, without that load; once model.keras is replaced,
    the held model is not the bundle's any more and the report loads the file."""
    from transfer import bundle, report
    from transfer.inference import BundleClassifier

    meta = json.loads((bundle_copy / "meta.json").read_text())
    held = BundleClassifier(bundle_copy)
    loads: list = []
    real = bundle.load_keras
    monkeypatch.setattr(bundle, "load_keras", lambda path: loads.append(path) or real(path))
    fresh = report.gradcam_figures(bundle_copy, meta, count=4)
    assert len(loads) == 1 and len(fresh) == 4
    assert report.gradcam_figures(bundle_copy, meta, count=4, classifier=held) == fresh
    assert len(loads) == 1
    adopted = BundleClassifier(bundle_copy, model=held.model)  # as train makes it
    assert report.gradcam_figures(bundle_copy, meta, count=4, classifier=adopted) == fresh
    assert len(loads) == 1
    model = bundle_copy / "model.keras"  # replaced (another inode), same bytes
    shutil.copyfile(model, bundle_copy / "new.keras")
    (bundle_copy / "new.keras").replace(model)
    assert report.gradcam_figures(bundle_copy, meta, count=4, classifier=held) == fresh
    assert len(loads) == 2


def test_a_model_in_memory_that_is_not_the_bundles_is_refused(bundle_copy):
    """``BundleClassifier(path, model=...)`` checks the model against meta.json as a load
    does: another number of classes is the bundle's inconsistency, in one error."""
    from transfer.inference import BundleClassifier
    from transfer.tf import keras

    three = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(TransferError, match="lists 2 classes but the model has 3 output"):
        BundleClassifier(bundle_copy, model=three)


def test_a_history_csv_saved_again_by_a_spreadsheet_leaves_the_table_out(bundle_copy):
    """history.csv saved again as UTF-16 (what a spreadsheet may write): the report, and
    serve's /models/<name>/report, failed with a UnicodeDecodeError (a 500 in serve)."""
    (bundle_copy / "history.csv").write_bytes("epoch,loss\n1,0.5\n".encode("utf-16"))
    text = write_report(bundle_copy).read_text(encoding="utf-8")
    assert "Not evaluated yet" in text or "confusion" in text  # the page is whole
    # the table left out, and said so (a check for "<td>0.5</td>" could never fail: cells
    # are written "0.5000", with a class)
    assert "<summary>history.csv</summary>" not in text
    assert skipped_on_page(text) == ["history.csv skipped: it is not UTF-8 text (saved again "
                                     "by a spreadsheet?)"]


def skipped_on_page(text: str) -> list[str]:
    """The lines a page says it skipped, as text."""
    return [html.unescape(line) for line in
            re.findall(r'<p class="warn skipped">(.*?)</p>', text, re.S)]


def test_grad_cams_that_cannot_be_drawn_are_said_skipped_and_why(bundle_copy, tmp_path):
    """The Grad-CAM section vanished without a word when the data folder had moved, when
    model.keras was missing or cut short. The page says why where the section would be, and
    write_report hands the same lines back (the CLI prints them)."""
    meta_path = bundle_copy / "meta.json"
    trained = meta_path.read_text(encoding="utf-8")
    meta = json.loads(trained)
    (bundle_copy / "report.json").unlink(missing_ok=True)  # never evaluated: nothing said
    notes: list = []
    text = write_report(bundle_copy, gradcams=1, notes=notes).read_text(encoding="utf-8")
    assert notes == [] and skipped_on_page(text) == [] and 'class="gradcam"' in text
    gone = tmp_path / "moved" / "validate"  # the data moved since training
    meta["data"].update(train_dir=str(tmp_path / "moved" / "train"), validate_dir=str(gone))
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    notes = []
    text = write_report(bundle_copy, gradcams=1, notes=notes).read_text(encoding="utf-8")
    assert notes == [f"Grad-CAM skipped: the validation folder {gone} is gone"]
    gradcam = re.search(r'<section id="gradcam">(.*?)</section>', text, re.S).group(1)
    assert skipped_on_page(gradcam) == notes and 'class="gradcam"' not in text
    gone.mkdir(parents=True)  # there, but none of the classes' photos in it
    notes = []
    write_report(bundle_copy, gradcams=1, notes=notes)
    assert notes == ["Grad-CAM skipped: no photo of the bundle's classes was found in the "
                     f"validation folder {gone}"]
    meta_path.write_text(trained, encoding="utf-8")  # the data back where training read it
    model = (bundle_copy / "model.keras").read_bytes()
    (bundle_copy / "model.keras").write_bytes(model[: len(model) // 3])  # cut short
    notes = []
    text = write_report(bundle_copy, gradcams=1, notes=notes).read_text(encoding="utf-8")
    assert len(notes) == 1 and notes[0].startswith("Grad-CAM skipped: cannot load ")
    assert "model.keras" in notes[0] and skipped_on_page(text) == notes
    (bundle_copy / "model.keras").unlink()
    notes = []
    write_report(bundle_copy, gradcams=1, notes=notes)
    assert notes == ["Grad-CAM skipped: the bundle's model.keras is missing"]
    from typer.testing import CliRunner

    from transfer.cli import app

    cli = CliRunner().invoke(app, ["report", str(bundle_copy)],  # said on the console too
                             env={"TRANSFER_REPORT_GRADCAMS": "1"})
    assert cli.exit_code == 0, cli.output
    assert ("warning: Grad-CAM skipped: the bundle's model.keras is missing"
            in " ".join(cli.output.split())), cli.output
    notes = []  # no Grad-CAM asked (serve's pages): nothing to say about it
    assert skipped_on_page(render_report(bundle_copy, gradcams=0, notes=notes)) == notes == []


def test_a_broken_picture_matrix_or_history_is_said_skipped(bundle_copy, tmp_path):
    """A curves.png or confusion.png of text bytes was inlined as data:image/png (a broken
    image); a confusion matrix of another size than the classes made a garbled table; a
    garbage history.csv vanished. Each is now one line where it would have been."""
    meta_path = bundle_copy / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    for name in ("report.json", "misclassified.png", *PICTURES):  # an evaluation's too
        (bundle_copy / name).unlink(missing_ok=True)
    meta["confusion_matrix"] = [[3, 1, 0], [0, 4, 0], [1, 0, 2]]  # 3 x 3 for 2 classes
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    (bundle_copy / "curves.png").write_text("not a picture\n")
    samples = bundle_copy / "samples.png"  # a whole PNG, among the other pictures
    with Image.new("RGB", (40, 30), (10, 200, 30)) as picture:
        picture.save(samples)
    whole = samples.read_bytes()
    (bundle_copy / "confusion.png").write_bytes(whole[: len(whole) // 2])  # a PNG cut short
    (bundle_copy / "history.csv").write_text("garbage,,x\n", encoding="utf-8")
    notes: list = []
    text = write_report(bundle_copy, gradcams=0, notes=notes).read_text(encoding="utf-8")
    assert notes == ["curves.png skipped: the file is not a PNG picture",
                     "history.csv skipped: it is not a table of epochs (its first column is "
                     "not 'epoch')",
                     "Confusion matrix skipped: it is 3 x 3, but there are 2 class names",
                     "confusion.png skipped: the PNG is cut short or damaged"]
    assert skipped_on_page(text) == notes and 'class="confusion"' not in text
    for img in parsed(text).images:  # what is inlined is a whole PNG: samples.png alone
        with decoded(img["src"]) as shown:
            shown.load()
    assert [img["alt"] for img in parsed(text).images] == [PICTURES["samples.png"]]
    for garbage, said in ((b"\xff\xfe\x00garbage\x80", "it is not UTF-8 text"),
                          (b"epoch,loss\n1,0.5\n2\n", "line 3 has 1 fields, the header 2"),
                          (b"epoch,loss\none,0.5\n", "line 2's epoch is 'one'"),
                          (b"", "it is empty"), (b"epoch,loss\n", "it holds no epoch")):
        (bundle_copy / "history.csv").write_bytes(garbage)
        notes = []
        render_report(bundle_copy, gradcams=0, notes=notes)
        assert any(n.startswith(f"history.csv skipped: {said}") for n in notes), notes
    # an evaluation whose bundle is gone says so, once
    out = tmp_path / "ev"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({
        "bundle": str(tmp_path / "gone"), "model": "models/gone", "data_dir": "fx",
        "accuracy": 0.5, "images": 4, "class_names": ["a", "b"]}))
    notes = []
    skipped = skipped_on_page(render_report(out, notes=notes))
    assert skipped == notes == [f"The evaluated bundle {tmp_path / 'gone'} is gone: its "
                                "settings, curves and Grad-CAMs are left out"]


def test_write_report_takes_its_settings_as_the_other_commands_do(bundle_copy, tmp_path):
    """report.write_report(ReportSettings(...)) was a TypeError (a path was expected)."""
    from transfer.settings import ReportSettings

    out = tmp_path / "page.html"
    assert write_report(ReportSettings(folder=bundle_copy, output=out)) == out
    assert "<html" in out.read_text(encoding="utf-8")
    with pytest.raises(TransferError, match="no such bundle or evaluation folder"):
        write_report(ReportSettings(folder=tmp_path / "nothing"))
    (tmp_path / "mine.html").write_text("<p>my notes</p>")  # force as a keyword counts too
    settings = ReportSettings(folder=bundle_copy, output=tmp_path / "mine.html")
    with pytest.raises(TransferError, match="not a transfer report"):
        write_report(settings)
    assert write_report(settings, force=True) == tmp_path / "mine.html"


def test_an_unwritable_output_is_refused_before_the_page_is_made(bundle_copy, tmp_path,
                                                                 monkeypatch):
    """write_report(folder, output=...) into a folder nobody can write in rendered the whole
    page, Grad-CAMs included, then raised a bare FileNotFoundError naming a hidden temporary
    file; ReportSettings and the other commands say it first, in one line."""
    from unwritable import unwritable_folder

    from transfer import report

    def rendered(*args, **kwargs):
        raise AssertionError("the page was made before the output was checked")

    monkeypatch.setattr(report, "render_report", rendered)
    with unwritable_folder(tmp_path / "locked") as locked:
        with pytest.raises(TransferError) as info:
            write_report(bundle_copy, output=locked / "r.html")
    said = str(info.value)  # the reason: "Permission denied", or as root (chattr +i) EPERM's
    assert said.startswith(f"--output {locked / 'r.html'}: cannot write in {locked} (")
    assert said.endswith(("(Permission denied)", "(Operation not permitted)"))


def test_a_file_or_a_folder_of_linked_bundles_is_said_as_such(bundle_copy, tmp_path):
    """write_report("notes.txt") said "notes.txt/report.html: ... is a file, not a folder"
    once the output's folder was probed first: it says what report takes, as the CLI does.
    A folder of bundles lists a user's link to one (`prod`), not the runs' own `latest`."""
    from transfer.settings import not_a_report_folder

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TransferError) as info:
        write_report(tmp_path / "notes.txt")
    assert str(info.value) == not_a_report_folder(tmp_path / "notes.txt")
    assert "is a file, not a bundle or evaluation folder" in str(info.value)
    links = tmp_path / "links"
    links.mkdir()
    (links / "prod").symlink_to(bundle_copy)
    (links / "latest").symlink_to(bundle_copy)
    with pytest.raises(TransferError, match=r"holds bundles \(prod\) but neither"):
        write_report(links)


def test_the_files_training_skipped_are_in_the_report(bundle_copy, monkeypatch):
    """Training skipped 3 unreadable files (meta.json's "skipped", said on the console), and
    the report said "No file was skipped."; after evaluate it listed evaluate's alone."""
    monkeypatch.setenv("TRANSFER_REPORT_GRADCAMS", "0")
    meta = json.loads((bundle_copy / "meta.json").read_text(encoding="utf-8"))
    meta["skipped"] = [{"file": "photos/roses/empty.jpg", "reason": "empty file"},
                       {"file": "photos/roses/trunc.jpg", "reason": "truncated"}]
    (bundle_copy / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (bundle_copy / "report.json").unlink(missing_ok=True)
    text = write_report(bundle_copy).read_text(encoding="utf-8")
    assert "No file was skipped" not in text and "2 file(s) skipped" in text
    assert "photos/roses/empty.jpg" in text and "skipped by" in text

    from transfer.evaluate import evaluate

    evaluate(bundle_copy, force=True)
    report = json.loads((bundle_copy / "report.json").read_text(encoding="utf-8"))
    report["skipped"] = [{"file": "photos/roses/./trunc.jpg", "reason": "truncated"},
                         {"file": "photos/daisy/new.jpg", "reason": "not an image"}]
    (bundle_copy / "report.json").write_text(json.dumps(report), encoding="utf-8")
    text = write_report(bundle_copy).read_text(encoding="utf-8")
    assert "3 file(s) skipped" in text  # trunc.jpg, skipped by both, listed once
    # training's path relative to the folder it ran in, evaluate's absolute: one file
    report["skipped"][0]["file"] = str(Path(meta["data"]["cwd"]) / "photos/roses/trunc.jpg")
    (bundle_copy / "report.json").write_text(json.dumps(report), encoding="utf-8")
    assert "3 file(s) skipped" in write_report(bundle_copy).read_text(encoding="utf-8")
    assert "photos/daisy/new.jpg" in text and "photos/roses/empty.jpg" in text
    # more than the table lists: said ("500 file(s) skipped:" above 200 rows)
    monkeypatch.setattr("transfer.report.SKIPPED_LISTED", 2)
    text = write_report(bundle_copy).read_text(encoding="utf-8")
    assert "3 file(s) skipped (the first 2 listed):" in text
    # the history's numbers as the cards write them (a loss of 1.2e-05 read 0.0000)
    history = (bundle_copy / "history.csv").read_text(encoding="utf-8").splitlines()
    header, first = history[0].split(","), history[1].split(",")
    first[header.index("loss")] = "1.2e-05"
    (bundle_copy / "history.csv").write_text("\n".join([history[0], ",".join(first),
                                                         *history[2:]]) + "\n")
    text = write_report(bundle_copy).read_text(encoding="utf-8")
    assert '<td class="">1.2e-05</td>' in text and ">0.0000</td>" not in text


def test_an_evaluated_bundle_with_a_broken_part_says_it_too(bundle_copy):
    """A bundle evaluated into itself (an evaluation folder too): the list of what the page
    skips was overwritten by a string (the "(the training validation folder)" words), so
    any skipped part raised AttributeError: `transfer report` a traceback, evaluate "report.html
    not written", serve's report page a 500."""
    from transfer.evaluate import evaluate

    evaluate(bundle_copy, force=True)
    (bundle_copy / "curves.png").write_text("not a picture\n")
    notes: list = []
    text = write_report(bundle_copy, gradcams=0, notes=notes).read_text(encoding="utf-8")
    assert notes == ["curves.png skipped: the file is not a PNG picture"]
    assert skipped_on_page(text) == notes and 'class="confusion"' in text


def test_an_evaluation_folder_never_shows_the_bundles_pictures_as_its_own(
        bundle_copy, small_split, tmp_path):
    """`evaluate --output DIR --worst 0` on a folder the model got all right: DIR has no
    misclassified.png (right), but its report.html showed the bundle's own one (the validation
    split's mistakes) under "Misclassified examples", byte for byte; a confusion.png gone from
    DIR was the bundle's too. The page now shows DIR's pictures only, and says why one is
    missing; the bundle's own page keeps its pictures."""
    from transfer.evaluate import evaluate

    evaluate(bundle_copy, force=True)  # the bundle's own evaluation: its pictures
    own = {name: (bundle_copy / name).read_bytes()
           for name in ("misclassified.png", "confusion.png")}
    listed = evaluate(bundle_copy, data_dir=small_split / "test", output=tmp_path / "all",
                      worst=1000).report
    wrong = {m["file"] for m in listed["worst_mistakes"]}
    right = tmp_path / "right"
    for name in ("cats", "dogs"):  # the test photos it classifies right, as a user's folder
        (right / name).mkdir(parents=True)
        for photo in sorted((small_split / "test" / name).iterdir()):
            if str(photo) not in wrong:
                shutil.copy(photo, right / name / photo.name)

    def shown(page: str) -> list[bytes]:
        return [base64.b64decode(img["src"].split(",", 1)[1]) for img in parsed(page).images]

    def section(page: str, anchor: str) -> str:
        found = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
        return found.group(1) if found else ""

    for data, worst, said in ((right, 0, "No mistakes: all"), (right, 16, "No mistakes: all"),
                              (small_split / "test", 0, "No picture (--worst 0): "
                                                        f"{len(wrong)} mistake")):
        out = tmp_path / f"ev-{data.name}-{worst}"
        report = evaluate(bundle_copy, data_dir=data, output=out, worst=worst).report
        assert (report["accuracy"] == 1) == (data == right)
        page = (out / "report.html").read_text(encoding="utf-8")
        assert not set(shown(page)) & set(own.values())
        if worst == 0:
            assert not (out / "misclassified.png").exists()
        else:  # evaluate drew its own "no mistakes" picture: the page showed it; gone, none
            assert (out / "misclassified.png").read_bytes() in shown(page)
            (out / "misclassified.png").unlink()
            page = render_report(out, gradcams=0)
            assert not set(shown(page)) & set(own.values())
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", section(page, "mistakes")))
                        .split())
        assert said in text and "the most confident mistakes" not in page, text
        # confusion.png gone from the evaluation's folder: not the bundle's in its place
        (out / "confusion.png").unlink()
        notes: list = []
        page = render_report(out, gradcams=0, notes=notes)
        assert not set(shown(page)) & set(own.values())
        assert 'class="confusion"' in page
        assert notes == [f"confusion.png is gone from {out}: the table above is this "
                         "evaluation's matrix"]
    # mistakes drawn, the picture gone since: said, not the bundle's in its place
    (tmp_path / "all" / "misclassified.png").unlink()
    notes = []
    page = render_report(tmp_path / "all", gradcams=0, notes=notes)
    assert not set(shown(page)) & set(own.values())
    assert notes == [f"misclassified.png is gone from {tmp_path / 'all'}: the mistakes are "
                     "listed without their photos"]
    # the bundle's training pictures (an MNIST bundle's noise.png: "test accuracy under
    # Gaussian noise") are said to be the bundle's on an evaluation's page
    (bundle_copy / "noise.png").write_bytes(own["confusion.png"])
    whose = "The evaluated bundle's own pictures, drawn at its training, not by this evaluation."
    pictures = section(render_report(tmp_path / "all", gradcams=0), "pictures")
    assert whose in html.unescape(pictures) and PICTURES["noise.png"] in pictures
    # the bundle's own page (its own evaluation) keeps its pictures
    page = render_report(bundle_copy, gradcams=0)
    assert set(own.values()) <= set(shown(page)) and whose not in html.unescape(page)
