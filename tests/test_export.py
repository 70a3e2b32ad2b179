"""transfer export: Keras, SavedModel and TFLite round trips on real photos, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import split_images
from typer.testing import CliRunner

from transfer import bundle, export, images
from transfer.cli import app
from transfer.errors import TransferError

runner = CliRunner()


@pytest.fixture(scope="module")
def held_out(small_split):
    return [p for p, _ in split_images(small_split / "test", 3)]


def _keras_outputs(bundle_dir, files):
    model, meta = bundle.load(bundle_dir)
    x = np.stack([images.model_input(p, meta)[0] for p in files])
    return np.asarray(model.predict(x, verbose=0)), x


@pytest.mark.parametrize("fmt", ["keras", "savedmodel", "tflite"])
def test_round_trip_on_real_photos(fmt, trained_bundle, held_out, tmp_path):
    target = tmp_path / {"keras": "m.keras", "savedmodel": "sm", "tflite": "m.tflite"}[fmt]
    result = export.export(trained_bundle.bundle, fmt, target, check_images=held_out)
    assert result.passed and result.max_abs_diff <= export.TOLERANCE[fmt]
    assert result.n_images == 6 and target.exists()
    meta = json.loads(result.meta_path.read_text())
    assert meta["class_names"] == ["cats", "dogs"] and meta["export"]["format"] == fmt
    # independently of export's own check: run the exported file on the held-out photos
    expected, x = _keras_outputs(trained_bundle.bundle, held_out)
    actual = {"keras": export._run_keras, "savedmodel": export._run_savedmodel,
              "tflite": export._run_tflite}[fmt](target, x)
    assert np.max(np.abs(actual.reshape(expected.shape) - expected)) <= export.TOLERANCE[fmt]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(TransferError, match="already exists; use --force"):
        export.export(trained_bundle.bundle, fmt, target, check_images=held_out)


def test_default_check_images_and_cli(trained_bundle, tmp_path):
    out = tmp_path / "cats.tflite"
    result = runner.invoke(app, ["export", "--model", str(trained_bundle.bundle), "--format",
                                 "tflite", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output and "8 images" in result.output
    assert out.stat().st_size > 100_000
    assert (tmp_path / "cats.tflite.meta.json").exists()


def test_failed_check_writes_nothing(trained_bundle, held_out, tmp_path, monkeypatch):
    monkeypatch.setitem(export.TOLERANCE, "tflite", 0.0)  # float32 TFLite never matches exactly
    target = tmp_path / "m.tflite"
    with pytest.raises(TransferError, match="differ from the Keras model's"):
        export.export(trained_bundle.bundle, "tflite", target, check_images=held_out)
    assert list(tmp_path.iterdir()) == []


def test_export_refusals(trained_bundle, held_out, tmp_path):
    with pytest.raises(TransferError, match="unknown format 'onnx'"):
        export.export(trained_bundle.bundle, "onnx", tmp_path / "m.onnx")
    with pytest.raises(TransferError, match="must end in .keras"):
        export.export(trained_bundle.bundle, "keras", tmp_path / "m.h5", check_images=held_out)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(TransferError, match="not a SavedModel"):
        export.export(trained_bundle.bundle, "savedmodel", folder, force=True,
                      check_images=held_out)
    assert (folder / "notes.txt").read_text() == "keep me"
