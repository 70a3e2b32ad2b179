"""Run the frozen base once per image and keep the result.

On a laptop CPU the base's forward pass is nearly all of the training time, and a frozen base
gives the same features every epoch. So features (after global average pooling) are computed
once per (base, weights, size, file list, augmentation copy) and cached as ``.npz`` files in
``<data>/.cache/features/``; the head then trains on the arrays in about a second an epoch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from transfer import pipelines
from transfer.files import replacing
from transfer.progress import Reporter


def cache_key(**parts) -> str:
    """A stable hash of everything the features depend on."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def extract(feature_model, batches, n_steps: int, reporter: Reporter, description: str):
    """(features, labels, seconds) of ``feature_model`` over ``n_steps`` batches."""
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


def cached(cache_dir: Path, key: str, compute: Callable[[], tuple]) -> tuple:
    """(features, labels, seconds, hit): from ``cache_dir/key.npz`` or computed and stored."""
    path = Path(cache_dir) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return data["features"], data["labels"], 0.0, True
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
    features, labels, seconds = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        np.savez(tmp, features=features, labels=labels)
    return features, labels, seconds, False
