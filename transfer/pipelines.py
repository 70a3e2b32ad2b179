"""Input pipelines over the images of a run, and the one reader every path uses.

The contract the training phases build on:

- ``read_rgb(path, size)``: the one reader of colour training images, (size, size, 3) uint8,
  exactly what ``transfer.images.model_input`` gives ``predict``/``evaluate``/``explain`` for a
  colour bundle of that size (EXIF orientation applied, transparency composited on white,
  CMYK/16-bit/grey converted, first frame of an animation, Pillow bilinear resize). Raises
  ``images.ImageError`` (with the reason) for a file that cannot be used.
- ``Sample(path, label)``: one image of the run; ``RunPlan.train`` / ``RunPlan.validate`` are
  lists of them (class folders under train/ and validate/, or one folder of class folders
  split in memory: ``RunPlan.split`` is "folders" or "in-memory").
- ``Skipped``: the unreadable files of a run (``RunPlan.skipped``). Whatever reads a sample and
  fails calls ``plan.skipped.add(path, reason)`` (thread-safe, once per file) and leaves that
  sample out; ``usable(samples, skipped)`` is what is left; ``check_enough(plan)`` raises one
  TransferError when a class is left with fewer than 2 usable images (or none to train on).
- ``make(pipeline, samples, names, size, preprocess, batch_size, augment, shuffle, seed,
  skipped)``: a pipeline over Samples (a folder is still accepted: its class folders are
  listed); ``for_plan(plan, "train"|"validate", augment, shuffle, seed)`` is the run's. Both
  pipelines read through ``read_rgb`` and yield (preprocessed images, labels) batches;
  unreadable files are recorded in ``skipped`` and left out of their batch.

What a data folder holds: ``class_names`` (sorted subfolders; hidden, system and ``__MACOSX``
folders are never classes; one class or an empty class is refused) and ``image_files`` (every
suffix of ``constants.IMAGE_SUFFIXES``, at any depth under the class folder, and a file named
as HEIC or raw that Pillow opens, a JPEG renamed .heic; hidden and system files ignored
silently; ``unread_photos``: the HEIC and raw photos left out, and said). ``probe_all``
records the files that are not images by their header (cheap) before a split;
``split_in_memory`` is fetch-data's seeded stratified split of the same folder;
``decode_all`` reads every sample once (before an end-to-end fit).

- ``generator``: a ``keras.utils.PyDataset`` over Samples, read by a small thread pool, with
  ImageDataGenerator's random transforms (the classic Keras recipe).
- ``tfdata``: ``tf.data.Dataset`` over paths and labels, ``tf.numpy_function(read_rgb)``, Keras
  augmentation layers, prefetch.

Labels are float 0/1 for two classes (sigmoid head) and integer indices for more (softmax head).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import images
from transfer.bases import preprocess_numpy
from transfer.constants import (  # noqa: F401  (IMAGE_SUFFIXES: pipelines.IMAGE_SUFFIXES)
    IMAGE_SUFFIXES,
    STABLE_ORDER,
    UNREAD_HINT,
    class_folders_clash,
    is_hidden_or_system,
    is_ignored_folder,
    is_image_name,
    same_but_case,
    unread_file,
    unread_photo,
    unread_summary,
)
from transfer.errors import TransferError
from transfer.files import photos_under, unreachable_folder
from transfer.settings import PIPELINES, Augment  # noqa: F401  (pipelines.Augment, for callers)

MIN_USABLE = 2  # images a class needs after the unreadable ones are left out


@dataclass(frozen=True)
class Sample:
    """One image of a run: its file and its class index (the sorted class names' order)."""

    path: Path
    label: int


def read_rgb(path, size: int) -> np.ndarray:
    """The one reader of colour training images: (size, size, 3) uint8 RGB, the pixels
    ``images.model_input`` gives a colour bundle of that size. Raises ``images.ImageError``."""
    image = images.open_image(path, int(size))  # a large JPEG: draft mode, decoded smaller
    return images.rgb_pixels(image, int(size))


class Skipped:
    """The unreadable files of a run, in the order they were found; thread-safe, one entry per
    file (augmented copies read a file several times)."""

    def __init__(self):
        self._items: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, path, reason: str) -> None:
        with self._lock:
            self._items.setdefault(str(path), str(reason))

    def __contains__(self, path) -> bool:
        return str(path) in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self.as_list())

    def as_list(self) -> list[dict]:
        """[{"file": path, "reason": why}] (meta.json's "skipped")."""
        with self._lock:
            return [{"file": f, "reason": r} for f, r in self._items.items()]


def usable(samples: list[Sample], skipped: Skipped | None) -> list[Sample]:
    """``samples`` without the files found unreadable so far."""
    if not skipped:
        return list(samples)
    return [s for s in samples if str(s.path) not in skipped]


def unmeasured(plan) -> list[str]:
    """The classes of ``plan`` left without a usable validation image (their share of the
    split held only damaged files): trained, but not measured."""
    val = np.bincount([s.label for s in usable(plan.validate, plan.skipped)],
                      minlength=len(plan.names))
    return [name for name, n in zip(plan.names, val, strict=True) if n == 0]


def check_enough(plan) -> None:
    """One TransferError when a class of ``plan`` is left with fewer than MIN_USABLE usable
    images, or none to train on, once the unreadable files are left out."""
    names = plan.names
    train = np.bincount([s.label for s in usable(plan.train, plan.skipped)],
                        minlength=len(names))
    val = np.bincount([s.label for s in usable(plan.validate, plan.skipped)],
                      minlength=len(names))
    short = [i for i in range(len(names))
             if train[i] + val[i] < MIN_USABLE or train[i] < 1]
    if not short:
        if val.sum() == 0:
            listed = len(plan.skipped)
            raise TransferError(f"no usable validation image ({listed} unreadable file"
                                f"{'' if listed == 1 else 's'} skipped): validation chooses "
                                "the epochs and measures the model; add photos to the "
                                "validation folders or repair them")
        return
    listed = len(plan.skipped)
    parts = "; ".join(f"{names[i]}: {train[i] + val[i]} usable, {train[i]} to train on and "
                      f"{val[i]} to validate" for i in short)
    after = (f" after skipping {listed} unreadable file{'' if listed == 1 else 's'}"
             if listed else "")
    raise TransferError(f"too few usable images{after} ({parts}); each class needs at least "
                        f"{MIN_USABLE} usable images, at least 1 of them to train on: add photos"
                        + (" or repair the files" if listed else ""))


def rows(samples: list[Sample], root: Path) -> list[tuple[str, int, int]]:
    """(path relative to ``root``, size, mtime_ns) of each sample: the feature cache's key."""
    from transfer.features import file_rows

    return file_rows([sample.path for sample in samples], root)


def class_names(directory: Path) -> list[str]:
    """Sorted class subfolder names (hidden and system folders such as ``.cache`` and
    ``__MACOSX`` left out); errors for a missing/empty folder, one class or an empty class."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TransferError(f"no data folder {directory}: run `transfer fetch-data` first, or "
                            "give --data-dir a folder of class folders (e.g. my_photos/daisy/"
                            "1.jpg, my_photos/roses/2.jpg)")
    names = class_folders(directory)
    if not names:
        raise TransferError(f"{directory} has no class subfolders: run `transfer fetch-data` "
                            "first, or give a folder with one subfolder per class")
    if len(names) < 2:
        inner = [p.name for p in (directory / names[0]).iterdir()
                 if p.is_dir() and not is_ignored_folder(p.name)] if names else []
        hint = (f"; if the folders in it ({', '.join(sorted(inner)[:3])}"
                f"{' ...' if len(inner) > 3 else ''}) are the classes, use --data-dir "
                f"{directory / names[0]}" if len(inner) >= 2 else "")
        raise TransferError(f"{directory} has one class ({names[0]}); a classifier needs at "
                            f"least two class subfolders{hint}")
    same = same_but_case(names)
    if same:
        raise TransferError(class_folders_clash(directory, same))
    from transfer.bundle import bundles_as_photos, is_bundle

    bundles = [name for name in names if is_bundle(directory / name)]
    if bundles:  # a models folder given as the data: each bundle a "class" of its pictures
        raise bundles_as_photos(directory, bundles, "--data-dir")
    for name in names:
        if not image_files(directory / name):
            unread = unread_summary(unread_photos(directory / name))
            raise TransferError(f"class folder {directory / name} has no images" + (
                f" it can read: it holds {unread}; {UNREAD_HINT}" if unread else ""))
    return names


def class_folders(directory: Path) -> list[str]:
    """The sorted names of ``directory``'s class folders (hidden, system and ``__MACOSX``
    folders left out), none checked: what ``class_names`` checks, and what a validation
    folder is compared with the training folder by before its own checks (a validate/ holding
    cats/ alone, beside a train/ of cats/ and dogs/, is a mismatch, not "one class")."""
    names = []
    for p in Path(directory).iterdir():
        if is_ignored_folder(p.name):
            continue
        lost = unreachable_folder(p)
        if lost is not None:
            raise TransferError(f"cannot list the class folder {p} ({lost.strerror}): its "
                                "photos would be left out unseen; mount it, or remove the "
                                "link to go without that class")
        if p.is_dir():
            names.append(p.name)
    return sorted(names)


def unread_photos(folder: Path) -> list[str]:
    """The photos under ``folder`` in a format the reader does not take (HEIC, camera raw),
    as relative POSIX paths in order: left out of training, and said. A file so named that
    Pillow opens (a JPEG renamed .heic) is none of them: ``image_files`` lists it."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in photos_under(folder)[1])


def image_files(folder: Path) -> list[Path]:
    """The images under ``folder`` (any suffix of ``constants.IMAGE_SUFFIXES``), sorted by
    their POSIX path; hidden and system files and folders (``.DS_Store``, ``Thumbs.db``,
    ``._x``, ``__MACOSX/``) are left out silently; symbolic links are followed
    (``files.walk``). The tool's own pictures (``*.gradcam.png`` that ``transfer explain``
    writes beside a photo, ``augment-preview.png``) are not photos of the class: left out.
    A file named as HEIC or raw that Pillow opens (a JPEG renamed .heic) is an image, as
    evaluate, predict and fetch-data take it (``files.photos_under``: one walk, the same
    rule everywhere)."""
    folder = Path(folder)
    return sorted(photos_under(folder)[0], key=lambda p: p.relative_to(folder).as_posix())


def samples_of(directory: Path, names: list[str]) -> list[Sample]:
    """Every image of the class folders ``names`` in ``directory``, in class order."""
    return [Sample(path, label) for label, name in enumerate(names)
            for path in image_files(Path(directory) / name)]


def probe_all(samples: list[Sample], skipped: Skipped) -> None:
    """Record in ``skipped`` the samples that are not images even by their header (zero bytes,
    a text file named .jpg, a format Pillow does not know), in their order: cheap, no pixel is
    decoded. One thread: Pillow parses a header in Python, holding the GIL, so threads only
    took turns (the tour's 2,800 files: 0.30 s in one thread against 0.50-0.56 s in eight on a
    warm page cache, 0.67-0.87 s against 0.72 s on a cold one)."""
    for sample in samples:
        try:
            images.check_header(sample.path)
        except images.ImageError as exc:
            skipped.add(sample.path, str(exc))


def decode_all(samples: list[Sample], size: int, skipped: Skipped, reporter=None,
               threads: int = 4) -> None:
    """Read every sample once through ``read_rgb`` (a few threads), recording the unreadable
    ones in ``skipped``; the pixels are not kept."""
    from concurrent.futures import ThreadPoolExecutor

    from transfer.progress import Reporter

    reporter = reporter or Reporter()
    todo = usable(samples, skipped)
    with reporter.task("Checking images", total=len(todo)) as advance, \
            ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda s: _read_or_skip(s, size, skipped), todo):
            advance(1)


def _header_fails(path: Path) -> bool:
    try:
        images.check_header(path)
    except images.ImageError:
        return True
    return False


def split_in_memory(directory: Path, names: list[str], validation_split: float, seed: int,
                    skipped: Skipped | None = None, order: str = STABLE_ORDER,
                    ) -> tuple[list[Sample], list[Sample]]:
    """(train, validate) Samples of the class folders ``names`` in ``directory``: each class's
    images in ``datasets.stable_order`` (a hash of seed, class and file name, so that adding
    photos moves few across the cut) and cut by ``datasets.fraction_sizes`` (validate first),
    as ``fetch-data --archive`` splits the same folder. ``order="shuffle"`` is the order of
    bundles trained before 2026-12-04's stable order (their meta.json names no
    ``data.split_order``): the
    sorted paths shuffled with ``random.Random(f"{seed}:{class}")``.

    The files of ``skipped`` (a Skipped, or file names) that are not images even by their
    header are left out before the cut, as ``training.plan`` leaves them out; one that only
    fails when decoded (a truncated photo, found by the run) stays in the cut, as it was in
    the run's. The very same photo twice in a class (``twins_of``) keeps its place in the
    cut and is left out, as fetch-data leaves it out (and recorded in a Skipped). So a
    bundle's meta.json (root, class_names, validation_split, seed, split_order and its
    "skipped" list, or data.split_excluded) makes the run's split again."""
    import random

    from transfer.datasets import fraction_sizes, stable_order

    if order not in (STABLE_ORDER, "shuffle"):
        raise TransferError(f"unknown split order {order!r} (this version knows "
                            f"{STABLE_ORDER!r} and 'shuffle'); a newer transfer made it?")
    directory = Path(directory)
    train, validate = [], []
    for label, name in enumerate(names):
        relative = sorted(path.relative_to(directory).as_posix()
                          for path in image_files(directory / name))
        if order == STABLE_ORDER:
            relative = stable_order(relative, seed, name)
        else:
            random.Random(f"{seed}:{name}").shuffle(relative)
        paths = [directory / rel for rel in relative]
        if skipped:
            paths = [path for path in paths
                     if str(path) not in skipped or not _header_fails(path)]
        sizes = fraction_sizes(len(paths), validation_split)
        n_val = sizes["validate"] if sizes else 0
        twins = twins_of(paths)  # a copy keeps its place in the cut, as in fetch-data's
        if isinstance(skipped, Skipped):
            for copy, first in twins.items():
                skipped.add(copy, f"the same photo as {first.relative_to(directory).as_posix()}")
        validate += [Sample(path, label) for path in sorted(paths[:n_val]) if path not in twins]
        train += [Sample(path, label) for path in sorted(paths[n_val:]) if path not in twins]
    return train, validate


def twins_of(paths: list[Path]) -> dict[Path, Path]:
    """{copy: the first of ``paths`` with its very bytes} (``IMG_1.jpg`` and ``IMG_1 (1).jpg``):
    a photo held twice in a class could fall on both sides of the cut, the model validated on
    a photo it trained on. Only files of the same size are read (few, if any)."""
    import hashlib

    by_size: dict[int, list[Path]] = {}
    for path in paths:
        try:
            by_size.setdefault(os.stat(path).st_size, []).append(path)
        except OSError:
            continue  # unreadable: the run says so when it reads it
    twins: dict[Path, Path] = {}
    for group in by_size.values():
        first: dict[bytes, Path] = {}
        for path in group if len(group) > 1 else ():
            try:
                digest = hashlib.sha256(path.read_bytes()).digest()
            except OSError:
                continue
            kept = first.setdefault(digest, path)
            if kept != path:
                twins[path] = kept
    return twins


def listing(directory: Path, names: list[str]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every image of the class folders ``names`` in
    ``directory``, in class order (scripts/bench_train.py's cache key)."""
    return rows(samples_of(directory, names), Path(directory))


def _label_dtype(names: list[str]) -> str:
    return "float32" if len(names) == 2 else "int64"


def _read_or_skip(sample: Sample, size: int, skipped: Skipped | None):
    """The pixels of ``sample`` through ``read_rgb``, or None (recorded in ``skipped``)."""
    if skipped is not None and str(sample.path) in skipped:
        return None
    try:
        return read_rgb(sample.path, size)
    except images.ImageError as exc:
        reason = str(exc)
    except OSError as exc:  # vanished or unreadable between listing and reading
        reason = f"cannot read the file ({exc.strerror or exc})"
    if skipped is not None:
        skipped.add(sample.path, reason)
    return None


def _transformer(augment: Augment):
    """ImageDataGenerator's random transforms (rotation, shifts, shear, zoom, horizontal flip,
    nearest fill) of one float32 image, with parameters drawn from a given numpy Generator
    (thread-safe: no global random state)."""
    from transfer.tf import tf  # first, quietly: the import below alone printed its C++ lines

    ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator
    idg = ImageDataGenerator(fill_mode="nearest")

    def transform(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = x.shape[0], x.shape[1]
        params = {
            "theta": rng.uniform(-augment.rotation, augment.rotation) if augment.rotation else 0,
            "tx": rng.uniform(-augment.shift, augment.shift) * h if augment.shift else 0,
            "ty": rng.uniform(-augment.shift, augment.shift) * w if augment.shift else 0,
            "shear": rng.uniform(-augment.shear, augment.shear) if augment.shear else 0,
            "zx": 1.0, "zy": 1.0,
            "flip_horizontal": bool(augment.flip and rng.random() < 0.5),
        }
        if augment.zoom:
            params["zx"], params["zy"] = rng.uniform(1 - augment.zoom, 1 + augment.zoom, 2)
        return idg.apply_transform(x, params)

    return transform


def _sequence_class():
    from transfer.tf import keras

    class SampleSequence(keras.utils.PyDataset):
        """Batches of (preprocessed images, labels) over Samples, read through ``read_rgb`` by a
        small thread pool; ImageDataGenerator's random transforms when augmenting. Unreadable
        files are recorded and left out of their batch."""

        def __init__(self, samples, names, size, preprocess, batch_size, augment, shuffle,
                     seed, skipped, threads=4):
            super().__init__()
            self.samples, self.size, self.batch_size = list(samples), int(size), batch_size
            self.names, self.shuffle, self.seed = list(names), shuffle, seed
            self.skipped = skipped
            self.prep = preprocess_numpy(preprocess)
            self.transform = (_transformer(augment)
                              if augment is not None and augment.enabled else None)
            self.threads = threads
            self.epoch = 0
            self.order = self._order()
            self.n = len(self.samples)  # the number of images (ImageDataGenerator's .n)

        def _order(self):
            if not self.shuffle:
                return np.arange(len(self.samples))
            return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.samples))

        def __len__(self):
            return steps(len(self.samples), self.batch_size)

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

        def _read(self, index):
            from concurrent.futures import ThreadPoolExecutor

            chosen = [self.samples[i] for i in
                      self.order[index * self.batch_size:(index + 1) * self.batch_size]]
            if len(chosen) > 1 and self.threads > 1:
                with ThreadPoolExecutor(min(self.threads, len(chosen))) as pool:
                    arrays = list(pool.map(
                        lambda s: _read_or_skip(s, self.size, self.skipped), chosen))
            else:
                arrays = [_read_or_skip(s, self.size, self.skipped) for s in chosen]
            return [(a, s, k) for k, (a, s) in enumerate(zip(arrays, chosen, strict=True))
                    if a is not None]

        def __getitem__(self, index):
            kept = self._read(index)
            if not kept and self.shuffle:  # a batch of unreadable files only: train on the next
                for step in range(1, len(self)):
                    kept = self._read((index + step) % len(self))
                    if kept:
                        break
            x = np.zeros((len(kept), self.size, self.size, 3), "float32")
            y = np.zeros((len(kept),), _label_dtype(self.names))
            for row, (array, sample, k) in enumerate(kept):
                image = array.astype("float32")
                if self.transform is not None:
                    rng = np.random.default_rng([self.seed, self.epoch, index, k])
                    image = self.transform(image, rng)
                x[row] = self.prep(image)
                y[row] = sample.label
            return x, y

    return SampleSequence


def generator_flow(samples, names: list[str], size: int, preprocess: str, batch_size: int,
                   augment: Augment | None, shuffle: bool, seed: int,
                   skipped: Skipped | None = None):
    """A ``keras.utils.PyDataset`` over Samples, or the class folders ``names`` of a folder (the
    classic ImageDataGenerator recipe's transforms, pixels from ``read_rgb``)."""
    if isinstance(samples, str | Path):
        samples = samples_of(Path(samples), names)
    return _sequence_class()(samples, names, size, preprocess, batch_size, augment, shuffle,
                             seed, skipped)


def _centred_shear(factor: float, seed: int):
    """Keras's RandomShear about the image's centre, as ImageDataGenerator and the feature
    pass's ``random_affine`` shear: Keras's pivots on the top-left corner (a 20 degree shear
    also moved the picture sideways by a third of its height) and refuses a factor above 1
    (``--shear`` above 45 degrees: a ValueError traceback)."""
    from transfer.tf import keras

    class CentredShear(keras.layers.RandomShear):
        def _check_factor_range(self, input_number):  # any slope: --shear below 90 degrees
            if not 0.0 <= input_number < float("inf"):
                raise ValueError(f"a shear factor must be finite and >= 0, not {input_number}")

        def _transform_images(self, images, transformation, interpolation):
            if transformation is None:
                return images
            np_ = self.backend.numpy
            batched = len(self.backend.shape(images)) == 4
            images = images if batched else np_.expand_dims(images, axis=0)
            shape = self.backend.shape(images)
            dtype = self.compute_dtype
            cy = (self.backend.cast(shape[1], dtype) - 1.0) / 2.0
            cx = (self.backend.cast(shape[2], dtype) - 1.0) / 2.0
            slope = transformation["shear_factor"]
            sx, sy = slope[:, 0], slope[:, 1]
            ones, zeros = np_.ones_like(sx), np_.zeros_like(sx)
            # output (x, y) reads input (x + sx (y - cy), y + sy (x - cx)): about the centre
            matrix = np_.stack([ones, sx, -sx * cy, sy, ones, -sy * cx, zeros, zeros], axis=1)
            out = self.backend.image.affine_transform(
                images, transform=matrix, interpolation=interpolation,
                fill_mode=self.fill_mode, fill_value=self.fill_value,
                data_format=self.data_format)
            return out if batched else np_.squeeze(out, axis=0)

    return CentredShear(x_factor=factor, y_factor=0.0, fill_mode="nearest", seed=seed)


def augmentation_layers(augment: Augment, seed: int):
    """Keras layers equivalent to the ImageDataGenerator settings of ``augment`` (None when
    every transform is off: an empty Sequential cannot be called)."""
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
        stack.append(_centred_shear(math.tan(math.radians(augment.shear)), seed + 3))
    if augment.zoom:  # height and width drawn apart, as ImageDataGenerator's zx and zy
        stack.append(layers.RandomZoom(augment.zoom, augment.zoom, fill_mode="nearest",
                                       seed=seed + 4))
    return keras.Sequential(stack, name="augmentation") if stack else None


def tfdata_dataset(samples, names: list[str], size: int, preprocess: str, batch_size: int,
                   augment: Augment | None, shuffle: bool, seed: int,
                   skipped: Skipped | None = None):
    """A batched, prefetched tf.data pipeline over Samples: ``read_rgb`` through
    ``tf.numpy_function`` (unreadable files recorded and filtered out), the Keras augmentation
    layers, the base's preprocessing."""
    from transfer.bases import preprocess_layer
    from transfer.tf import tf

    if isinstance(samples, str | Path):
        samples = samples_of(Path(samples), names)
    samples = list(samples)
    size = int(size)
    dtype = _label_dtype(names)
    # the names' bytes: a name that is not UTF-8 (a Latin-1 stick's "caf\xe9.jpg") made
    # tf.constant fail with a ValueError traceback
    paths = [os.fsencode(s.path) for s in samples]
    labels = np.asarray([s.label for s in samples], dtype=dtype)
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string),
                                                  tf.constant(labels)))
    if shuffle:
        dataset = dataset.shuffle(max(1, len(samples)), seed=seed, reshuffle_each_iteration=True)

    def load(path):
        path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
        array = _read_or_skip(Sample(Path(path), 0), size, skipped)
        if array is None:
            return np.zeros((size, size, 3), "uint8"), False
        return array, True

    def read(path, label):
        image, ok = tf.numpy_function(load, [path], [tf.uint8, tf.bool])
        image.set_shape((size, size, 3))
        ok.set_shape(())
        return image, label, ok

    autotune = tf.data.AUTOTUNE
    dataset = dataset.map(read, num_parallel_calls=autotune, deterministic=True)
    dataset = dataset.filter(lambda image, label, ok: ok)
    dataset = dataset.map(lambda image, label, ok: (tf.cast(image, tf.float32), label))
    dataset = dataset.batch(batch_size)
    prep = preprocess_layer(preprocess)
    aug = augmentation_layers(augment, seed) if augment is not None and augment.enabled else None
    if aug is not None:
        def transform(x, y):
            return prep(aug(x, training=True)), y

        # one batch at a time: the layers draw from one random state, and batches transformed
        # in parallel took its draws in any order (the same seed, other pictures each run)
        return dataset.map(transform).prefetch(autotune)

    def plain(x, y):
        return prep(x), y
    return dataset.map(plain, num_parallel_calls=autotune).prefetch(autotune)


def make(pipeline: str, samples, names: list[str], size: int, preprocess: str,
         batch_size: int, augment: Augment | None, shuffle: bool, seed: int,
         skipped: Skipped | None = None):
    """A pipeline over ``samples`` (a list of Samples; a folder is listed into its class
    folders ``names``), reading through ``read_rgb``; unreadable files go to ``skipped``."""
    if samples is None:
        raise TransferError("no images to read: the class folders are split in memory; pass "
                            "the plan's samples (plan.usable('train'), plan.usable('validate'))")
    if isinstance(samples, str | Path):
        samples = samples_of(Path(samples), names)
    samples = usable(samples, skipped)
    if pipeline == "generator":
        return generator_flow(samples, names, size, preprocess, batch_size, augment, shuffle,
                              seed, skipped)
    if pipeline == "tfdata":
        return tfdata_dataset(samples, names, size, preprocess, batch_size, augment, shuffle,
                              seed, skipped)
    raise TransferError(f"unknown pipeline {pipeline!r}; choose {' or '.join(PIPELINES)}")


def for_plan(plan, split: str, augment: Augment | None = None, shuffle: bool = False,
             seed: int | None = None):
    """The run's pipeline (``--pipeline``) over the usable images of ``split`` ("train" or
    "validate"), recording unreadable files in ``plan.skipped``."""
    hp = plan.settings
    return make(hp.pipeline, plan.usable(split), plan.names, plan.size, plan.base.preprocess,
                hp.batch_size, augment, shuffle, hp.seed if seed is None else seed,
                plan.skipped)


def batches(data, n_steps: int):
    """The batches of a pipeline: indexed for a PyDataset (ImageDataGenerator), iterated for
    a tf.data.Dataset."""
    if hasattr(data, "__getitem__"):
        return (data[i] for i in range(n_steps))
    return iter(data)


def steps(n_images: int, batch_size: int) -> int:
    return max(1, math.ceil(n_images / batch_size))
