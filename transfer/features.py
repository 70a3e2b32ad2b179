"""Run the frozen base once per image and keep the result.

On a laptop CPU the base's forward pass is nearly all of the training time, and a frozen base
gives the same features every epoch. So features (after global average pooling) are computed
once per (base, weights, size, file list, augmentation copy) and cached as ``.npz`` files in
``<data>/.cache/features/``; the head then trains on the arrays.

The pass (``run_pass``) is bound by the slower of decoding and inference, not their sum: a
small thread pool decodes and resizes the images through the one reader
(``pipelines.read_rgb``; Pillow releases the GIL while it decodes) a few batches ahead of the
engine (``transfer.engines``: TensorFlow or TFLite/XNNPACK), which runs in the calling thread
on batches of raw pixels (0-255), optionally augmented first by the Keras augmentation layers
(seeded per copy, so copies differ and runs repeat). An unreadable image is left out of its
batch and reported (``Pass.skipped``), never fatal here.

The cache key holds what the features depend on (base, alpha, weights fingerprint, size, the
files with their sizes and mtimes, augmentation settings, copy, seed), not the engine: an
engine must compute the same function (TFLite is checked against TensorFlow on every run), so
features from either are interchangeable. The engine that computed an entry is stored in it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.files import replacing
from transfer.progress import Reporter

PASS_BATCH = 32  # images per engine call (the converted base's fixed batch)
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

    reader = getattr(pipelines, "read_rgb", None)
    if reader is not None:
        return reader(path, size)
    from transfer import images  # before the one reader existed: the same steps

    return images.rgb_array(images.open_image(path), int(size), "pil").astype("uint8")


def cache_key(**parts) -> str:
    """A stable hash of everything the features depend on."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


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
             threads: int | None = None, batch_size: int = PASS_BATCH) -> Pass:
    """Features of ``engine`` over the images at ``paths`` (in order), decoded in parallel.

    Args:
        paths: image files.
        labels: one label per path.
        size: the square size images are resized to.
        engine: callable on a float32 batch of raw pixels (0-255) -> features; it may have a
            ``name`` (recorded) and is called from this thread only.
        augment: an enabled ``Augment`` to apply to each batch (Keras augmentation layers seeded
            with ``seed``), or None.
        threads: decoding threads (default ``decode_threads()``).
        batch_size: images per engine call.
    """
    from transfer.images import ImageError

    reporter = reporter or Reporter()
    labels = np.asarray(labels)
    augmenter = _augmenter(augment, seed) if augment is not None and augment.enabled else None
    chunks = [list(range(i, min(i + batch_size, len(paths))))
              for i in range(0, len(paths), batch_size)]
    outputs, kept, skipped = [], [], []

    def read(i):
        try:
            return read_image(paths[i], size), None
        except ImageError as exc:
            return None, str(exc)
        except OSError as exc:  # vanished or unreadable between listing and reading
            return None, f"cannot read the file ({exc.strerror or exc})"

    start = time.perf_counter()
    with reporter.task(description, total=len(paths)) as advance, \
            ThreadPoolExecutor(threads or decode_threads(),
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
                batch = np.stack(pixels).astype("float32")
                if augmenter is not None:
                    batch = augmenter(batch)
                outputs.append(np.asarray(engine(batch), dtype="float32"))
                kept.extend(rows)
            advance(len(chunk))
    seconds = time.perf_counter() - start
    width = outputs[0].shape[-1] if outputs else 0
    feats = np.concatenate(outputs) if outputs else np.zeros((0, width), "float32")
    return Pass(feats, labels[kept] if len(labels) else labels, skipped, seconds, len(kept),
                getattr(engine, "name", None))


def _augmenter(augment, seed: int):
    """A function batch -> augmented batch (float32 raw pixels): the Keras augmentation layers
    of ``augment`` (``pipelines.augmentation_layers``), seeded, so the same seed gives the
    same copy and another seed another copy."""
    from transfer import pipelines
    from transfer.tf import tf

    layers = pipelines.augmentation_layers(augment, seed)
    compiled = tf.function(lambda x: layers(x, training=True), reduce_retracing=True)

    def apply(batch: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(tf.constant(batch)), dtype="float32")

    return apply


def file_rows(paths: list, root: Path | None = None) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each file (relative to ``root`` when under it): the cache
    key's file list. A file that cannot be stat'ed keeps its place with size -1."""
    rows = []
    for path in paths:
        path = Path(path)
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        name = path.as_posix()
        if root is not None:
            try:
                name = path.relative_to(root).as_posix()
            except ValueError:
                pass
        rows.append((name, size, mtime))
    return rows


def cached(cache_dir: Path, key: str, compute: Callable[[], Pass]) -> tuple[Pass, bool]:
    """(pass, hit): from ``cache_dir/key.npz`` or computed and stored."""
    path = Path(cache_dir) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                extra = json.loads(str(data["extra"]))
                return Pass(data["features"], data["labels"], extra.get("skipped", []), 0.0, 0,
                            extra.get("engine")), True
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
    result = compute()
    store(path, result)
    return result, False


def store(path: Path, result: Pass) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = json.dumps({"skipped": result.skipped, "engine": result.engine,
                        "images_per_second": round(result.images / result.seconds, 2)
                        if result.seconds > 0 else None})
    with replacing(path) as tmp:
        np.savez(tmp, features=result.features, labels=result.labels, extra=np.array(extra))


def extract(feature_model, batches, n_steps: int, reporter: Reporter, description: str):
    """(features, labels, seconds) of ``feature_model`` over ``n_steps`` batches of a Keras
    pipeline (``pipelines.make``): the plain TensorFlow pass, kept for benchmarks."""
    from transfer import pipelines
    from transfer.tf import tf

    forward = tf.function(lambda x: feature_model(x, training=False), reduce_retracing=True)
    outputs, labels = [], []
    start = time.perf_counter()
    with reporter.task(description, total=n_steps) as advance:
        for x, y in pipelines.batches(batches, n_steps):
            outputs.append(np.asarray(forward(x)))
            labels.append(np.asarray(y))
            advance(1)
    seconds = time.perf_counter() - start
    return np.concatenate(outputs), np.concatenate(labels).reshape(-1), seconds
