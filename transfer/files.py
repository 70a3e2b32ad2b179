"""Files: write so a reader never sees half of one, refuse to replace without --force, hash."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from transfer.constants import is_ignored_folder, is_image_name, unread_file, unread_photo
from transfer.errors import TransferError


def utf8_text(value) -> str:
    """``value`` as valid UTF-8 text: a name that is not UTF-8 (a Latin-1 folder's
    "chi\\xe9ns", held by Python as a surrogate) with a replacement mark where its odd bytes
    were, as a terminal shows it. For what must be UTF-8: a plot's text (matplotlib raised),
    JSON to a browser, an HTML page that says it is UTF-8."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p ``path``; return the folders this call created, deepest first."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    return missing


@contextlib.contextmanager
def new_folders_kept_on_success(path: Path) -> Iterator[Path]:
    """mkdir -p ``path``; when the block fails (Ctrl-C included), the folders this made are
    removed again, each only if still empty."""
    made = make_dirs(path)
    try:
        yield Path(path)
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or gone): it and its parents are kept
        raise


def is_device_or_pipe(path: Path) -> bool:
    """True for something that exists and is neither a file nor a folder (``/dev/null``, a
    pipe, a socket): written to, never replaced by a file."""
    path = Path(path)
    return path.exists() and not path.is_file() and not path.is_dir()


def standard_stream(path: Path):
    """``sys.stdout`` or ``sys.stderr`` when ``path`` is a name of the system's for that
    stream (``/dev/stdout``, ``/dev/fd/1``, ``/proc/self/fd/2``) whatever the shell sent it to
    (a file: ``> preds.csv``), else None: written through the stream (``write_stream``), so
    that ``>>`` appends and ``>`` is not truncated again. A file named as itself
    (``--output preds.csv > preds.csv``) is a file, refused when it exists."""
    import sys

    if not str(path).startswith(("/dev/", "/proc/")):
        return None
    try:
        target = os.stat(path)
    except (OSError, ValueError):
        return None
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            held = os.fstat(fd)
        except OSError:
            continue
        if (held.st_dev, held.st_ino) == (target.st_dev, target.st_ino):
            return stream
    return None


def names_as_their_bytes(stream) -> None:
    """Make ``stream`` (a standard stream) write names that are not UTF-8 as the file system
    holds them (their bytes, as every file transfer writes): a strict UTF-8 stdout (a desktop
    locale such as en_US.UTF-8) raised UnicodeEncodeError on them."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None and getattr(stream, "errors", None) != "surrogateescape":
        reconfigure(errors="surrogateescape")


def write_stream(stream, text: str) -> None:
    """``text`` to a standard stream, names that are not UTF-8 as their bytes
    (``names_as_their_bytes``)."""
    names_as_their_bytes(stream)
    # still buffered: what cannot be written at the end is the CLI's one line (exit 120)
    stream.write(text)


def resolved(path: Path) -> Path | None:
    """``path`` with its links followed; None for a link loop (which ``resolve()`` raises on:
    RuntimeError before Python 3.13, OSError since)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return None


def free_name(path: Path, taken: set[Path] = frozenset()) -> Path:
    """``path``, or ``path2``, ``path3``... the first that nothing (nor ``taken``) holds: where
    a folder or file is moved aside (``train.old``, ``train.old2``)."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink() or candidate in taken:
        n += 1
        candidate = path.with_name(f"{path.name}{n}")
    return candidate


def refuse_existing(path: Path, force: bool, what: str = "") -> None:
    """One clear error when ``path`` exists and ``force`` is off (the one place that says it)."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not force:
        name = f"{what} {path}" if what else str(path)
        raise TransferError(f"{name} already exists; use --force to replace it")


SYNC_ALL_ABOVE = 64  # files in a folder to flush beyond which one sync() flushes them all


def to_disk(path: Path) -> None:
    """Flush ``path`` to the disk before a rename makes it the real thing: a file, or every
    file and folder under a folder (a bundle, a split). A rename reaches the disk as soon as
    the folder's entry does, the file's blocks later (ext4 and others allocate them late): a
    power cut in between left an export, a meta.json or a bundle under its final name empty
    or cut short, the old one gone. Git and SQLite flush likewise. Best effort: what cannot
    be flushed (a folder on Windows, a file system without it) is left as it is."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        _flush(path)
        return
    found = [Path(root) / name for root, folders, names in os.walk(path)  # links not followed
             for name in [*names, *folders]]
    if len(found) > SYNC_ALL_ABOVE and hasattr(os, "sync"):
        os.sync()  # one call: 2,800 photos of a split took 3.9 s one fsync at a time, 0.1 s so
        return
    for item in [*found, path]:
        _flush(item)


def entries_to_disk(folder: Path) -> None:
    """Flush ``folder``'s own entries (names) after a rename in it: the rename itself lasts."""
    _flush(Path(folder))


def _flush(path: Path) -> None:
    import stat

    try:
        mode = os.lstat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return  # a link, a pipe, a device: nothing of ours to flush
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix, so writers that go by the
    suffix still work); on success it replaces ``path`` (flushed to the disk first:
    ``to_disk``; not when ``durable`` is False: a cache entry, which a damaged read makes
    again), on failure it is removed."""
    path = Path(path)
    if path.is_symlink():  # the file it points at is replaced; the link stays a link
        path = path.resolve()
        # a link to a file not made yet, in a folder not made yet: made, as an output's
        # folders are (the error named the hidden temporary file instead)
        path.parent.mkdir(parents=True, exist_ok=True)
    if is_device_or_pipe(path):
        raise TransferError(f"{path} is not a regular file (a device, a pipe or a socket): "
                            "it is not replaced by one; choose a file")
    sweep_left_by_killed(path.parent)
    tmp = path.with_name(f"{temp_prefix(path.stem)}{path.suffix}")
    try:
        yield tmp
        if durable:
            to_disk(tmp)
        os.replace(tmp, path)
        if durable:
            entries_to_disk(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(folder: Path, busy: str, shared: bool = False) -> Iterator[None]:
    """Hold a lock on ``folder`` itself (``flock`` on the folder, no lock file left behind;
    released when the process ends, however it ends): exclusive (fetch-data writing a split),
    or ``shared`` (train reading one: any number of readers, no writer). Raises TransferError
    with ``busy`` when another process holds it the other way. Where ``fcntl`` does not exist
    (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder this user may enter but not list: nothing to lock with
        yield
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TransferError(busy) from None
        except OSError:
            pass  # a file system without locks (some network shares): run unlocked, as before
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json(path: Path, payload: dict) -> None:
    """``payload`` as indented JSON at ``path``, atomically. A number that is not finite (the
    loss of a run that diverged) is written as null: Python's NaN is no JSON, and a browser's
    ``JSON.parse`` (or any strict reader) refused the whole file."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(nan_as_null(payload), indent=2, default=str, allow_nan=False)
                       + "\n", encoding="utf-8")


def nan_as_null(value):
    """``value`` with every float that is NaN or infinite (in dicts, lists, tuples) None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: nan_as_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [nan_as_null(item) for item in value]
    return value


def digest(parts: dict) -> str:
    """The SHA-256 (hex) of ``parts`` as canonical JSON: a stable key for caches."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A tree of folder links deeper than this is a loop in disguise (links between two subtrees).
MAX_DEPTH = 40


def walk(root: Path, skip_folder=lambda name: False,
         unreadable: list[tuple[str, OSError]] | None = None) -> tuple[list[str], list[str]]:
    """(files, folders) under ``root`` as relative POSIX paths, each folder's entries sorted.

    Symbolic links to files and to folders are followed, as a file browser shows them (a
    user's ``roses -> /photos/2024/roses``); a link back to a folder above it is not entered
    (no loop), nor one already entered on the way down from the root (two folders linking to
    each other), nor anything deeper than MAX_DEPTH. The folders ``skip_folder(name)``
    refuses are left out, with everything in them. A broken link is listed as a file: reading
    it fails, and the reader says so as of any unreadable file (left out silently, a photo
    moved away from under its link went missing from every count); one named as a folder
    (no suffix: ``2024 -> /mnt/usb/2024``) is a folder that cannot be listed
    (``unreachable_folder``).

    A folder that cannot be listed (no permission, a path too long) would take its photos
    out of every count unseen: with ``unreadable`` (a list) each is appended to it as
    (relative POSIX path, "." for the root; the error) and the walk goes on; without, the
    first is a TransferError naming it.
    """
    root = Path(root)
    files, folders = [], []
    branch: dict[str, frozenset] = {}  # the real folders from the root down to each folder

    def cannot_list(error: OSError) -> None:
        rel = Path(error.filename).relative_to(root).as_posix()
        if unreadable is None:
            raise TransferError(f"cannot list the folder {unreadable_folder(root, rel, error)}:"
                                " the photos in it would be left out unseen; make it readable"
                                " or move it away")
        unreadable.append((rel, error))

    for folder, dirs, names in os.walk(root, followlinks=True, onerror=cannot_list):
        here = Path(folder)
        rel = here.relative_to(root)
        real = os.path.realpath(here)
        above = branch.pop(folder, frozenset()) | {real, *map(str, Path(real).parents)}
        dirs[:] = sorted(d for d in dirs if not skip_folder(d)
                         and os.path.realpath(here / d) not in above
                         and len(rel.parts) < MAX_DEPTH)
        for d in dirs:  # two folders linking to each other: each entered once per branch
            branch[os.path.join(folder, d)] = above
        if rel.parts:
            folders.append(rel.as_posix())
        for name in sorted(names):
            if (here / name).is_file():
                files.append((rel / name).as_posix())
            elif not (here / name).exists():
                lost = unreachable_folder(here / name)
                if lost is not None:  # a class on a drive not mounted: its photos unseen
                    cannot_list(lost)
                else:
                    files.append((rel / name).as_posix())
    return files, folders


def unreachable_folder(path: Path) -> OSError | None:
    """The error of a link named as a folder is (no suffix: ``tulips -> /mnt/usb/tulips``)
    that leads nowhere (its target missing, a drive not mounted, or a loop), else None. A
    class folder so linked was left out of the classes in silence: a model of a class
    fewer. (A broken link named as a file, ``rose.jpg``, is an unreadable photo.)"""
    path = Path(path)
    if not path.is_symlink() or path.exists() or path.suffix:
        return None
    import errno

    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return OSError(errno.ENOENT, f"a link to {target}, which leads nowhere: a drive not "
                   "mounted, a folder moved, or a loop", str(path))


def unreadable_folder(root: Path, rel: str, error: OSError) -> str:
    """A folder ``walk`` could not list, and why: "photos/private (Permission denied)"."""
    return f"{Path(root) / rel} ({error.strerror or error})"


def images_under(folder: Path) -> list[Path]:
    """Every image under ``folder`` at any depth, sorted, links followed (``walk``); hidden
    and system files and folders, ``__MACOSX/`` and the tool's own pictures left out; a file
    named as HEIC or raw that Pillow opens (a JPEG renamed .heic) is one (``photos_under``)."""
    return photos_under(folder)[0]


def photos_under(folder: Path, unreadable: list[tuple[str, OSError]] | None = None
                 ) -> tuple[list[Path], list[Path]]:
    """(the images under ``folder``, as ``images_under``; the photos there in a format the
    reader does not take, HEIC or camera raw), from one walk; a folder that cannot be listed
    as ``walk`` treats it. A file named as such a format is asked what it holds
    (``constants.unread_file``: its header, read for those files only, never for every file
    of a big folder): a JPEG renamed .heic is an image, as train, evaluate and fetch-data
    list it; a real HEIC, or a text file named .heic, is the HEIC its name says."""
    folder = Path(folder)
    files, _ = walk(folder, skip_folder=is_ignored_folder, unreadable=unreadable)
    named = [folder / rel for rel in files if unread_photo(rel)]
    kinds = {path: unread_file(path) for path in named}
    return (sorted([folder / rel for rel in files if is_image_name(rel.rsplit("/", 1)[-1])]
                   + [path for path in named if not kinds[path]]),
            sorted(path for path in named if kinds[path]))


def _machine() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing sent, only whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # another user's; or no process id at all
        return True
    return True


def sweep_temp_folders(prefix: str) -> list[Path]:
    """Remove the temporary folders named by ``own_temp_folder_prefix(prefix)`` for processes
    of this machine that are gone without removing them (a SIGKILL runs no clean-up: a killed worker
    left its autograph files, a killed ``serve`` the photos it was sent). Returns them. Only
    folders named with this machine's name and a process id that no longer exists are
    touched; none on Windows, where ``os.kill`` would end the process it asks about."""
    import re
    import shutil
    import tempfile

    if os.name == "nt":
        return []
    mine = re.compile(rf"{re.escape(prefix)}{re.escape(_machine())}-(\d+)-")
    gone = []
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        match = mine.match(folder.name)
        if (match and int(match[1]) != os.getpid() and folder.is_dir()
                and not folder.is_symlink() and not _alive(int(match[1]))):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def _machine_tag() -> str:
    """8 hex digits of this machine's name: short, so that a temporary name stays within the
    file system's 255 bytes when the name it stands for nearly fills them."""
    return hashlib.sha256(_machine().encode()).hexdigest()[:8]


# a leftover younger than this is left alone, dead process or not: a process id names a
# process only within its PID namespace (a container sharing the folder and the host name),
# and no write of a bundle, export or report takes this long
SWEEP_AGE_SECONDS = 3600.0


def temp_prefix(name: str) -> str:
    """``.<name>.tmp-<machine tag>-<pid>-``: the start of the name of a temporary file or
    folder written beside ``name`` (its first 80 bytes), which ``sweep_left_by_killed`` can
    tell to be this process's."""
    short = os.fsdecode(os.fsencode(name)[:80])  # bytes: 80 characters of CJK are 240
    return f".{short}.tmp-{_machine_tag()}-{os.getpid()}-"


def sweep_left_by_killed(folder: Path) -> list[Path]:
    """Remove from ``folder`` the temporary files and folders named by ``temp_prefix`` for
    processes of this machine that are gone: a process killed outright (SIGKILL, the
    out-of-memory killer) runs no clean-up, and its hidden half-written bundle, export or
    conversion stayed beside the user's files for ever. Returns them. Only names with this
    machine's tag and a process id that no longer exists, unchanged for an hour
    (``SWEEP_AGE_SECONDS``), are touched. The ``-old`` copy of a bundle being replaced, which
    may be the only one left, is never removed: it goes back to its name when that is free
    (the process was killed between its two renames); none on Windows."""
    import re
    import shutil
    import time

    if os.name == "nt":
        return []
    mine = re.compile(rf"\..*\.tmp-{_machine_tag()}-(\d+)-")
    gone = []
    try:
        names = [entry.name for entry in os.scandir(folder) if ".tmp-" in entry.name]
    except OSError:  # not there yet, or not listable: nothing to sweep
        return []
    now = time.time()
    for name in names:
        match = mine.match(name)
        if not match or int(match[1]) == os.getpid() or _alive(int(match[1])):
            continue
        path = Path(folder) / name
        with contextlib.suppress(OSError):
            if now - path.lstat().st_mtime < SWEEP_AGE_SECONDS:
                continue
            if name.endswith("-old"):
                _put_back(path, name[1:name.index(".tmp-")])
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            gone.append(path)
    return gone


def _put_back(old: Path, name: str) -> None:
    """A replaced bundle's ``-old`` copy, left by a process killed between moving it aside
    and moving the new one in: renamed back to ``name`` when nothing has that name (not a
    name ``temp_prefix`` cut to 80 bytes, which is not the whole name)."""
    target = old.with_name(name)
    if len(os.fsencode(name)) >= 80 or target.exists() or target.is_symlink():
        return
    with contextlib.suppress(OSError):
        os.rename(old, target)


def own_temp_folder_prefix(prefix: str) -> str:
    """``<prefix><machine>-<pid>-``: the start of a temporary folder's name that
    ``sweep_temp_folders`` can tell to be this process's."""
    return f"{prefix}{_machine()}-{os.getpid()}-"


def is_utf8(text: str) -> bool:
    """Whether ``text`` (a path, a name) is UTF-8: not held with surrogates for odd bytes."""
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# what TensorFlow's file system reads as a pattern in a path (a SavedModel's variables are
# found through a glob): "v[2].tflite" matched nothing, "[" being a character class
GLOB_CHARACTERS = frozenset("[]*?\\")


def tf_safe(text: str) -> bool:
    """Whether TensorFlow can be given ``text`` (a path, a name) as it is: UTF-8, and no
    character its file system takes for a glob pattern (``GLOB_CHARACTERS``)."""
    pattern = GLOB_CHARACTERS - {os.sep, os.altsep}  # Windows's separator is a separator
    return is_utf8(text) and not pattern & set(str(text))


def tf_reachable(folder: Path) -> tuple[Path, Path | None]:
    """``folder`` as TensorFlow can be given it, and the folder to remove afterwards (None):
    itself when its path is ``tf_safe``; else a symbolic link to it in a new folder of the
    system's temporary folder, which the caller removes (the link, never what it points to).
    A Latin-1 USB stick's "l\\xe9at" was refused with a UnicodeEncodeError traceback; a
    "proj [v1]" folder, or an export named "v[2].tflite" (its temporary folder is named after
    it), failed to find the SavedModel's variables ("Failed to find any matching files")."""
    if tf_safe(os.path.abspath(folder)):
        return folder, None
    made = Path(tempfile.mkdtemp(prefix="transfer-alias-"))
    os.symlink(os.path.abspath(folder), made / "work", target_is_directory=True)
    return made / "work", made
