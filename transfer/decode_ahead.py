"""Decoding ahead: a run's photos decoded by a helper process while the run itself is busy on
one core (importing TensorFlow, building the model, opening the engine).

Before its feature pass, a `transfer train` process spends seconds on work that uses one
core: importing TensorFlow (3 s on a laptop), building the Keras model, converting or loading
the TFLite base and checking it. The pass then keeps both cores busy decoding JPEGs (about
1.2 ms a Kaggle photo: decode 0.35, Pillow's resize 0.75) and running the base. A helper
process (``python -m transfer.decode_ahead``: no TensorFlow, no GIL shared with the run)
decodes the pass's photos during that time, through the one reader
(``pipelines.read_rgb``), into a file-backed buffer both processes map; the pass takes each
photo from there when it is ready and decodes it itself otherwise. The pixels are the same
bytes either way.

Bounded: photos are taken in the passes' order up to ``TRANSFER_DECODE_AHEAD_MB`` (default
``BUDGET_MB``; 0 turns decoding ahead off) and to the free space of the buffer's folder
(``/dev/shm`` where it exists). The helper stops at the pass's first photo it has not reached
(from there the pass's own threads keep the cores busy), and with the run: ``close()``, or
when it sees its parent gone. On POSIX the buffer's file is removed as soon as both processes
have mapped it, so nothing is left behind even by a killed run.

The protocol (stdin: one JSON object; stdout: lines) is private to this module.
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

BUDGET_MB = 768  # 2,800 photos at 224 px hold 420 MB; 5,000 at 224 or 3,000 at 288 fit
REPORT_EVERY = 16  # photos between the helper's progress lines


def budget_bytes() -> int:
    """The most bytes of decoded photos a run holds ahead (``TRANSFER_DECODE_AHEAD_MB``)."""
    try:
        return max(0, int(float(os.environ.get("TRANSFER_DECODE_AHEAD_MB", BUDGET_MB)) * 2**20))
    except ValueError:
        return BUDGET_MB * 2**20


def _buffer_folder(total: int) -> str | None:
    """Where the buffer goes: memory-backed ``/dev/shm`` when it has room, else the temporary
    folder when it has room, else nowhere (None)."""
    for folder in ("/dev/shm", tempfile.gettempdir()):
        with contextlib.suppress(OSError):
            if os.path.isdir(folder) and shutil.disk_usage(folder).free > 2 * total:
                return folder
    return None


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
        self._proc = self._reader = self._buffer = self._path = None
        folder = _buffer_folder(total) if self.slots else None
        if folder is None:
            self.index.clear()
            return
        try:
            self._start(folder, total)
        except Exception:  # no helper (none can be started here): the pass decodes them all
            self.close()
            self.index.clear()

    def _start(self, folder: str, total: int) -> None:
        fd, path = tempfile.mkstemp(prefix="transfer-decoded-", suffix=".u8", dir=folder)
        os.close(fd)
        self._path = path
        self._buffer = np.memmap(path, dtype=np.uint8, mode="w+", shape=(total,))
        keys = sorted(self.index, key=self.index.get)
        spec = {"buffer": path, "total": total, "parent": os.getpid(),
                "jobs": [[p, s, self.slots[k][0]] for k, (p, s) in enumerate(keys)]}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "transfer.decode_ahead"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
            **_detached())
        self._reader = threading.Thread(target=self._follow, name="transfer-decode-ahead",
                                        daemon=True)
        self._reader.start()
        try:
            self._proc.stdin.write(json.dumps(spec))
            self._proc.stdin.close()
        except OSError:  # the helper died at start: nothing is decoded ahead
            self.stop()

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
                if ready:
                    self._served.add(k)
            if ready:
                offset, side = self.slots[k]
                return np.array(self._buffer[offset:offset + side * side * 3]).reshape(
                    side, side, 3)
            if k >= self.done:  # the pass caught up: its own threads decode from here
                self.stop()
        return pipelines.read_rgb(path, size)

    @property
    def hits(self) -> int:
        return len(self._served)

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
        self._buffer = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)  # already gone on POSIX: the helper removed it

    def __enter__(self) -> DecodeAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def for_run(run) -> DecodeAhead | None:
    """Decoding ahead for a run's feature passes (``RunPlan``): its training photos at the
    training features' size, then its validation photos at the model's; None when the run has
    no feature pass (end-to-end training) or decoding ahead is off or has nowhere to go."""
    if not run.use_cache or budget_bytes() == 0:
        return None
    jobs = ([(s.path, run.feature_size) for s in run.usable("train")]
            + [(s.path, run.size) for s in run.usable("validate")])
    ahead = DecodeAhead(jobs)
    if not ahead.index:
        ahead.close()
        return None
    return ahead


def _detached() -> dict:
    """Popen options keeping the helper out of the terminal's Ctrl-C (the run stops it)."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


def _helper() -> None:
    """The helper process: decode the jobs in order into the buffer, saying how far it is."""
    from transfer import pipelines

    spec = json.loads(sys.stdin.read())
    buffer = np.memmap(spec["buffer"], dtype=np.uint8, mode="r+", shape=(spec["total"],))
    if os.name == "posix":  # both processes hold it mapped: no file is left if either dies
        with contextlib.suppress(OSError):
            os.unlink(spec["buffer"])
    parent = spec["parent"]
    out = sys.stdout
    for k, (path, size, offset) in enumerate(spec["jobs"]):
        if os.name == "posix" and os.getppid() != parent:
            return  # the run ended without stopping it
        try:
            pixels = pipelines.read_rgb(path, size)
            buffer[offset:offset + pixels.size] = pixels.reshape(-1)
        except Exception:  # the pass reads it again and records the reader's own error
            out.write(f"! {k}\n")
        if (k + 1) % REPORT_EVERY == 0 or k + 1 == len(spec["jobs"]):
            out.write(f"= {k + 1}\n")
            out.flush()


if __name__ == "__main__":
    _helper()
