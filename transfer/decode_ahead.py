"""Decoding ahead: a run's photos decoded by a helper process while the run itself is busy on
one core (importing TensorFlow, building the model, opening the engine).

Before its feature pass, a `transfer train` process spends seconds on work that uses one
core: importing TensorFlow (3 s on the project's 2-core machine), building the Keras model,
converting or loading
the TFLite base and checking it. The pass then keeps both cores busy decoding JPEGs (about
1.2 ms a Kaggle photo: decode 0.35, Pillow's resize 0.75) and running the base. A helper
process (no TensorFlow, no GIL shared with the run) decodes the pass's photos during that
time, through the one reader (``pipelines.read_rgb``, imported from the run's own
``sys.path``; the helper checks that the reader's file and Pillow's version are the run's, and
takes on the run's Pillow settings), into a buffer both processes map; the pass takes each
photo from there when it is ready (and its file's size and mtime are still those the helper
read), and decodes it itself otherwise. The pixels are the same bytes either way.

Bounded: photos are taken in the passes' order up to ``TRANSFER_DECODE_AHEAD_MB`` (default
``BUDGET_MB``; 0 turns decoding ahead off); the buffer goes to ``/dev/shm`` when it has twice
that free, else to the temporary folder when it has, else decoding ahead is off. The helper
stops at the pass's first photo it has not reached (from there the pass's own threads keep
the cores busy), and with the run: ``close()``, or when it sees its parent gone. The buffer
is an unnamed file (handed to the helper as a file descriptor): nothing is left behind even by
a killed run. POSIX only (the descriptors); elsewhere, and on one core, the pass decodes every
photo itself.

The protocol (the spec as an unnamed JSON file's descriptor; stdout: lines) is private to
this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

from transfer.errors import env_number

# (size, mtime_ns) of a file, as the feature cache keys it: a photo replaced after the helper
# decoded it is read again
from transfer.features import size_and_mtime as _stamp

BUDGET_MB = 768  # 2,800 photos at 224 px hold 420 MB; 5,000 at 224 or 3,000 at 288 fit
REPORT_EVERY = 16  # photos between the helper's progress lines

# what the helper runs: the run's own sys.path first, then this module's _helper
_BOOT = ("import json, os, sys\n"
         "spec = json.load(os.fdopen(int(sys.argv[2]), encoding='utf-8'))\n"
         "sys.path[:] = spec['path']\n"
         "from transfer.decode_ahead import _helper\n"
         "_helper(spec, int(sys.argv[1]))\n")


def budget_bytes() -> int:
    """The most bytes of decoded photos a run holds ahead (``TRANSFER_DECODE_AHEAD_MB``)."""
    return int(env_number("TRANSFER_DECODE_AHEAD_MB", BUDGET_MB) * 2**20)


def available() -> bool:
    """Whether decoding ahead can help here: POSIX (the buffer's descriptor is inherited) and
    at least two cores this process may use (on one, the helper would take turns with the run)."""
    from transfer.engines import cpu_threads

    return os.name == "posix" and cpu_threads() >= 2


def _stamps(buffer: np.ndarray, at: int, n: int) -> np.ndarray:
    """The buffer's table of (size, mtime_ns) per photo, as the helper saw each file."""
    return np.ndarray((n, 2), dtype=np.int64, buffer=buffer, offset=at)


def _buffer_folder(total: int) -> str | None:
    """Where the buffer goes: memory-backed ``/dev/shm`` when it has room, else the temporary
    folder when it has room, else nowhere (None)."""
    for folder in ("/dev/shm", tempfile.gettempdir()):
        with contextlib.suppress(OSError):
            if os.path.isdir(folder) and shutil.disk_usage(folder).free > 2 * total:
                return folder
    return None


def _reader_identity() -> dict:
    """What the helper must share with the run to decode the same pixels: the reader's own
    file and Pillow's version."""
    import PIL

    from transfer import pipelines

    return {"reader": os.path.realpath(pipelines.__file__), "pillow": PIL.__version__}


def _pillow_settings() -> dict:
    """The run's Pillow settings that decide what a read accepts (a program may have changed
    them): the helper takes them on."""
    from PIL import Image, ImageFile

    return {"max_image_pixels": Image.MAX_IMAGE_PIXELS,
            "load_truncated_images": bool(ImageFile.LOAD_TRUNCATED_IMAGES)}


class DecodeAhead:
    """Photos (path, size) decoded ahead by a helper process; ``read`` gives one's pixels.

    Use as a context manager (or call ``close``). Thread-safe: the pass's decoding threads
    call ``read`` together. ``hits``: how many of its photos were read from the buffer (each
    counted once, however often it was read)."""

    def __init__(self, jobs: list[tuple], budget: int | None = None):
        budget = budget_bytes() if budget is None else int(budget)
        self.index: dict[tuple[str, int], int] = {}
        self.slots: list[tuple[int, int]] = []  # (offset, size) of job k
        total = 0
        for path, size in jobs:
            key = (os.fspath(path), int(size))
            nbytes = int(size) * int(size) * 3
            if key in self.index:
                continue
            if total + nbytes > budget:
                break
            self.index[key] = len(self.slots)
            self.slots.append((total, int(size)))
            total += nbytes
        self.done = 0  # jobs 0..done-1 are written (or failed)
        self.failed: set[int] = set()
        self._served: set[int] = set()
        self._lock = threading.Lock()
        self._proc = self._reader = self._buffer = self._stamps = None
        self._stamps_at = -(-total // 8) * 8  # after the pixels: (size, mtime_ns) per photo
        total = self._stamps_at + 16 * len(self.slots)
        folder = _buffer_folder(total) if self.slots and os.name == "posix" else None
        if folder is None:
            self.index.clear()
            return
        try:
            self._start(folder, total)
        except Exception:  # no helper (none can be started here): the pass decodes them all
            self.close()
        except BaseException:  # Ctrl-C while it starts: nothing is left running
            self.close()
            raise

    def _start(self, folder: str, total: int) -> None:
        keys = sorted(self.index, key=self.index.get)
        spec = {"path": [p for p in sys.path if isinstance(p, str)], "parent": os.getpid(),
                "total": total, "stamps_at": self._stamps_at,
                **_reader_identity(), "settings": _pillow_settings(),
                "jobs": [[p, s, self.slots[k][0]] for k, (p, s) in enumerate(keys)]}
        # both files unnamed from the start: a run killed at any point leaves neither
        with tempfile.TemporaryFile(dir=folder) as buffer_file, \
                tempfile.TemporaryFile() as spec_file:
            os.ftruncate(buffer_file.fileno(), total)
            self._buffer = np.memmap(buffer_file, dtype=np.uint8, mode="r+", shape=(total,))
            self._stamps = _stamps(self._buffer, self._stamps_at, len(self.slots))
            spec_file.write(json.dumps(spec).encode("utf-8"))
            spec_file.flush()
            spec_file.seek(0)
            fds = (buffer_file.fileno(), spec_file.fileno())
            self._proc = subprocess.Popen(
                # -I: nothing of its folder or environment on its path before the run's own
                [sys.executable, *subprocess._args_from_interpreter_flags(), "-I", "-c", _BOOT,
                 *map(str, fds)], pass_fds=fds, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                start_new_session=True)  # out of the terminal's Ctrl-C: the run stops it
        self._reader = threading.Thread(target=self._follow, name="transfer-decode-ahead",
                                        daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        """Read the helper's progress lines: ``= k`` (jobs below k are done) and ``! k`` (job k
        failed: the pass reads it itself, and records the reader's own error)."""
        for line in self._proc.stdout:
            kind, _, number = line.strip().partition(" ")
            if not number.isdigit():
                continue  # not a line of the protocol (nothing else writes there)
            with self._lock:
                if kind == "=":
                    self.done = max(self.done, int(number))
                elif kind == "!":
                    self.failed.add(int(number))

    def read(self, path, size: int) -> np.ndarray:
        """(size, size, 3) uint8: the photo's decoded pixels, from the buffer when the helper
        has them, else read now through ``pipelines.read_rgb`` (which raises its errors)."""
        from transfer import pipelines

        k = self.index.get((os.fspath(path), int(size)))
        if k is not None:
            with self._lock:
                ready = k < self.done and k not in self.failed
            if ready and _stamp(path) == tuple(self._stamps[k]):  # the file it decoded
                with self._lock:
                    self._served.add(k)
                offset, side = self.slots[k]
                return np.array(self._buffer[offset:offset + side * side * 3]).reshape(
                    side, side, 3)
            if k >= self.done:  # the pass caught up: its own threads decode from here
                self.stop()
        return pipelines.read_rgb(path, size)

    @property
    def hits(self) -> int:
        return len(self._served)

    @property
    def pid(self) -> int | None:
        """The helper's process id (None when there is none)."""
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """End the helper (the photos it wrote stay readable)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()

    def close(self) -> None:
        """End the helper and drop the buffer."""
        self.stop()
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self._proc is not None and self._proc.stdout is not None:
            with contextlib.suppress(OSError):
                self._proc.stdout.close()
        with self._lock:
            self.done = 0  # nothing is read from the buffer any more
            self.index = {}
        self._buffer = self._stamps = None

    def __enter__(self) -> DecodeAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def for_run(run) -> DecodeAhead | None:
    """Decoding ahead for a run's feature passes (``RunPlan``): its training photos at the
    training features' size, then its validation photos at the model's; None when the run has
    no feature pass (end-to-end training), decoding ahead is off or cannot help here
    (``available``), or its buffer has nowhere to go."""
    if not run.use_cache or budget_bytes() == 0 or not available():
        return None
    jobs = ([(s.path, run.feature_size) for s in run.usable("train")]
            + [(s.path, run.size) for s in run.usable("validate")])
    ahead = DecodeAhead(jobs)
    return ahead if ahead.pid is not None else None  # (without a helper it holds nothing)


def _helper(spec: dict, buffer_fd: int) -> None:
    """The helper process: decode the jobs in order into the buffer, saying how far it is;
    nothing at all if its reader is not the run's (another ``transfer`` or Pillow on its
    path)."""
    from PIL import Image, ImageFile

    from transfer import pipelines

    if _reader_identity() != {"reader": spec["reader"], "pillow": spec["pillow"]}:
        return  # the run sees no progress and decodes every photo itself
    Image.MAX_IMAGE_PIXELS = spec["settings"]["max_image_pixels"]
    ImageFile.LOAD_TRUNCATED_IMAGES = spec["settings"]["load_truncated_images"]
    with os.fdopen(buffer_fd, "r+b") as file:
        buffer = np.memmap(file, dtype=np.uint8, mode="r+", shape=(spec["total"],))
    stamps = _stamps(buffer, spec["stamps_at"], len(spec["jobs"]))
    parent = spec["parent"]
    out = sys.stdout
    jobs = spec["jobs"]
    for k, (path, size, offset) in enumerate(jobs):
        if os.getppid() != parent:
            return  # the run ended without stopping it
        try:
            before = _stamp(path)
            pixels = pipelines.read_rgb(path, size)
            if _stamp(path) != before:
                raise OSError("the file changed while it was read")
            buffer[offset:offset + pixels.size] = pixels.reshape(-1)
            stamps[k] = before
        except Exception:  # the pass reads it again (and records the reader's own error)
            out.write(f"! {k}\n")
        if (k + 1) % REPORT_EVERY == 0 or k + 1 == len(jobs):
            out.write(f"= {k + 1}\n")
            out.flush()
