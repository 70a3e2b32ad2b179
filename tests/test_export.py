"""transfer export: Keras, SavedModel and TFLite files run here with plain Keras, plain
TensorFlow and the TFLite interpreter on real photos, against the README's tolerances; and
refusals."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import Recorder, flushed_before, flushes, split_images
from five_class import bundle_data, five_class_bundle
from PIL import Image
from typer.testing import CliRunner
from unwritable import names_path, unwritable_folder

from transfer import bundle, export
from transfer.cli import app
from transfer.errors import TransferError
from transfer.settings import ExportSettings

runner = CliRunner()

# The README's promise ("within tolerance (SavedModel 1e-5, TFLite 1e-3)"); a .keras copy is
# the same model, so it must agree to float32 rounding.
README_TOLERANCE = {"keras": 1e-6, "savedmodel": 1e-5, "tflite": 1e-3}
TARGETS = {"keras": "m.keras", "savedmodel": "sm", "tflite": "m.tflite"}


@pytest.fixture(scope="module")
def held_out(small_split):
    return [p for p, _ in split_images(small_split / "test", 3)]


def raw_pixels(files, size: int = 224) -> np.ndarray:
    """What the bundle's model takes, read here with Pillow alone: RGB 0-255, bilinear."""
    arrays = []
    for path in files:
        with Image.open(path) as picture:
            arrays.append(np.asarray(picture.convert("RGB").resize((size, size),
                                                                   Image.BILINEAR), "float32"))
    return np.stack(arrays)


def run_exported(fmt: str, target, x: np.ndarray) -> np.ndarray:
    """The exported file run the way its users run it, with no transfer code."""
    import keras
    import tensorflow as tf

    if fmt == "keras":
        return np.asarray(keras.saving.load_model(target, compile=False)(x, training=False))
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(str(target))
        serve = loaded.signatures["serve"]  # the serving signature, as TF Serving calls it
        _, inputs = serve.structured_input_signature
        (name,) = inputs
        (output,) = serve(**{name: tf.constant(x)}).values()
        np.testing.assert_array_equal(np.asarray(loaded.serve(tf.constant(x))), output)
        return np.asarray(output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's move-to-LiteRT notice
        interpreter = tf.lite.Interpreter(model_path=str(target))
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


@pytest.mark.parametrize("fmt", ["keras", "savedmodel", "tflite"])
def test_round_trip_on_real_photos(fmt, trained_bundle, held_out, tmp_path, monkeypatch):
    import keras

    target = tmp_path / TARGETS[fmt]
    if fmt == "savedmodel":  # an empty folder made for it holds nothing to lose: no --force
        target.mkdir()
    result = export.export(trained_bundle.bundle, format=fmt, output=target,
                           check_images=held_out)
    assert result.passed and result.n_images == 6 and target.exists()
    assert result.path == target and result.tolerance == README_TOLERANCE[fmt]
    meta = json.loads(result.meta_path.read_text())
    assert meta["class_names"] == ["cats", "dogs"] and meta["export"]["format"] == fmt
    assert meta["image_size"] == 224
    if fmt == "savedmodel":  # the class names inside the SavedModel folder
        assert (target / "assets.extra/labels.txt").read_text().splitlines() == ["cats", "dogs"]
    # independently of export's own check: the bundle's Keras model and the exported file,
    # both opened without transfer, on the held-out photos read with Pillow
    x = raw_pixels(held_out)
    reference = keras.saving.load_model(trained_bundle.bundle / bundle.MODEL, compile=False)
    expected = np.asarray(reference(x, training=False))
    assert expected.shape == (6, 1) and 0.05 < expected.std()  # real, varied outputs
    actual = run_exported(fmt, target, x).reshape(expected.shape)
    diff = float(np.max(np.abs(actual - expected)))
    assert diff <= README_TOLERANCE[fmt], diff
    assert result.max_abs_diff == pytest.approx(diff, abs=1e-6)  # export measured the same
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # an existing export is refused before the model (and TensorFlow) loads, not after
    # seconds of conversion
    monkeypatch.setattr(export, "BundleClassifier",
                        lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(TransferError, match="already exists; use --force"):
        export.export(trained_bundle.bundle, format=fmt, output=target, check_images=held_out)
    if fmt != "savedmodel":  # the meta.json beside the file, left alone, is refused as well:
        # replaced, the user's would be lost (a SavedModel holds its own)
        sidecar = result.meta_path.read_bytes()
        target.unlink()
        with pytest.raises(TransferError) as refused:
            export.export(trained_bundle.bundle, format=fmt, output=target,
                          check_images=held_out)
        assert str(refused.value) == \
            f"{result.meta_path} already exists; use --force to replace it"
        assert [p.name for p in tmp_path.iterdir()] == [result.meta_path.name]  # nothing written
        assert result.meta_path.read_bytes() == sidecar


def test_paths_that_are_not_utf8_export(trained_bundle, held_out, tmp_path, monkeypatch):
    """A bundle on a Latin-1 USB stick ("l\\xe9at"), exported to a name that is not UTF-8:
    TensorFlow refused the path (a UnicodeEncodeError traceback), for tflite and savedmodel
    alike. It is now given an alias; the file lands under the name asked for."""
    import shutil

    temp = tmp_path / "temp"  # the system's temporary folder: the alias goes there, then away
    temp.mkdir()
    monkeypatch.setattr(export.tempfile, "tempdir", str(temp))
    latin = os.fsdecode(os.fsencode(tmp_path) + b"/l\xe9at")
    shutil.copytree(trained_bundle.bundle, latin)
    target = os.fsdecode(os.fsencode(latin) + b"/t\xe9.tflite")
    result = export.export(latin, format="tflite", output=target, check_images=held_out)
    assert result.passed and result.max_abs_diff <= README_TOLERANCE["tflite"]
    assert sorted(os.listdir(latin)) == sorted(
        os.listdir(trained_bundle.bundle) + ["t\udce9.tflite", "t\udce9.tflite.meta.json"])
    copy = tmp_path / "plain.tflite"  # the file itself, run where any program can open it
    shutil.copyfile(target, copy)
    x = raw_pixels(held_out)
    assert run_exported("tflite", copy, x).shape == (6, 1)
    assert list(temp.iterdir()) == []  # the alias is gone, what it pointed to kept


def test_paths_with_glob_characters_export(trained_bundle, held_out, tmp_path, monkeypatch):
    """TensorFlow reads a SavedModel's variables through a glob: a `[` anywhere in the path
    (the output's name, a folder above it, a bundle kept in "proj [v1]" whose export goes
    inside it by default) made tflite and savedmodel exports fail ("FileNotFoundError
    (Unsuccessful TensorSliceReader constructor: Failed to find any matching files for
    .v[2].tflite.tmp-.../variables/variables"). They are now given an alias."""
    import shutil

    temp = tmp_path / "temp"  # the system's temporary folder: the alias goes there, then away
    temp.mkdir()
    monkeypatch.setattr(export.tempfile, "tempdir", str(temp))
    x = raw_pixels(held_out)
    project = tmp_path / "proj [v1]"
    shutil.copytree(trained_bundle.bundle, project / "b")
    # a name holding "[" beside a bundle in "proj [v1]", and the default output inside that
    # bundle: the two places, the two formats whose conversion reads a SavedModel
    for fmt, output in (("tflite", tmp_path / "v[2].tflite"), ("savedmodel", None)):
        result = export.export(project / "b", format=fmt, output=output,
                               check_images=held_out)
        assert result.passed and result.max_abs_diff <= README_TOLERANCE[fmt]
        target = output or project / "b" / "export" / export.DEFAULT_NAMES[fmt]
        assert result.path == target and target.exists() and result.meta_path.is_file()
        plain = tmp_path / ("plain.tflite" if fmt == "tflite" else "plain")
        shutil.copytree(target, plain) if fmt == "savedmodel" else shutil.copyfile(target, plain)
        assert run_exported(fmt, plain, x).shape == (6, 1)  # where any program can open it
        shutil.rmtree(plain) if fmt == "savedmodel" else plain.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["temp", "proj [v1]", "v[2].tflite", "v[2].tflite.meta.json"])  # no temporary folder
    assert sorted(p.name for p in (project / "b" / "export").iterdir()) == ["saved_model"]
    assert list(temp.iterdir()) == []  # the alias is gone, what it pointed to kept


def test_settings_object_and_default_output(trained_bundle, held_out, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(trained_bundle.bundle, copy)
    result = export.export(ExportSettings(model=copy, format="savedmodel",
                                          check_images=[held_out[0].parent]))
    assert result.path == copy / "export" / "saved_model"
    assert (result.path / "saved_model.pb").exists()
    assert result.meta_path == result.path / "assets.extra" / "meta.json"
    assert result.n_images == 8 and result.check_source == "given images"  # 8 of the folder


def test_default_check_images_and_cli(trained_bundle, tmp_path):
    out = tmp_path / "cats.tflite"
    result = runner.invoke(app, ["export", "--model", str(trained_bundle.bundle), "--format",
                                 "tflite", "--output", str(out)])
    assert result.exit_code == 0, result.output
    # the result line itself (a progress line says "8 images" too)
    assert re.search(r"check on 8 images from .+: max abs difference \S+ <= 0\.001 passed",
                     " ".join(result.output.split())), result.output
    assert out.stat().st_size > 100_000
    assert (tmp_path / "cats.tflite.meta.json").exists()


def test_failed_check_writes_nothing(trained_bundle, held_out, tmp_path, monkeypatch):
    """Nothing at all: not the file, nor the folders made for it (an interrupted or failed
    export left them, empty)."""
    monkeypatch.setitem(export.TOLERANCE, "tflite", 0.0)  # float32 TFLite never matches exactly
    target = tmp_path / "made" / "for it" / "m.tflite"
    with pytest.raises(TransferError, match="differ from the Keras model's"):
        export.export(trained_bundle.bundle, format="tflite", output=target,
                      check_images=held_out)
    assert list(tmp_path.iterdir()) == []


def test_export_refusals(trained_bundle, held_out, tmp_path):
    # a bundle's own file, --force or not (export --format keras --output b/model.keras
    # --force replaced another bundle's model: "meta.json lists 3 classes but the model has
    # 10 outputs"); through a link to it too
    other = tmp_path / "other"
    shutil.copytree(trained_bundle.bundle, other)
    before = (other / "model.keras").read_bytes()
    (tmp_path / "m.keras").symlink_to(other / "model.keras")
    for output in (other / "model.keras", tmp_path / "m.keras"):
        with pytest.raises(TransferError, match=re.escape(
                f"is the bundle {other.resolve()}'s own model.keras: an export never writes "
                "over a bundle's files, even with --force")):
            export.export(trained_bundle.bundle, format="keras", output=output, force=True,
                          check_images=held_out)
    assert (other / "model.keras").read_bytes() == before
    with pytest.raises(TransferError, match="--format must be one of keras, savedmodel, tflite"):
        export.export(trained_bundle.bundle, format="onnx", output=tmp_path / "m.onnx")
    with pytest.raises(TransferError, match="must end in .keras"):
        export.export(trained_bundle.bundle, format="keras", output=tmp_path / "m.h5",
                      check_images=held_out)
    with pytest.raises(TransferError, match="a TFLite export must end in .tflite"):
        export.export(trained_bundle.bundle, format="tflite", output=tmp_path / "m.txt",
                      check_images=held_out)
    with pytest.raises(TransferError, match="a SavedModel is a folder: name --output without "
                       ".tflite"):
        export.export(trained_bundle.bundle, format="savedmodel", output=tmp_path / "m.tflite",
                      check_images=held_out)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    # said the same with and without --force (it said "use --force", then refused that)
    for force in (False, True):
        with pytest.raises(TransferError) as caught:
            export.export(trained_bundle.bundle, format="savedmodel", output=folder,
                          force=force, check_images=held_out)
        assert str(caught.value) == (f"{folder} is a folder but not a SavedModel (it holds "
                                     "files of yours); choose another --output")
    assert (folder / "notes.txt").read_text() == "keep me"
    # the (empty) folder one is in: a SavedModel would replace it, leaving the shell in a
    # deleted folder (`--output .` was a ValueError traceback)
    here = tmp_path / "here"
    here.mkdir()
    with contextlib.chdir(here):
        for output in (Path("."), here):
            with pytest.raises(TransferError, match="is the folder you are in"):
                export.export(trained_bundle.bundle, format="savedmodel", output=output,
                              check_images=held_out)
    assert here.is_dir() and list(here.iterdir()) == []
    # a folder where the sidecar goes: said before the conversion (it was "Is a directory"
    # after it)
    (tmp_path / "dm.tflite.meta.json").mkdir()
    with pytest.raises(TransferError, match=r"dm.tflite.meta.json \(where the export's "
                                            r"meta.json goes\) is a folder"):
        export.export(trained_bundle.bundle, format="tflite", output=tmp_path / "dm.tflite",
                      force=True, check_images=held_out)
    assert not (tmp_path / "dm.tflite").exists()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    with pytest.raises(TransferError, match=r"check image .*bad.jpg: not an image"):
        export.export(trained_bundle.bundle, format="tflite", output=tmp_path / "x.tflite",
                      check_images=[bad])
    assert not (tmp_path / "x.tflite").exists()


def test_check_images_that_cannot_be_read_are_skipped_and_said(trained_bundle, held_out,
                                                                small_split, tmp_path):
    """One truncated JPEG in a --check-images folder aborted the whole export, while predict
    and evaluate skip a bad file: it is skipped now, with a warning naming it, and another
    photo of the folder takes its place."""
    import shutil

    photos = tmp_path / "photos"
    for path, kind in split_images(small_split / "test", 5):  # 10 photos, 8 of them checked
        (photos / kind).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, photos / kind / path.name)
    cut = photos / "cats" / "0-cut.jpg"  # first in its folder: chosen first
    cut.write_bytes(held_out[0].read_bytes()[:2000])
    recorder = Recorder()
    result = export.export(trained_bundle.bundle, format="tflite", output=tmp_path / "m.tflite",
                           check_images=[photos], reporter=recorder)
    assert result.passed and result.n_images == 8  # another photo in the cut one's place
    assert len(recorder.warnings) == 1 and str(cut) in recorder.warnings[0]
    assert recorder.warnings[0].startswith("skipped 1 check image that cannot be read:")
    bad = tmp_path / "bad.jpg"  # a file named among good ones: skipped too
    bad.write_bytes(b"not a photo")
    recorder = Recorder()
    result = export.export(trained_bundle.bundle, format="tflite", output=tmp_path / "n.tflite",
                           check_images=[bad, *held_out[:2]], reporter=recorder)
    assert result.passed and result.n_images == 2
    assert len(recorder.warnings) == 1 and recorder.warnings[0].startswith(
        f"skipped 1 check image that cannot be read: {bad}: not an image")


def test_a_check_images_folder_without_images_is_named(trained_bundle, tmp_path):
    """`--check-images userdir` holding no photo said "no images to check the export with",
    not which folder."""
    mine = tmp_path / "userdir"
    mine.mkdir()
    (mine / "notes.txt").write_text("no photos here")
    with pytest.raises(TransferError) as caught:
        export.export(trained_bundle.bundle, format="tflite", output=tmp_path / "u.tflite",
                      check_images=[mine])
    assert str(caught.value) == (f"no images to check the export with in {mine} (no image "
                                 "files found there); give --check-images photos or folders "
                                 "of photos")
    assert not (tmp_path / "u.tflite").exists()


def test_unwritable_outputs_are_named(trained_bundle, held_out, tmp_path):
    with unwritable_folder(tmp_path / "locked") as locked:
        for output in (locked / "m.tflite", locked / "deeper" / "m.tflite"):
            with pytest.raises((TransferError, OSError)) as caught:
                export.export(trained_bundle.bundle, format="tflite", output=output,
                              check_images=held_out)
            assert names_path(caught.value, locked)
        assert list(locked.iterdir()) == []
    (tmp_path / "file").write_text("keep")
    with pytest.raises((TransferError, OSError)) as caught:
        export.export(trained_bundle.bundle, format="tflite",
                      output=tmp_path / "file" / "m.tflite", check_images=held_out)
    assert names_path(caught.value, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep"


def test_a_read_only_bundle_says_to_export_elsewhere(trained_bundle, held_out, tmp_path):
    """The default output goes inside the bundle: a read-only bundle (a class's shared copy)
    said "error: Permission denied: ro/b/export", not why nor what to do. It says both now;
    --output elsewhere works, and nothing is left in the bundle."""
    import shutil

    shutil.copytree(trained_bundle.bundle, tmp_path / "ro" / "b")
    with contextlib.chdir(tmp_path):
        with unwritable_folder(Path("ro/b")) as locked:
            before = sorted(os.listdir(locked))
            result = runner.invoke(app, ["export", "--model", "ro/b", "--check-images",
                                         str(held_out[0])])
            assert result.exit_code == 1
            # as root the folder is immutable (chattr +i): "Operation not permitted"
            assert result.output.splitlines()[-1] in [
                f"error: cannot write the export into the bundle ro/b ({os.strerror(code)}); "
                "use --output PATH to write it elsewhere" for code in (errno.EACCES,
                                                                       errno.EPERM)]
            result = export.export(locked, format="tflite", output=tmp_path / "m.tflite",
                                   check_images=held_out)
            assert result.passed and sorted(os.listdir(locked)) == before
        (tmp_path / "ro" / "b" / "export").mkdir()  # its export folder read-only, the rest not
        with unwritable_folder(Path("ro/b/export")), pytest.raises(TransferError) as caught:
            export.export(Path("ro/b"), format="savedmodel", check_images=held_out)
        assert str(caught.value).startswith("cannot write the export into the bundle ro/b (")
    assert os.listdir(tmp_path / "ro" / "b" / "export") == []


def names_from_flatbuffer(path) -> dict:
    """The meta JSON in a .tflite's flatbuffer metadata, read with TensorFlow's generated
    schema alone (no transfer code, no interpreter)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    entries = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer()
               for i in range(model.MetadataLength())}
    return json.loads(model.Buffers(entries["transfer_meta"]).DataAsNumpy().tobytes())


def litert_outputs(path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def test_force_over_a_savedmodel_keeps_the_files_you_put_into_it(trained_bundle, held_out,
                                                                 tmp_path):
    """`export --format savedmodel --force` replaced the folder and deleted what you had
    added to it (deployment notes, a config folder). A SavedModel holding only what export
    writes is replaced; one holding your files is moved aside whole, and said."""
    # named as the work folder's place for the replaced one: the second export failed with
    # "Directory not empty", every time
    out = tmp_path / "replaced"
    export.export(trained_bundle.bundle, format="savedmodel", output=out,
                  check_images=held_out)
    export.export(trained_bundle.bundle, format="savedmodel", output=out, force=True,
                  check_images=held_out)
    assert (out / "saved_model.pb").is_file() and not out.with_name("replaced.old").exists()
    (out / "DEPLOY-NOTES.md").write_text("mine")
    (out / "mystuff").mkdir()
    (out / "mystuff" / "config.yaml").write_text("k: 1")
    recorder = Recorder()
    export.export(trained_bundle.bundle, format="savedmodel", output=out, force=True,
                  check_images=held_out, reporter=recorder)
    aside = out.with_name("replaced.old")
    assert (aside / "DEPLOY-NOTES.md").read_text() == "mine"
    assert (aside / "mystuff" / "config.yaml").read_text() == "k: 1"
    assert (out / "saved_model.pb").is_file() and not (out / "DEPLOY-NOTES.md").exists()
    assert recorder.warnings == [
        f"the SavedModel replaced in {out} held files transfer did not write (DEPLOY-NOTES.md, "
        f"mystuff): it was moved, whole, to {aside}"]


def test_a_quantized_export_named_as_the_float_model_it_is_compared_with(trained_bundle,
                                                                          held_out, tmp_path):
    """`--quantize dynamic --output float.tflite`: the work folder's float model, the one the
    quantized model is compared with, had that name, and the quantized conversion overwrote
    it: the two sides of the check were one file (agreement 100%, size 1.00x), so a broken
    quantization passed."""
    out = tmp_path / "float.tflite"
    result = export.export(trained_bundle.bundle, format="tflite", quantize="dynamic",
                           output=out, check_images=held_out)
    c = result.comparison
    assert c["float"]["bytes"] > 2 * c["quantized"]["bytes"] == 2 * out.stat().st_size, c
    assert c["size_ratio"] < 0.5


def test_a_file_export_replaced_is_never_missing(trained_bundle, held_out, tmp_path,
                                                 monkeypatch):
    """`export --force` over a .tflite moved the old file aside, then renamed the new one in:
    stopped between the two (Ctrl-C), the old export was deleted with the work folder and no
    new one was in place. The new file now replaces the old in one rename."""
    out = tmp_path / "m.tflite"
    export.export(trained_bundle.bundle, format="tflite", output=out, check_images=held_out)
    before = out.read_bytes()
    real = os.replace

    def interrupted(src, dst):
        if Path(dst) == out:  # the rename that puts the new export in place
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(export.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export(trained_bundle.bundle, format="tflite", output=out, force=True,
                      check_images=held_out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.meta.json"]
    # and the new file is on the disk before the rename (a power cut after it could leave
    # m.tflite empty, the old export gone), the folder's entries after
    monkeypatch.setattr(export.os, "replace", real)
    events = flushes(monkeypatch)
    export.export(trained_bundle.bundle, format="tflite", output=out, force=True,
                  check_images=held_out)
    assert out.stat().st_ino in flushed_before(events, out)
    assert ("fsync", tmp_path.stat().st_ino) in events[-3:]


def test_a_model_whose_outputs_are_not_numbers_is_not_exported(trained_bundle, held_out,
                                                               tmp_path):
    """A diverged bundle (train saves it with a warning): a float export was refused as "the
    export's outputs differ ... by nan", blaming the conversion, and a quantized one passed
    its check (NaN everywhere: the same class, 100% agreement, no sure image changed) and was
    written. Both are refused, saying why."""
    from conftest import diverged_copy

    broken = diverged_copy(trained_bundle.bundle, tmp_path / "diverged")
    for quantize in ("none", "float16"):
        out = tmp_path / "out" / f"{quantize}.tflite"
        with pytest.raises(TransferError) as caught:
            export.export(broken, format="tflite", quantize=quantize, output=out,
                          check_images=held_out)
        assert str(caught.value) == (
            f"{broken}'s own outputs are not numbers (NaN or infinite) on the {len(held_out)} "
            "check images (given images): its training diverged; train it again with a lower "
            "--learning-rate before exporting it (nothing was written)")
        assert not (tmp_path / "out").exists()


def test_tflite_file_alone_names_its_two_classes(trained_bundle, held_out, tmp_path):
    target = tmp_path / "m.tflite"
    export.export(trained_bundle.bundle, format="tflite", output=target, check_images=held_out)
    (tmp_path / "m.tflite.meta.json").unlink()  # the file alone
    with zipfile.ZipFile(target) as archive:  # TFLite's associated-files convention
        assert archive.read("labels.txt").decode().splitlines() == ["cats", "dogs"]
        inside = json.loads(archive.read("meta.json"))
    meta = names_from_flatbuffer(target)
    assert meta["class_names"] == inside["class_names"] == ["cats", "dogs"]
    assert meta["image_size"] == 224 and meta["output"] == "sigmoid"
    assert meta["export"] == {"format": "tflite", "quantize": "none",
                              "source_bundle": str(trained_bundle.bundle)}
    assert export.tflite_class_names(target) == ["cats", "dogs"]
    # the metadata does not disturb a plain interpreter: same outputs as the Keras model
    import keras

    x = raw_pixels(held_out)
    reference = keras.saving.load_model(trained_bundle.bundle / bundle.MODEL, compile=False)
    np.testing.assert_allclose(litert_outputs(target, x), reference(x, training=False),
                               atol=README_TOLERANCE["tflite"])


def test_a_tflite_export_keeps_only_its_input_and_output_names(trained_bundle, held_out,
                                                                 tmp_path, monkeypatch):
    """The converter names every tensor after its TensorFlow op; the export drops those names
    (the inputs' and outputs', and the signature, stay): a smaller file, the same numbers."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema

    lean = export.export(trained_bundle.bundle, format="tflite", output=tmp_path / "lean.tflite",
                         check_images=held_out).path
    monkeypatch.setattr(export, "drop_inner_names", lambda model: None)
    named = export.export(trained_bundle.bundle, format="tflite",
                          output=tmp_path / "named.tflite", check_images=held_out).path

    def names(path):
        graph = schema.ModelT.InitFromObj(
            schema.Model.GetRootAsModel(path.read_bytes(), 0)).subgraphs[0]
        ends = set(graph.inputs) | set(graph.outputs)
        return ([t.name for i, t in enumerate(graph.tensors) if i not in ends],
                [graph.tensors[i].name for i in sorted(ends)])

    inner, ends = names(lean)
    assert inner and all(name in (None, b"") for name in inner)
    named_inner, named_ends = names(named)
    assert all(named_inner) and ends == named_ends and all(ends)
    assert lean.stat().st_size < named.stat().st_size - 5000
    x = raw_pixels(held_out)
    np.testing.assert_array_equal(litert_outputs(lean, x), litert_outputs(named, x))
    runner_ = Interpreter(model_path=str(lean)).get_signature_runner("serving_default")
    (out,) = runner_(image=x[:1]).values()
    np.testing.assert_array_equal(out, litert_outputs(named, x[:1]))


def readme_device_snippet() -> str:
    """README's "In Python, with the plain LiteRT interpreter" code block."""
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    start = text.index("```python", text.index("with\nthe plain LiteRT interpreter"))
    return text[start + len("```python"):text.index("```", start + 3)]


def test_readmes_device_snippet_gives_what_predict_gives(trained_bundle, held_out, tmp_path):
    """README's code for running a .tflite in one's own program (LiteRT, Pillow, NumPy; no
    transfer), run as it is on a phone photo stored sideways (EXIF orientation 6): the label
    and probability `transfer predict` gives the same photo, the two-class output read right."""
    import subprocess
    import sys

    from transfer.predict import predict

    target = tmp_path / "cats-vs-dogs.tflite"
    export.export(trained_bundle.bundle, format="tflite", output=target, check_images=held_out)
    sideways = tmp_path / "photo.jpg"
    called = predict(held_out, model=trained_bundle.bundle).items
    dog = next(path for path, item in zip(held_out, called, strict=True)
               if item.label == "dogs")  # the second class: the one output's own
    with Image.open(dog) as upright:
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 clockwise to view"
        upright.rotate(90, expand=True).save(sideways, exif=exif, quality=95)
    # and a 16-bit grey scan of it (Pillow's convert("RGB") made one all white)
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / target.name).symlink_to(target)
    with Image.open(dog) as upright:
        grey = np.asarray(upright.convert("L"), "uint16") * 257
    Image.fromarray(grey).save(deep / "photo.jpg", format="PNG")  # a PNG, by its bytes
    # the same as a 16-bit PGM, which Pillow opens as mode "I", not "I;16": the snippet
    # made it all white (convert("RGB") clips), so its answer was another one
    pgm = tmp_path / "pgm"
    pgm.mkdir()
    (pgm / target.name).symlink_to(target)
    (pgm / "photo.jpg").write_bytes(f"P5\n{grey.shape[1]} {grey.shape[0]}\n65535\n".encode()
                                    + grey.astype(">u2").tobytes())
    # and a 12-bit scan in a 16-bit PNG (values to 4080): scaled from 4095, as predict does
    twelve = tmp_path / "twelve"
    twelve.mkdir()
    (twelve / target.name).symlink_to(target)
    Image.fromarray((grey // 257) * 16).save(twelve / "photo.jpg", format="PNG")
    code = readme_device_snippet()
    assert "cats-vs-dogs.tflite" in code and "photo.jpg" in code and "transfer" not in code
    for folder, photo in ((tmp_path, sideways), (deep, deep / "photo.jpg"),
                          (twelve, twelve / "photo.jpg"), (pgm, pgm / "photo.jpg")):
        done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        label, probability = done.stdout.split()
        expected = predict([photo], model=trained_bundle.bundle).items[0]
        assert label == expected.label == ("dogs" if photo == sideways else label)
        assert abs(float(probability) - expected.probability) < README_TOLERANCE["tflite"]
    assert expected.image["mode"] == "I"  # the PGM's
    with Image.open(deep / "photo.jpg") as png:
        assert png.mode.startswith("I;16")


@pytest.fixture(scope="module")
def flowers5(tmp_path_factory, mobilenet_weights):
    """A five-class bundle on genuine flower photos (tests/five_class.py)."""
    return five_class_bundle(tmp_path_factory)


def test_five_class_tflite_names_its_classes(flowers5, tmp_path):
    import keras

    names = flowers5.meta["class_names"]
    assert names == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    target = tmp_path / "flowers.tflite"
    result = export.export(flowers5.bundle, format="tflite", output=target)
    assert result.passed and result.n_images == 8
    assert names_from_flatbuffer(target)["class_names"] == names
    with zipfile.ZipFile(target) as archive:
        assert archive.read("labels.txt").decode().splitlines() == names
    files = [p for p, _ in split_images(bundle_data(flowers5) / "test", 2)]
    x = raw_pixels(files, size=96)
    reference = keras.saving.load_model(flowers5.bundle / bundle.MODEL, compile=False)
    expected = np.asarray(reference(x, training=False))
    actual = litert_outputs(target, x)
    assert actual.shape == (len(files), 5)
    np.testing.assert_allclose(actual, expected, atol=README_TOLERANCE["tflite"])
    np.testing.assert_allclose(actual.sum(axis=1), 1.0, rtol=1e-5)
    # what a user of the file alone does: the name of each output column
    labels = [names[i] for i in actual.argmax(axis=1)]
    assert labels == [names[i] for i in expected.argmax(axis=1)]


def test_converting_leaves_the_callers_root_logger_alone(tmp_path):
    """TensorFlow's SavedModel export logs through absl, which gave the root logger a stderr
    handler: a program's own logging.basicConfig(level=...) after an export (or a first
    training, which converts its base) then did nothing."""
    import subprocess
    import sys

    from conftest import REPO

    script = f"""
import logging
from pathlib import Path
from transfer.tf import keras
from transfer import engines, export
model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
work = Path({str(tmp_path)!r})
export._tflite(model, work / "m.tflite", work)
engines.convert(model, 2, work / "e.tflite")
print("ROOT", logging.getLogger().handlers)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ROOT []"
    assert (tmp_path / "m.tflite").is_file() and (tmp_path / "e.tflite").is_file()


def test_an_export_through_models_latest_names_the_bundle_not_the_link(trained_bundle, held_out,
                                                                       tmp_path, monkeypatch):
    """`export --model models/latest` recorded "models/latest" as its source bundle, in the
    sidecar and inside the .tflite: a link that moves on to the next bundle trained."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(trained_bundle.bundle, models / "cats-1")
    (models / "latest").symlink_to("cats-1")
    monkeypatch.chdir(tmp_path)
    result = export.export("models/latest", format="tflite",
                           check_images=[held_out[0]], output=tmp_path / "m.tflite")
    sidecar = json.loads(result.meta_path.read_text(encoding="utf-8"))
    assert sidecar["export"]["source_bundle"] == "models/cats-1"
    with zipfile.ZipFile(result.path) as packed:  # the metadata inside the .tflite
        inside = json.loads(packed.read("meta.json"))
    assert inside["export"]["source_bundle"] == "models/cats-1"


def test_labels_txt_keeps_one_line_per_output():
    """A class folder named with a line break ("a,b\\nc"): labels.txt gave it two lines, and
    every label after it belonged to the next output. Line N is now output N."""
    text = export.labels_text(["-rf", "a,b\nc", "x\ry", "chi\udce9ns", "玫瑰"])
    lines = text.split(b"\n")[:-1]
    assert lines == [b"-rf", b"a,b\\nc", b"x\\ry", b"chi\xe9ns", "玫瑰".encode()]


def test_a_windows_path_is_not_taken_for_a_pattern(monkeypatch):
    """Every Windows path holds its separator, a backslash, which TensorFlow's glob on POSIX
    reads as an escape: counted as a pattern there, every export and conversion on Windows
    went through a symbolic link, which needs Developer Mode or admin rights there."""
    from transfer import files

    assert files.tf_safe("/home/ana/proj/models") and not files.tf_safe("/home/ana/a\\b")
    monkeypatch.setattr(files.os, "sep", "\\")
    monkeypatch.setattr(files.os, "altsep", "/")
    assert files.tf_safe(r"C:\Users\ana\proj\models\b1\export")
    assert not files.tf_safe(r"C:\Users\ana\proj [v1]\export")
