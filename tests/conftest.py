"""Shared fixtures: where the real test assets are, and small real-photo archives.

Assets are found through ``TRANSFER_TEST_ASSETS`` (default: ``../shared`` beside the repo).
Outside CI a missing asset skips with the reason; under ``CI=true`` it fails.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from transfer.progress import Reporter

REPO = Path(__file__).resolve().parents[1]


def _keras_home() -> Path:
    """A temporary KERAS_HOME whose models/ links to the shared genuine weights.

    Keras reads KERAS_HOME once, at import, so it is set here, before any test imports it;
    nothing is ever written into shared/ (the links are removed, not what they point to).
    """
    home = Path(tempfile.mkdtemp(prefix="transfer-keras-home-"))
    # removed when the session ends: it gathers converted TFLite bases (megabytes a session)
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    (home / "models").mkdir()
    shared = Path(os.environ.get("TRANSFER_TEST_ASSETS", REPO.parent / "shared")) / "keras/models"
    if shared.is_dir():
        for item in shared.iterdir():
            (home / "models" / item.name).symlink_to(item.resolve())
    return home


os.environ["KERAS_HOME"] = str(_keras_home())
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-xdist sets its controller's COLUMNS (80 in
    os.environ.pop("COLUMNS", None)  # a pipe) in each worker: the CLI's width as in one process
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The report written at the end of every train/evaluate skips its Grad-CAM overlays in the
# suite (about 2 s a run); tests/test_report.py checks the overlays with write_report itself.
os.environ.setdefault("TRANSFER_REPORT_GRADCAMS", "0")
# One TensorFlow thread per op and between ops in each test process (and the workers it
# starts): the suite runs several processes at once, each of which would otherwise start a
# thread pool as wide as the machine. Measured on 2 cores (test_training, test_export,
# test_quantize and test_evaluate, 2 workers, one run each way): 8% less CPU, 5% less time.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def in_ci() -> bool:
    """CI is any truthy CI variable (true, 1, yes...), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def assets_root() -> Path:
    return Path(os.environ.get("TRANSFER_TEST_ASSETS", REPO.parent / "shared"))


def missing(reason: str):
    """What a test cannot have here (an asset, a browser, a read-only folder): a failure under
    CI, a skip with the reason elsewhere."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def require_asset(relpath: str) -> Path:
    path = assets_root() / relpath
    if not path.exists():
        missing(f"test asset {path} is missing (set TRANSFER_TEST_ASSETS to the folder "
                "holding data/ and keras/)")
    return path


@pytest.fixture(scope="session")
def kaggle_zip() -> Path:
    """The real Kaggle-layout train.zip (1500 cats + 1500 dogs)."""
    return require_asset("data/dogs-vs-cats/train.zip")


@pytest.fixture(scope="session")
def real_photos(kaggle_zip) -> dict[str, list[tuple[str, bytes]]]:
    """60 real cat and 60 real dog JPEGs (name, bytes), original Kaggle files (numbers < 1000)."""
    photos: dict[str, list[tuple[str, bytes]]] = {"cats": [], "dogs": []}
    with zipfile.ZipFile(kaggle_zip) as archive:
        for cls in ("cat", "dog"):
            for n in range(60):
                name = f"{cls}.{n}.jpg"
                photos[cls + "s"].append((name, archive.read(f"train/{name}")))
    return photos


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def kaggle_members(real_photos, per_class: int) -> dict[str, bytes]:
    return {f"train/{name}": data for cls in ("cats", "dogs")
            for name, data in real_photos[cls][:per_class]}


@pytest.fixture(autouse=True)
def _no_interruption_carried_over():
    """A test that records a signal's interruption (errors) and fails before clearing it
    must not make every later bundle write in this worker raise it."""
    yield
    from transfer import errors

    errors.clear_interrupted()


class Recorder(Reporter):
    """A reporter that keeps what the library says (info and warnings) for a test to read."""

    def __init__(self):
        self.infos, self.warnings = [], []

    def info(self, message):
        self.infos.append(message)

    def warn(self, message):
        self.warnings.append(message)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 3]


def text_as_jpg() -> bytes:
    return b"this is not an image, just text with a .jpg name\n" * 10


def progressive_claiming(data: bytes, size: tuple[int, int]) -> bytes:
    """A progressive JPEG of a few KB whose header says it is ``size`` (width, height): the
    real photo ``data`` re-saved progressive at 64 x 64, its frame header (SOF2) rewritten.
    Decoding it costs memory for ``size``, not for its bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(io.BytesIO(data)) as photo:
        photo.convert("RGB").resize((64, 64)).save(buffer, "JPEG", progressive=True)
    jpeg = bytearray(buffer.getvalue())
    at = 2
    while jpeg[at + 1] != 0xC2:  # marker segments up to the progressive frame header
        at += 2 + int.from_bytes(jpeg[at + 2:at + 4], "big")
    jpeg[at + 5:at + 7] = size[1].to_bytes(2, "big")
    jpeg[at + 7:at + 9] = size[0].to_bytes(2, "big")
    return bytes(jpeg)


def png_bytes(mode: str = "RGB", size=(32, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode in ("L", "P") else (200, 100, 50, 255)[: len(mode)]).save(
        buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """The genuine MobileNet alpha 0.25 ImageNet weights (no top), via KERAS_HOME."""
    require_asset("keras/models/mobilenet_2_5_224_tf_no_top.h5")
    return Path(os.environ["KERAS_HOME"]) / "models/mobilenet_2_5_224_tf_no_top.h5"


def split_from_archive(kaggle_zip: Path, root: Path, train: int, validate: int, test: int = 0):
    from transfer.datasets import FetchOptions, fetch_data

    fetch_data(FetchOptions(archive=kaggle_zip, data_dir=root, train_per_class=train,
                            validate_per_class=validate, test_per_class=test))
    return root


@pytest.fixture(scope="session")
def tiny_split(kaggle_zip, tmp_path_factory) -> Path:
    """12 train + 6 validate real photos per class (data/train, data/validate)."""
    return split_from_archive(kaggle_zip, tmp_path_factory.mktemp("tiny") / "data", 12, 6)


@pytest.fixture(scope="session")
def small_split(kaggle_zip, tmp_path_factory) -> Path:
    """100 train + 50 validate + 20 test real photos per class."""
    return split_from_archive(kaggle_zip, tmp_path_factory.mktemp("small") / "data", 100, 50,
                              20)


@pytest.fixture(scope="session")
def trained_bundle(small_split, mobilenet_weights, tmp_path_factory):
    """A real bundle: genuine MobileNet-0.25 + a new head on 100 photos per class (the
    training test checks its accuracy; predict/evaluate/explain/export use it). Without
    test-time flips: the plain 224 px model; tests/test_tta.py trains a flipped one."""
    from transfer.training import HParams, train

    models = tmp_path_factory.mktemp("trained") / "models"
    return train(HParams(data_dir=small_split, base="mobilenet", alpha=0.25,
                         weights="imagenet", epochs=30, learning_rate=3e-3, patience=5,
                         augment_copies=2, tta="none", models_dir=models,
                         output=models / "mobilenet"))


@pytest.fixture(scope="session")
def mnist_quick(tmp_path_factory):
    """One quick real `transfer mnist` run (6000 digits, 1 epoch): (result, folder holding
    the mnist-cnn bundle). test_mnist checks it; the browser tests serve a copy."""
    from transfer import mnist

    folder = tmp_path_factory.mktemp("mnist")
    result = mnist.run(mnist.MnistParams(data=require_asset("data/mnist"), limit=6000, epochs=1,
                                         batch_size=16, output=folder / "mnist-cnn"))
    return result, folder


def split_images(split: Path, per_class: int | None = None) -> list[tuple[Path, str]]:
    """(image, class folder) of a split folder, sorted."""
    rows = []
    for folder in sorted(p for p in split.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())[:per_class]
        rows += [(f, folder.name) for f in files]
    return rows


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A loud line when tests were skipped: a green run with skips proves less than it seems."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_sep(
            "!", f"{len(skipped)} test(s) SKIPPED: missing assets or tools (see -rs); under CI "
            "they fail instead", red=True, bold=True)


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path, shared: bool):
    """Another process holding ``folder``'s lock (``transfer.files.exclusive``) as a running
    fetch-data (exclusive) or train (shared) does, until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from transfer.files import exclusive\n"
        f"with exclusive(Path({str(folder)!r}), 'busy', shared={shared}):\n"
        "    print('locked', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait(timeout=30)


def diverged_copy(bundle_folder: Path, dest: Path) -> Path:
    """A copy of a bundle whose head's weights are NaN: what a training that diverged saves
    (with a warning). Its outputs are NaN for every image."""
    import keras
    import numpy as np

    from transfer import bundle

    shutil.copytree(bundle_folder, dest)
    model = keras.saving.load_model(dest / bundle.MODEL, compile=False)
    head = model.layers[-1]
    head.set_weights([np.full_like(w, np.nan) for w in head.get_weights()])
    model.save(dest / bundle.MODEL)
    return dest


def flushes(monkeypatch) -> list[tuple[str, object]]:
    """Record each ``os.fsync`` (the inode flushed), ``os.sync`` and rename (its target), in
    order."""
    events: list[tuple[str, object]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    real_sync = getattr(os, "sync", None)

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", Path(dst)))

    def rename(src, dst):
        real_rename(src, dst)
        events.append(("rename", Path(dst)))

    def sync():
        events.append(("sync", None))
        real_sync()

    if real_sync is not None:
        monkeypatch.setattr(os, "sync", sync)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


def flushed_before(events, target: Path) -> set[int]:
    """The inodes flushed before the (last) rename onto ``target``."""
    last = max(i for i, (kind, what) in enumerate(events) if kind == "rename" and what == target)
    return {what for kind, what in events[:last] if kind == "fsync"}
