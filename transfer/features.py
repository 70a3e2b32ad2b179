"""Run the frozen base once per image and keep the result.

On a laptop CPU the base's forward pass is nearly all of the training time, and a frozen base
gives the same features every epoch. So features (after global average pooling) are computed
once per (base, weights, size, file list, augmentation copy) and cached as ``.npz`` files
(``cache_folder``: ``<data>/.cache/features/`` in a data folder fetch-data made, else under
``$KERAS_HOME/transfer/features/``); the head then trains on the arrays.

The pass (``run_pass``) is bound by the slower of decoding and inference, not their sum: a
small thread pool decodes and resizes the images through the one reader
(``pipelines.read_rgb``; Pillow releases the GIL while it decodes) a few batches ahead of the
engine (``transfer.engines``: TensorFlow or TFLite/XNNPACK), which runs in the calling thread
on batches of raw pixels (0-255). Augmented copies are made in the same threads, one random
affine transform per image (``random_affine``: ImageDataGenerator's draws and fill, one
Pillow resampling), seeded per copy and image, so copies differ and runs repeat. (The Keras
augmentation layers did the same at 34 images/s on two cores, a fifth of the engine's speed:
four projective resamplings of every batch.) An unreadable image is left out of its
batch and reported (``Pass.skipped``), never fatal here.

The cache key holds what the features depend on (base, alpha, weights fingerprint, size, the
files with their sizes and mtimes, augmentation settings, copy, seed), not the engine: an
engine must compute the same function (TFLite is checked against TensorFlow on every run), so
features from either are interchangeable. The engine that computed an entry is stored in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zipfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.errors import TransferError, env_number
from transfer.files import digest, replacing
from transfer.progress import Reporter


def cache_folder(root: Path) -> Path:
    """Where the features of the photos under ``root`` are cached.

    In a data folder fetch-data made (its ``manifest.json``), ``<root>/.cache/features``:
    beside the split, found again by any later run, removed with it. Anywhere else the photos
    are the user's (a folder of class folders, ``--train-dir``, a shared read-only data set):
    nothing is written among them, the cache goes to ``$KERAS_HOME/transfer/features``
    (default ``~/.keras/transfer/features``), beside the converted TFLite bases. The entries'
    keys name every file with its size and mtime, so one folder serves every data set.
    """
    from transfer import bases, datasets

    if datasets.read_manifest(root) is not None:
        return Path(root) / ".cache" / "features"
    return bases.keras_home() / "transfer" / "features"

PASS_BATCH = 32  # images decoded together and given to the engine in one call
# the converted base's fixed batch: the engine runs a pass batch in 4 calls. MobileNet-0.25
# on XNNPACK, 2 threads (scripts/bench_reader.py, 2026-12-04): 752 views/s at 288 px against
# 630 with batch 32 (activations that stay in cache), 1171 against 1037 at 224 px
CONVERTED_BATCH = 8
AHEAD = 3  # batches decoded ahead of the engine (bounds memory: 3 x 32 x 224 x 224 x 3 bytes)


def decode_threads() -> int:
    """2 to 4 decoding threads: enough to keep one engine fed on a laptop (about 470 Kaggle
    JPEGs/s per core with Pillow), few enough to leave the cores to the engine."""
    from transfer.engines import cpu_threads

    return min(4, max(2, cpu_threads()))


def read_image(path, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB through the one reader every command uses; ImageError for an
    unusable file."""
    from transfer import pipelines

    return pipelines.read_rgb(path, size)


def cache_key(**parts) -> str:
    """A stable hash of everything the features depend on."""
    return digest(parts)[:32]


@dataclass
class Pass:
    """What one pass over a list of images produced."""

    features: np.ndarray  # (n kept, width) float32
    labels: np.ndarray  # (n kept,)
    skipped: list = field(default_factory=list)  # [{"file", "reason"}] left out, in order
    seconds: float = 0.0  # wall time of the pass (decode + augment + engine)
    images: int = 0  # images that went through the engine
    engine: str | None = None  # what ran it: tf | tflite


def run_pass(paths: list, labels, size: int, engine: Callable, *, augment=None, seed: int = 0,
             reporter: Reporter | None = None, description: str = "features",
             threads: int | None = None, batch_size: int = PASS_BATCH, offset: int = 0,
             advance: Callable | None = None, mirror: bool = False,
             reader: Callable | None = None) -> Pass:
    """Features of ``engine`` over the images at ``paths`` (in order), decoded in parallel.

    Args:
        paths: image files.
        labels: one label per path.
        size: the square size images are resized to.
        engine: callable on a uint8 batch of raw pixels (0-255; the mirror images as a strided
            view) -> features; it may have a ``name`` (recorded) and is called from this
            thread only.
        augment: an enabled ``Augment`` to apply to each batch (Keras augmentation layers seeded
            with ``seed``), or None.
        threads: decoding threads (default ``decode_threads()``).
        batch_size: images per engine call.
        offset: the index of ``paths[0]`` in the whole list (a shard's start): augmented copy
            ``seed`` of image i draws from ``(seed, offset + i)``, so a shard's copies are those
            of the whole pass.
        advance: a progress callback (images done) to use instead of a task of its own.
        mirror: each image's features are the mean of its own and its mirror image's (the
            test-time flips of ``--tta``, as the saved model computes them).
        reader: ``(path, size) -> pixels`` in place of ``read_image`` (a ``DecodeAhead``'s
            ``read``: the same pixels, some decoded before the pass).
    """
    from transfer.images import ImageError

    reporter = reporter or Reporter()
    labels = np.asarray(labels)
    augmenting = augment is not None and augment.enabled
    reader = reader or read_image
    chunks = [list(range(i, min(i + batch_size, len(paths))))
              for i in range(0, len(paths), batch_size)]
    outputs, kept, skipped = [], [], []

    def read(i):
        try:
            pixels = reader(paths[i], size)
            if augmenting:  # image i of copy "seed": the same draw whatever thread reads it
                pixels = random_affine(pixels, augment, np.random.default_rng([seed, offset + i]))
            return pixels, None
        except ImageError as exc:
            return None, str(exc)
        except OSError as exc:  # vanished or unreadable between listing and reading
            return None, f"cannot read the file ({exc.strerror or exc})"

    start = time.perf_counter()
    task = (contextlib.nullcontext(advance) if advance is not None
            else reporter.task(description, total=len(paths)))
    with task as advance, ThreadPoolExecutor(threads or decode_threads(),
                               thread_name_prefix="transfer-decode") as pool:
        pending: deque = deque()
        upcoming = iter(chunks)

        def submit_next():
            chunk = next(upcoming, None)
            if chunk is not None:
                pending.append((chunk, [pool.submit(read, i) for i in chunk]))

        for _ in range(AHEAD):
            submit_next()
        while pending:
            chunk, futures = pending.popleft()
            submit_next()  # keep AHEAD batches decoding while the engine runs this one
            pixels, rows = [], []
            for i, future in zip(chunk, futures, strict=True):
                array, reason = future.result()
                if array is None:
                    skipped.append({"file": str(paths[i]), "reason": reason})
                else:
                    pixels.append(array)
                    rows.append(i)
            if pixels:
                batch = np.stack(pixels)  # uint8: the engine casts it as it copies it in
                outputs.append(mirrored_mean(engine, batch, copy=False) if mirror
                               else np.asarray(engine(batch), dtype="float32"))
                kept.extend(rows)
            advance(len(chunk))
    seconds = time.perf_counter() - start
    width = outputs[0].shape[-1] if outputs else 0
    feats = np.concatenate(outputs) if outputs else np.zeros((0, width), "float32")
    return Pass(feats, labels[kept] if len(labels) else labels, skipped, seconds, len(kept),
                getattr(engine, "name", None))


def mirrored_mean(fn: Callable, batch: np.ndarray, copy: bool = True) -> np.ndarray:
    """The mean of ``fn`` on a batch (batch, height, width, channels) and on its mirror images
    (the width axis flipped): the features test-time flips train and validate on. ``copy``:
    give ``fn`` the mirror images as a contiguous copy; an engine takes the strided view."""
    photo = np.asarray(fn(batch), dtype="float32")
    mirror = np.asarray(batch)[:, :, ::-1]
    mirror = np.asarray(fn(np.ascontiguousarray(mirror) if copy else mirror), dtype="float32")
    return (photo + mirror) / np.float32(2.0)


def random_affine(pixels: np.ndarray, augment, rng: np.random.Generator) -> np.ndarray:
    """``pixels`` (size, size, 3 uint8) moved by one random affine transform drawn as
    ImageDataGenerator draws it from ``augment`` (its units: rotation and shear in degrees,
    shift and zoom as fractions; zoom x and y drawn apart), with its ``nearest`` fill (the
    image is edge-padded first), Pillow bilinear: one resampling per image instead of one per
    transform, in the decoding threads (Pillow releases the GIL)."""
    from PIL import Image

    size = pixels.shape[0]
    theta = np.deg2rad(rng.uniform(-augment.rotation, augment.rotation)) \
        if augment.rotation else 0.0
    tx = rng.uniform(-augment.shift, augment.shift) * size if augment.shift else 0.0
    ty = rng.uniform(-augment.shift, augment.shift) * size if augment.shift else 0.0
    shear = np.deg2rad(rng.uniform(-augment.shear, augment.shear)) if augment.shear else 0.0
    zx, zy = (rng.uniform(1 - augment.zoom, 1 + augment.zoom, 2) if augment.zoom
              else (1.0, 1.0))
    flip = bool(augment.flip and rng.uniform() < 0.5)
    # output pixel (x, y), centred -> input pixel: ImageDataGenerator's composition
    # rotation @ shift @ shear @ zoom, as an inverse map about the centre
    rotate = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                       [0, 0, 1]])
    move = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    slant = np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
    scale = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    matrix = rotate @ move @ slant @ scale
    if flip:
        matrix = matrix @ np.diag([-1.0, 1.0, 1.0])
    centre = (size - 1) / 2.0
    # edge-pad as far as the output's corners reach into the input (a strong rotation, shift
    # and zoom reached past a fixed half side, and the corners were black, not "nearest")
    corners = matrix[:2, :2] @ np.array([[-centre, centre, -centre, centre],
                                         [-centre, -centre, centre, centre]])
    reach = np.abs(corners + matrix[:2, 2:]).max()
    pad = max(size // 2, int(np.ceil(reach - centre)) + 2)
    to_centre = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]])
    back = np.array([[1, 0, centre + pad], [0, 1, centre + pad], [0, 0, 1]])
    inverse = back @ matrix @ to_centre
    padded = Image.fromarray(np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    moved = padded.transform((size, size), Image.AFFINE, tuple(inverse[:2].reshape(-1)),
                             resample=Image.BILINEAR)
    return np.asarray(moved, dtype="uint8")


def size_and_mtime(path) -> tuple[int, int]:
    """(size, mtime_ns) of a file as the feature cache keys it; (-1, 0) when it cannot be
    stat'ed (a broken link, a file gone: its reading says so)."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, 0
    return st.st_size, st.st_mtime_ns


def file_rows(paths: list, root: Path | None = None) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each file (relative to ``root`` when under it): the cache
    key's file list. A file that cannot be stat'ed keeps its place with size -1."""
    rows = []
    for path in paths:
        path = Path(path)
        size, mtime = size_and_mtime(path)
        name = path.as_posix()
        if root is not None:
            try:
                name = path.relative_to(root).as_posix()
            except ValueError:
                pass
        rows.append((name, size, mtime))
    return rows


def respelled(skipped: list, paths: list, root: Path | None = None) -> list:
    """A cached shard's ``skipped`` with each file spelled as this run names it (``paths``,
    the shard's): the entry is found by the files relative to ``root``, so a run given the
    data folder another way (``data`` then ``/home/me/project/data``) finds the entry of one
    that named it ``data/train/cats/x.jpg``, which then did not leave out this run's
    ``/home/me/project/data/train/cats/x.jpg``."""
    if not skipped:  # most shards: no file stat'ed again for nothing
        return skipped
    names = {name: str(path) for (name, _, _), path in zip(file_rows(paths, root), paths,
                                                           strict=True)}
    out = []
    for item in skipped:
        said = Path(str(item.get("file", ""))).as_posix()
        now = next((path for name, path in names.items()
                    if said == name or said.endswith("/" + name)), None)
        out.append({**item, "file": now} if now is not None else item)
    return out


def store_quietly(path: Path, result: Pass, warn: Callable[[str], None] | None) -> bool:
    """``store``, telling ``warn`` instead of failing when the cache cannot be written."""
    try:
        store(path, result)
        return True
    except OSError as exc:
        if warn is not None:
            where = exc.filename or path
            warn(f"feature cache not written ({exc.strerror or exc}: {where}); the next run "
                 "computes the features again")
        return False


def store(path: Path, result: Pass) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = json.dumps({"skipped": result.skipped, "engine": result.engine,
                        "images_per_second": round(result.images / result.seconds, 2)
                        if result.seconds > 0 else None})
    # a cache: not flushed to the disk (milliseconds a shard on the run's clock); an entry a
    # power cut left damaged is found so when read, and computed again
    with replacing(path, durable=False) as tmp:
        np.savez(tmp, features=result.features, labels=result.labels, extra=np.array(extra))


# --------------------------------------------------------------------------- shards

MEMORY_MB = 1024  # features up to this size stay in memory; beyond, shards are streamed


def memory_budget() -> int:
    """Bytes of features a run may hold in memory (``TRANSFER_FEATURE_MEMORY_MB``, default
    MEMORY_MB); a larger set is read back from its shard files one at a time."""
    return int(env_number("TRANSFER_FEATURE_MEMORY_MB", MEMORY_MB) * 2**20)


def classes_interleaved(samples: list) -> list:
    """``samples`` ((path, label) pairs) in an order that spreads every class evenly over the
    list, each class's own order kept: any stretch of it, a shard, holds the classes in about
    their proportions. (A pass in the folders' order cuts shards of one class each, and a head
    streamed shard by shard, batches never crossing shards, then learnt from one-class
    batches.) Fixed by the files and labels alone, as the shards must be."""
    counts: dict = {}
    for _, label in samples:
        counts[label] = counts.get(label, 0) + 1
    seen: dict = {}
    keyed = []
    for i, (_, label) in enumerate(samples):
        keyed.append(((seen.get(label, 0) + 0.5) / counts[label], i))
        seen[label] = seen.get(label, 0) + 1
    return [samples[i] for _, i in sorted(keyed)]


def shard_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """[(start, stop)] of the shards of a pass over n images: fixed by n and size alone, so the
    same files make the same shards (and cache entries) whatever the number of workers."""
    size = max(1, int(size))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


@dataclass
class FeatureSet:
    """One pass's features in shards, each an array in memory or an ``.npz`` file read back when
    needed: ``chunks()`` streams them (memory bounded by one shard), ``array()`` joins them.

    The labels of the kept rows are always in memory (8 bytes per image)."""

    parts: list  # per shard: np.ndarray (rows, width) or Path of an npz with "features"
    sizes: list  # rows per shard
    labels: np.ndarray  # every kept row's label, in shard order
    width: int

    def __len__(self) -> int:
        return int(sum(self.sizes))

    @property
    def nbytes(self) -> int:
        return len(self) * self.width * 4

    @property
    def in_memory(self) -> bool:
        return all(isinstance(p, np.ndarray) for p in self.parts)

    def part(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of shard i; a file shard is loaded only now."""
        start = int(sum(self.sizes[:i]))
        x = self.parts[i]
        if not isinstance(x, np.ndarray):
            try:
                with np.load(x) as data:
                    x = data["features"]
            except FileNotFoundError:
                raise TransferError(f"the feature file {x} was removed during the run (another "
                                    "run found it damaged?); run again to compute it anew"
                                    ) from None
            except (zipfile.BadZipFile, ValueError, EOFError, KeyError) as exc:  # damaged
                with contextlib.suppress(OSError):
                    Path(x).unlink()
                raise TransferError(f"the feature file {x} is damaged ({exc}); it is removed: "
                                    "run again to compute it anew") from None
        # an empty shard cached as (0, 0) by an earlier version joins as (0, width)
        return (x.astype("float32", copy=False).reshape(-1, self.width),
                self.labels[start:start + self.sizes[i]])

    def chunks(self):
        """(features, labels) of each shard, in order, one in memory at a time."""
        for i in range(len(self.parts)):
            yield self.part(i)

    def array(self) -> np.ndarray:
        """Every row as one array (what a set that fits in memory trains on)."""
        if len(self.parts) == 1 and isinstance(self.parts[0], np.ndarray):
            return self.parts[0].reshape(-1, self.width)
        if not self.parts:
            return np.zeros((0, self.width), "float32")
        return np.concatenate([x for x, _ in self.chunks()])

    def __array__(self, dtype=None, copy=None):
        out = self.array()
        return out.astype(dtype) if dtype is not None else out


def load_entry(path: Path, with_features: bool = True) -> Pass | None:
    """The pass stored at ``path`` (features, labels, skipped, engine), or None when it is
    missing or damaged (a damaged entry is removed, to be computed again). Without
    ``with_features`` the features stay on disk (``Pass.features`` is None)."""
    if not path.is_file():
        return None
    try:
        if not with_features:  # the features' CRC checked now, streamed (memory bounded): a
            with zipfile.ZipFile(path) as archive:  # damaged entry is computed again, where
                if archive.testzip() is not None:  # it failed the run when streamed later
                    raise zipfile.BadZipFile(f"{path}: a CRC error")
        with np.load(path) as data:
            extra = json.loads(str(data["extra"]))
            feats = data["features"] if with_features else None
            return Pass(feats, data["labels"], extra.get("skipped", []), 0.0, 0,
                        extra.get("engine"))
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile):
        # BadZipFile: cut short, or a CRC error when the features are read
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None
    except OSError:  # not readable now (another user's entry, too many open files): not
        return None  # damaged, kept; computed again for this run
