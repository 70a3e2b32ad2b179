"""A five-class bundle on the genuine flowers photos (MobileNet-0.25 at 96 px, a softmax head
on 12 photos per class), trained once per test session for evaluate, export and quantize.

Its data folder holds ``train/`` (12 per class), ``validate/`` (8 per class) and ``test/``
with unbalanced classes (``TEST_COUNTS``), all genuine photos none of which it trained on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import require_asset

TEST_COUNTS = {"daisy": 12, "dandelion": 3, "roses": 8, "sunflowers": 2, "tulips": 6}
_trained: dict = {}


def five_class_bundle(tmp_path_factory):
    """The TrainResult (``.bundle``, ``.meta``); the data folder is ``bundle_data(result)``."""
    if "result" in _trained:
        return _trained["result"]
    from transfer.settings import Augment
    from transfer.training import HParams, train

    flowers = require_asset("data/flowers")
    root = tmp_path_factory.mktemp("flowers5")
    names = sorted(p.name for p in flowers.iterdir() if p.is_dir() and p.name[0] != ".")
    assert names == sorted(TEST_COUNTS)
    for name in names:
        files = sorted((flowers / name).glob("*.jpg"))
        chosen = {"train": files[:12], "validate": files[12:20],
                  "test": files[20:20 + TEST_COUNTS[name]]}
        for split, paths in chosen.items():
            (root / "data" / split / name).mkdir(parents=True)
            for path in paths:
                shutil.copy(path, root / "data" / split / name / path.name)
    models = root / "models"
    _trained["result"] = train(HParams(
        data_dir=root / "data", base="mobilenet", alpha=0.25, weights="imagenet",
        image_size=96, batch_size=8, augment=Augment(enabled=False), epochs=30,
        learning_rate=3e-3, patience=5, models_dir=models, output=models / "flowers"))
    return _trained["result"]


def bundle_data(result) -> Path:
    return Path(result.meta["data"]["train_dir"]).parent


def in_memory_bundle(tmp_path_factory):
    """A three-class bundle trained on one folder of class folders (12 genuine flower photos
    per class, split in memory by training: 0.25 to validation), once per session."""
    if "in_memory" in _trained:
        return _trained["in_memory"]
    from transfer.settings import Augment, TrainSettings
    from transfer.training import train

    flowers = require_asset("data/flowers")
    root = tmp_path_factory.mktemp("own")
    for name in ("daisy", "roses", "sunflowers"):
        (root / "my_photos" / name).mkdir(parents=True)
        for path in sorted((flowers / name).glob("*.jpg"))[-12:]:
            shutil.copy(path, root / "my_photos" / name / path.name)
    models = root / "models"
    _trained["in_memory"] = train(TrainSettings(
        data_dir=root / "my_photos", validation_split=0.25, base="mobilenet", alpha=0.25,
        weights="imagenet", image_size=96, batch_size=8, augment=Augment(enabled=False),
        epochs=10, learning_rate=3e-3, models_dir=models, output=models / "own"))
    return _trained["in_memory"]
