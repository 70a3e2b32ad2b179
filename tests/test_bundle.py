"""Bundles: one writer for every kind of run, plain-Keras loading in a fresh Python (no
transfer), and read errors that say what is wrong with the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import Recorder, flushed_before, flushes

from transfer import bases, bundle, mnist, phases
from transfer.errors import TransferError

# A fresh Python that cannot import transfer: only keras and tensorflow load the model.
PLAIN_KERAS = textwrap.dedent("""
    import sys

    class NoTransfer:
        def find_spec(self, name, path=None, target=None):
            if name == "transfer" or name.startswith("transfer."):
                raise ImportError("transfer must not be imported here")

    sys.meta_path.insert(0, NoTransfer())
    import numpy as np
    import keras

    model = keras.saving.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], np.asarray(model.predict(x, verbose=0)))
    assert not any(m == "transfer" or m.startswith("transfer.") for m in sys.modules)
    print("LAYER", type(model.get_layer("preprocess")).__name__)
""")


def plain_keras_predict(path, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", PLAIN_KERAS, str(path), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return np.load(tmp_path / "y.npy"), run.stdout


def classifier(name: str, size: int, n_classes: int = 2):
    base = bases.get(name)
    base_model = bases.build(base, size, weights="none")
    base_model.trainable = not base.pretrained
    return phases.graphs_of(base, base_model, size, n_classes)["full"]


@pytest.mark.parametrize(("name", "layer"), [("mobilenet", "Rescaling"), ("vgg16", "Dense"),
                                             ("efficientnetb0", "Identity"),
                                             ("scratch", "Rescaling")])
def test_model_loads_with_plain_keras_in_a_fresh_python(name, layer, tmp_path):
    """One base per preprocessing mode (tf, caffe, none, scale): the saved model opens with
    keras.saving.load_model alone and gives the same outputs."""
    size = 32
    model = classifier(name, size)
    model.save(tmp_path / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype("float32")
    got, out = plain_keras_predict(tmp_path / "model.keras", x, tmp_path)
    np.testing.assert_allclose(got, np.asarray(model(x, training=False)), atol=1e-6)
    assert f"LAYER {layer}" in out


def test_mnist_model_loads_with_plain_keras(tmp_path):
    model = mnist.build_model("tiny")
    model.save(tmp_path / "model.keras")
    x = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1)).astype("float32")
    got, out = plain_keras_predict(tmp_path / "model.keras", x, tmp_path)
    np.testing.assert_allclose(got, np.asarray(model(x, training=False)), atol=1e-6)
    assert "LAYER Rescaling" in out


@pytest.fixture
def small_bundle(tmp_path):
    """A real (small) bundle written by the one writer: model, meta, settings, history."""
    model = classifier("scratch-seeds", 16)
    meta = bundle.meta(kind="transfer", class_names=["cats", "dogs"], image_size=16, channels=3,
                       preprocessing={"mode": "scale"}, seed=1, command="test",
                       settings={"base": "scratch-seeds", "epochs": 1},
                       metrics={"val_accuracy": 0.5})
    history = {"loss": [0.7], "val_loss": [0.69], "phase": ["train"]}
    target = bundle.write(tmp_path / "models/b", False, model, meta, history, title="t")
    return target


def test_one_writer_writes_every_file_and_the_settings(small_bundle, tmp_path):
    assert sorted(p.name for p in small_bundle.iterdir()) == [
        "curves.png", "history.csv", "meta.json", "model.keras", "settings.json"]
    meta = json.loads((small_bundle / "meta.json").read_text())
    assert list(meta)[:6] == list(bundle.COMMON_FIELDS[:6])
    assert set(bundle.COMMON_FIELDS) <= set(meta)
    assert json.loads((small_bundle / "settings.json").read_text()) == meta["settings"]
    assert (tmp_path / "models/latest").resolve() == small_bundle.resolve()
    model, loaded = bundle.load(small_bundle)
    assert loaded == meta and model.output_shape == (None, 1)


def test_a_zero_byte_model_says_it_is_empty(small_bundle):
    (small_bundle / "model.keras").write_bytes(b"")
    with pytest.raises(TransferError) as info:
        bundle.load(small_bundle)
    text = str(info.value)
    assert "empty (0 bytes)" in text and "not found" not in text and "\n" not in text


def test_a_truncated_model_says_it_is_damaged(small_bundle):
    path = small_bundle / "model.keras"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(TransferError, match=r"not a Keras model archive \(not a zip file: "
                                            r"truncated or damaged\)") as info:
        bundle.load(small_bundle)
    assert "not found" not in str(info.value) and "\n" not in str(info.value)


def test_a_text_file_and_a_zip_without_config_are_not_models(small_bundle):
    import zipfile

    path = small_bundle / "model.keras"
    path.write_text("hello")
    with pytest.raises(TransferError, match="not a zip file"):
        bundle.load(small_bundle)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "x")
    with pytest.raises(TransferError, match="no config.json: not a Keras model file"):
        bundle.load(small_bundle)


def test_a_missing_model_says_the_bundle_is_incomplete(small_bundle):
    (small_bundle / "model.keras").unlink()
    with pytest.raises(TransferError, match="has no model.keras: the bundle is incomplete"):
        bundle.load(small_bundle)


def test_a_keras_file_given_as_the_bundle_says_a_folder_is_expected(small_bundle):
    with pytest.raises(TransferError) as info:
        bundle.load(small_bundle / "model.keras")
    text = str(info.value)
    assert "is a file" in text and "bundle folder" in text and "meta.json" in text
    assert "train one" not in text


def test_a_latest_link_of_yours_is_left_alone(small_bundle, tmp_path):
    """models/latest is the link train keeps to the newest bundle beside it: one of yours to
    another folder (../releases/v3, an absolute path) was pointed at each new bundle without
    --force. Only a link naming a bundle beside it (or none) is train's."""
    model, meta = bundle.load(small_bundle)
    latest = small_bundle.parent / "latest"
    assert os.readlink(latest) == "b"
    for yours in ("../releases/v3", str(tmp_path / "elsewhere")):
        latest.unlink()
        latest.symlink_to(yours)
        bundle.write(small_bundle.with_name("c"), False, model, meta, {"loss": [1.0]})
        assert os.readlink(latest) == yours
        shutil.rmtree(small_bundle.with_name("c"))
    latest.unlink()
    latest.symlink_to("gone")  # train's, to a bundle since removed: train's to point anew
    bundle.write(small_bundle.with_name("c"), False, model, meta, {"loss": [1.0]})
    assert os.readlink(latest) == "c"


def test_a_latest_link_to_a_bundle_gone_says_so(small_bundle, tmp_path, monkeypatch):
    """models/latest left pointing at a bundle renamed or deleted said "no model bundle at
    models/latest: train one with `transfer train`", as if none had ever been trained."""
    from typer.testing import CliRunner

    from transfer.cli import app

    monkeypatch.chdir(tmp_path)
    os.rename(small_bundle, tmp_path / "models" / "renamed")
    latest = Path("models/latest")
    assert latest.is_symlink() and not latest.exists()
    expected = (f"models/latest points at {small_bundle.name}, which is missing (moved or "
                "deleted?); pass --model DIR, or train again")  # as predict says it
    with pytest.raises(TransferError) as info:
        bundle.load(latest)
    assert str(info.value) == expected
    for command in ("export", "evaluate"):  # one reader for every command
        result = CliRunner().invoke(app, [command, "--model", "models/latest"])
        assert result.exit_code == 1 and result.output.splitlines()[-1] == f"error: {expected}"
    # a link to nothing that was ever a bundle, and no link at all: said as before
    os.symlink("nowhere", "models/other")
    with pytest.raises(TransferError, match="^models/other points at nowhere, which is missing"):
        bundle.load("models/other")
    with pytest.raises(TransferError, match="^no model bundle at models/none: train one"):
        bundle.load("models/none")


def test_a_file_of_a_bundle_or_an_exported_model_given_as_the_bundle_names_the_way(
        small_bundle, tmp_path):
    """`--model models/latest/export/model.tflite` (or the bundle's model.keras) said only
    that a bundle folder was expected: now which folder, or, for a .tflite elsewhere, that
    an exported model is not its bundle."""
    exported = small_bundle / "export" / "model.tflite"
    exported.parent.mkdir()
    exported.write_bytes(b"TFL3")
    alone = tmp_path / "phone" / "cats.tflite"
    alone.parent.mkdir()
    alone.write_bytes(b"TFL3")
    for path, said in ((exported, f"it is in the bundle {small_bundle}; pass --model "
                                  f"{small_bundle}"),
                       (small_bundle / "model.keras", f"pass --model {small_bundle}"),
                       (alone, "an exported model? --model takes the bundle folder it was "
                               "exported from")):
        with pytest.raises(TransferError) as info:
            bundle.load(path)
        assert str(info.value).startswith(f"{path} is a file") and said in str(info.value)


def test_writer_refuses_a_folder_that_is_not_a_bundle(small_bundle, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    model, meta = bundle.load(small_bundle)
    for force in (False, True):  # one answer: --force would not help (it said 'use --force')
        with pytest.raises(TransferError, match="not a model bundle; refusing to replace it"):
            bundle.write(mine, force, model, meta, {"loss": [1.0]})
    assert (mine / "notes.txt").read_text() == "mine"
    empty = tmp_path / "made-for-it"  # an empty folder made beforehand is a place to land
    empty.mkdir()
    assert bundle.write(empty, False, model, meta, {"loss": [1.0]}) == empty
    assert bundle.is_bundle(empty)
    # a bundle is replaced with force, whole
    meta2 = {**meta, "seed": 2}
    (small_bundle / "report.json").write_text("{}")  # what evaluate wrote there: replaced too
    with pytest.raises(TransferError, match="already exists; use --force to replace it"):
        bundle.write(small_bundle, False, model, meta2, {"loss": [1.0]})
    assert json.loads((small_bundle / "meta.json").read_text())["seed"] == meta["seed"] != 2
    assert (small_bundle / "report.json").exists()
    bundle.write(small_bundle, True, model, meta2, {"loss": [1.0]})
    assert json.loads((small_bundle / "meta.json").read_text())["seed"] == 2
    assert not [p for p in small_bundle.parent.iterdir() if ".tmp-" in p.name]
    assert not (small_bundle / "report.json").exists()
    assert not small_bundle.with_name(small_bundle.name + ".old").exists()


def test_force_stopped_between_its_two_renames_puts_the_old_bundle_back(small_bundle,
                                                                        monkeypatch):
    """--force moves the old bundle aside, then the new one in: a Ctrl-C or SIGTERM between
    the two left no bundle at all (the new one went with the temporary folder, the old one
    stayed hidden as `.b.tmp-...-old`). The old bundle goes back."""
    model, meta = bundle.load(small_bundle)
    renames = []

    def stopped_at_the_second(src, dst):
        if Path(dst).parent == small_bundle.parent:  # not the files written inside
            renames.append(Path(dst).name)
            if len(renames) == 2:
                raise KeyboardInterrupt
        real(src, dst)

    real = os.replace
    monkeypatch.setattr(os, "replace", stopped_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        bundle.write(small_bundle, True, model, {**meta, "seed": 3}, {"loss": [1.0]})
    monkeypatch.setattr(os, "replace", real)
    assert renames[0].endswith("-old") and renames[1:] == ["b", "b"]
    assert json.loads((small_bundle / "meta.json").read_text())["seed"] == meta["seed"] != 3
    assert (small_bundle / "model.keras").is_file()
    assert sorted(p.name for p in small_bundle.parent.iterdir()) == ["b", "latest"]


@pytest.mark.parametrize("force", [False, True], ids=["new", "force"])
def test_a_bundle_is_on_the_disk_before_it_has_its_name(small_bundle, monkeypatch, force):
    """A rename reaches the disk before the renamed files' blocks do (ext4 allocates them
    late): after a power cut the bundle's name could hold an empty model.keras, the old bundle
    gone. Every file and folder of it is flushed before its rename, and the folder holding
    it after (the rename itself lasts); a JSON file written alone likewise."""
    model, meta = bundle.load(small_bundle)
    target = small_bundle if force else small_bundle.with_name("c")
    events = flushes(monkeypatch)
    bundle.write(target, force, model, {**meta, "seed": 3}, {"loss": [1.0]})
    inodes = {path.stat().st_ino for path in [target, *target.rglob("*")]}
    assert inodes <= flushed_before(events, target)
    last = max(i for i, (kind, what) in enumerate(events) if kind == "rename" and what == target)
    assert ("fsync", target.parent.stat().st_ino) in events[last:]
    events.clear()
    bundle.write_json(target / "extra.json", {"a": 1})
    assert (target / "extra.json").stat().st_ino in flushed_before(events, target / "extra.json")


def test_force_keeps_the_files_you_put_into_a_bundle(small_bundle, tmp_path):
    """--force over a bundle holding your notes or results deleted them with it: now the old
    bundle is moved aside whole, and said."""
    model, meta = bundle.load(small_bundle)
    (small_bundle / "notes.txt").write_text("mine")
    (small_bundle / "eval-report").mkdir()
    recorder = Recorder()
    bundle.write(small_bundle, True, model, {**meta, "seed": 3}, {"loss": [1.0]},
                 reporter=recorder)
    aside = small_bundle.with_name(small_bundle.name + ".old")
    assert (aside / "notes.txt").read_text() == "mine" and (aside / "eval-report").is_dir()
    assert json.loads((small_bundle / "meta.json").read_text())["seed"] == 3
    assert not (small_bundle / "notes.txt").exists()
    assert recorder.warnings == [
        f"the bundle replaced in {small_bundle} held files transfer did not write (eval-report, "
        f"notes.txt): it was moved, whole, to {aside}"]


def test_force_over_a_bundle_of_another_kind_says_nothing_of_user_files(small_bundle):
    """train --force over a digit bundle (transfer mnist's pictures in it) said "held files
    transfer did not write (feature_maps.png, filters.png, noise.png, samples.png)" and kept
    it as .old: what a run of that kind writes is transfer's, replaced with it. In a photo
    bundle, which never draws them, a samples.png is the user's and keeps it."""
    model, meta = bundle.load(small_bundle)
    pictures = ("feature_maps.png", "filters.png", "noise.png", "samples.png")

    def drawn(folder):  # as transfer mnist draws them into its bundle
        for name in pictures:
            (folder / name).write_bytes(b"drawn by transfer mnist")

    digits = small_bundle.with_name("digits")
    bundle.write(digits, False, model, {**meta, "kind": "mnist"}, {"loss": [1.0]}, extra=drawn)
    recorder = Recorder()
    bundle.write(digits, True, model, {**meta, "seed": 4}, {"loss": [1.0]}, reporter=recorder)
    assert recorder.warnings == []
    assert not digits.with_name("digits.old").exists()
    assert not (digits / "noise.png").exists()
    assert json.loads((digits / "meta.json").read_text())["seed"] == 4

    # an odd meta.json's kind (a list): nothing is known to be a run's (it raised TypeError
    # after the old bundle had been renamed aside, leaving it hidden)
    odd = small_bundle.with_name("odd")
    bundle.write(odd, False, model, {**meta, "kind": ["transfer"]}, {"loss": [1.0]})
    (odd / "notes.txt").write_text("mine")
    bundle.write(odd, True, model, meta, {"loss": [1.0]})
    assert (odd.with_name("odd.old") / "notes.txt").read_text() == "mine"

    (small_bundle / "samples.png").write_bytes(b"the user's")  # a photo bundle: theirs
    recorder = Recorder()
    bundle.write(small_bundle, True, model, {**meta, "seed": 5}, {"loss": [1.0]},
                 reporter=recorder)
    aside = small_bundle.with_name(small_bundle.name + ".old")
    assert (aside / "samples.png").read_bytes() == b"the user's"
    assert recorder.warnings == [
        f"the bundle replaced in {small_bundle} held files transfer did not write "
        f"(samples.png): it was moved, whole, to {aside}"]


def test_force_keeps_your_files_in_the_bundles_export_folder(small_bundle, tmp_path):
    """export/ is transfer export's folder, and went with the bundle whatever it held: your
    notes in it were deleted. What export names by default still goes; a file of yours there
    keeps the old bundle, moved aside whole."""
    model, meta = bundle.load(small_bundle)
    def exports(folder: Path) -> None:  # what transfer export writes there by default
        folder.mkdir(exist_ok=True)
        for name in ("model.tflite", "model.tflite.meta.json", "model-int8.tflite",
                     "model-int8.tflite.meta.json", "model.keras"):
            (folder / name).write_text("made by transfer export")
        saved = folder / "saved_model"
        for name in ("saved_model.pb", "fingerprint.pb", "variables/variables.index",
                     "variables/variables.data-00000-of-00001", "assets.extra/meta.json",
                     "assets.extra/labels.txt"):
            (saved / name).parent.mkdir(parents=True, exist_ok=True)
            (saved / name).write_text("made by transfer export")
        (saved / "assets").mkdir()

    exports(small_bundle / "export")
    # what an export or an evaluate killed mid-write leaves (kill -9, the OOM killer): theirs
    # too, not the user's (the bundle was moved aside for them as if it held notes)
    (small_bundle / "export" / ".model.tflite.tmp-azdwrn4v").mkdir()
    (small_bundle / ".report.tmp-4242.json").write_text("{")
    bundle.write(small_bundle, True, model, {**meta, "seed": 4}, {"loss": [1.0]})
    assert not (small_bundle / "export").exists()
    assert not small_bundle.with_name(small_bundle.name + ".old").exists()
    for seed, yours in enumerate((".NOTES.tmp-1", "NOTES.txt", "saved_model/NOTES.txt",
                                  "saved_model/config/serving.yaml",
                                  "saved_model/assets.extra/deploy.md",
                                  "saved_model/assets/vocab.txt"), start=5):
        exports(small_bundle / "export")
        (small_bundle / "export" / yours).parent.mkdir(parents=True, exist_ok=True)
        (small_bundle / "export" / yours).write_text("mine")
        recorder = Recorder()
        bundle.write(small_bundle, True, model, {**meta, "seed": seed}, {"loss": [1.0]},
                     reporter=recorder)
        aside = small_bundle.with_name(small_bundle.name + ".old")
        assert (aside / "export" / yours).read_text() == "mine"
        assert json.loads((small_bundle / "meta.json").read_text())["seed"] == seed
        named = "export/" + yours.removesuffix("/serving.yaml")  # a folder of yours, once
        assert recorder.warnings == [
            f"the bundle replaced in {small_bundle} held files transfer did not write "
            f"({named}): it was moved, whole, to {aside}"]
        shutil.rmtree(aside)


def test_a_bundle_another_run_wrote_meanwhile_is_kept(small_bundle, tmp_path):
    """Two runs started in the same second get the same default name: the one that lands
    second keeps the first's bundle (no --force was given) and lands beside it, at -2, with
    latest pointing at it; one finding -2 taken as well lands at -3. With force a bundle is
    replaced, as asked."""
    model, meta = bundle.load(small_bundle)
    target = tmp_path / "models" / "mobilenet-20261204-140107"

    def meanwhile(seed):
        def write(folder):  # while this run writes, another run lands at the same name
            if not target.exists():
                bundle.write(target, False, model, {**meta, "seed": seed}, {"loss": [1.0]})
        return write

    landed = bundle.write(target, False, model, {**meta, "seed": 2}, {"loss": [1.0]},
                          extra=meanwhile(1))
    assert landed == target.with_name(target.name + "-2")
    assert json.loads((target / "meta.json").read_text())["seed"] == 1
    assert json.loads((landed / "meta.json").read_text())["seed"] == 2
    assert os.readlink(tmp_path / "models/latest") == landed.name
    with bundle.writing(target.with_name(target.name + "-x"), False) as landing:
        (landing.folder / "meta.json").write_text("{}")
        for name in (target.name + "-x", target.name + "-x-2"):
            (tmp_path / "models" / name).mkdir()
            (tmp_path / "models" / name / "theirs.txt").write_text("theirs")
    assert landing.path == target.with_name(target.name + "-x-3")
    assert (landing.path / "meta.json").is_file()
    replaced = bundle.write(target, True, model, {**meta, "seed": 3}, {"loss": [1.0]})
    assert replaced == target and json.loads((target / "meta.json").read_text())["seed"] == 3
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]


def test_a_bundle_replaced_while_it_is_read_is_read_again_whole(small_bundle, monkeypatch):
    """evaluate (or predict) reading a bundle while `train --force` replaced it paired the
    old meta.json (2 classes) with the new model (3 outputs): "the bundle is inconsistent".
    Now a folder replaced during the read is read again: the new meta and the new model."""
    old_model, meta = bundle.load(small_bundle)
    three = classifier("scratch-seeds", 16, n_classes=3)
    new_meta = {**meta, "class_names": ["a", "b", "c"], "seed": 7}
    real, calls = bundle.load_keras, []

    def replaced_meanwhile(path):  # the first read: meta.json read, then the folder replaced
        calls.append(path)
        if len(calls) == 1:
            bundle.write(small_bundle, True, three, new_meta, {"loss": [1.0]})
        return real(path)

    monkeypatch.setattr(bundle, "load_keras", replaced_meanwhile)
    model, loaded = bundle.load(small_bundle)
    assert len(calls) == 2
    assert loaded["class_names"] == ["a", "b", "c"] and loaded["seed"] == 7
    assert model.output_shape == (None, 3)
    # a folder replaced at every read: one error saying so, not a mix of two bundles
    def always_replaced(path):
        bundle.write(small_bundle, True, three, new_meta, {"loss": [1.0]})
        return real(path)

    monkeypatch.setattr(bundle, "load_keras", always_replaced)
    with pytest.raises(TransferError, match="was replaced while it was read, three times"):
        bundle.load(small_bundle)
    # an ordinary error of an unchanged folder is raised at once, not retried
    reads, read_meta = [], bundle.read_meta
    monkeypatch.setattr(bundle, "read_meta", lambda path: reads.append(path) or read_meta(path))
    (small_bundle / "meta.json").write_text("{")
    with pytest.raises(TransferError, match="meta.json"):
        bundle.load(small_bundle)
    assert len(reads) == 1
    assert old_model.output_shape == (None, 1)


def test_a_classifier_read_again_after_a_replacement_keys_the_model_it_holds(small_bundle,
                                                                             monkeypatch):
    """The converted-model cache is keyed by the model.keras a classifier loaded. Its stat
    had been taken before the load, so after a read again (the bundle replaced meanwhile) it
    named the old file and the classifier skipped the cache; now it is the file read."""
    from transfer.files import sha256_file
    from transfer.inference import BundleClassifier

    _, meta = bundle.load(small_bundle)
    three = classifier("scratch-seeds", 16, n_classes=3)
    real, calls = bundle.load_keras, []

    def replaced_meanwhile(path):
        calls.append(path)
        if len(calls) == 1:
            bundle.write(small_bundle, True, three, {**meta, "class_names": ["a", "b", "c"]},
                         {"loss": [1.0]})
        return real(path)

    monkeypatch.setattr(bundle, "load_keras", replaced_meanwhile)
    loaded = BundleClassifier(small_bundle)
    assert len(calls) == 2 and loaded.class_names == ["a", "b", "c"]
    assert loaded.engine_key() == {"kind": "bundle-model",
                                   "model_sha256": sha256_file(small_bundle / bundle.MODEL),
                                   "bytes": (small_bundle / bundle.MODEL).stat().st_size}
    bundle.write(small_bundle, True, three, meta, {"loss": [1.0]})  # replaced after the load
    assert loaded.engine_key() is None


def test_text_files_are_utf8_under_an_ascii_locale(tmp_path):
    """A class or file name with an accent, written and read back with the C locale (a plain
    Windows console or a bare container): no UnicodeEncodeError, the same bytes everywhere."""
    code = f"""
import pathlib, sys
from transfer import bundle, predict
from transfer.files import write_json
assert sys.flags.utf8_mode == 0 and pathlib.Path(".").absolute()  # the locale's encoding
d = pathlib.Path({str(tmp_path)!r})
bundle.write_train_files(d / "train-files.csv", [("chats été", "chat é.jpg", 12, "/é/chat é.jpg")])
listed = {{("chat é.jpg", 12): [("chats été", pathlib.Path("/é/chat é.jpg"))]}}
assert bundle.train_files(d) == listed
predict.write_text(d / "p.csv", "file,class\\nchat é.jpg,chats été\\n")
bundle.write_history(d / "history.csv", {{"accuracy": [0.5]}})
write_json(d / "m.json", {{"classes": ["chats été"]}})
print("ok")
"""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "ascii"}
    script = tmp_path / "write.py"  # a source file is UTF-8 whatever the locale
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, errors="replace", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "p.csv").read_bytes() == "file,class\nchat é.jpg,chats été\n".encode()
    assert "chats été" in (tmp_path / "train-files.csv").read_text(encoding="utf-8")


def test_a_damaged_list_of_training_files_is_no_list(tmp_path):
    """train-files.csv cut short (a row without its bytes): evaluate ended in a TypeError
    traceback; the list is unreadable, as a missing one."""
    bundle.write_train_files(tmp_path / "train-files.csv", [("cats", "c.jpg", 12, "/d/c.jpg"),
                                                             ("dogs", "d.jpg", 13, "/d/d.jpg")])
    whole = (tmp_path / "train-files.csv").read_bytes()
    assert bundle.train_files(tmp_path) == {("c.jpg", 12): [("cats", Path("/d/c.jpg"))],
                                            ("d.jpg", 13): [("dogs", Path("/d/d.jpg"))]}
    (tmp_path / "train-files.csv").write_bytes(whole[:whole.rindex(b",13,")])
    assert bundle.train_files(tmp_path) is None


def test_loading_a_bundle_leaves_the_callers_random_generators_alone(trained_bundle):
    """Keras draws initial weights from Python's random while it builds the layers it then
    fills from the file: a program's seeded sequence changed with every model it loaded."""
    import random

    import numpy as np

    random.seed(1)
    np.random.seed(1)
    expected = (random.random(), float(np.random.rand()))
    random.seed(1)
    np.random.seed(1)
    bundle.load(trained_bundle.bundle)
    assert (random.random(), float(np.random.rand())) == expected


def test_a_meta_json_saved_with_a_byte_order_mark_is_read(trained_bundle, tmp_path):
    """Notepad's "UTF-8 with BOM" (a teacher renaming a class) was "not valid JSON
    (Unexpected UTF-8 BOM)"; JSON readers may ignore it, and CRLF is read already."""
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(trained_bundle.bundle, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["class_names"] = ["chats", "chiens"]
    (copy / "meta.json").write_bytes(json.dumps(meta, indent=2).replace("\n", "\r\n")
                                     .encode("utf-8-sig"))
    assert bundle.is_bundle(copy)
    assert bundle.read_meta(copy)["class_names"] == ["chats", "chiens"]
    from transfer.report import render_report  # the report read it strictly ("BOM")

    assert "chiens" in render_report(copy, gradcams=0)


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(class_names=5), "class_names must be a list of at least two"),
    (lambda m: m.update(class_names=["cats", "cats"]), "at least two distinct names"),
    (lambda m: m.update(metrics=[1]), "metrics must be an object, not [1]"),
    (lambda m: m["metrics"].update(val_accuracy="high"),
     'metrics.val_accuracy must be a number, not "high"'),
    (lambda m: m["data"].update(validate_dir=5), "data.validate_dir must be a folder's path"),
    (lambda m: m.update(image_size="224"), 'image_size must be a whole number, not "224"'),
])
def test_a_meta_json_field_of_the_wrong_type_is_one_error(trained_bundle, tmp_path, change,
                                                          words):
    """A hand-edited meta.json: the field named in one error when the bundle is read, not a
    crash deep in evaluate ("Unknown format code 'f' for object of type 'str'")."""
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(trained_bundle.bundle, copy)
    meta = json.loads((copy / "meta.json").read_text())
    change(meta)
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TransferError) as info:
        bundle.read_meta(copy)
    assert words in str(info.value)
    assert str(info.value).startswith(f"{copy / 'meta.json'}: ")


def test_a_full_disk_while_a_bundle_is_written_names_the_bundle(tmp_path):
    """Keras's zip writer raises ENOSPC without a file name: the run's one line was "No space
    left on device ([Errno 28] No space left on device)", with --output, KERAS_HOME and TMPDIR
    perhaps on three disks."""
    import errno

    target = tmp_path / "models" / "kk"
    target.parent.mkdir()
    with pytest.raises(OSError) as info, bundle.writing(target, False) as landing:
        (landing.folder / "meta.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert list(target.parent.iterdir()) == []  # the temporary folder went


def test_force_onto_a_link_replaces_the_link_and_keeps_its_bundle(tmp_path):
    """`train --output models/best --force`, best a link to a bundle: the link was moved to
    a hidden name that stayed in the models folder for good (its removal failed in silence).
    The link is replaced by the new bundle; the bundle it led to is kept, whole."""
    models = tmp_path / "models"
    (models / "mobilenet-1").mkdir(parents=True)
    meta = {"schema_version": 1, "class_names": ["cats", "dogs"]}
    (models / "mobilenet-1" / "meta.json").write_text(json.dumps({**meta, "seed": 1}))
    (models / "best").symlink_to("mobilenet-1")
    with bundle.writing(models / "best", True) as landing:
        (landing.folder / "meta.json").write_text(json.dumps({**meta, "seed": 2}))
    assert not (models / "best").is_symlink()
    assert json.loads((models / "best" / "meta.json").read_text())["seed"] == 2
    assert json.loads((models / "mobilenet-1" / "meta.json").read_text())["seed"] == 1
    assert sorted(p.name for p in models.iterdir()) == ["best", "mobilenet-1"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, TransferError])
def test_a_bundle_that_does_not_land_leaves_no_new_folders(tmp_path, failure):
    """``mnist --output deep/new/m`` (or train's first models/) stopped while its bundle was
    written left deep/ and deep/new/ behind, empty; an existing folder, or one the user put
    something in meanwhile, stays."""
    with pytest.raises(failure), bundle.writing(tmp_path / "deep/new/m", False) as landing:
        (landing.folder / "meta.json").write_text("{}")
        raise failure("stopped")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "deep").mkdir()
    with pytest.raises(failure), bundle.writing(tmp_path / "deep/new/m", False):
        (tmp_path / "deep/new/notes.txt").write_text("mine")
        raise failure("stopped")
    assert sorted(p.name for p in (tmp_path / "deep/new").iterdir()) == ["notes.txt"]
    with bundle.writing(tmp_path / "other/m", False) as landing:
        (landing.folder / "meta.json").write_text("{}")
    assert landing.path == tmp_path / "other/m" and (tmp_path / "other/m/meta.json").is_file()


def test_json_written_is_strict_json_when_a_run_diverged(tmp_path):
    """A diverged run (mnist --learning-rate 1e12) wrote "test_loss": NaN into meta.json:
    Python reads it, a browser's JSON.parse and other strict readers refuse the whole file.
    Numbers that are not finite are now null."""
    from transfer.files import write_json

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    write_json(tmp_path / "meta.json", {"metrics": {"test_loss": float("nan"), "ok": 0.5},
                                        "history": {"loss": [float("inf"), 1.0, -float("inf")]},
                                        "pair": (float("nan"), 2)})
    text = (tmp_path / "meta.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {
        "metrics": {"test_loss": None, "ok": 0.5}, "history": {"loss": [None, 1.0, None]},
        "pair": [None, 2]}


def _dead_pid() -> int:
    """The process id of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _aged(*paths: Path, hours: float = 2.0) -> None:
    """Make ``paths`` look untouched for ``hours`` (a run killed that long ago)."""
    import time

    then = time.time() - hours * 3600
    for path in paths:
        os.utime(path, (then, then), follow_symlinks=False)


def test_what_a_killed_run_left_half_written_goes_with_the_next_write_beside_it(tmp_path):
    """A run killed outright (kill -9, the out-of-memory killer) runs no clean-up: its hidden
    half-written bundle, export, report or conversion stayed beside the user's files for good.
    The next write into that folder removes them: those named for this machine and a process
    that no longer exists, untouched for an hour; not a live process's, a fresh one's (a
    process id names a process only in its own container), another machine's (a shared
    folder), nor a file of the user's. A bundle's `-old` copy (maybe the only one left: the
    run was killed between moving it aside and moving the new one in) goes back to its name
    when that is free, else stays."""
    from transfer.files import _machine_tag, sweep_left_by_killed, temp_prefix, write_json

    tag, dead = _machine_tag(), _dead_pid()
    models = tmp_path / "models"
    models.mkdir()
    left = [models / f".cats.tmp-{tag}-{dead}-x7f2", models / f".report.tmp-{tag}-{dead}-.json",
            models / f".latest.tmp-{tag}-{dead}-link"]
    left[0].mkdir()
    (left[0] / "model.keras").write_bytes(b"half")
    left[1].write_text("{")
    left[2].symlink_to(tmp_path)  # a link goes, what it points at stays
    replaced = models / f".cats.tmp-{tag}-{dead}-x7f2-old"  # killed between its two renames
    replaced.mkdir()
    (replaced / "meta.json").write_text("{}")
    kept = [models / f".live.tmp-{tag}-{os.getppid()}-abc",  # a run still going
            models / f".cats.tmp-0badcafe-{dead}-abc",  # another machine's run
            models / f".dogs.tmp-{tag}-{dead}-x7f2-old",  # replaced, the new one in place
            models / "dogs",
            models / f".huge.tmp-{tag}-{'9' * 30}-abc",  # no process id at all
            models / ".NOTES.tmp-1", models / f"notes.tmp-{tag}-{dead}-.txt"]  # the user's
    for path in kept:
        path.mkdir()
    _aged(*left, *kept, replaced)
    fresh = models / f".fresh.tmp-{tag}-{dead}-abc"  # gone, but only just: maybe another
    fresh.mkdir()  # container's process of the same number, still writing
    kept.append(fresh)
    assert temp_prefix("cats") == f".cats.tmp-{tag}-{os.getpid()}-"
    # a name that nearly fills the file system's 255 bytes still has a temporary name
    long = models / ("r" * 240 + ".json")
    write_json(long, {"ok": True})
    assert json.loads(long.read_text()) == {"ok": True}
    wide = models / ("写" * 80 + ".json")  # 245 bytes in UTF-8
    write_json(wide, {"ok": True})
    assert json.loads(wide.read_text()) == {"ok": True}

    write_json(models / "summary.json", {"ok": True})
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [p.name for p in kept] + ["cats", "summary.json", long.name, wide.name])
    assert (models / "cats" / "meta.json").read_text() == "{}"
    assert tmp_path.exists()
    assert sweep_left_by_killed(models) == []
    assert sweep_left_by_killed(tmp_path / "not-there") == []


def test_a_bundle_written_beside_a_killed_runs_leftover_removes_it(small_bundle):
    """The same through `bundle.write` (train, mnist, compare): a killed run's half bundle goes
    when the next bundle is written in the same models folder."""
    from transfer.files import _machine_tag

    model, meta = bundle.load(small_bundle)
    half = small_bundle.parent / f".{small_bundle.name}.tmp-{_machine_tag()}-{_dead_pid()}-a1b2"
    half.mkdir()
    (half / "model.keras").write_bytes(b"half")
    _aged(half)
    bundle.write(small_bundle.with_name("next"), False, model, meta, {"loss": [1.0]})
    assert not half.exists()
    assert (small_bundle.with_name("next") / "model.keras").exists()
