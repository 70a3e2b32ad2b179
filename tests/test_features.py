"""The feature pass: parallel decoding through the one reader, then the engine, in order;
augmented copies seeded; unreadable files left out and listed; the cache keeps all of it."""

from __future__ import annotations

import numpy as np
import pytest

from transfer import engines, features, pipelines
from transfer.errors import TransferError
from transfer.settings import Augment

SIZE = 96


@pytest.fixture(scope="module")
def raw_features(mobilenet_weights):
    """Genuine MobileNet-0.25 from raw pixels (0-255) to pooled features, at 96 px."""
    from transfer import bases
    from transfer.tf import keras

    base = keras.applications.MobileNet(alpha=0.25, include_top=False, weights="imagenet",
                                        input_shape=(SIZE, SIZE, 3))
    raw = keras.Input((SIZE, SIZE, 3))
    x = bases.preprocess_layer("tf")(raw)
    return keras.Model(raw, keras.layers.GlobalAveragePooling2D()(base(x, training=False)))


@pytest.fixture
def photos(real_photos, tmp_path):
    """45 real JPEGs (cats and dogs alternating) on disk, with labels."""
    paths, labels = [], []
    for i in range(45):
        cls = ("cats", "dogs")[i % 2]
        name, data = real_photos[cls][i // 2]
        path = tmp_path / cls / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
        labels.append(i % 2)
    return paths, np.array(labels)


def sequential(model, paths, batch_size=features.PASS_BATCH):
    """The reference: each file through the one reader, in order, then the TF model."""
    pixels = np.stack([pipelines.read_rgb(p, SIZE) for p in paths]).astype("float32")
    return np.concatenate([model.predict_on_batch(pixels[i:i + batch_size])
                           for i in range(0, len(pixels), batch_size)])


def test_the_parallel_pass_gives_the_sequential_features_in_order(raw_features, photos):
    paths, labels = photos
    expected = sequential(raw_features, paths)
    engine = engines.TFEngine(raw_features)
    for threads in (2, 4):
        result = features.run_pass(paths, labels, SIZE, engine, threads=threads)
        assert result.features.shape == (45, 256) and result.images == 45
        np.testing.assert_allclose(result.features, expected, atol=1e-5)
        np.testing.assert_array_equal(result.labels, labels)
        assert result.skipped == [] and result.engine == "tf" and result.seconds > 0
    assert np.abs(expected).max() > 0.5, "genuine weights: real features"


def test_augmented_copies_repeat_with_their_seed_and_differ_between_seeds(raw_features,
                                                                          photos):
    paths, labels = photos
    engine = engines.TFEngine(raw_features)
    plain = features.run_pass(paths, labels, SIZE, engine).features
    augment = Augment()

    def copy(seed):
        return features.run_pass(paths, labels, SIZE, engine, augment=augment, seed=seed,
                                 threads=3).features

    first, again, other = copy(42), copy(42), copy(1042)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other, atol=1e-3)
    assert not np.allclose(first, plain, atol=1e-3)
    # an augmentation that changes nothing gives the plain features
    still = Augment(rotation=0, shift=0, shear=0, zoom=0, flip=False)
    np.testing.assert_allclose(features.run_pass(paths, labels, SIZE, engine, augment=still,
                                                 seed=3).features, plain, atol=1e-5)


def test_unreadable_files_are_left_out_and_listed(raw_features, photos, tmp_path):
    paths, labels = photos
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(paths[3].read_bytes()[:1500])  # a truncated JPEG: its header is fine
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    gone = tmp_path / "gone.jpg"
    mixed = paths[:3] + [cut] + paths[3:33] + [text, gone] + paths[33:]
    mixed_labels = np.concatenate([labels[:3], [1], labels[3:33], [0, 1], labels[33:]])
    result = features.run_pass(mixed, mixed_labels, SIZE, engines.TFEngine(raw_features))
    assert [s["file"] for s in result.skipped] == [str(cut), str(text), str(gone)]
    assert all(s["reason"] for s in result.skipped)
    assert "no such file" in result.skipped[2]["reason"]
    np.testing.assert_allclose(result.features, sequential(raw_features, paths), atol=1e-5)
    np.testing.assert_array_equal(result.labels, labels)


def test_the_cache_keeps_features_skipped_files_and_the_engine(tmp_path, monkeypatch):
    """An entry gives back what was stored (features, labels, skipped files, engine; no time
    spent); a damaged entry reads as a miss and is removed, so the shard is computed again."""
    first = features.Pass(np.ones((3, 4), "float32"), np.array([0, 1, 1]),
                          [{"file": "x.jpg", "reason": "corrupt"}], 1.5, 3, "tflite")
    path = tmp_path / "k.npz"
    assert features.load_entry(path) is None
    assert features.store_quietly(path, first, None)
    second = features.load_entry(path)
    assert second.seconds == 0.0 and second.images == 0
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.skipped == first.skipped and second.engine == "tflite"
    labels_only = features.load_entry(path, with_features=False)
    np.testing.assert_array_equal(labels_only.labels, first.labels)
    # one that cannot be read now (another user's, in a shared cache; too many open files) is
    # no damage: a miss, kept (it was removed)
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "load", refused)
    assert features.load_entry(path) is None and path.exists()
    monkeypatch.undo()
    assert features.load_entry(path).engine == "tflite"
    path.write_bytes(b"damaged")
    assert features.load_entry(path) is None and not path.exists()
    # cut short (a copy interrupted, a power loss before the rename reached the disk)
    whole = np.ones((400, 256), "float32")
    assert features.store_quietly(path, features.Pass(whole, np.zeros(400), [], 1.0, 400,
                                                      "tf"), None)
    path.write_bytes(path.read_bytes()[:100_000])
    assert features.load_entry(path) is None and not path.exists()
    # one byte of the features flipped: the zip's CRC check fails when they are read
    assert features.store_quietly(path, features.Pass(whole, np.zeros(400), [], 1.0, 400,
                                                      "tf"), None)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert features.load_entry(path) is None and not path.exists()
    # an entry larger than the memory budget, opened without its features: their CRC is
    # checked as it is opened (streamed), so the shard is computed again; the run failed
    # when the features were streamed later ("damaged ... run again")
    path.write_bytes(bytes(data))
    assert features.load_entry(path, with_features=False) is None and not path.exists()
    # damaged after it was opened: streaming it stops with one line and removes it
    path.write_bytes(bytes(data))
    shards = features.FeatureSet([path], [400], np.zeros(400), 256)
    with pytest.raises(TransferError, match="is damaged .* it is removed: run again"):
        next(shards.chunks())
    assert not path.exists()


def test_a_cache_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    """A read-only photo folder (where the cache lives) must not lose the pass just made."""
    computed = features.Pass(np.ones((3, 4), "float32"), np.array([0, 1, 0]), [], 1.5, 3,
                             "tf")

    def refuse(path, result):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(features, "store", refuse)
    warnings = []
    assert not features.store_quietly(tmp_path / "cache" / "key.npz", computed,
                                      warnings.append)
    assert len(warnings) == 1 and "Permission denied" in warnings[0]
    assert str(tmp_path / "cache") in warnings[0]


def test_strong_random_transforms_fill_as_nearest_never_black(photos):
    """The frozen route's transforms fill what comes from outside the photo with its nearest
    edge, as ImageDataGenerator does: a strong rotation, shift and zoom reached past the half
    side the photo was padded by, and corners came out black (17% of a photo at rotation 90,
    shift and zoom 0.5). A uniform grey stays uniform whatever the draw; a real photo without
    dark pixels gets none."""
    strong = Augment(rotation=90, shift=0.5, shear=30, zoom=0.5, flip=True)
    grey = np.full((64, 64, 3), 128, "uint8")
    for seed in range(200):
        assert (features.random_affine(grey, strong, np.random.default_rng(seed)) == 128).all()
    # a real photo with no dark pixel: none appears
    photo = next(p for p in (pipelines.read_rgb(path, 64).astype("uint8") for path in photos[0])
                 if p.min() > 10)
    for seed in range(50):
        moved = features.random_affine(photo, strong, np.random.default_rng(seed))
        assert moved.min() >= photo.min() - 1, seed
    # nearest, not mirrored: a left-to-right ramp shifted and zoomed (no rotation, shear or
    # flip) still rises left to right, its edge columns repeated; a mirror fill (which keeps
    # both checks above) turns it back down
    ramp = np.repeat(np.repeat(np.linspace(20, 235, 64).astype("uint8")[None, :, None], 64,
                               axis=0), 3, axis=2)
    moved_only = Augment(rotation=0, shift=0.5, shear=0, zoom=0.5, flip=False)
    for seed in range(50):
        moved = features.random_affine(ramp, moved_only, np.random.default_rng(seed))
        assert (np.diff(moved[..., 0].astype(int), axis=1) >= -1).all(), seed
