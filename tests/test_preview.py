"""The augmentation preview: a grid of real training photos next to their augmented versions,
drawn by the transforms the training pipelines apply, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from transfer import pipelines
from transfer.errors import TransferError
from transfer.preview import augmented_versions, pick_photos, preview_augment
from transfer.settings import Augment


def _photos(tiny_split, n=4, size=64):
    chosen = pick_photos(tiny_split / "train", n, seed=1)
    return np.stack([pipelines.read_rgb(path, size) for path, _ in chosen])


def test_photos_are_picked_over_the_classes_and_seeded(tiny_split):
    chosen = pick_photos(tiny_split / "train", 6, seed=3)
    assert [name for _, name in chosen] == ["cats", "dogs"] * 3
    assert pick_photos(tiny_split / "train", 6, seed=3) == chosen
    assert pick_photos(tiny_split / "train", 6, seed=4) != chosen


@pytest.mark.parametrize("pipeline", ["generator", "tfdata", "features"])
def test_augmented_tiles_differ_from_the_photos_and_between_seeds(tiny_split, pipeline):
    photos = _photos(tiny_split)
    one = augmented_versions(photos, Augment(), 3, seed=7, pipeline=pipeline)
    assert one.shape == (4, 3, 64, 64, 3) and one.dtype == np.uint8
    for i in range(len(photos)):
        for k in range(3):
            assert np.abs(one[i, k].astype(int) - photos[i]).mean() > 1.0
        assert not np.array_equal(one[i, 0], one[i, 1])
    other = augmented_versions(photos, Augment(), 3, seed=8, pipeline=pipeline)
    assert not np.array_equal(one, other)
    if pipeline != "tfdata":  # per-image numpy generators: the same seed, the same tiles
        np.testing.assert_array_equal(
            one, augmented_versions(photos, Augment(), 3, seed=7, pipeline=pipeline))


def test_the_tiles_are_what_training_draws(tiny_split):
    """The preview uses the training route's own transform: a horizontal flip alone gives
    the mirrored photo or the photo itself, nothing else."""
    photos = _photos(tiny_split)
    flip_only = Augment(rotation=0, shift=0, shear=0, zoom=0, flip=True)
    tiles = augmented_versions(photos, flip_only, 4, seed=2)
    for i, photo in enumerate(photos):
        for tile in tiles[i]:
            assert np.array_equal(tile, photo) or np.array_equal(tile, photo[:, ::-1])


def test_the_grid_has_a_row_per_photo_and_a_column_per_version(tiny_split, tmp_path):
    path = preview_augment(tiny_split / "train", Augment(rotation=40), 64,
                           tmp_path / "sub" / "augment.png", n=4, copies=3, seed=5)
    assert path == tmp_path / "sub" / "augment.png"
    with Image.open(path) as image:
        width, height = image.size
    # 4 columns (the photo, 3 versions) x 2.0 in, 4 rows x 2.1 in + a title, at 80 dpi
    assert (width, height) == (640, round((4 * 2.1 + 0.6) * 80))
    five = preview_augment(tiny_split / "train", Augment(), 64, tmp_path / "five.png", n=5,
                           copies=2)
    with Image.open(five) as image:
        assert image.size == (480, round((5 * 2.1 + 0.6) * 80))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["augment.png"]


def test_samples_are_picked_over_their_classes(tiny_split):
    samples = pipelines.samples_of(tiny_split / "train", ["cats", "dogs"])
    chosen = pick_photos(samples, 4, seed=1)
    assert [label for _, label in chosen] == ["0", "1", "0", "1"]
    assert chosen == pick_photos(samples, 4, seed=1) != pick_photos(samples, 4, seed=2)


def test_no_augmentation_shows_the_photos_and_a_list_of_files_works(tiny_split, tmp_path):
    files = [path for path, _ in pick_photos(tiny_split / "train", 2, seed=0)]
    path = preview_augment(files, Augment(enabled=False), 32, tmp_path / "off.png", n=2)
    assert path.is_file()


def test_nothing_readable_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(TransferError, match="no readable photo"):
        preview_augment([bad], Augment(), 32, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(TransferError, match="unknown pipeline"):
        augmented_versions(np.zeros((1, 8, 8, 3)), Augment(), 1, 0, pipeline="magic")


def test_a_photo_named_in_latin1_is_shown_not_a_crash_at_the_end_of_training(tiny_split,
                                                                               tmp_path):
    """Every train writes this preview into its bundle: a photo named in Latin-1 (an old
    camera's "caf\\xe9.jpg") among the photos shown ended the run with matplotlib's TypeError
    when the bundle was written. Any figure's text is now drawn with a replacement mark."""
    import os
    import shutil

    photo = next(path for path, _ in pick_photos(tiny_split / "train", 1, seed=0))
    (tmp_path / "p").mkdir()  # a short folder name: the label (cut at 24) keeps the photo's
    latin1 = os.fsdecode(bytes(tmp_path) + b"/p/caf\xe9.jpg")
    shutil.copy(photo, latin1)
    path = preview_augment([latin1], Augment(), 32, tmp_path / "latin1.png", n=1)
    with Image.open(path) as shown:
        assert shown.format == "PNG"
