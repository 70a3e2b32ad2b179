"""transfer explain: Grad-CAM on the real bundle, for every registered base, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from transfer import bases, bundle, explain, images
from transfer.cli import app
from transfer.errors import TransferError
from transfer.pipelines import Augment
from transfer.training import HParams, train

runner = CliRunner()


@pytest.fixture()
def dog_photo(real_photos, tmp_path):
    path = tmp_path / "dog.jpg"
    path.write_bytes(real_photos["dogs"][7][1])
    return path


def test_gradcam_on_a_real_photo(trained_bundle, dog_photo, tmp_path):
    result = explain.explain(dog_photo, model=trained_bundle.bundle)
    assert result.png == tmp_path / "dog.gradcam.png"
    assert result.layer == bases.get("mobilenet").last_conv == "conv_pw_13_relu"
    assert result.heatmap.shape == (7, 7)  # 224 px / 32
    assert result.heatmap.min() >= 0 and result.heatmap.max() == pytest.approx(1.0)
    assert result.heatmap.std() > 0.05  # it points somewhere
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    with Image.open(result.png) as picture:
        assert picture.format == "PNG" and picture.width == 800
    # the probabilities are the bundle model's own
    model, meta = bundle.load(trained_bundle.bundle)
    array, _ = images.model_input(dog_photo, meta)
    p_dog = float(model.predict(array[None], verbose=0)[0, 0])
    assert result.probabilities["dogs"] == pytest.approx(p_dog, abs=1e-5)
    # the other class has its own, different map
    other = "cats" if result.label == "dogs" else "dogs"
    second = explain.explain(dog_photo, model=trained_bundle.bundle, class_name=other,
                             output=tmp_path / "other.png")
    assert second.label == other and not np.allclose(second.heatmap, result.heatmap)
    with pytest.raises(TransferError, match="already exists; use --force"):
        explain.explain(dog_photo, model=trained_bundle.bundle)
    with pytest.raises(TransferError, match="unknown class 'horses'"):
        explain.explain(dog_photo, model=trained_bundle.bundle, class_name="horses",
                        write=False)


def test_gradcam_cli(trained_bundle, dog_photo, tmp_path):
    out = tmp_path / "pictures" / "heat.png"
    result = runner.invoke(app, ["explain", str(dog_photo), "--model",
                                 str(trained_bundle.bundle), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "conv_pw_13_relu" in result.output and out.exists()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"text")
    result = runner.invoke(app, ["explain", str(bad), "--model", str(trained_bundle.bundle)])
    assert result.exit_code == 1 and "not an image" in result.output
    assert "Traceback" not in result.output


def test_gradcam_picture_in_a_data_folder_is_refused_by_training(tiny_split, dog_photo,
                                                                 tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_split, data)
    (data / "train/dogs/dog.gradcam.png").write_bytes(dog_photo.read_bytes())
    with pytest.raises(TransferError, match="Grad-CAM picture"):
        train(HParams(data_dir=data, base="scratch", image_size=32, epochs=1,
                      models_dir=tmp_path / "models"))


@pytest.mark.parametrize("name", [n for n in bases.BASES])
def test_gradcam_for_every_registered_base(name, tiny_split, dog_photo, tmp_path):
    """Each base's last convolutional layer (from the registry) is found inside the saved
    bundle and traced; random weights keep it fast (genuine ones are tested above)."""
    spec = bases.get(name)
    result = train(HParams(data_dir=tiny_split, base=name, weights="none",
                           image_size=max(spec.min_size, 64 if name != "inception" else 75),
                           epochs=1, augment=Augment(enabled=False), feature_cache=False,
                           models_dir=tmp_path / "models", output=tmp_path / name))
    model, meta = bundle.load(result.bundle)
    assert explain.target_layer(model, meta) == spec.last_conv
    heat = explain.explain(dog_photo, model=result.bundle, write=False)
    assert heat.layer == spec.last_conv
    assert heat.heatmap.ndim == 2 and np.all(np.isfinite(heat.heatmap))
    assert 0 <= heat.heatmap.min() and heat.heatmap.max() <= 1
