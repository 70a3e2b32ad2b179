"""Input pipelines over a folder of class subfolders, with one set of augmentation settings.

- ``generator``: ``tf.keras.preprocessing.image.ImageDataGenerator.flow_from_directory`` with the
  base's preprocessing as ``preprocessing_function`` (the classic Keras recipe).
- ``tfdata``: ``keras.utils.image_dataset_from_directory`` + Keras augmentation layers, parallel
  map and prefetch.

Both yield (preprocessed images, labels) batches. Labels are float 0/1 for two classes
(sigmoid head) and integer indices for more (softmax head).
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

from transfer.bases import preprocess_numpy
from transfer.constants import GRADCAM_SUFFIX  # noqa: F401  (what `transfer explain` writes)
from transfer.errors import TransferError
from transfer.settings import PIPELINES, Augment  # noqa: F401  (pipelines.Augment, for callers)

# The suffixes both Keras pipelines read (image_dataset_from_directory's allow-list; a narrower
# set than transfer.constants.IMAGE_SUFFIXES, which Pillow opens): the feature cache lists the
# same files the pipelines yield.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def class_names(directory: Path) -> list[str]:
    """Sorted class subfolder names; errors for a missing/empty folder or an empty class."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TransferError(f"no data folder {directory}: run `transfer fetch-data` first")
    names = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise TransferError(f"{directory} has no class subfolders: run `transfer fetch-data` "
                            "first, or give a folder with one subfolder per class")
    if len(names) < 2:
        raise TransferError(f"{directory} has one class ({names[0]}); a classifier needs at "
                            "least two class subfolders")
    for name in names:
        if not image_files(directory / name):
            raise TransferError(f"class folder {directory / name} has no images")
    return names


def image_files(folder: Path) -> list[Path]:
    """The images under ``folder``, sorted. A Grad-CAM picture there is an error: the Keras
    pipelines would train on it as a photo of the class."""
    files = sorted(p for p in Path(folder).rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for path in files:
        if path.name.endswith(GRADCAM_SUFFIX):
            raise TransferError(f"{path} is a Grad-CAM picture (transfer explain), not a photo "
                                "of its class; move it out of the data folder")
    return files


def listing(directory: Path, names: list[str]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every image, in pipeline order: the cache key."""
    rows = []
    for name in names:
        for path in image_files(Path(directory) / name):
            st = path.stat()
            rows.append((path.relative_to(directory).as_posix(), st.st_size, st.st_mtime_ns))
    return rows


def check_readable(directory: Path, names: list[str]) -> None:
    """Every image must open: one clear error naming the first that does not."""
    from PIL import Image

    for name in names:
        for path in image_files(Path(directory) / name):
            try:
                with Image.open(path) as image:
                    image.load()
            except Exception as exc:
                raise TransferError(f"unreadable image {path}: {exc}") from exc


def _class_mode(names: list[str]) -> str:
    return "binary" if len(names) == 2 else "sparse"


def generator_flow(directory: Path, names: list[str], size: int, preprocess: str,
                   batch_size: int, augment: Augment | None, shuffle: bool, seed: int):
    """An ImageDataGenerator iterator (a Keras PyDataset)."""
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    settings = {}
    if augment is not None and augment.enabled:
        settings = dict(rotation_range=augment.rotation, width_shift_range=augment.shift,
                        height_shift_range=augment.shift, shear_range=augment.shear,
                        zoom_range=augment.zoom, horizontal_flip=augment.flip,
                        fill_mode="nearest")
    generator = ImageDataGenerator(preprocessing_function=preprocess_numpy(preprocess), **settings)
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N images belonging to ..."
        return generator.flow_from_directory(
            str(directory), target_size=(size, size), classes=list(names),
            class_mode=_class_mode(names), batch_size=batch_size, shuffle=shuffle, seed=seed,
            interpolation="bilinear")


def augmentation_layers(augment: Augment, seed: int):
    """Keras layers equivalent to the ImageDataGenerator settings of ``augment``."""
    from transfer.tf import keras

    layers = keras.layers
    stack = []
    if augment.flip:
        stack.append(layers.RandomFlip("horizontal", seed=seed))
    if augment.rotation:
        stack.append(layers.RandomRotation(augment.rotation / 360.0, fill_mode="nearest",
                                           seed=seed + 1))
    if augment.shift:
        stack.append(layers.RandomTranslation(augment.shift, augment.shift, fill_mode="nearest",
                                              seed=seed + 2))
    if augment.shear:
        factor = math.tan(math.radians(augment.shear))
        stack.append(layers.RandomShear(x_factor=factor, y_factor=0.0, fill_mode="nearest",
                                        seed=seed + 3))
    if augment.zoom:
        stack.append(layers.RandomZoom(augment.zoom, fill_mode="nearest", seed=seed + 4))
    return keras.Sequential(stack, name="augmentation")


def tfdata_dataset(directory: Path, names: list[str], size: int, preprocess: str,
                   batch_size: int, augment: Augment | None, shuffle: bool, seed: int):
    """A batched, prefetched tf.data pipeline."""
    from transfer.bases import preprocess_layer
    from transfer.tf import keras, tf

    binary = len(names) == 2
    dataset = keras.utils.image_dataset_from_directory(
        str(directory), labels="inferred", label_mode="binary" if binary else "int",
        class_names=list(names), batch_size=batch_size, image_size=(size, size),
        shuffle=shuffle, seed=seed, interpolation="bilinear", verbose=False)
    prep = preprocess_layer(preprocess)
    if augment is not None and augment.enabled:
        aug = augmentation_layers(augment, seed)

        def transform(x, y):
            return prep(aug(x, training=True)), y
    else:
        def transform(x, y):
            return prep(x), y
    autotune = tf.data.AUTOTUNE
    return dataset.map(transform, num_parallel_calls=autotune).prefetch(autotune)


def make(pipeline: str, directory: Path, names: list[str], size: int, preprocess: str,
         batch_size: int, augment: Augment | None, shuffle: bool, seed: int):
    if pipeline == "generator":
        return generator_flow(directory, names, size, preprocess, batch_size, augment, shuffle,
                              seed)
    if pipeline == "tfdata":
        return tfdata_dataset(directory, names, size, preprocess, batch_size, augment, shuffle,
                              seed)
    raise TransferError(f"unknown pipeline {pipeline!r}; choose {' or '.join(PIPELINES)}")


def batches(data, n_steps: int):
    """The batches of a pipeline: indexed for a PyDataset (ImageDataGenerator), iterated for
    a tf.data.Dataset."""
    if hasattr(data, "__getitem__"):
        return (data[i] for i in range(n_steps))
    return iter(data)


def steps(n_images: int, batch_size: int) -> int:
    return max(1, math.ceil(n_images / batch_size))
