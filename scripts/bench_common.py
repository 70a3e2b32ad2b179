"""What the benchmark scripts share (not a test): a fresh KERAS_HOME, the split's files and the
bare TensorFlow pass that is their floor, and how each script ends on a bad setting. Imported by
every bench_*.py."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def run_main(main) -> None:
    """``main()``, with a bad setting or input (transfer's TransferError) one line on stderr
    and exit code 1, as the CLI says it, not a traceback."""
    import sys

    from transfer.errors import TransferError

    try:
        main()
    except TransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def fresh_keras_home() -> Path:
    """A temporary KERAS_HOME whose models/ links the current one's weights (so the TFLite
    cache under it starts empty). Set it before TensorFlow is imported."""
    from transfer.bases import keras_cache_dir  # where Keras looks (no TensorFlow imported)

    current = keras_cache_dir()
    home = Path(tempfile.mkdtemp(prefix="bench-keras-home-"))
    removed_at_exit(home)  # its converted bases (they were left behind, MBs a run)
    (home / "models").mkdir()
    for item in current.iterdir() if current.is_dir() else []:
        (home / "models" / item.name).symlink_to(item.resolve())
    return home


def removed_at_exit(folder: Path) -> Path:
    """``folder``, removed when the script ends (a benchmark's bundles and caches)."""
    import atexit
    import shutil

    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def split_files(data_dir: Path) -> list[Path]:
    """Every image of ``data_dir``/train and /validate, class by class."""
    from transfer import pipelines

    return [p for split in ("train", "validate")
            for cls in pipelines.class_names(data_dir / split)
            for p in pipelines.image_files(data_dir / split / cls)]


def floor_pass(files: list[Path], base_name: str, alpha: float) -> float:
    """Seconds of a bare Keras predict pass of the base (pooled) over ``files`` at its native
    size, batch 32, Pillow decode and resize included, sequential as a plain script does it."""
    import numpy as np

    from transfer import bases, pipelines
    from transfer.tf import keras

    base = bases.get(base_name)
    model = bases.build(base, base.size, alpha, "imagenet")
    raw = keras.Input((base.size, base.size, 3))
    pooled = keras.Model(raw, keras.layers.GlobalAveragePooling2D()(
        model(bases.preprocess_layer(base.preprocess)(raw))))
    started = time.perf_counter()
    for i in range(0, len(files), 32):
        batch = np.stack([pipelines.read_rgb(p, base.size) for p in files[i:i + 32]])
        pooled.predict(batch.astype("float32"), verbose=0)
    return time.perf_counter() - started
