"""The registry: every base builds, is frozen, and its Preprocess layer is Keras's preprocessing."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from transfer import bases
from transfer.errors import TransferError
from transfer.training import HParams, _graphs


@pytest.mark.parametrize("name", list(bases.BASES))
def test_every_base_builds_and_runs_one_batch_frozen(name):
    base = bases.get(name)
    size = max(base.min_size, 32)
    base_model = bases.build(base, size, weights="none")
    base_model.trainable = not base.pretrained
    graphs = _graphs(base, base_model, size, 3, HParams(dense=8))
    batch = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probs = np.asarray(graphs["full"](batch, training=False))
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    if base.pretrained:
        assert base_model.trainable_weights == []
        names = [w.path for w in graphs["full"].trainable_weights]
        assert names and all(n.startswith(("dense", "predictions")) for n in names)
        base_model.get_layer(base.last_conv)  # Grad-CAM's layer exists


@pytest.mark.parametrize("name", [n for n, b in bases.BASES.items() if b.pretrained])
def test_preprocess_layer_matches_keras_preprocess_input(name):
    base = bases.get(name)
    module = importlib.import_module(f"keras.applications.{base.module}")
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = module.preprocess_input(x.copy())
    layer = bases.preprocess_layer_class()(base.preprocess)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(bases.preprocess_numpy(base.preprocess)(x), expected, rtol=1e-5,
                               atol=1e-4)


def test_registry_errors_and_weight_files():
    with pytest.raises(TransferError, match="unknown base 'resnet'; known bases: inception"):
        bases.get("resnet")
    with pytest.raises(TransferError, match="must be one of"):
        bases.check_alpha(bases.get("mobilenet"), 0.3)
    with pytest.raises(TransferError, match="below the minimum"):
        bases.build(bases.get("inception"), 64, weights="none")
    assert bases.get("mobilenet").weight_file(0.25) == "mobilenet_2_5_224_tf_no_top.h5"
    assert bases.get("inception").weight_file(include_top=True) == \
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"


def test_genuine_mobilenet_weights_are_found_in_keras_home(mobilenet_weights):
    base = bases.get("mobilenet")
    assert bases.cached_weights(base, 0.25) == mobilenet_weights
    source, digest = bases.weights_fingerprint(base, "imagenet", 0.25, 224, 0)
    assert source == "imagenet" and digest == bases.sha256(mobilenet_weights)


def test_missing_imagenet_weights_name_the_file(tmp_path):
    base = bases.get("mobilenet")
    assert bases.cached_weights(base, 0.5) is None  # not among the shared files
    with pytest.raises(TransferError) as info:
        bases.build(base, 224, alpha=0.5, weights="imagenet")
    text = str(info.value)
    assert "mobilenet_5_0_224_tf_no_top.h5" in text and "--weights none" in text
