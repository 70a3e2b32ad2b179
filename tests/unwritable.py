"""A folder nobody can write into, root included (tests of read-only output folders).

``chmod`` does not stop root, so as root the folder is made immutable (``chattr +i``, ext4 and
most Linux file systems); when neither works the test fails under CI and is skipped with
the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from conftest import missing


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@contextlib.contextmanager
def unwritable_folder(folder: Path):
    """Yield ``folder`` (created) made read-only for everyone; restored afterwards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    if as_root:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    else:
        folder.chmod(0o555)
        done = True
    try:
        if not done or _writable(folder):
            missing("cannot make a folder read-only here (root without chattr +i)")
        yield folder
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        else:
            folder.chmod(0o755)


def names_path(error: BaseException, path: Path) -> bool:
    """True when ``error`` names ``path``: an OSError's filename, or the message's text (a
    TransferError from the settings' checks)."""
    return str(path) in (getattr(error, "filename", None) or "") or str(path) in str(error)


def unlistable_folder(parent: Path) -> str:
    """Make, under ``parent``, a chain of folders whose deepest one cannot be listed, root
    included: its path is longer than the system's PATH_MAX (ENAMETOOLONG), as a folder
    without read permission is unreadable to its user. Returns it relative to ``parent``."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    name = "n" * 250
    limit = os.pathconf(str(parent), "PC_PATH_MAX")
    parts: list[str] = []
    fd = os.open(parent, os.O_RDONLY)
    try:
        while len(str(parent)) + len(parts) * (len(name) + 1) <= limit:
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
            parts.append(name)
        # a photo inside, which the walk cannot reach
        photo = os.open("kept.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(photo, b"\xff\xd8\xff")
        os.close(photo)
    finally:
        os.close(fd)
    return "/".join(parts)
