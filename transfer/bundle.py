"""Model bundles: ``models/<name>/`` with ``model.keras``, ``meta.json``, history and plots.

A bundle is written into a temporary sibling folder and renamed into place; ``models/latest``
points at the newest. ``meta.json`` is the one source of truth for what the model expects
(base, input size, preprocessing) and what its outputs mean (class names in index order).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from transfer.errors import TransferError
from transfer.files import write_json  # noqa: F401  (bundle.write_json, for callers)

SCHEMA_VERSION = 1
META = "meta.json"
MODEL = "model.keras"


def default_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def is_bundle(path: Path) -> bool:
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "schema_version" in meta and "class_names" in meta


@contextlib.contextmanager
def writing(target: Path, force: bool):
    """Yield a temporary folder; on success it replaces ``target`` (a bundle only with force)."""
    target = Path(target)
    if target.exists():
        if not force:
            raise TransferError(f"{target} already exists; use --force to replace it")
        if not is_bundle(target):
            raise TransferError(f"{target} exists and is not a model bundle; refusing to replace "
                                "it (choose another --output)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
        if target.exists():
            old = tmp.with_name(tmp.name + "-old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def update_latest(target: Path) -> None:
    """Point ``<models>/latest`` at ``target`` (a relative symlink, replaced atomically)."""
    target = Path(target)
    latest = target.parent / "latest"
    if latest.exists() and not latest.is_symlink():
        return  # a real folder named latest is the user's: leave it alone
    tmp = target.parent / f".latest.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, latest)


def write_history(path: Path, history: dict[str, list]) -> None:
    keys = list(history)
    rows = len(next(iter(history.values()), []))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for i in range(rows):
            writer.writerow([i + 1, *(history[k][i] for k in keys)])


def read_meta(bundle: Path) -> dict:
    bundle = Path(bundle)
    path = bundle / META
    if not bundle.is_dir():
        raise TransferError(f"no model bundle at {bundle}: train one with `transfer train`")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise TransferError(f"{bundle} has no {META}: not a transfer model bundle") from None
    except ValueError as exc:
        raise TransferError(f"{path} is not valid JSON ({exc})") from None
    for key in ("schema_version", "class_names", "image_size", "preprocessing"):
        if key not in meta:
            raise TransferError(f"{path} lacks {key!r}: not a transfer model bundle")
    if meta["schema_version"] > SCHEMA_VERSION:
        raise TransferError(f"{path} has schema version {meta['schema_version']}; this transfer "
                            f"reads up to {SCHEMA_VERSION}: upgrade transfer")
    return meta


def validate_dir(meta: dict) -> Path | None:
    """The validation folder the bundle was trained against, as training named it (or None)."""
    named = (meta.get("data") or {}).get("validate_dir")
    return Path(named) if named else None


def load_keras(path: Path):
    """A ``.keras`` file, loaded with Keras's safe_mode on (no code from the file runs)."""
    from transfer.bases import preprocess_layer_class
    from transfer.tf import keras

    preprocess_layer_class()  # registers transfer>Preprocess before deserializing
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise TransferError(f"cannot load {path}: {exc}") from exc


def load(bundle: Path):
    """(model, meta) of a bundle, loaded with Keras's safe_mode on and checked against meta."""
    meta = read_meta(bundle)
    path = Path(bundle) / MODEL
    if not path.is_file():
        raise TransferError(f"{bundle} has no {MODEL}")
    model = load_keras(path)
    n_out = model.output_shape[-1]
    classes = meta["class_names"]
    expected_out = 1 if len(classes) == 2 else len(classes)
    if n_out != expected_out:
        raise TransferError(f"{bundle}: meta.json lists {len(classes)} classes but the model has "
                            f"{n_out} output(s); the bundle is inconsistent")
    size = meta["image_size"]
    channels = meta.get("channels", 3)
    if tuple(model.input_shape[1:]) != (size, size, channels):
        raise TransferError(f"{bundle}: meta.json says input {size}x{size}x{channels} but the "
                            f"model takes {model.input_shape[1:]}; the bundle is inconsistent")
    return model, meta
