"""`transfer fetch-data`: get the Dogs vs. Cats photos and lay out a train/validate(/test) split.

The layout is the one Keras's ``flow_from_directory`` expects::

    data/train/cats/cat.12.jpg     data/validate/cats/...     data/test/cats/... (optional)
    data/train/dogs/dog.7.jpg      data/validate/dogs/...     data/manifest.json

Where the photos come from is `transfer.sources` (Kaggle, Microsoft, a local archive); how an
archive or folder is read safely is `transfer.archive`. This module makes the split: every
image is fully decoded before it is placed (broken files are skipped and reported); the split
is deterministic for a seed, balanced and disjoint; it is built in a temporary folder and
swapped into place under a journal, so that an interrupted run never leaves half a split:

1. the new split and its manifest are built in ``data/.fetch-tmp-*``;
2. ``data/.fetch-swap.json`` (the journal) names the folders about to move;
3. folders fetch-data did not make are moved aside (``data/train.old``); the previous split
   goes to ``data/.fetch-old-*``; the new split folders move in;
4. the new ``manifest.json`` replaces the old one in one rename: the commit;
5. the journal, the previous split and the temporary folder are removed.

Any fetch-data run on a data folder first finishes (after step 4) or rolls back (before it)
a swap that a crash or Ctrl-C interrupted, so ``data/`` always ends with one complete split,
old or new, and the manifest that describes it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from transfer import __version__
from transfer.archive import CLASSES, ImageSource, SkipMember, check_image, open_images
from transfer.archive import fingerprint as archive_fingerprint
from transfer.errors import TransferError
from transfer.files import write_json
from transfer.progress import Reporter
from transfer.settings import FetchOptions
from transfer.sources import obtain_archive, resolve_source

__all__ = ["FetchOptions", "FetchResult", "fetch_data", "read_manifest", "recover"]

SPLITS = ("train", "validate", "test")
MANIFEST = "manifest.json"
TMP_PREFIX = ".fetch-tmp-"
OLD_PREFIX = ".fetch-old-"
JOURNAL = ".fetch-swap.json"
CACHE = ".cache"


@dataclass
class FetchResult:
    """What `fetch_data` did: where, from which source, the counts and what was skipped."""

    data_dir: Path
    source: str
    archive: str
    counts: dict[str, dict[str, int]]
    skipped: list[dict[str, str]]
    noop: bool = False
    moved_aside: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- public entry


def fetch_data(options: FetchOptions, reporter: Reporter | None = None,
               kaggle_api_factory: Callable[[], object] | None = None) -> FetchResult:
    """Fetch the photos and write the split described by ``options`` into its ``data_dir``.

    Args:
        options: what to fetch and how to split it (`transfer.settings.FetchOptions`; it is
            validated here).
        reporter: progress and messages (default: silent).
        kaggle_api_factory: makes the Kaggle client (default: the ``kaggle`` package's
            ``KaggleApi``); tests pass a fake.

    Returns:
        A FetchResult: counts per split and class, the skipped files with the reason, the
        folders moved aside, the manifest; ``noop`` when the data folder already held this
        very split.

    Raises:
        TransferError: a bad option, an unreachable or refused source, an unsafe or unreadable
            archive, too few usable images, or an existing split that ``--force`` would replace.
            Nothing is left half-done: a data folder fetch-data created is removed again when it
            is still empty, and a previous split stays whole.
    """
    reporter = reporter or Reporter()
    opts = options.validated()
    data_dir = Path(opts.data_dir)
    created = _make_dirs(data_dir)
    try:
        return _fetch(opts, data_dir, reporter, kaggle_api_factory)
    except BaseException:
        _remove_if_empty(data_dir, created)
        raise


def read_manifest(data_dir: Path) -> dict | None:
    """The manifest fetch-data wrote in ``data_dir``, or None."""
    manifest = _read_json_or_none(Path(data_dir) / MANIFEST)
    if isinstance(manifest, dict) and manifest.get("tool") == "transfer fetch-data":
        return manifest
    return None


def recover(data_dir: Path, reporter: Reporter | None = None) -> str | None:
    """Finish or roll back a swap an interrupted run left in ``data_dir``; say which, or None.

    After the new manifest was written the swap is finished (the previous split is removed);
    before, it is rolled back (the previous split and any folder moved aside come back). Then
    leftover temporary folders are removed. Safe to call at any time; fetch_data calls it first.
    """
    data_dir = Path(data_dir)
    journal = _read_json_or_none(data_dir / JOURNAL)
    outcome = None
    if journal is not None:
        outcome = _finish_or_roll_back(data_dir, journal)
        if reporter is not None:
            reporter.warn(f"an earlier fetch-data in {data_dir} was interrupted while swapping "
                          f"splits; {outcome}")
    elif (data_dir / JOURNAL).exists():
        (data_dir / JOURNAL).unlink()  # half-written journal: nothing had moved yet
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        for stale in data_dir.glob(prefix + "*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
    return outcome


# --------------------------------------------------------------------------- steps


def _fetch(opts: FetchOptions, data_dir: Path, reporter: Reporter,
           kaggle_api_factory) -> FetchResult:
    recover(data_dir, reporter)
    source = resolve_source(opts, reporter, kaggle_api_factory)
    request = _request_key(opts, source)
    previous = read_manifest(data_dir)
    if previous is not None and previous.get("request") == request and _intact(data_dir, previous):
        reporter.info(f"{data_dir} already holds this split (same source, counts and seed); "
                      "nothing to do")
        return FetchResult(data_dir, source, previous["source"].get("archive", ""),
                           previous["counts"], previous.get("skipped", []), noop=True,
                           manifest=previous)
    ours, foreign = _existing_splits(data_dir, previous)
    _refuse_unless_forced(opts, data_dir, previous, request, ours, foreign)

    obtained = obtain_archive(opts, source, data_dir / CACHE, reporter, kaggle_api_factory)
    with open_images(obtained.path, data_dir / CACHE) as images:
        fingerprint = (request.get("archive_sha256") or obtained.sha256
                       or images.fingerprint())
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=data_dir))
        try:
            counts, files, skipped = _build_split(images, opts, tmp, reporter)
            manifest = {
                "tool": "transfer fetch-data",
                "version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "split_id": uuid.uuid4().hex,
                "request": request,
                "source": {"kind": source, "archive": str(obtained.path),
                           "archive_sha256": fingerprint, "layout": images.layout,
                           **({"competition": opts.competition} if source == "kaggle" else {}),
                           **({"url": opts.microsoft_url} if source == "microsoft" else {})},
                "seed": opts.seed,
                "splits": list(counts),
                "counts": counts,
                "files": files,
                "skipped": skipped,
            }
            moved = _swap_into_place(data_dir, tmp, manifest, ours, foreign)
        finally:
            if not (data_dir / JOURNAL).exists():
                shutil.rmtree(tmp, ignore_errors=True)
    for name in moved:
        reporter.warn(f"moved the existing folder that fetch-data did not make to {name}")
    return FetchResult(data_dir, source, str(obtained.path), counts, skipped, moved_aside=moved,
                       manifest=manifest)


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p ``path``; return the folders this call created, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_if_empty(data_dir: Path, created: list[Path]) -> None:
    """After a failure, when this run created ``data_dir``: remove the empty folders of the
    download cache, then the folders this run created, each only when empty (a partial
    download, or anything else, keeps them)."""
    if not created:
        return
    cache = data_dir / CACHE
    empty = [Path(folder) for folder, _, _ in os.walk(cache, topdown=False)]
    for folder in (*empty, *created):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or gone): kept


def _read_json_or_none(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _request_key(opts: FetchOptions, source: str) -> dict:
    key = {"source": source, "seed": opts.seed, "per_class": opts.per_split()}
    if source == "kaggle":
        key["competition"] = opts.competition
    elif source == "microsoft":
        key["url"] = opts.microsoft_url
    else:
        archive = Path(opts.archive)
        if not archive.exists():
            raise TransferError(f"archive not found: {archive}")
        key["archive_sha256"] = archive_fingerprint(archive)
        key["archive"] = str(archive.resolve())
    return key


def _intact(data_dir: Path, manifest: dict) -> bool:
    """True when every split folder holds exactly the files the manifest lists."""
    try:
        for split in manifest["splits"]:
            for cls, names in manifest["files"][split].items():
                folder = data_dir / split / cls
                if sorted(p.name for p in folder.iterdir()) != sorted(names):
                    return False
    except (KeyError, OSError, TypeError, AttributeError):
        return False
    return True


def _existing_splits(data_dir: Path, manifest: dict | None) -> tuple[list[str], list[str]]:
    made = set(manifest.get("splits", [])) if manifest else set()
    present = [s for s in SPLITS if (data_dir / s).exists() or (data_dir / s).is_symlink()]
    return [s for s in present if s in made], [s for s in present if s not in made]


def _refuse_unless_forced(opts, data_dir, previous, request, ours, foreign) -> None:
    if opts.force:
        return
    if foreign:
        names = " and ".join(str(data_dir / s) for s in foreign)
        one = len(foreign) == 1
        raise TransferError(
            f"{names} {'is' if one else 'are'} already there and {'was' if one else 'were'} "
            f"not made by fetch-data; move {'it' if one else 'them'} away, or use --force to "
            f"have {'it' if one else 'them'} moved aside to <name>.old (never deleted)")
    if previous is not None and ours:
        why = ("was made with other arguments" if previous.get("request") != request
               else "no longer matches its manifest (files were changed)")
        raise TransferError(f"the split in {data_dir} {why}; use --force to replace it")


# --------------------------------------------------------------------------- the split


def _build_split(images: ImageSource, opts: FetchOptions, tmp: Path, reporter: Reporter):
    per_split = opts.per_split()
    need = sum(per_split.values())
    found = images.candidates()
    if not any(found.values()):
        raise TransferError(f"no cat or dog images in {opts.archive or 'the download'} "
                            "(expected train/cat.N.jpg or PetImages/Cat/N.jpg layouts)")
    counts = {split: {cls: 0 for cls in CLASSES} for split in per_split}
    files: dict[str, dict[str, list[str]]] = {split: {cls: [] for cls in CLASSES}
                                              for split in per_split}
    skipped: list[dict[str, str]] = []
    usable: dict[str, int] = {}
    plan = [split for split, n in per_split.items() for _ in range(n)]
    with reporter.task("Checking and placing images", total=need * len(CLASSES)) as advance:
        for cls in CLASSES:
            order = sorted(found[cls])
            random.Random(f"{opts.seed}:{cls}").shuffle(order)
            seen_names: set[str] = set()
            placed = 0
            for member in order:
                if placed == need:
                    break
                name = PurePosixPath(member).name
                reason = "duplicate file name" if name in seen_names else None
                data = b""
                if reason is None:
                    try:
                        data = images.read(member)
                    except SkipMember as exc:
                        reason = str(exc)
                reason = reason or check_image(data)
                if reason:
                    skipped.append({"name": member, "class": cls, "reason": reason})
                    continue
                seen_names.add(name)
                split = plan[placed]
                folder = tmp / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
                files[split][cls].append(name)
                counts[split][cls] += 1
                placed += 1
                advance(1)
            usable[cls] = placed
    short = {cls: n for cls, n in usable.items() if n < need}
    if short:
        have = ", ".join(
            f"{cls}: {usable[cls]} usable" if cls in short else f"{cls}: at least {usable[cls]}"
            for cls in CLASSES)
        asked = " + ".join(f"{n} {split}" for split, n in per_split.items())
        raise TransferError(f"not enough usable images ({have}; {len(skipped)} skipped); asked "
                            f"for {need} per class ({asked}); lower --train-per-class/"
                            "--validate-per-class or use a larger archive")
    for split in files:
        for cls in files[split]:
            files[split][cls].sort()
    return counts, files, skipped


# --------------------------------------------------------------------------- the swap


def _swap_into_place(data_dir: Path, tmp: Path, manifest: dict, ours: list[str],
                     foreign: list[str]) -> list[str]:
    """Move the split built in ``tmp`` into ``data_dir`` under the journal; return the
    folders moved aside. On any failure (Ctrl-C included) the swap is rolled back at once
    when possible, else by the next run."""
    aside: dict[str, str] = {}
    taken: set[Path] = set()
    for split in foreign:
        name = _free_name(data_dir / f"{split}.old", taken)
        taken.add(name)
        aside[split] = name.name
    manifest["moved_aside"] = [str(data_dir / name) for name in aside.values()]
    write_json(tmp / MANIFEST, manifest)
    old = Path(tempfile.mkdtemp(prefix=OLD_PREFIX, dir=data_dir))
    journal = {"split_id": manifest["split_id"], "tmp": tmp.name, "old": old.name,
               "ours": ours, "foreign": aside, "new": manifest["splits"],
               "files": manifest["files"]}
    try:
        write_json(data_dir / JOURNAL, journal)
        for split, name in aside.items():  # folders someone else made: kept, renamed aside
            os.replace(data_dir / split, data_dir / name)
        for split in ours:  # the previous split: kept until the new manifest is in place
            os.replace(data_dir / split, old / split)
        for split in manifest["splits"]:
            os.replace(tmp / split, data_dir / split)
        os.replace(tmp / MANIFEST, data_dir / MANIFEST)  # the commit
    except BaseException:
        try:
            _settle(data_dir)  # rolls back at once when it can
        except BaseException:  # noqa: B036 - the journal stays; the next run recovers
            pass
        raise
    _settle(data_dir)  # finishes: removes the journal, the previous split and tmp
    return manifest["moved_aside"]


def _settle(data_dir: Path) -> None:
    """Finish or roll back the swap in this process (a crash skips it: the next run does it)."""
    recover(data_dir)


def _finish_or_roll_back(data_dir: Path, journal: dict) -> str:
    try:
        tmp, old = data_dir / journal["tmp"], data_dir / journal["old"]
        ours, aside = list(journal["ours"]), dict(journal["foreign"])
        new, files, split_id = list(journal["new"]), journal["files"], journal["split_id"]
    except (KeyError, TypeError, ValueError) as exc:
        raise TransferError(f"{data_dir / JOURNAL} is damaged ({exc}); check {data_dir} by "
                            "hand (the previous split is in its .fetch-old-* folder)") from exc
    manifest = read_manifest(data_dir)
    if manifest is not None and manifest.get("split_id") == split_id:
        outcome = "finished it (the new split is in place)"
    else:
        for split in new:
            here = data_dir / split
            came_in = (split in ours and (old / split).exists()) or (
                split in aside and (data_dir / aside[split]).exists()) or (
                split not in ours and split not in aside)
            if came_in and (here.exists() or here.is_symlink()):
                if _holds(here, files.get(split, {})):
                    shutil.rmtree(here)  # the new split's copy (rebuilt by any rerun)
                else:  # not what we moved in: never deleted
                    os.replace(here, _free_name(data_dir / f"{split}.old"))
        for split in ours:
            if (old / split).exists() and not (data_dir / split).exists():
                os.replace(old / split, data_dir / split)
        for split, name in aside.items():
            if (data_dir / name).exists() and not (data_dir / split).exists():
                os.replace(data_dir / name, data_dir / split)
        outcome = "rolled it back (the previous split is in place)"
    (data_dir / JOURNAL).unlink(missing_ok=True)
    for folder in (old, tmp):
        shutil.rmtree(folder, ignore_errors=True)
    return outcome


def _holds(folder: Path, files: dict[str, list[str]]) -> bool:
    """True when ``folder`` holds exactly ``files`` (class folder -> names), nothing else."""
    try:
        if sorted(p.name for p in folder.iterdir()) != sorted(files):
            return False
        return all(sorted(p.name for p in (folder / cls).iterdir()) == sorted(names)
                   for cls, names in files.items())
    except (OSError, TypeError, AttributeError):
        return False


def _free_name(path: Path, taken: set[Path] = frozenset()) -> Path:
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink() or candidate in taken:
        n += 1
        candidate = path.with_name(f"{path.name}{n}")
    return candidate
