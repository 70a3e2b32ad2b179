"""Every bad input a user would try is one clear line: exit code, no traceback, nothing written.

Table-driven: each case names the command line (with ``{tmp}`` for a fresh folder, ``{file}``
for an existing file, ``{bundle}`` for a folder that looks like a bundle, ``{folder}`` for a
plain folder of the user's, ``{ro}`` for a folder this process cannot write to), the exit code
and a piece of the message. The folder listing before and after must be the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import png_bytes, require_asset
from typer.testing import CliRunner

from transfer import errors
from transfer.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def unwritable() -> Path:
    """A folder no process may write in, root included (sysfs refuses new files)."""
    folder = Path("/sys")
    probe = folder / "transfer-write-probe"
    try:
        probe.mkdir()
    except OSError:
        return folder
    probe.rmdir()
    pytest.fail("/sys accepted a new folder: this machine has no unwritable folder for the test")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def places(tmp_path):
    (tmp_path / "a-file.txt").write_text("not a folder\n")
    bundle = tmp_path / "old-bundle"
    bundle.mkdir()
    (bundle / "meta.json").write_text(json.dumps({"schema_version": 1, "class_names": ["a", "b"],
                                                  "image_size": 32,
                                                  "preprocessing": {"mode": "tf"}}))
    (tmp_path / "user-folder").mkdir()
    (tmp_path / "user-folder" / "notes.txt").write_text("mine\n")
    (tmp_path / "user-folder" / "augment-preview.png").write_bytes(b"an earlier preview")
    (tmp_path / "empty-data" / "train").mkdir(parents=True)
    (tmp_path / "existing.csv").write_text("file,label\n")
    (tmp_path / "photo.jpg").write_bytes(b"not really a jpeg")
    zero = tmp_path / "zero-bundle"
    zero.mkdir()
    (zero / "meta.json").write_text((bundle / "meta.json").read_text())
    (zero / "model.keras").write_bytes(b"")
    return {"tmp": str(tmp_path), "file": str(tmp_path / "a-file.txt"), "bundle": str(bundle),
            "folder": str(tmp_path / "user-folder"), "ro": str(unwritable()),
            "empty": str(tmp_path / "empty-data"), "csv": str(tmp_path / "existing.csv"),
            "photo": str(tmp_path / "photo.jpg"), "zero": str(zero)}


CASES = [
    # fetch-data
    ("fetch-data --data-dir {file} --archive {file}", 1, "is a file, not a folder"),
    ("fetch-data --data-dir {ro} --archive {folder}", 1, "cannot write in /sys"),
    ("fetch-data --archive {tmp}/missing.zip --data-dir {tmp}/data", 1, "does not exist"),
    ("fetch-data --train-per-class 0 --data-dir {tmp}/data", 1, "--train-per-class must be"),
    ("fetch-data --validate-per-class -3 --data-dir {tmp}/data", 1,
     "--validate-per-class must be"),
    ("fetch-data --test-per-class -1 --data-dir {tmp}/data", 1, "--test-per-class must be"),
    ("fetch-data --seed -1 --archive {folder} --data-dir {tmp}/data", 1,
     "--seed must be at least 0"),
    ("fetch-data --source nowhere", 2, "'nowhere' is not one of"),
    ("fetch-data --source kaggle --archive {folder} --data-dir {tmp}/data", 1,
     "--archive implies --source archive"),
    ("fetch-data --train-per-class many", 2, "should be a valid integer"),
    ("fetch-data --validation-split 1.5 --data-dir {tmp}/data", 1,
     "--validation-split must be a fraction in (0, 1)"),
    ("fetch-data --validation-split 0.5 --test-split 0.5 --data-dir {tmp}/data", 1,
     "it must stay below 1"),
    ("fetch-data --validation-split 0.2 --train-per-class 5 --data-dir {tmp}/data", 1,
     "not both"),
    # train: every option checked before TensorFlow loads
    ("train --epochs 0", 1, "--epochs must be at least 1"),
    ("train --batch-size 0", 1, "--batch-size must be at least 1"),
    ("train --dropout 1.5", 1, "--dropout must be in [0, 1)"),
    ("train --dropout -0.1", 1, "--dropout must be in [0, 1)"),
    ("train --learning-rate -0.001", 1, "--learning-rate must be a positive number"),
    ("train --learning-rate 0", 1, "--learning-rate must be a positive number"),
    # TensorFlow's heartbeat bound is an int64 of milliseconds: its ValueError's traceback
    ("train --worker-timeout 1e17", 1, "--worker-timeout must be at most 1e+08 seconds, not "
                                       "1e+17"),
    ("train --patience -1", 1, "--patience must be at least 0"),
    ("train --dense -4", 1, "--dense must be at least 0"),
    ("train --augment-copies -1", 1, "--augment-copies must be at least 0"),
    ("train --rotation 400", 1, "--rotation must be in [0, 180]"),
    ("train --zoom 1.5", 1, "--zoom must be in [0, 1)"),
    ("train --shift -0.2", 1, "--shift must be in [0, 1)"),
    ("train --fine-tune -2", 1, "--fine-tune must be at least 0"),
    ("train --fine-tune 5 --fine-tune-lr 0", 1, "--fine-tune-lr must be a positive number"),
    ("train --fine-tune 5 --fine-tune-epochs 0", 1, "--fine-tune-epochs must be at least 1"),
    ("train --base scratch --fine-tune 3", 1, "--fine-tune applies to pretrained bases"),
    ("train --base scratch --weights {file}", 1,
     "--weights FILE applies to pretrained bases (a file of the base's weights), not scratch"),
    # a width MobileNet does not have is a usage error, as an unknown --base is
    ("train --base mobilenet --alpha 0.3", 2,
     "error: --alpha for mobilenet must be one of 1.0, 0.75, 0.5, 0.25, not 0.3"),
    ("train --base mobilenet --alpha nan", 2,
     "error: --alpha for mobilenet must be one of 1.0, 0.75, 0.5, 0.25, not nan"),
    ("train --base vgg16 --alpha 0.5", 1, "--alpha applies to mobilenet only"),
    ("train --base vgg16 --alpha inf", 1, "--alpha applies to mobilenet only, not vgg16"),
    ("train --base mobilenet --image-size 10", 1, "below the minimum"),
    ("train --base mobilenet --image-size 2240", 1, "image size 2240 is above the maximum of"),
    ("train --base mobilenet --train-size 5000", 1, "--train-size: image size 5000 is above"),
    ("train --base mobilenet --train-size 20", 1, "--train-size: image size 20 is below the"),
    ("train --base mobilenet --augment-copies 0 --train-size 160", 1,
     "--train-size needs features computed once"),
    ("train --base resnet", 2, "'resnet' is not one of"),
    ("train --pipeline fast", 2, "'fast' is not one of"),
    ("train --distribute cluster", 2, "'cluster' is not one of"),
    ("train --weights {tmp}/missing.h5", 1, "is not a file"),
    ("train --epochs ten", 2, "should be a valid integer"),
    ("train --data-dir {file}", 1, "is a file, not a folder"),
    ("train --models-dir {file}", 1, "is a file, not a folder"),
    ("train --models-dir {ro}/models", 1, "cannot write in /sys"),
    ("train --output {ro}/bundle", 1, "cannot write in /sys"),
    ("train --output {bundle}", 1, "already exists; use --force"),
    ("train --output {folder} --force", 1, "is not a model bundle; refusing"),
    ("train --output {folder}", 1, "is not a model bundle; refusing"),  # not 'use --force'
    ("train --tensorboard {file}", 1, "is a file, not a folder"),
    ("train --output {tmp}/m --tensorboard {tmp}/m/logs", 1,  # refused after all the training
     "/m/logs is inside --output "),
    ("train --output {tmp}/m --tensorboard {tmp}/m", 1, "is inside --output"),
    ("train --data-dir {ro} --preview-augment", 1, "cannot write in /sys"),
    ("train --data-dir {folder} --preview-augment", 1,
     "augment-preview.png already exists; use --force"),
    # predict
    ("predict", 2, "Missing argument"),
    ("predict {photo} --format xml", 2, "'xml' is not one of"),
    ("predict {photo} --top 0", 1, "--top must be at least 1"),
    ("predict {photo} --batch-size 0", 1, "--batch-size must be at least 1"),
    ("predict {photo} --output {csv}", 1, "already exists; use --force"),
    ("predict {photo} --output {ro}/p.csv", 1, "cannot write in /sys"),
    ("predict {photo} --output {folder}", 1, "is a folder"),
    ("predict {photo} --imagenet --base mobilenet --alpha 0.3", 2, "--alpha for mobilenet"),
    ("predict {photo} --alpha 0.3", 2, "--alpha for mobilenet must be one of"),
    ("predict {photo} --invert maybe", 2, "'maybe' is not one of"),
    ("predict {photo} --model {tmp}/no-such-bundle", 1, "no model bundle"),
    ("predict {photo} --model {folder}", 1, "meta.json"),
    ("predict {photo} --model {file}", 1, "a-file.txt"),
    ("predict {photo} --model {zero}", 1, "model.keras"),
    ("predict {photo} --engine onnx", 2, "'onnx' is not one of"),
    # evaluate
    ("evaluate --output {file}", 1, "is a file, not a folder"),
    ("evaluate --output {ro}/report", 1, "cannot write in /sys"),
    ("evaluate --batch-size 0", 1, "--batch-size must be at least 1"),
    ("evaluate --model {tmp}/no-such-bundle", 1, "no model bundle"),
    ("evaluate --data-dir {file} --model {bundle}", 1, "is a file, not a folder"),
    ("evaluate --engine gpu", 2, "'gpu' is not one of"),
    # explain
    ("explain {tmp}/no-such-photo.jpg", 1, "no-such-photo.jpg: no such file"),
    ("explain {photo} --output {ro}/x.png", 1, "cannot write in /sys"),
    ("explain {photo} {photo} --output {tmp}/why.png", 1, "names a file; with several images"),
    ("explain {photo} --invert sometimes", 2, "'sometimes' is not one of"),
    ("explain {photo} --model {tmp}/no-such-bundle", 1, "no model bundle"),
    # export
    ("export --format onnx", 2, "'onnx' is not one of"),
    ("export --format keras --output {tmp}/model.h5", 1, "must end in .keras"),
    ("export --output {ro}/m.tflite", 1, "cannot write in /sys"),
    ("export --model {tmp}/no-such-bundle", 1, "no model bundle"),
    ("export --check-images {tmp}/nothing-here", 1, "does not exist"),
    # mnist
    ("mnist --limit 0", 1, "--limit must be at least 10"),
    ("mnist --epochs 0", 1, "--epochs must be at least 1"),
    ("mnist --ema 1", 1, "--ema must be in [0, 1)"),
    ("mnist --validation-split 1", 1, "--validation-split must be in [0, 1)"),
    ("mnist --learning-rate -1", 1, "--learning-rate must be a positive number"),
    ("mnist --data {tmp}/no-mnist.npz", 1, "does not exist"),
    ("mnist --dataset cifar", 2, "'cifar' is not one of"),
    ("mnist --output {bundle}", 1, "already exists; use --force"),
    ("mnist --output {ro}/mnist", 1, "cannot write in /sys"),
    # compare
    ("compare --runs scratch,magic --output {tmp}/cmp", 2, "'magic' is not one of 'scratch'"),
    ("compare --runs frozen,frozen --output {tmp}/cmp", 1, "names a run twice"),
    ("compare --runs frozen,FROZEN --output {tmp}/cmp", 2,
     "Invalid value for '--runs': 'FROZEN' is not one of 'scratch', 'frozen', 'fine-tuned'."),
    ("compare --base scratch --output {tmp}/cmp", 2, "'scratch' is not one of 'inception'"),
    ("predict {photo} --imagenet --base scratch-seeds", 2, "'scratch-seeds' is not one of"),
    ("serve --imagenet --base scratch", 2, "'scratch' is not one of 'inception'"),
    ("compare --alpha 0.3 --output {tmp}/cmp", 2, "--alpha for mobilenet must be one of"),
    ("compare --output {file}", 1, "is a file, not a folder"),
    ("compare --output {ro}/cmp", 1, "cannot write in /sys"),
    # serve, report
    ("serve --port 70000", 1, "--port must be in [0, 65535]"),
    ("serve --imagenet --base mobilenet --alpha 0.3", 2, "--alpha for mobilenet must be one"),
    ("serve --model ../elsewhere", 1, "--model ../elsewhere: no such bundle"),
    ("serve --model {tmp}", 1, "is not a bundle (no meta.json in it)"),
    ("serve --model {file}", 1, "is a file; --model expects a bundle folder"),
    ("serve --max-upload-mb 0", 1, "--max-upload-mb must be a positive number"),
    ("serve --models-dir {file}", 1, "is a file, not a folder"),
    ("report {tmp}/no-such-bundle", 1, "no such bundle or evaluation folder"),
    ("report {file}", 1, "is a file, not a bundle or evaluation folder"),
    # paths are no markup: "[draft]" was dropped from the line, "[/x]" a MarkupError traceback
    ("report {tmp}/old[draft]", 1, "old[draft]: no such bundle or evaluation folder"),
    ("report {tmp}/a[/x]", 1, "a[/x]: no such bundle or evaluation folder"),
    ("report {bundle} --output {ro}/r.html", 1, "cannot write in /sys"),
    ("report {bundle} --output {tmp}/brandnew/", 1, "brandnew/ names a folder; name an .html"),
    # the top level
    ("frobnicate", 2, "No such command"),
    ("train --no-such-flag", 2, "No such option"),
]


@pytest.mark.parametrize(("line", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(places, line, code, message):
    root = Path(places["tmp"])
    before = _tree(root)
    args = line.format(**places).split()
    result = runner.invoke(app, args, prog_name="transfer")
    assert result.exit_code == code, (result.output, result.exception)
    stderr = result.stderr.strip()
    assert stderr.count("\n") == 0, f"more than one line:\n{stderr}"
    assert stderr.startswith("error:"), stderr
    assert message in stderr, stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert _tree(root) == before, "a failed command wrote or removed files"


def _usage_error(places, args, monkeypatch):
    """The CLI run on ``args`` (``{photo}`` and the like filled from ``places``) in the
    places' folder: a usage error (exit code 2) that wrote or removed nothing; its result."""
    root = Path(places["tmp"])
    monkeypatch.chdir(root)
    before = _tree(root)
    result = runner.invoke(app, [a.format(**places) for a in args], prog_name="transfer")
    assert result.exit_code == 2, (result.output, result.exception)
    assert _tree(root) == before
    return result


@pytest.mark.parametrize(("args", "message"), [
    (["explain", ""], "an empty argument after 'explain'"),
    (["predict", "", "--top", "2"], "an empty argument after 'predict'"),
    (["predict", "{photo}", "--output", ""], "--output is empty"),
    (["evaluate", "--data-dir="], "--data-dir= is empty"),
    (["export", "--check-images", "", "--force"], "--check-images is empty"),
    # after a flag the empty one is an argument (it said "--force is empty")
    (["predict", "--force", ""], "an empty argument after '--force'"),
])
def test_an_empty_argument_is_refused_not_read_as_the_current_folder(places, args, message,
                                                                      monkeypatch):
    """``transfer explain "$PHOTO"`` with PHOTO unset explained every photo under the current
    folder and wrote a Grad-CAM picture beside each (``Path("")`` is ``.``); predict, evaluate
    and export read the current folder the same way. An empty argument is a usage error."""
    result = _usage_error(places, args, monkeypatch)
    assert result.stderr.strip() == (
        f"error: {message} (an unset shell variable?); an empty path would mean the current "
        "folder: write . for that")
    assert result.stdout == ""


@pytest.mark.parametrize("args", [
    ["train", "--data-dir", "loop"],
    ["train", "--data-dir", "{flowers}", "--output", "loop"],
    ["compare", "--data-dir", "loop", "--output", "cmp"],
    ["fetch-data", "--archive", "{flowers}", "--data-dir", "loop"],
    ["predict", "{photo}", "--imagenet", "--output", "loop/x.csv"],
    ["evaluate", "--output", "loop"],
    ["explain", "{photo}", "--output", "loop"],
    ["predict", "{photo}", "--model", "loop"],  # was "loop points at loop2, which is missing"
], ids=["train-data", "train-output", "compare", "fetch-data", "predict", "evaluate", "explain",
        "model"])
def test_a_loop_of_symbolic_links_is_one_line_before_any_work(args, tmp_path, monkeypatch):
    """A path that is a loop of links (``ln -s b a; ln -s a b``) ended in Python's
    ``RuntimeError: Symlink loop from ...`` traceback (before 3.13), from every option given
    one; predict's --output after classifying every photo. One line, exit code 1."""
    flowers = require_asset("data/flowers")
    photo = sorted((flowers / "roses").iterdir())[0]
    monkeypatch.chdir(tmp_path)
    os.symlink("loop2", "loop")
    os.symlink("loop", "loop2")
    given = [a.format(flowers=flowers, photo=photo) for a in args]
    result = runner.invoke(app, given)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "loop" in lines[0] and "symbolic links" in lines[0] and "missing" not in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "loop2"]


@pytest.mark.parametrize(("args", "option", "taken"), [
    (["fetch-data", "--archive", "{folder}", "--data-dir", "--force"], "--data-dir", "--force"),
    (["evaluate", "--output", "--force"], "--output", "--force"),
    (["predict", "--model", "--top", "2", "{photo}"], "--model", "--top"),
    (["train", "--data-dir", "-v", "--epochs", "1"], "--data-dir", "-v"),
])
def test_an_option_given_another_option_as_its_value_is_refused(places, args, option, taken,
                                                                monkeypatch):
    """``fetch-data --data-dir --force`` (the value left out) made a split in a folder named
    ``--force`` and forced nothing; ``evaluate --output --force`` wrote its report there. An
    option that took another option as its value is a usage error naming both."""
    result = _usage_error(places, args, monkeypatch)
    assert result.stderr.strip() == (
        f"error: {option} has no value: it took the next word, {taken}, which is an option "
        f"(give {option} a value; for a file named so, write ./{taken})")


def test_a_path_the_shell_left_as_tilde_is_the_home_folders(tmp_path, monkeypatch):
    """A quoted ``"~/my photos"``, or ``--archive=~/flowers``, reaches the tool unexpanded (the
    shell expands neither): fetch-data said an existing folder did not exist, and wrote its
    split into a folder named ``~`` in the current folder. Both are the home folder's now."""
    flowers = require_asset("data/flowers")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "my flowers").symlink_to(flowers)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["fetch-data", "--archive=~/my flowers", "--data-dir",
                                 "~/flower data", "--train-per-class", "4",
                                 "--validate-per-class", "2"], prog_name="transfer")
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in (home / "flower data" / "train").iterdir()) == sorted(
        p.name for p in flowers.iterdir() if p.is_dir())
    assert list(work.iterdir()) == [], "nothing made beside the user (no folder named ~)"
    # predict's paths and report's --output are strings (globs; a trailing /): expanded too,
    # and a word that is no path (serve --model NAME, train --weights imagenet) is kept
    from transfer.cli import _given_paths

    given = _given_paths({"paths": ["~/a.jpg", "b/*.jpg"], "output": "~/r/", "model": "flowers",
                          "weights": "imagenet", "images": [Path("~/c.jpg")], "top": 3,
                          "class_name": "~x"})
    assert given == {"paths": [f"{home}/a.jpg", "b/*.jpg"], "output": f"{home}/r/",
                     "model": "flowers", "weights": "imagenet", "images": [home / "c.jpg"],
                     "top": 3, "class_name": "~x"}


@pytest.mark.parametrize("args", [["compare", "--runs", ""], ["train", "--base="],
                                  ["predict", "x.jpg", "--format", ""]])
def test_an_empty_option_that_takes_no_path_is_not_told_about_paths(args):
    """`compare --runs ''` was told "an empty path would mean the current folder": --runs is
    no path. The usage error says the option is empty, and nothing of paths."""
    result = runner.invoke(app, args, prog_name="transfer")
    assert result.exit_code == 2, (result.output, result.exception)
    option = args[1] if args[1].startswith("-") else args[2]
    assert result.stderr.strip() == (f"error: {option.rstrip('=')}"
                                     f"{'=' if option.endswith('=') else ''} is empty (an "
                                     "unset shell variable?)")


@pytest.mark.parametrize(("name", "value", "kind"), [
    ("TRANSFER_DECODE_AHEAD_MB", "768MB", "a number from 0 to 1e+09"),
    ("TRANSFER_FEATURE_MEMORY_MB", "-1", "a number from 0 to 1e+09"),
    ("TRANSFER_STARTUP_SECONDS", "nan", "a number from 0 to 1e+08"),
    ("TRANSFER_DECODE_AHEAD_MB", "1e308", "a number from 0 to 1e+09"),  # OverflowError later
    ("TRANSFER_STARTUP_SECONDS", "1e10", "a number from 0 to 1e+08"),  # the watchdog's too
    ("TRANSFER_REPORT_GRADCAMS", "2.5", "a whole number from 0 to 1e+06"),
])
def test_a_malformed_number_in_the_environment_is_one_line(places, monkeypatch, name, value,
                                                           kind):
    """``TRANSFER_DECODE_AHEAD_MB=768MB`` was read as the default without a word (and a
    negative memory budget as a budget); every command now names the variable and stops."""
    root = Path(places["tmp"])
    before = _tree(root)
    monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["fetch-data", "--archive", places["folder"], "--data-dir",
                                 str(root / "data")], prog_name="transfer")
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stderr.strip() == (
        f"error: environment variable {name} must be {kind}, not {value!r}")
    assert _tree(root) == before
    monkeypatch.setenv(name, "3")  # a good value, and an empty one, are taken
    assert errors.env_number(name, 7) == 3
    monkeypatch.setenv(name, " ")
    assert errors.env_number(name, 7) == 7


def test_bad_option_fails_before_tensorflow_loads():
    """`train --epochs 0` as a real process: one line, exit 1, well under 2 s (TensorFlow
    alone takes 4-10 s to import, so this also shows it was never imported)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "transfer", "train", "--epochs", "0"],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "COLUMNS": "80"})
    elapsed = time.perf_counter() - started
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --epochs must be at least 1, not 0"
    assert elapsed < 5, elapsed  # generous for a loaded CI machine; typically 0.3 s
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, transfer.cli, transfer.settings as s; "
         "s.TrainSettings(epochs=3).validated(); print('tensorflow' in sys.modules)"],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr


# A command line run in a fresh process, saying how it exited and whether TensorFlow was
# imported (``app`` raises SystemExit with the exit code)
PROBE = textwrap.dedent("""
    import sys
    from transfer.cli import app
    try:
        app(sys.argv[1:], prog_name="transfer")
    except SystemExit as exc:
        print("exit", exc.code, "tensorflow" in sys.modules)
""")


def _checked_places(root: Path) -> None:
    """What the before-TensorFlow cases refuse: a bundle of daisy and roses whose model.keras
    is never read (zero bytes: loaded, it would be "cannot load"), holding another
    evaluation's report.json; a folder of cats and dogs; my_photos, of the bundle's classes;
    a photo already explained; an export already there."""
    bundle = root / "bundle"
    bundle.mkdir()
    (bundle / "meta.json").write_text(json.dumps({
        "schema_version": 1, "class_names": ["daisy", "roses"], "image_size": 32,
        "preprocessing": {"mode": "tf"}}))
    (bundle / "model.keras").write_bytes(b"")
    (bundle / "report.json").write_text(json.dumps({
        "kind": "transfer-evaluate", "model": "/elsewhere/models/other",
        "bundle": "/elsewhere/models/other", "data_dir": "/elsewhere/data",
        "data_dir_absolute": "/elsewhere/data", "subset": None}))
    for folder, names in (("data/validate", ("cats", "dogs")),
                          ("my_photos", ("daisy", "roses"))):
        for name in names:
            (root / folder / name).mkdir(parents=True)
            (root / folder / name / "1.png").write_bytes(png_bytes())
    (root / "new_photo.jpg").write_bytes(png_bytes())
    (root / "new_photo.gradcam.png").write_bytes(png_bytes())
    (root / "flowers.tflite").write_bytes(b"an earlier export")


@pytest.mark.parametrize(("args", "message"), [
    (["evaluate", "--model", "bundle", "--data-dir", "flowers-data/validat"],
     "no data folder flowers-data/validat"),
    (["evaluate", "--model", "bundle", "--data-dir", "my_photos"],
     "bundle already has report.json from another evaluation; use --force to replace them "
     "or --output DIR"),
    (["evaluate", "--model", "bundle", "--data-dir", "data/validate"],
     "data/validate has class folder(s) the model does not know: cats, dogs; its classes "
     "are daisy, roses"),
    (["explain", "new_photo.jpg", "--model", "bundle"],
     "new_photo.gradcam.png already exists; use --force to replace it"),
    (["export", "--model", "bundle", "--output", "flowers.tflite"],
     "flowers.tflite already exists; use --force to replace it"),
    (["explain", "new_photo.jpg", "--model", "bundle", "--invert", "yes", "--output", "n.png"],
     "--invert applies to digit models (transfer mnist) only"),
], ids=["evaluate-missing-data-folder", "evaluate-another-evaluations-report",
        "evaluate-unknown-class-folders", "explain-existing-picture", "export-existing-file",
        "explain-invert-for-a-colour-bundle"])
def test_refused_before_tensorflow_loads(tmp_path, args, message):
    """Refusals that meta.json and the files decide were said only after TensorFlow had
    loaded (about 4 s); a check elsewhere fails in 0.3 s. A real process: one line, exit 1,
    TensorFlow never imported, nothing written."""
    _checked_places(tmp_path)
    before = _tree(tmp_path)
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    assert done.stdout.strip().splitlines()[-1] == "exit 1 False", (done.stdout, done.stderr)
    assert done.stderr.strip() == f"error: {message}", done.stderr[-3000:]
    assert _tree(tmp_path) == before


def test_verbose_works_before_or_after_the_command(tmp_path):
    """`transfer evaluate ... --verbose` was refused ("No such option"): --verbose was read
    before the command only. Either place now shows the traceback above the one error line;
    without it, the line alone."""
    from transfer.cli import hoisted_verbose

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "transfer", *args], capture_output=True,
                                text=True, cwd=REPO, timeout=60,
                                env={**os.environ, "COLUMNS": "100"})
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: no model bundle at {tmp_path / 'none'}: train one with `transfer train`")
        return result.stderr

    model = ["--model", str(tmp_path / "none")]
    assert "Traceback" not in run("evaluate", *model)
    for args in (["--verbose", "evaluate", *model], ["evaluate", *model, "--verbose"],
                 ["evaluate", "-v", *model]):
        assert "Traceback" in run(*args), args
    assert hoisted_verbose(["train", "--epochs", "3", "-v"]) == ["--verbose", "train",
                                                                 "--epochs", "3"]
    assert hoisted_verbose(["-v", "bases"]) == ["-v", "bases"]
    assert hoisted_verbose(["predict", "--", "-v"]) == ["predict", "--", "-v"]  # a file "-v"
    assert hoisted_verbose(["--help"]) == ["--help"]


def test_every_command_help_has_examples():
    for name in ("fetch-data", "bases", "train", "predict", "evaluate", "explain", "export",
                 "mnist", "serve", "report", "compare"):
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        text = result.output
        assert "Examples" in text and f"transfer {name}" in text.split("Examples", 1)[1], name
        assert "<bool>" not in text and "<list[" not in text and "{PATH}" not in text, name


def test_help_in_a_pipe_is_not_cut_at_80_columns():
    result = subprocess.run([sys.executable, "-m", "transfer", "train", "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={k: v for k, v in os.environ.items()
                                 if k not in ("COLUMNS", "TERMINAL_WIDTH")})
    assert result.returncode == 0
    assert "--no-feature-cache" in result.stdout  # cut to "--no-feature-cac…" at 80 columns
    assert max(len(line) for line in result.stdout.splitlines()) > 80


def signal_once(proc, ready, signum, never: str, delay: float = 0.0) -> str:
    """Once ``ready()`` (polled while ``proc`` runs, at most 240 s), wait ``delay`` seconds and
    send ``signum``; the process must end within 60 s. Its stderr."""
    try:
        deadline = time.monotonic() + 240
        while not ready() and proc.poll() is None:
            assert time.monotonic() < deadline, never
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        time.sleep(delay)
        proc.send_signal(signum)
        return proc.communicate(timeout=60)[1]
    finally:
        proc.kill()


def test_an_interruption_native_code_swallowed_stops_the_conversion_and_lands_no_bundle(
        tmp_path, monkeypatch):
    """CI once saw `kill` during the TFLite conversion end with exit 143 and "terminated", yet
    with the bundle written: the converter's native code swallowed the Terminated raised in
    it, the run went on, and only the CLI's last check noticed. Now the conversion stops at
    its end, and a bundle never lands after a recorded interruption."""
    import signal

    from transfer import bundle, engines
    from transfer.tf import keras, tf

    real = tf.lite.TFLiteConverter.from_saved_model

    class Swallowing:  # the converter, with a SIGTERM handled and lost inside it
        def __init__(self, path):
            self.real = real(path)

        def convert(self):
            try:
                errors.on_interrupt_signal(signal.SIGTERM, None)
            except KeyboardInterrupt:
                pass
            return self.real.convert()

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", Swallowing)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
    target = tmp_path / "cache" / "m.tflite"
    with pytest.raises(errors.Terminated):
        engines.convert(model, 2, target)
    assert not target.exists() and not list(target.parent.iterdir())  # no .convert.tmp-* left
    # the same swallowed interruption before a bundle is written: nothing lands
    with pytest.raises(errors.Terminated):
        bundle.write(tmp_path / "models/b", False, model, {"class_names": ["a", "b"]},
                     {"loss": [1.0]})
    assert not (tmp_path / "models/b").exists()
    assert not (tmp_path / "models").exists()  # nor the folder made for it (no temp left)
    errors.clear_interrupted()


def test_sigterm_cleans_up_as_ctrl_c_does(tiny_split, mobilenet_weights, tmp_path):
    """`kill` (SIGTERM: timeout, docker stop, systemd) in the middle of the base's TFLite
    conversion: one line, exit code 143, and no temporary conversion folder left in the
    cache (the default action ended the process on the spot and left it for good), nor the
    modules TensorFlow's autograph had generated in the temporary folder (the interrupted
    process ends with os._exit, which skips the handlers that delete them)."""
    import signal

    temp = tmp_path / "tmp"
    temp.mkdir()
    home = tmp_path / "keras-home"
    (home / "models").mkdir(parents=True)
    for item in mobilenet_weights.parent.iterdir():
        (home / "models" / item.name).symlink_to(item.resolve())
    cache = home / "transfer" / "tflite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "transfer", "train", "--base", "mobilenet", "--alpha", "0.25",
         "--image-size", "96", "--epochs", "1", "--no-augment", "--engine", "tflite",
         "--data-dir", str(tiny_split), "--no-feature-cache", "--models-dir",
         str(tmp_path / "models"), "--output", str(tmp_path / "models/term")],
        env={**os.environ, "KERAS_HOME": str(home), "TMPDIR": str(temp)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = signal_once(proc, lambda: list(cache.glob(".convert.tmp-*")) and list(
        temp.rglob("__autograph_generated_file*")), signal.SIGTERM,
        "the conversion never started")
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    assert not list(cache.glob(".convert.tmp-*")), "the conversion's folder was left behind"
    assert list(temp.iterdir()) == []
    assert not (tmp_path / "models/term").exists()
    assert not list((tmp_path / "models").glob(".term.tmp-*"))


def test_a_ctrl_c_after_the_run_is_done_does_not_make_it_a_failure(tiny_split, tmp_path):
    """Ctrl-C in the second or so after train's last line (TensorFlow's shutdown, where
    Python had put the default handler back) made a finished run die by SIGINT: exit 130
    and no line, so that a script took a good model for a failed run. It exits 0 now (the
    process ends as soon as its work is done)."""
    import signal

    log = tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "transfer", "train", "--base", "mobilenet", "--alpha",
             "0.25", "--weights", "none", "--image-size", "48", "--epochs", "1",
             "--no-augment", "--data-dir", str(tiny_split), "--models-dir",
             str(tmp_path / "models"), "--output", str(tmp_path / "models/done")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
        try:
            deadline = time.monotonic() + 240
            while "\nhead: " not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, "train never said its last line"
                time.sleep(0.01)
            stop = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < stop:  # a Ctrl-C, and more,
                with contextlib.suppress(ProcessLookupError):  # until the process is gone
                    proc.send_signal(signal.SIGINT)
                time.sleep(0.02)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            proc.kill()
    assert "interrupted" not in log.read_text()
    assert (tmp_path / "models/done/meta.json").exists()


def test_output_that_cannot_be_written_at_the_end_is_one_line_not_a_traceback(
        real_photos, mobilenet_weights, tmp_path):
    """The process ends at once after its work (os._exit): predict's CSV, still buffered, is
    written then. A full disk (/dev/full) is one line and exit 120, as Python's own exit gives
    it; a reader gone (`| true`) exit 120 and no line; never a traceback of the flush."""
    dog_photo = tmp_path / "dog.jpg"
    dog_photo.write_bytes(real_photos["dogs"][0][1])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    command = [sys.executable, "-m", "transfer", "predict", "--imagenet", "--base",
               "mobilenet", "--alpha", "0.25", "--format", "csv", str(dog_photo)]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=300)
    assert done.returncode == 120, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: could not write the output (No space left on device)"), done.stderr
    assert "Traceback" not in done.stderr
    piped = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    piped.stdout.close()  # the reader gone before the first byte
    err = piped.stderr.read()
    assert piped.wait(timeout=300) == 120 and "Traceback" not in err, err
    assert "error:" not in err, err


def test_a_run_killed_outright_leaves_nothing_once_the_next_run_is_done(
        tiny_split, mobilenet_weights, tmp_path):
    """kill -9 (or the out-of-memory killer) in the middle of the base's TFLite conversion
    runs no clean-up: the half-made conversion folder stays in the user's cache. The next
    run that converts into that cache removes it (the process that made it is gone, an hour
    ago or more), and lands its own bundle."""
    import signal

    home = tmp_path / "keras-home"
    (home / "models").mkdir(parents=True)
    for item in mobilenet_weights.parent.iterdir():
        (home / "models" / item.name).symlink_to(item.resolve())
    cache = home / "transfer" / "tflite"

    def train(name):
        return [sys.executable, "-m", "transfer", "train", "--base", "mobilenet", "--alpha",
                "0.25", "--image-size", "96", "--epochs", "1", "--no-augment", "--engine",
                "tflite", "--data-dir", str(tiny_split), "--no-feature-cache", "--models-dir",
                str(tmp_path / "models"), "--output", str(tmp_path / "models" / name)]

    env = {**os.environ, "KERAS_HOME": str(home)}
    proc = subprocess.Popen(train("killed"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    signal_once(proc, lambda: list(cache.glob(".convert.tmp-*")), signal.SIGKILL,
                "the conversion never started")
    assert proc.returncode == -signal.SIGKILL
    left = list(cache.glob(".convert.tmp-*"))
    assert left, "nothing was left: the kill came too late"
    then = time.time() - 7200  # killed two hours ago (a fresh leftover is left alone)
    os.utime(left[0], (then, then))
    done = subprocess.run(train("next"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(cache.glob(".convert.tmp-*")), "the killed run's conversion folder stayed"
    assert (tmp_path / "models" / "next" / "meta.json").exists()


@pytest.mark.parametrize("delay", [0.3, 0.9, 1.5, 2.5])
def test_ctrl_c_during_a_keras_fit_ends_the_process(tmp_path, delay):
    """Ctrl-C while Keras fits on the generator pipeline (the scratch CNN): "interrupted" was
    said, then the process hung for ever at exit (freeing fit's tf.data iterator waits for
    its prefetch thread, which waits for the GIL the freeing holds). It hangs only when the
    signal comes while that thread runs the generator: reproduced by hand (1 of 3 signals 8-10
    s after the start of `train --base scratch --epochs 8 --image-size 96` on these photos),
    not reliably here; these four signals check the exit code and the clean-up, and catch
    the hang when they land at that moment."""
    import signal

    flowers = require_asset("data/flowers")
    models = tmp_path / "models"
    proc = subprocess.Popen(
        [sys.executable, "-m", "transfer", "train", "--base", "scratch", "--image-size", "96",
         "--epochs", "20", "--data-dir", str(flowers), "--models-dir",
         str(models), "--output", str(models / "stopped")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    err = signal_once(proc, (models / ".stopped.checkpoints").exists, signal.SIGINT,
                      "the fit never started", delay)  # inside the fit
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not (models / "stopped").exists() and not (models / ".stopped.checkpoints").exists()


def test_ctrl_c_in_a_keras_fit_is_raised_at_the_batch_end_not_inside_tensorflow():
    """The Ctrl-C test above once printed TensorFlow's "SystemError: <built-in function
    __import__> returned a result with an exception set" traceback before "interrupted": the
    KeyboardInterrupt was raised inside Python that TensorFlow's C++ (nest ``Flatten``) had
    called. During a fit the CLI's handler only records the first signal and the fit raises
    it at the batch's end, from a Keras callback; a second signal raises at once."""
    import signal

    import numpy as np

    from transfer import cli, errors
    from transfer.tf import interrupt_at_batch_ends, keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    seen: list[str] = []

    class Signal(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(f"begin {batch}")
            if batch == 1:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the handler has run here: it must not have raised
                seen.append("handler returned")

        def on_train_batch_end(self, batch, logs=None):
            seen.append(f"end {batch}")

    x, y = np.zeros((40, 4), "float32"), np.zeros(40, "int64")
    with cli._terminate_as_interrupt("train"), pytest.raises(KeyboardInterrupt):
        with errors.at_safe_points():
            model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                      callbacks=[Signal(), interrupt_at_batch_ends()])
    assert seen == ["begin 0", "end 0", "begin 1", "handler returned", "end 1"]
    errors.clear_interrupted()

    with cli._terminate_as_interrupt("train"), pytest.raises(KeyboardInterrupt):
        with errors.at_safe_points():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            seen.clear()
            try:  # the second one does not wait
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                seen.append("raised")
            assert seen == ["raised"]
    errors.clear_interrupted()

    with cli._terminate_as_interrupt("train"), pytest.raises(KeyboardInterrupt):
        with errors.at_safe_points():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # no safe point came: leaving the block raises it
    errors.clear_interrupted()


@pytest.mark.parametrize("signame, code, line", [("SIGINT", 130, "interrupted"),
                                                   ("SIGTERM", 143, "terminated")])
def test_an_interrupt_a_native_library_turns_into_an_error_still_stops_the_run(
        tiny_split, mobilenet_weights, tmp_path, monkeypatch, signame, code, line):
    """The TFLite converter calls back into Python through pybind11, which can turn the
    KeyboardInterrupt (or Terminated) raised there into a bare TypeError: the engine took it
    for a conversion failure, went on with TensorFlow, and the run ended with exit code 0 and
    a bundle after Ctrl-C (seen once in the suite). The interrupt is recorded and wins."""
    import signal

    from transfer import engines

    def converted(*args, **kwargs):
        try:
            os.kill(os.getpid(), getattr(signal, signame))
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            raise TypeError() from None  # what pybind11 made of it
        raise AssertionError("the signal's handler never ran")

    monkeypatch.setattr(engines, "_converted", converted)
    out = tmp_path / "models/stopped"
    result = runner.invoke(app, [
        "train", "--base", "mobilenet", "--alpha", "0.25", "--image-size", "96", "--epochs",
        "1", "--no-augment", "--engine", "tflite", "--data-dir", str(tiny_split),
        "--no-feature-cache", "--models-dir", str(tmp_path / "models"), "--output", str(out)])
    assert result.exit_code == code, result.output
    assert result.output.strip().splitlines()[-1] == line
    assert "TFLite unavailable" not in result.output
    assert not out.exists() and not list((tmp_path / "models").glob(".stopped.tmp-*"))
    assert errors.interrupted() is None  # cleared for whatever the process does next


def test_the_sigterm_handler_is_the_commands_own():
    """The handler is installed while a command runs and the previous one comes back after
    (a program calling the CLI in-process keeps its own); serve leaves SIGTERM to uvicorn."""
    import signal

    from transfer import cli

    before = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)
    hook = sys.unraisablehook
    with cli._terminate_as_interrupt("train"):
        assert signal.getsignal(signal.SIGTERM) not in (before, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) != before_int
        assert sys.unraisablehook is errors.on_unraisable
    assert sys.unraisablehook is hook
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGINT) == before_int
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # `trap '' INT`, a background job: kept
    try:
        with cli._terminate_as_interrupt("train"):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before_int)
    with cli._terminate_as_interrupt("serve"):
        assert signal.getsignal(signal.SIGTERM) == before
    assert runner.invoke(app, ["bases"]).exit_code == 0
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("signame, caught", [("SIGINT", "KeyboardInterrupt"),
                                             ("SIGTERM", "Terminated")])
def test_an_interruption_that_lands_in_a_garbage_collector_callback_still_stops(signame, caught):
    """Ctrl-C whose handler Python ran inside a weakref callback of the garbage collector
    (seen once in seven Ctrl-Cs of `transfer mnist`): "Exception ignored in: <function
    WeakKeyDictionary...> Traceback ... KeyboardInterrupt" was printed and the interruption
    dropped. It is now raised where the command runs, with nothing printed. A real process,
    the handler called as the signal would call it, inside a real weakref callback."""
    script = textwrap.dedent(f"""
        import signal, time, weakref
        from transfer import cli, errors

        class Photo:
            pass

        def collected(ref):
            errors.on_interrupt_signal(signal.{signame}, None)

        with cli._terminate_as_interrupt("mnist"):
            try:
                photo = Photo()
                ref = weakref.ref(photo, collected)
                del photo  # the callback runs here, and the handler raises inside it
                for _ in range(300):
                    time.sleep(0.01)
                print("went on")
            except KeyboardInterrupt as exc:
                print("stopped:", type(exc).__name__)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == f"stopped: {caught}", (done.stdout, done.stderr)
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr


def test_an_interruption_sent_again_as_the_command_ends_is_not_lost_nor_late():
    """The command ended within the milliseconds the lost Ctrl-C was being sent again: the
    record was gone (a success, exit 0) and the signal came after the command, to whoever
    called it (a KeyboardInterrupt in their code). It is raised as the command ends; and an
    unraisable error that is no interruption goes to the hook that was there before."""
    script = textwrap.dedent("""
        import signal, sys, time, weakref
        from transfer import cli, errors

        seen = []
        sys.unraisablehook = lambda unraisable: seen.append(type(unraisable.exc_value).__name__)

        class Photo:
            pass

        def collected(ref):
            errors.on_interrupt_signal(signal.SIGINT, None)

        def broken(ref):
            raise ValueError("a library's own")

        try:
            with cli._terminate_as_interrupt("mnist"):
                other = Photo()
                other_ref = weakref.ref(other, broken)
                del other  # not an interruption: to the caller's hook
                photo = Photo()
                ref = weakref.ref(photo, collected)
                del photo  # the command ends at once, the signal not sent again yet
            print("went on")
        except KeyboardInterrupt:
            print("stopped")
        time.sleep(0.3)  # a late signal would land here
        print("after", seen)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split("\n")[:2] == ["stopped", "after ['ValueError']"], (
        done.stdout, done.stderr)
    assert "Traceback" not in done.stderr


def test_multi_worker_training_takes_sigterm_back_from_the_cli_only(monkeypatch):
    """Multi-worker training first waits for the others in Python, under the CLI's handler
    (Ctrl-C or SIGTERM stop it with one line), and puts SIGTERM's default back only past
    TensorFlow's join; a program's own handler is left as it is."""
    import signal

    from transfer import cli
    from transfer.errors import TransferError
    from transfer.settings import TrainSettings
    from transfer.training import join_cluster

    monkeypatch.delenv("TF_CONFIG", raising=False)  # it stops right after, naming TF_CONFIG
    settings = TrainSettings(distribute="multi-worker")
    before = signal.getsignal(signal.SIGTERM)

    def mine(signum, frame):
        pass

    try:
        signal.signal(signal.SIGTERM, mine)
        with pytest.raises(TransferError, match="TF_CONFIG"):
            join_cluster(settings, None)
        assert signal.getsignal(signal.SIGTERM) is mine
        with cli._terminate_as_interrupt("train"):
            with pytest.raises(TransferError, match="TF_CONFIG"):
                join_cluster(settings, None)
            # the wait for the others (in Python) stops on SIGTERM with its line: the CLI's
            # handler stays until TensorFlow's own join, which puts the default back after it
            assert getattr(signal.getsignal(signal.SIGTERM), "transfer_cli", False)
        assert signal.getsignal(signal.SIGTERM) is mine  # the CLI put the caller's back
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_class_folder_holding_a_folder_this_user_cannot_read_is_refused(tmp_path):
    """`train` on cats/ holding a folder without read permission, run as a user the permission
    stops (as root: nobody, through setpriv): the walk skipped it in silence, training on
    fewer photos than the folders hold. Now one line names it, and nothing is written."""
    import shutil
    import tempfile

    as_root = os.geteuid() == 0
    if as_root and not shutil.which("setpriv"):
        from conftest import missing
        missing("setpriv (util-linux) is needed to run a command as another user here")
    # a place the other user may read: not under pytest's own (root-only) folder
    top = Path(tempfile.mkdtemp(prefix="transfer-unreadable-"))
    try:
        top.chmod(0o755)
        for cls in ("cats", "dogs"):
            (top / "data" / cls).mkdir(parents=True)
            for i in range(3):
                (top / "data" / cls / f"{cls}.{i}.jpg").write_bytes(b"\xff\xd8\xff")
        (top / "data" / "cats" / "private").mkdir()
        (top / "data" / "cats" / "private" / "cat.9.jpg").write_bytes(b"\xff\xd8\xff")
        (top / "data" / "cats" / "private").chmod(0)
        (top / "home").mkdir(mode=0o777)
        (top / "home").chmod(0o777)
        before = _tree(top / "data" / "dogs")
        command = [sys.executable, "-m", "transfer", "train", "--data-dir", str(top / "data"),
                   "--models-dir", str(top / "home" / "models")]
        if as_root:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=top, timeout=120,
                                env={**os.environ, "COLUMNS": "300", "HOME": str(top / "home"),
                                     "KERAS_HOME": str(top / "home" / "keras"),
                                     "MPLCONFIGDIR": str(top / "home" / "mpl")})
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.strip() == (
            f"error: cannot list the folder {top / 'data' / 'cats' / 'private'} (Permission "
            "denied): the photos in it would be left out unseen; make it readable or move it "
            "away")
        assert not (top / "home" / "models").exists()
        assert _tree(top / "data" / "dogs") == before
    finally:
        (top / "data" / "cats" / "private").chmod(0o755)
        shutil.rmtree(top)


def test_a_machine_with_no_writable_temp_folder_still_runs_the_cli(tmp_path):
    """Every command makes a temp folder of its own first; where none can be made (a
    read-only root file system without a tmpfs on /tmp) `transfer --version` died of a
    FileNotFoundError traceback from tempfile.gettempdir(). It runs; a command that needs a
    temp folder says so itself."""
    code = textwrap.dedent(f"""
        import sys, tempfile
        tempfile._candidate_tempdir_list = lambda: [{str(tmp_path / "none")!r}]
        tempfile.tempdir = None
        sys.argv = ["transfer", "--version"]
        from transfer.cli import main
        main()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items()
                                            if k not in ("TMPDIR", "TEMP", "TMP")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("transfer ") and "Traceback" not in done.stderr
