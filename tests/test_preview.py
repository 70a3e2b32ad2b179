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
    flipped = []
    for i, photo in enumerate(photos):
        for tile in tiles[i]:
            assert np.array_equal(tile, photo) or np.array_equal(tile, photo[:, ::-1])
            flipped.append(not np.array_equal(tile, photo))
    # and it is applied: a preview that never transformed passed the check above (each of
    # the 16 tiles flipped or not at random: both are among them)
    assert any(flipped) and not all(flipped), flipped


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
    # named by the run's class names where given (a row labelled "0: cat.3.jpg" said nothing)
    named = pick_photos(samples, 4, seed=1, class_names=["cats", "dogs"])
    assert named == [(path, ["cats", "dogs"][int(label)]) for path, label in chosen]


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


def test_preview_only_draws_what_training_draws_and_trains_nothing(trained_bundle, small_split,
                                                                   tmp_path):
    """README's course step 2, "change one and look again": the grid came only at the end of
    a whole training run (11-13 min for the CNN from scratch). `training.preview` (the CLI's
    `train --preview-only`) draws the very grid the run draws, pixel for pixel (the trained
    bundle's own augment-preview.png, its saved settings on a copy of its photos), writes no
    bundle (an existing --output is not its business), and replaces its picture only with
    force."""
    import json
    import shutil

    from transfer.settings import TrainSettings
    from transfer.training import preview

    data = tmp_path / "data"
    shutil.copytree(small_split, data, ignore=shutil.ignore_patterns(".cache"))
    saved = json.loads((trained_bundle.bundle / "settings.json").read_text(encoding="utf-8"))
    models = tmp_path / "models"
    settings = TrainSettings(**{**saved, "data_dir": str(data), "train_dir": str(data / "train"),
                                "validate_dir": str(data / "validate"),
                                "models_dir": str(models), "output": str(trained_bundle.bundle)})
    path = preview(settings)
    assert path == data / "augment-preview.png"
    with Image.open(path) as drawn, Image.open(trained_bundle.bundle / path.name) as trained:
        assert np.array_equal(np.asarray(drawn), np.asarray(trained))
    assert not models.exists()
    with pytest.raises(TransferError, match="augment-preview.png already exists; use --force"):
        preview(settings.replace(augment=Augment(rotation=40)))
    with Image.open(preview(settings.replace(augment=Augment(rotation=40), force=True))) as new:
        assert not np.array_equal(np.asarray(new), np.asarray(drawn))


def test_preview_only_from_the_cli_is_quiet_and_quick_to_refuse(tiny_split, tmp_path):
    """`transfer train --base scratch --preview-only` in a process of its own: exit 0, the
    picture, no models folder, and none of TensorFlow's C++ start-up lines (the preview's
    ImageDataGenerator import was the process's first of TensorFlow, outside the quiet one);
    run again, refused in one line before TensorFlow loads."""
    import os
    import shutil
    import subprocess
    import sys

    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    command = [sys.executable, "-m", "transfer", "train", "--base", "scratch", "--preview-only",
               "--rotation", "30", "--data-dir", str(data), "--models-dir",
               str(tmp_path / "models")]
    env = {k: v for k, v in os.environ.items() if k != "TRANSFER_VERBOSE"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (data / "augment-preview.png").is_file() and not (tmp_path / "models").exists()
    said = done.stdout + done.stderr
    assert "nothing trained: --preview-only" in said
    assert not any(noise in said for noise in ("cuda", "oneDNN", "absl", "I0000")), said
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                           cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [  # the option given, not --preview-augment
        f"error: --preview-only: {data / 'augment-preview.png'} already exists; use --force "
        "to replace it"]


def test_preview_only_checks_nothing_it_does_not_write_and_keeps_the_random_state(tiny_split,
                                                                                 tmp_path):
    """A preview writes its picture alone. `--data-dir . --output ../out` was refused ("
    --models-dir models is inside the data folder"), as a training run without --output would
    be, and an existing --output or a models folder nobody may write in would have been too;
    and a program's seeded Python random sequence moved (TensorFlow's first import draws
    from it), where train gives it back. In a process of its own, as a notebook's first call."""
    import shutil
    import subprocess
    import sys

    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out/meta.json").write_text("{}")  # a bundle there: not replaced, not refused
    script = (
        "import random\n"
        "from transfer.settings import TrainSettings\n"
        "from transfer.training import preview\n"
        "random.seed(1); expected = random.random(); random.seed(1)\n"
        "path = preview(TrainSettings(base='scratch', data_dir='.', output='../out'))\n"
        "print(path, random.random() == expected)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["augment-preview.png", "True"]
    assert (data / "augment-preview.png").is_file() and not (data / "models").exists()
    assert (tmp_path / "out/meta.json").read_text() == "{}"
