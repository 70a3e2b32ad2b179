"""The command line: help, version, fetch-data through CliRunner and as a real process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import kaggle_members, make_zip, require_asset, truncated
from typer.testing import CliRunner

from transfer import __version__
from transfer.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    """Each command is a row of the Commands panel (the names also appear in the app's
    description, so a check that they are somewhere in the output could not fail)."""
    import re

    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    rows = {name for name in re.findall(r"^│ (\S+)", result.output, re.M)
            if not name.startswith("-")}
    assert rows == {"fetch-data", "bases", "train", "predict", "evaluate", "explain",
                    "export", "mnist", "compare", "serve", "report"}


def test_train_help_gives_each_recipes_defaults():
    """train --help said "24 from scratch" for --epochs, but scratch-seeds runs its own
    recipe (10 epochs), and called scratch "The ImageNet base"."""
    import re

    from transfer.settings import RECIPES

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = re.sub(r"[\s│]+", " ", result.output)
    for option, key in (("epochs", "epochs"), ("learning rate", "learning_rate"),
                        ("patience", "patience")):
        r = {name: values[key] for name, values in RECIPES.items()}
        assert (f"[default: {r['frozen']} with a frozen base, {r['scratch']} from scratch "
                f"({r['scratch-seeds']} for scratch-seeds)]") in text, option
    assert "The pretrained ImageNet base, or scratch /" in text
    assert "scratch-seeds: a small CNN from scratch (see transfer bases)" in text


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_fetch_data_cli(real_photos, tmp_path):
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 20))
    args = ["fetch-data", "--archive", str(archive), "--data-dir", str(tmp_path / "data"),
            "--train-per-class", "8", "--validate-per-class", "4", "--test-per-class", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "manifest" in result.output
    assert len(list((tmp_path / "data/test/dogs").iterdir())) == 2
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_fetch_data_lists_classes_down_when_they_do_not_fit_across(tmp_path, monkeypatch):
    """Five flower classes on a 40-column console: a row per class (every name and count
    readable), not five squeezed columns; on a wide console a row per split, as before."""
    from rich.console import Console

    from transfer import cli

    flowers = require_asset("data/flowers")
    monkeypatch.setattr(cli, "out", Console(width=40))
    args = ["fetch-data", "--archive", str(flowers), "--data-dir", str(tmp_path / "data")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert rows["class"] == ["train", "validate"]
    for name in ("daisy", "dandelion", "roses", "sunflowers", "tulips"):
        assert rows[name] == ["32", "8"]
    monkeypatch.setattr(cli, "out", Console(width=200))
    wide = runner.invoke(app, [*args[:-2], "--data-dir", str(tmp_path / "data2")])
    rows = table_rows(wide.output)
    assert rows["split"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert rows["train"] == ["32"] * 5 and rows["validate"] == ["8"] * 5


def table_rows(output: str) -> dict[str, list[str]]:
    """A printed table's rows (the header's too), by their first cell."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]
        if len(cells) > 1:
            rows[cells[0]] = cells[1:]
    return rows


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    result = runner.invoke(app, ["fetch-data", "--archive", str(tmp_path / "missing.zip"),
                                 "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --archive ")
    assert lines[0].endswith("does not exist")


def test_real_process(real_photos, tmp_path):
    archive = make_zip(tmp_path / "small.zip", kaggle_members(real_photos, 20))
    env = {**os.environ, "COLUMNS": "120"}
    ok = subprocess.run([sys.executable, "-m", "transfer", "fetch-data", "--archive", str(archive),
                         "--train-per-class", "6", "--validate-per-class", "3"],
                        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "data/validate/cats").iterdir())) == 3
    notzip = tmp_path / "notes.zip"
    notzip.write_text("not a zip")
    bad = subprocess.run([sys.executable, "-m", "transfer", "fetch-data", "--archive", str(notzip),
                          "--data-dir", "other"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        f"error: {notzip} is not a readable zip archive (not a zip, or truncated)"]
    assert "Traceback" not in bad.stderr + bad.stdout


def test_train_cli_says_what_it_trained_on_when_it_skipped_files(tiny_split, tmp_path):
    """The run starts with the count of files found ("data: ... 24 train + 12 validate") and a
    damaged photo is found only when read: the last lines say what it trained on."""
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    victim = sorted((data / "train/cats").iterdir())[0]
    victim.write_bytes(truncated(victim.read_bytes()))  # passes the header probe
    result = runner.invoke(app, [
        "train", "--base", "mobilenet", "--alpha", "0.25", "--weights", "none",
        "--image-size", "48", "--epochs", "1", "--no-augment", "--data-dir", str(data),
        "--models-dir", str(tmp_path / "models"), "--output", str(tmp_path / "models/cli")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "models/cli/meta.json").read_text())
    assert (meta["data"]["train_images"], meta["data"]["validate_images"]) == (23, 12)
    assert "24 train + 12 validate" in " ".join(result.output.split())
    assert ("skipped 1 unreadable file(s): listed above and in "
            f"{tmp_path / 'models/cli/meta.json'}; trained on 23 and validated on 12 images"
            ) in " ".join(result.output.split())


def test_a_latest_that_cannot_be_linked_is_a_warning_not_a_failed_run(tiny_split, tmp_path,
                                                                     monkeypatch):
    """The link failing after the bundle landed (a full disk, a FAT stick) ended a whole run
    with "error: No space left on device" and exit 1 (a rerun was then "already exists");
    a real folder named latest got "note: models/latest still points at models/latest"."""
    import errno

    from transfer import bundle

    args = ["train", "--base", "mobilenet", "--alpha", "0.25", "--weights", "none",
            "--image-size", "48", "--epochs", "1", "--no-augment", "--data-dir", str(tiny_split),
            "--models-dir", str(tmp_path / "models"), "--no-feature-cache"]

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle.os, "symlink", full)
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "models/a")])
    said = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models/a/model.keras").is_file() and "validation accuracy" in said
    assert (f"{tmp_path / 'models/latest'} was not pointed at this bundle (No space left on "
            f"device); use --model {tmp_path / 'models/a'}") in said
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["a"]  # no .latest.tmp
    monkeypatch.undo()
    (tmp_path / "models/latest").mkdir()  # the user's own folder of that name
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "models/b")])
    assert result.exit_code == 0, result.output
    assert (f"note: {tmp_path / 'models/latest'} is not a link but a folder or file of yours "
            f"(left alone), so it is not this model; use --model {tmp_path / 'models/b'}"
            ) in " ".join(result.output.split())
    assert list((tmp_path / "models/latest").iterdir()) == []


def test_train_cli_writes_bundle_and_reports(tiny_split, tmp_path):
    # a copy without the cache: another file's run of these settings (test_cli_errors, on
    # the same worker) made this first run a cache hit
    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    result = runner.invoke(app, [
        "train", "--base", "mobilenet", "--alpha", "0.25", "--weights", "none",
        "--image-size", "48", "--epochs", "1", "--no-augment", "--data-dir", str(data),
        "--models-dir", str(tmp_path / "models"), "--output", str(tmp_path / "models/cli")])
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output and "feature cache: miss" in result.output
    assert (tmp_path / "models/cli/model.keras").is_file()
    assert os.readlink(tmp_path / "models/latest") == "cli" and "note:" not in result.output
    again = runner.invoke(app, ["train", "--data-dir", str(data), "--output",
                                str(tmp_path / "models/cli")])
    assert again.exit_code == 1 and "already exists; use --force" in again.output
    # outside --models-dir: models/latest stays, and the run says so and how to name it
    away = runner.invoke(app, [
        "train", "--base", "mobilenet", "--alpha", "0.25", "--weights", "none",
        "--image-size", "48", "--epochs", "1", "--no-augment", "--data-dir", str(data),
        "--models-dir", str(tmp_path / "models"), "--output", str(tmp_path / "away/run")])
    assert away.exit_code == 0, away.output
    assert os.readlink(tmp_path / "models/latest") == "cli"
    assert (f"note: {tmp_path / 'models/latest'} still points at {tmp_path / 'models/cli'}; "
            f"use --model {tmp_path / 'away/run'} (or --model {tmp_path / 'away/latest'}, the "
            "link beside it) with predict") in " ".join(away.output.split())
    assert os.readlink(tmp_path / "away/latest") == "run"  # said, not made silently
    # --output naming the link itself, or a folder inside a bundle: refused before any work
    for output, message in (("models/latest", "latest is the link to the newest bundle"),
                            ("models/cli/sub", "is inside the bundle")):
        refused = runner.invoke(app, ["train", "--data-dir", str(data), "--output",
                                      str(tmp_path / output), "--force"])
        assert refused.exit_code == 1 and message in " ".join(refused.output.split())
    assert os.readlink(tmp_path / "models/latest") == "cli"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["cli", "latest"]
    assert not (tmp_path / "models/cli/sub").exists()


def test_a_train_process_says_how_much_of_its_time_importing_tensorflow_took(tiny_split,
                                                                          tmp_path):
    """A `transfer train` process imports TensorFlow inside its run (seconds on a laptop, in
    total_seconds): meta.json and the summary line say how much, so the total is not read as
    the work's. A run in a program that had TensorFlow already (this test's) records 0."""
    import json
    import re
    import time

    command = [sys.executable, "-m", "transfer", "train", "--base", "mobilenet", "--alpha",
               "0.25", "--weights", "none", "--image-size", "48", "--epochs", "1",
               "--no-augment", "--data-dir", str(tiny_split), "--models-dir",
               str(tmp_path / "models"), "--output", str(tmp_path / "models/cold")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    t = json.loads((tmp_path / "models/cold/meta.json").read_text())["timings"]
    assert 0 < t["tensorflow_import_seconds"] < t["total_seconds"]
    assert (f"total {t['total_seconds']:.1f} s ({t['tensorflow_import_seconds']:.1f} s of it "
            "importing TensorFlow)") in done.stdout
    import transfer.tf  # noqa: F401 (TensorFlow imported before the run, as a program does)

    began = time.perf_counter()
    warm = runner.invoke(app, [*command[3:-1], str(tmp_path / "models/warm")])
    took = time.perf_counter() - began
    assert warm.exit_code == 0, warm.output
    t = json.loads((tmp_path / "models/warm/meta.json").read_text())["timings"]
    assert t["tensorflow_import_seconds"] == 0 and "importing TensorFlow" not in warm.output
    # the total ends with the model trained (meta.json is written after it): the bundle and
    # its report are said apart, so that the line accounts for the run (they went unsaid)
    writing = re.search(r"; then ([0-9.]+) s writing the bundle and its report",
                        " ".join(warm.output.split()))
    assert writing and float(writing[1]) > 0, warm.output
    assert t["total_seconds"] + float(writing[1]) <= took + 0.1


def test_loading_tensorflow_keeps_a_programs_random_sequences():
    """TensorFlow's first import draws from Python's random: a program's seeded sequence moved
    on when serve or compare (which keep the state around their runs, not around that import)
    first loaded it. In a fresh process, as a program meets it."""
    code = ("import random, numpy as np; random.seed(1); np.random.seed(1); "
            "a, b = random.getstate(), np.random.get_state()[1].copy(); "
            "import transfer.tf, tensorflow; "
            "print(random.getstate() == a, (np.random.get_state()[1] == b).all())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]


def test_train_cli_unknown_base(tiny_split):
    """The choices come from the registry; a usage error is one line and exit code 2."""
    result = runner.invoke(app, ["train", "--base", "alexnet", "--data-dir", str(tiny_split)],
                           prog_name="transfer")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: Invalid value for '--base': 'alexnet' is not one of 'inception', 'vgg16', "
        "'mobilenet', 'mobilenetv2', 'resnet50', 'efficientnetb0', 'scratch', 'scratch-seeds'. "
        "(see 'transfer train --help')"]


def test_bases_lists_every_base_and_which_weights_are_cached(mobilenet_weights):
    """`transfer bases`: every registered base (each MobileNet width), its input size and
    parameters, and whether its ImageNet weights are in $KERAS_HOME/models (the genuine
    MobileNet-0.25 file is; InceptionV3's is not)."""
    from transfer import bases

    result = runner.invoke(app, ["bases"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines()
            if line.startswith("│")}
    for name, base in bases.BASES.items():
        if base.has_alpha:
            for alpha in bases.MOBILENET_ALPHAS:
                assert f"{name} --alpha {alpha}" in rows
        else:
            assert name in rows and f"{base.size}" in rows[name]
        # the input and min columns each in its place (anywhere in the row let a swap pass)
        row = rows[f"{name} --alpha 1.0" if base.has_alpha else name]
        cells = [cell.strip() for cell in row.split("│")[1:-1]]
        assert cells[2:4] == [str(base.size), str(base.min_size)], (name, cells)
    assert "│ cached" in rows["mobilenet --alpha 0.25"]
    assert "not cached" in rows["inception"] and "not cached" in rows["mobilenet --alpha 1.0"]
    assert "21,802,784" in rows["inception"]  # InceptionV3 without its top (Keras counts)
    # the preprocessing as README's table writes it, and the scratch bases told apart
    assert "tf: x/127.5 - 1" in rows["inception"] and "caffe: BGR" in rows["vgg16"]
    assert "4 conv blocks" in rows["scratch"] and "2 conv layers" in rows["scratch-seeds"]


def test_bases_tells_which_weights_file_is_there_or_damaged(tmp_path, mobilenet_weights):
    """Only the file without the top (all train needs) is "for train only": `predict
    --imagenet` would download the other; an empty file is "damaged", named with the way out
    (it was "cached")."""
    models = tmp_path / "models"
    models.mkdir()
    (models / mobilenet_weights.name).symlink_to(mobilenet_weights)
    (models / "mobilenet_5_0_224_tf.h5").write_bytes(b"")
    result = runner.invoke(app, ["bases"], env={"COLUMNS": "200", "KERAS_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines()
            if line.startswith("│")}
    assert "│ for train only" in rows["mobilenet --alpha 0.25"]
    assert "│ damaged" in rows["mobilenet --alpha 0.5"]
    assert "│ not cached" in rows["mobilenet --alpha 1.0"]
    assert (f"warning: {models / 'mobilenet_5_0_224_tf.h5'} is empty (0 bytes: a download cut "
            "short?); delete it and Keras downloads it again") in " ".join(result.output.split())


def test_progress_bars_print_names_as_they_are_and_controls_as_escapes():
    """A progress bar's description and status were read as rich markup ("[bold]" in a file
    name vanished, "[/b]" raised) and a control character in them reached the terminal."""
    import io

    from transfer.progress import RichReporter, safe_console

    buffer = io.StringIO()
    reporter = RichReporter(safe_console(file=buffer, force_terminal=True, width=150))
    with reporter.task("Downloading [bold]x\x1b[2J.zip", total=3) as advance:
        advance(1, status="a[/b]c\r")
    text = buffer.getvalue()
    assert "Downloading [bold]x\\x1b[2J.zip" in text and "a[/b]c\\r" in text
    assert "\x1b[2J" not in text


def test_a_file_name_with_a_newline_cannot_forge_a_line_of_its_own(tmp_path):
    """evaluate's "skipped" warning of ``bad\nwarning: fake.jpg`` printed two lines, the second
    a warning of its own the tool never gave; explain's lines likewise. Each message is one
    line, its newline written "\n"."""
    import io

    from transfer.progress import RichReporter, safe_console

    buffer = io.StringIO()
    reporter = RichReporter(safe_console(file=buffer, width=200))
    reporter.warn("skipped photos/roses/bad\nwarning: fake.jpg: empty file (0 bytes)")
    reporter.info("photos/bad\nline.jpg")
    assert buffer.getvalue().splitlines() == [
        "warning: skipped photos/roses/bad\\nwarning: fake.jpg: empty file (0 bytes)",
        "photos/bad\\nline.jpg"]
    # explain of a folder holding such a photo (read as any other): one line per photo
    flowers = require_asset("data/flowers")
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(sorted((flowers / "roses").iterdir())[0], folder / "new\nline.jpg")
    (folder / "bad\nwarning: fake.jpg").write_bytes(b"")
    bundle = tmp_path / "m"
    train_done = runner.invoke(app, ["train", "--base", "mobilenet", "--alpha", "0.25",
                                     "--weights", "none", "--image-size", "48", "--epochs", "1",
                                     "--no-augment", "--data-dir", str(flowers), "--output",
                                     str(bundle), "--models-dir", str(tmp_path)])
    assert train_done.exit_code == 0, train_done.output
    done = runner.invoke(app, ["explain", str(folder), "--model", str(bundle), "--output",
                               str(tmp_path / "out")], env={"COLUMNS": "400"})
    lines = done.output.splitlines()
    assert not [line for line in lines if line.startswith(("warning: fake", "line.jpg"))], lines
    assert sum("new\\nline.jpg" in line for line in lines) >= 1, lines


def test_a_message_into_a_log_is_one_line_and_wraps_on_a_terminal():
    """`transfer train ... > log 2>&1`: warnings were broken at 200 columns mid-sentence, so
    grep missed them; into a file or a pipe a message is now one line."""
    import io

    from transfer.progress import RichReporter, safe_console

    message = ("a lower --fine-tune-lr or fewer --fine-tune layers " * 6).strip()
    log = io.StringIO()
    RichReporter(safe_console(file=log, width=80)).warn(message)
    RichReporter(safe_console(file=log, width=80)).info(message)
    assert log.getvalue().splitlines() == [f"warning: {message}", message]
    terminal = io.StringIO()
    RichReporter(safe_console(file=terminal, force_terminal=True, width=80)).warn(message)
    assert len(terminal.getvalue().splitlines()) > 1


def test_the_predictions_table_fits_narrow_terminals_without_cutting_numbers():
    """Five classes on 60 or 80 columns: the per-class probabilities were cut ("0.9...") or
    left off the right edge, the headers read "probab..."; the table now shows them when they
    fit and otherwise the other classes in one column (only the --top ones were: with the
    default top 1, an 80-column terminal showed the top class alone), and never cuts a
    number."""
    import io

    from transfer.cli import _predictions_table
    from transfer.predict import Prediction, Predictions
    from transfer.progress import safe_console

    names = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    probs = dict(zip(names, [0.3194, 0.0040, 0.6563, 0.0129, 0.0074], strict=True))
    top = [{"label": n, "probability": p} for n, p in sorted(probs.items(), key=lambda x: -x[1])]
    items = [Prediction(file="/work/shared/data/flowers/roses/10090824183_d02c613f10_m.jpg",
                        label="roses", probability=0.6563, top=top[:3], probabilities=probs)]
    items.append(Prediction(file="b.jpg", label="roses", probability=0.6563, top=top[:1],
                            probabilities=probs))  # predict's default --top 1
    result = Predictions("bundle", "models/flowers", "mobilenet", names, items)
    for width in (60, 80, 120):
        console = safe_console(width=width, file=io.StringIO(), record=True)
        console.print(_predictions_table(result, console))
        text = console.export_text()
        lines = text.splitlines()
        assert all(len(line) <= width for line in lines), (width, text)
        assert all(line.rstrip()[-1] in "┓┃┩│┘" for line in lines[1:]), (width, text)  # whole
        assert "probability" in text and "0.6563" in text
        if width == 120:
            assert all(f"p({n})" in text for n in names) and "0.0074" in text
        else:  # every other class, by probability, on both rows
            cells = [line.split("│")[-2].strip() for line in lines if line.startswith("│")]
            others = "daisy 0.3194 sunflowers 0.0129 tulips 0.0074 dandelion 0.0040"
            assert "next 4" in text, text
            assert " ".join(cell for cell in cells if cell) == f"{others} {others}", text


@pytest.mark.parametrize("mode, classes, width", [
    ("imagenet", None, 120), ("bundle", [str(d) for d in range(10)], 120),
    ("bundle", ["daisy", "dandelion", "roses", "sunflowers", "tulips"], 60)])
def test_a_predictions_table_of_errors_alone_has_no_negative_column(mode, classes, width):
    """Every photo unreadable: the title read "top 0" and a column "next -1" was added (and
    on a narrow terminal, an empty column "next 4" for five classes)."""
    import io

    from transfer.cli import _predictions_table
    from transfer.predict import Prediction, Predictions
    from transfer.progress import safe_console

    result = Predictions(mode, "MobileNet alpha 0.25 (ImageNet)", "mobilenet", classes,
                         [Prediction(file="empty.jpg", error="unreadable")])
    console = safe_console(width=width, file=io.StringIO(), record=True)
    console.print(_predictions_table(result, console))
    text = console.export_text()
    assert "error: unreadable" in text
    assert "next" not in text and "top 0" not in text and "-1" not in text, text


@pytest.mark.parametrize("width", [60, 80, 120])
def test_a_progress_bar_keeps_its_bar_and_counts_on_any_width(width):
    """On 60 or 80 columns a long description and the epoch's metrics pushed the bar, the
    counts and the times off the line ("Trainin... head epoch 30 loss ... val_accu...")."""
    import io

    from transfer.progress import RichReporter, safe_console

    console = safe_console(file=io.StringIO(), width=width, record=True)
    with RichReporter(console).task("Evaluating on /home/student/photos/flowers/validate",
                                    total=40) as advance:
        advance(40, status="loss 0.1234  accuracy 0.9876  val_loss 0.7582  val_accuracy 0.8000")
    text = console.export_text()
    assert all(len(line) <= width for line in text.splitlines()), text
    first = text.splitlines()[0]
    assert first.startswith("Evaluating on") and "40/40" in first and "━━━━━━━━━━" in first
    assert "0.8000" in text and "val_accuracy" in text.replace("\n", "")


def test_a_failed_gate_shows_the_accuracy_below_its_threshold():
    """13/15 = 0.86667 against 0.8667 read "0.8667 is below --assert-accuracy-at-least 0.8667"."""
    from transfer.cli import _gate
    from transfer.errors import GateFailed

    with pytest.raises(GateFailed) as info:
        _gate({"passed": False, "accuracy": 13 / 15, "threshold": 0.8667}, "validation accuracy")
    assert str(info.value) == ("validation accuracy 0.86667 is below "
                               "--assert-accuracy-at-least 0.8667")
    with pytest.raises(GateFailed, match="accuracy 0.7500 is below .* 0.9$"):
        _gate({"passed": False, "accuracy": 0.75, "threshold": 0.9}, "accuracy")


def test_an_empty_grad_cam_is_said():
    """A heatmap with no positive evidence (ReLU of a sum negative everywhere) was drawn as a
    plain blue overlay without a word: the user could not tell it from a broken tool."""
    from types import SimpleNamespace

    from transfer.cli import _empty

    empty = SimpleNamespace(heatmap=np.zeros((11, 11)), label="9")
    assert _empty(empty) == "; the map is empty: no region raises the score of 9"
    assert _empty(SimpleNamespace(heatmap=np.eye(3), label="9")) == ""
    broken = SimpleNamespace(heatmap=np.full((3, 3), np.nan), label="9")  # a diverged model's
    assert "not a number" in _empty(broken) and "empty" not in _empty(broken)



def test_a_tables_title_in_a_pipe_is_one_whole_line():
    """Into a pipe or a file a table's title wrapped at the table's width: export's
    "models/m/export/mo" / "del-int8.tflite (int8) on 40 images ..." broke the path a log is
    searched for. It is a line of its own there; on a terminal it stays above the table."""
    import io

    from rich.table import Table

    from transfer.cli import _show
    from transfer.progress import safe_console

    title = "models/mobilenet-20261207-155519/export/model-int8.tflite (int8) on 40 images"
    caption = "macro averages weigh every class alike " * 3  # evaluate's note, as long
    for terminal in (False, True):
        table = Table(title=title, caption=caption)
        table.add_column("model")
        table.add_column("accuracy")
        table.add_row("float", "0.8000")
        console = safe_console(width=200, file=io.StringIO(), record=True,
                               force_terminal=terminal)
        _show(table, console)
        text = console.export_text()
        lines = text.splitlines()
        if terminal:  # centred above the table, folded to its width as rich does
            assert title not in lines[0] and "┏" in text, text
        else:
            assert lines[0] == title and lines[1].startswith("┏"), lines
            assert lines[-1] == caption and lines[-2].startswith("└"), lines
        assert (table.title, table.caption) == (title, caption)  # the caller's table kept
