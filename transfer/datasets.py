"""`transfer fetch-data`: get photos and lay out a train/validate(/test) split.

The layout is the one Keras's ``flow_from_directory`` expects::

    data/train/cats/cat.12.jpg     data/validate/cats/...     data/test/cats/... (optional)
    data/train/dogs/dog.7.jpg      data/validate/dogs/...     data/manifest.json

Where the photos come from is `transfer.sources` (Kaggle, Microsoft, a local archive); how an
archive or folder is read safely, and its layout and classes, is `transfer.archive`. This
module makes the split. Two ways:

- per class counts (``--train-per-class 1000 --validate-per-class 400``): the tour's cats and
  dogs, and any layout when counts are given; the same number of photos in each class;
- fractions (``--validation-split 0.2 [--test-split 0.1]``): the default for a folder of class
  folders; every usable photo of each class is used, each class split by the fractions
  (stratified), so unbalanced classes stay as they are.

Every image is fully decoded before it is placed (broken files are skipped and reported);
hidden and system files are ignored silently; a single class, or a class folder without
images, is refused before any work. The split is deterministic for a seed and disjoint; it is
built in a temporary folder and swapped into place under a journal, so that an interrupted run
never leaves half a split:

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

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from transfer import __version__
from transfer.archive import (
    CLASS_FOLDERS,
    EXPECTED_LAYOUTS,
    FOLDER_STAMPS,
    UNWRAPPED,
    ImageSource,
    SkipMember,
    ZipImages,
    check_image,
    header_identified,
    member_file_name,
    open_images,
)
from transfer.archive import identify as identify_archive
from transfer.constants import (
    NAME_MAX_BYTES,
    STABLE_ORDER,
    UNREAD_HINT,
    few_images_warning,
    is_browser_metadata,
    is_hidden_or_system,
    unread_summary,
)
from transfer.errors import TransferError
from transfer.files import (
    entries_to_disk,
    exclusive,
    free_name,
    make_dirs,
    to_disk,
    write_json,
)
from transfer.progress import Reporter
from transfer.settings import FetchOptions, given, real
from transfer.sources import obtain_archive, resolve_source

__all__ = ["DEFAULT_VALIDATION_FRACTION", "FetchOptions", "FetchResult",
           "fetch_data", "fraction_sizes", "read_manifest", "recover"]

SPLITS = ("train", "validate", "test")
MANIFEST = "manifest.json"
TMP_PREFIX = ".fetch-tmp-"
OLD_PREFIX = ".fetch-old-"
JOURNAL = ".fetch-swap.json"
CACHE = ".cache"
STAGING = ".staging"
# The fraction split's defaults (a folder of class folders, or --validation-split/--test-split
# without a value given for the other): what Keras's and TF Hub's tools use.
DEFAULT_VALIDATION_FRACTION = 0.2
DEFAULT_TEST_FRACTION = 0.0
_COUNT_FIELDS = ("train_per_class", "validate_per_class", "test_per_class")


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
    # every option checked, the split's too: fractions, their sum, not with counts
    opts = given(options, FetchOptions, "fetch_data").validated()
    if opts.source in ("archive", "microsoft") and opts.competition != FetchOptions.competition:
        reporter.warn(f"--competition {opts.competition} unused: it names a Kaggle "
                      f"competition, and the photos come from "
                      f"{'--archive' if opts.source == 'archive' else 'Microsoft'}")
    data_dir = Path(opts.data_dir)
    created = make_dirs(data_dir)
    try:
        # one fetch-data per data folder: another one's temporary folders and swap journal
        # would look like an interrupted run's to this one (recover) and be removed
        with exclusive(data_dir, f"another transfer command is using {data_dir} (fetch-data "
                                 "writing its split, or train reading it); wait for it to "
                                 "end, then run again"):
            return _fetch(opts, data_dir, reporter, kaggle_api_factory)
    except OSError as exc:
        _remove_if_empty(data_dir, created)
        if exc.filename is None and exc.errno is not None:  # a write (a full disk): say where
            raise OSError(exc.errno, exc.strerror, str(data_dir)) from exc
        raise
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
    leftover temporary folders are removed. Safe to call whenever no fetch-data is writing in
    ``data_dir`` (fetch_data calls it first, holding the folder's lock).
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
    written = PurePosixPath(JOURNAL)  # files.replacing names its temporary file after it
    for stale in data_dir.glob(f".{written.stem}.tmp-*{written.suffix}"):  # a crash cut short
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)
    return outcome


# --------------------------------------------------------------------------- steps


def _fetch(opts: FetchOptions, data_dir: Path, reporter: Reporter,
           kaggle_api_factory) -> FetchResult:
    _refuse_data_dir_inside_archive(opts, data_dir)
    _refuse_archive_inside_the_split(opts, data_dir)
    recover(data_dir, reporter)
    source = resolve_source(opts, reporter, kaggle_api_factory, data_dir / CACHE)
    previous = read_manifest(data_dir)
    facts: dict = {}  # the photos' stamps and layout, when the request key found them
    request = _request_key(opts, source, previous, facts)
    _refuse_one_count_alone(opts, source, facts.get("layout"))
    extras = _extras(data_dir, previous)
    # hidden files of yours leave the split as it is (no command reads them): nothing to do
    seen = [path for paths in extras.values() for path in paths if not is_hidden_or_system(path)]
    if previous is not None and _same_request(previous, request, opts) and not seen and \
            _intact(data_dir, previous):
        reporter.info(f"{data_dir} already holds this split (same source, counts and seed); "
                      "nothing to do")
        _note_stamps(data_dir, previous, facts.get("stamps"))
        return FetchResult(data_dir, source, previous["source"].get("archive", ""),
                           previous["counts"], previous.get("skipped", []), noop=True,
                           manifest=previous)
    ours, foreign = _existing_splits(data_dir, previous, extras, _writes(opts))
    _refuse_unless_forced(opts, data_dir, previous, request, ours, foreign, extras)

    obtained = obtain_archive(opts, source, data_dir / CACHE, reporter, kaggle_api_factory)
    with open_images(obtained.path, data_dir / CACHE) as images:
        fingerprint = (request.get("archive_sha256") or obtained.sha256
                       or images.fingerprint())
        if fingerprint.startswith(FOLDER_STAMPS):  # an earlier version's, of the same photos
            fingerprint = request["archive_sha256"] = images.fingerprint()
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=data_dir))
        try:
            counts, files, skipped, details = _build_split(images, opts, tmp, reporter)
            manifest = {
                "tool": "transfer fetch-data",
                "version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "split_id": uuid.uuid4().hex,
                "request": request,
                "source": {"kind": source, "archive": str(obtained.path),
                           "archive_sha256": fingerprint, "layout": images.layout,
                           **({"archive_stamps": facts["stamps"]} if facts.get("stamps")
                              else {}),
                           **({"competition": opts.competition} if source == "kaggle" else {}),
                           **({"url": opts.microsoft_url} if source == "microsoft" else {})},
                "seed": opts.seed,
                "layout": images.layout,
                **details,
                "splits": list(counts),
                "counts": counts,
                "files": files,
                "skipped": skipped,
            }
            # looked at again: a photo saved into the previous split while this run built
            # its own (minutes) goes aside with its folder, not away with the old split
            extras = _extras(data_dir, previous)
            ours, foreign = _existing_splits(data_dir, previous, extras, _writes(opts))
            moved = _swap_into_place(data_dir, tmp, manifest, ours, foreign)
        finally:
            if not (data_dir / JOURNAL).exists():
                shutil.rmtree(tmp, ignore_errors=True)
    for what, name in zip(foreign, moved, strict=True):
        reporter.warn(_moved_aside(data_dir / what, name, what in extras))
    return FetchResult(data_dir, source, str(obtained.path), counts, skipped, moved_aside=moved,
                       manifest=manifest)


def _moved_aside(path: Path, name: str, held_extras: bool) -> str:
    if held_extras:
        return f"moved {path} aside to {name}: it held files fetch-data did not put there"
    if path.name == MANIFEST:
        return f"moved the {MANIFEST} fetch-data did not write aside to {name}"
    return f"moved {path}, which fetch-data did not make, aside to {name}"


def _remove_if_empty(data_dir: Path, created: list[Path]) -> None:
    """After a failure, when this run created ``data_dir``: remove the zips unwrapped from the
    archive and the empty folders of the download cache, then the folders this run created,
    each only when empty (a partial download, or anything else, keeps them)."""
    if not created:
        return
    cache = data_dir / CACHE
    shutil.rmtree(cache / UNWRAPPED, ignore_errors=True)  # a copy of the user's, made now
    empty = [Path(folder) for folder, _, _ in os.walk(cache, topdown=False)]
    for folder in (*empty, *created):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or gone): kept


def _read_json_or_none(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _request_key(opts: FetchOptions, source: str, previous: dict | None = None,
                 facts: dict | None = None) -> dict:
    """What this run asks for, compared with the previous split's manifest (``previous``).
    An archive's photos by their fingerprint; a folder's stamps and layout, found on the
    way, go into ``facts``."""
    key = {"source": source, "seed": opts.seed, "per_class": opts.per_split()}
    validation, test = _fractions_asked(opts)
    if validation is not None:  # only when asked: a split made before keeps its request
        key["validation_split"] = validation
    if test is not None:
        key["test_split"] = test
    if source == "kaggle":
        key["competition"] = opts.competition
    elif source == "microsoft":
        key["url"] = opts.microsoft_url
    else:
        archive = Path(opts.archive)
        if not archive.exists():
            raise TransferError(f"archive not found: {archive}")
        if not (archive.is_file() or archive.is_dir()):  # /dev/null, a pipe, a socket
            raise TransferError(f"--archive {archive} is neither a zip file nor a folder")
        key["archive_sha256"], stamps, layout = identify_archive(archive,
                                                                 _known_stamps(previous))
        if facts is not None:
            facts.update(stamps=stamps, layout=layout)
        key["archive"] = str(archive.resolve())
    return key


def _note_stamps(data_dir: Path, manifest: dict, stamps: str | None) -> None:
    """Keep the photos' new ``stamps`` in the manifest when only their times changed (a
    touch, a copy): the next rerun then need not read them all again to know them."""
    source = manifest.get("source")
    if stamps and isinstance(source, dict) and source.get("archive_stamps") not in (None, stamps):
        source["archive_stamps"] = stamps
        write_json(data_dir / MANIFEST, manifest)


def _known_stamps(previous: dict | None) -> dict[str, str]:
    """{stamps: fingerprint} of the photos the previous split was made from (its manifest's):
    while a folder's photos keep those names, sizes and times they are not read again. An
    earlier version's fingerprint was the stamps themselves (``FOLDER_STAMPS``)."""
    source = previous.get("source") if isinstance(previous, dict) else None
    asked = previous.get("request") if isinstance(previous, dict) else None
    fingerprint = asked.get("archive_sha256") if isinstance(asked, dict) else None
    if not isinstance(fingerprint, str):
        return {}
    if fingerprint.startswith(FOLDER_STAMPS):
        return {fingerprint: fingerprint}
    stamps = source.get("archive_stamps") if isinstance(source, dict) else None
    return {stamps: fingerprint} if isinstance(stamps, str) else {}


def _refuse_one_count_alone(opts: FetchOptions, source: str, layout: str | None) -> None:
    """A folder (or zip) of class folders split by counts needs both --train-per-class and
    --validate-per-class (``_split_plan``): said before the split saved in the data folder
    is compared with this one, which named counts no split would use (the tour's 400
    validate), and --force was then refused by this rule. ``layout``: a folder's, found by
    its fingerprint; a zip's is read from its member names."""
    if source != "archive" or not _counts_asked(opts) or (
            opts.train_per_class is not None and opts.validate_per_class is not None):
        return
    if layout is None:
        layout = _zip_layout(Path(opts.archive))
    _split_plan(opts, layout)


def _zip_layout(archive: Path) -> str | None:
    """The layout of a zip by its member names, or None when it cannot be told yet (an
    unreadable zip, a wrapper of another: said when it is opened to be split)."""
    try:
        images = ZipImages(archive)
    except TransferError:
        return None
    try:
        images.candidates()
        return images.layout
    except TransferError:
        return None
    finally:
        images.close()


def _listing(folder: Path, hidden: bool = False) -> list[str]:
    """The names in ``folder``, hidden and system files (``.DS_Store``...) left out; with
    ``hidden``, only a file browser's own metadata is left out (``is_browser_metadata``)."""
    left_out = is_browser_metadata if hidden else is_hidden_or_system
    return sorted(p.name for p in folder.iterdir() if not left_out(p.name))


def _intact(data_dir: Path, manifest: dict) -> bool:
    """True when every split folder holds the files the manifest lists (hidden and system
    files aside, which a file browser adds)."""
    try:
        for split in manifest["splits"]:
            for cls, names in manifest["files"][split].items():
                if _listing(data_dir / split / cls) != sorted(names):
                    return False
    except (KeyError, OSError, TypeError, AttributeError):
        return False
    return True


def _extras(data_dir: Path, manifest: dict | None) -> dict[str, list[str]]:
    """split -> what its folder holds that fetch-data did not put there (class folders and
    files, as paths under the data folder, hidden ones too; a file browser's own metadata
    aside, ``.DS_Store`` and the like): such a split folder is never replaced, only moved
    aside whole, with ``--force``."""
    found: dict[str, list[str]] = {}
    if manifest is None:
        return found
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    for split in manifest.get("splits", []) if isinstance(manifest.get("splits"), list) else []:
        folder, listed = data_dir / split, files.get(split) or {}
        if not isinstance(listed, dict) or not folder.is_dir() or folder.is_symlink():
            continue
        extra = []
        with contextlib.suppress(OSError):
            for name in _listing(folder, hidden=True):
                entry = folder / name
                if name not in listed or not entry.is_dir() or entry.is_symlink():
                    extra.append(f"{split}/{name}")
                    continue
                placed = set(listed[name]) if isinstance(listed[name], list) else set()
                extra += [f"{split}/{name}/{n}" for n in _listing(entry, hidden=True)
                          if n not in placed]
        if extra:
            found[split] = extra
    return found


def _writes(opts: FetchOptions) -> set[str]:
    """The split folders this run writes: train and validate, test when one is asked for."""
    test = bool(opts.test_per_class) or bool(_fractions_asked(opts)[1])
    return {"train", "validate", *(["test"] if test else [])}


def _existing_splits(data_dir: Path, manifest: dict | None, extras: dict[str, list[str]],
                     writes: set[str]) -> tuple[list[str], list[str]]:
    """(the previous split's folders, replaced; what is moved aside instead: split folders
    fetch-data did not make, or holding files it did not put there, where this run writes
    one, and a manifest.json it did not write). A folder of someone else's this run does
    not write (a test/ of your own) is left alone."""
    made = set(manifest.get("splits", [])) if manifest else set()
    present = [s for s in SPLITS if (data_dir / s).exists() or (data_dir / s).is_symlink()]
    # a link where a split was is yours (fetch-data makes folders): moved aside, never removed
    linked = {s for s in present if (data_dir / s).is_symlink()}
    ours = [s for s in present if s in made and s not in extras and s not in linked]
    foreign = [s for s in present
               if (s not in made and s in writes) or s in extras or s in linked]
    if manifest is None and ((data_dir / MANIFEST).exists() or (data_dir / MANIFEST).is_symlink()):
        foreign.append(MANIFEST)  # someone else's manifest.json (or an unreadable one)
    return ours, foreign


def _refuse_unless_forced(opts, data_dir, previous, request, ours, foreign, extras) -> None:
    if opts.force:
        return
    if extras:
        listed = [str(data_dir / path) for paths in extras.values() for path in paths]
        more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
        raise TransferError(
            f"the split in {data_dir} holds files fetch-data did not put there "
            f"({', '.join(listed[:5])}{more}); move them away, or use --force to have "
            f"{' and '.join(str(data_dir / s) for s in extras)} moved aside whole to "
            "<name>.old (never deleted)")
    if foreign:
        names = " and ".join(str(data_dir / s) for s in foreign)
        one = len(foreign) == 1
        raise TransferError(
            f"{names} {'is' if one else 'are'} already there and {'was' if one else 'were'} "
            f"not made by fetch-data; move {'it' if one else 'them'} away, or use --force to "
            f"have {'it' if one else 'them'} moved aside to <name>.old (never deleted)")
    if previous is not None and ours:
        asked = previous.get("request")
        if _same_request(previous, request, opts):
            why = "no longer matches its manifest (files were changed)"
        elif isinstance(asked, dict) and _without_photos(asked) == _without_photos(request) \
                and str(asked.get("archive_sha256")).startswith(FOLDER_STAMPS):
            why = (f"was made by an earlier version of transfer, which recorded when the "
                   f"photos in {opts.archive} were last modified, not what they hold; they "
                   "were modified since (a touch or a copy is enough), so whether they changed "
                   "cannot be told (the same photos make the same split again)")
        elif isinstance(asked, dict) and _without_photos(asked) == _without_photos(request):
            why = (f"was made from other photos ({opts.archive or 'the archive'} changed since; "
                   "a rerun would split the photos it holds now)")
        else:
            changed = (_changed_arguments(asked, request, previous.get("split"),
                                          _plan_or_none(opts, previous.get("layout")))
                       if isinstance(asked, dict) else "")
            why = f"was made with other arguments{changed}"
        raise TransferError(f"the split in {data_dir} {why}; use --force to replace it")


def _as_given(value) -> str:
    """A fraction as an option gives it (0.2, 0), anything else as it is."""
    return f"{value:g}" if real(value) else str(value)


REQUEST_OPTIONS = {"seed": "--seed", "competition": "--competition",
                   "url": "TRANSFER_MICROSOFT_URL", "archive": "--archive"}


def _changed_arguments(asked: dict, request: dict, made=None, now=None) -> str:
    """" (--seed 42 then, 7 now)": what differs between a manifest's request and this one, in
    option names, and between the split it made (``made``, the manifest's plan) and the one
    asked now (``now``, None when unknown): fractions, or counts per class as
    train/validate/test. "" when nothing nameable differs."""
    parts = []
    if asked.get("source") != request.get("source"):
        parts.append(f"source {asked.get('source')} then, {request.get('source')} now")

    def plan_of(plan, key):
        if isinstance(plan, dict) and plan.get("mode") in ("fractions", "per_class"):
            return plan
        per_class = key.get("per_class")  # a manifest without its plan: the counts asked
        return {"mode": "per_class", **per_class} if isinstance(per_class, dict) else None

    def counts(plan):
        return "/".join(str(plan.get(k, 0)) for k in ("train", "validate", "test"))

    def described(plan):
        if plan["mode"] == "fractions":
            return (f"fractions (validation {_as_given(plan.get('validation'))}, test "
                    f"{_as_given(plan.get('test'))})")
        return f"per class (train/validate/test) {counts(plan)}"

    then, asked_now = plan_of(made, asked), plan_of(now, request)
    if then is not None and asked_now is not None and described(then) != described(asked_now):
        if then["mode"] == asked_now["mode"] == "per_class":
            parts.append(f"per class (train/validate/test) {counts(then)} then, "
                         f"{counts(asked_now)} now")
        else:
            parts.append(f"{described(then)} then, {described(asked_now)} now")
    for key, option in REQUEST_OPTIONS.items():
        if asked.get(key) != request.get(key) and (key in asked or key in request):
            if key == "archive" and asked.get("source") != request.get("source"):
                continue
            then_value = asked.get(key, "not given")
            now_value = request.get(key, "not given")
            parts.append(f"{option} {then_value} then, {now_value} now")
    return f" ({'; '.join(parts)})" if parts else ""


def _same_request(previous: dict, request: dict, opts: FetchOptions) -> bool:
    """True when ``request`` asks for the split ``previous`` (a manifest) describes: the same
    request, or the same but for split options that come to the same split on its layout
    (``--validation-split 0.2`` given for a folder of class folders, whose default it is)."""
    asked = previous.get("request")
    if asked == request:
        return True
    if not isinstance(asked, dict):
        return False
    how = ("validation_split", "test_split", "per_class")

    def rest(r: dict) -> dict:
        return {key: value for key, value in r.items() if key not in how}

    if rest(asked) != rest(request) or not isinstance(previous.get("split"), dict):
        return False
    try:
        plan = _split_plan(opts, previous.get("layout"))
    except TransferError:
        return False
    made = {key: value for key, value in previous["split"].items() if key != "order"}
    return {key: value for key, value in plan.items() if key != "order"} == made


def _without_photos(request: dict) -> dict:
    return {key: value for key, value in request.items() if key != "archive_sha256"}


# --------------------------------------------------------------------------- the split


def _fractions_asked(opts: FetchOptions) -> tuple[float | None, float | None]:
    return getattr(opts, "validation_split", None), getattr(opts, "test_split", None)


def _counts_asked(opts: FetchOptions) -> bool:
    """True when a per-class count was given: not None (a field whose default is None) and
    not the field's default; ``test_per_class=0`` (no test split, the default) asks for no
    counts."""
    defaults = {f.name: f.default for f in dataclasses.fields(opts)}
    return any(getattr(opts, name, None) is not None and getattr(opts, name) != defaults.get(name)
               and not (name == "test_per_class" and getattr(opts, name) == 0)
               for name in _COUNT_FIELDS)


def _split_plan(opts: FetchOptions, layout: str) -> dict:
    """How to split: {"mode": "fractions", "validation": f, "test": f} or
    {"mode": "per_class", "train": n, "validate": n[, "test": n]}.

    Fractions when asked, and by default for a folder of class folders (unless counts were
    given); per-class counts for the cats/dogs layouts (the tour's 1000 + 400) and when given."""
    validation, test = _fractions_asked(opts)
    if layout == CLASS_FOLDERS and _counts_asked(opts) and (
            opts.train_per_class is None or opts.validate_per_class is None):
        # the 1000 / 400 defaults are the cats/dogs tour's, not a size for anyone's classes
        raise TransferError(
            "a folder of class folders is split by fraction (--validation-split, "
            "--test-split); to split it by counts give both --train-per-class and "
            "--validate-per-class (and --test-per-class if you want a test split)")
    if validation is not None or test is not None or (
            layout == CLASS_FOLDERS and not _counts_asked(opts)):
        return {"mode": "fractions",
                "validation": DEFAULT_VALIDATION_FRACTION if validation is None else validation,
                "test": DEFAULT_TEST_FRACTION if test is None else test,
                "order": STABLE_ORDER}
    return {"mode": "per_class", **opts.per_split()}


def _plan_or_none(opts: FetchOptions, layout) -> dict | None:
    try:
        return _split_plan(opts, layout)
    except TransferError:  # said when the split is made
        return None


def _refuse_data_dir_inside_archive(opts: FetchOptions, data_dir: Path) -> None:
    if opts.archive is None or not Path(opts.archive).is_dir():
        return
    archive, target = Path(opts.archive).resolve(), data_dir.resolve()
    if target == archive or archive in target.parents:
        raise TransferError(f"--data-dir {data_dir} is inside --archive {opts.archive}: the "
                            "split would be read back as photos; choose a data folder outside "
                            "it")


def _refuse_archive_inside_the_split(opts: FetchOptions, data_dir: Path) -> None:
    """Kaggle's train/ unzipped into data/ and given back (`--archive data/train --data-dir
    data`): --force moved the user's photos aside to train.old and split them, and the same
    command run again was told the split came from other photos (the source had just been
    moved). Refused: the photos must live outside the split that replaces them."""
    if opts.archive is None:
        return
    archive = Path(opts.archive).resolve()
    for split in SPLITS:
        folder = (data_dir / split).resolve()
        if archive == folder or folder in archive.parents:
            raise TransferError(
                f"--archive {opts.archive} is {'' if archive == folder else 'inside '}"
                f"{data_dir / split}, a split folder fetch-data replaces; move the photos "
                f"out of {data_dir} first (e.g. mv {opts.archive} photos) and give that "
                "folder to --archive")


def _refuse_single_class(found: dict[str, list[str]], where: str) -> None:
    """Before any image is read: at least two classes with images (the layout already refused
    an empty class folder)."""
    present = [cls for cls, names in found.items() if names]
    if len(present) >= 2:
        return
    cls = present[0]
    n = len(found[cls])
    absent = [c for c in found if not found[c]]
    also = f"; no {' or '.join(absent)} images" if absent else ""
    raise TransferError(
        f"only one class in {where} ({cls}, {n} image{'' if n == 1 else 's'}{also}); a "
        f"classifier needs at least two: one folder per class, e.g. daisy/1.jpg and "
        "roses/2.jpg")


def _build_split(images: ImageSource, opts: FetchOptions, tmp: Path, reporter: Reporter):
    """Check and place the images in ``tmp``; return counts, files, skipped and the details
    the manifest records (classes, the split asked, usable images per class, renamed files)."""
    where = str(opts.archive or "the download")
    found = images.candidates()  # refuses a mixed or unclear layout, an empty class folder
    if not any(found.values()):
        raise TransferError(f"no images in {where} ({EXPECTED_LAYOUTS})")
    _refuse_single_class(found, where)
    for note in images.notes:
        reporter.warn(note)
    unread = unread_summary(images.unread())
    if unread:
        reporter.warn(f"left out: {unread}, which transfer cannot read; {UNREAD_HINT}")
    plan = _split_plan(opts, images.layout)
    if plan["mode"] == "fractions" and images.layout != CLASS_FOLDERS:
        reporter.info(f"split by fractions (--validation-split {plan['validation']:g}, "
                      f"--test-split {plan['test']:g}): every usable photo of each class, "
                      "not the tour's per-class counts (1000 train + 400 validate)")
    details: dict = {"classes": list(found), "split": plan}
    if plan["mode"] == "per_class":
        counts, files, skipped, renamed = _split_per_class(
            images, found, plan, opts, tmp, reporter, by_name=images.layout != CLASS_FOLDERS)
    else:
        counts, files, skipped, renamed, usable = _split_by_fractions(
            images, found, plan, opts, tmp, reporter, by_name=images.layout != CLASS_FOLDERS)
        details["usable"] = usable
    if renamed:
        details["renamed"] = renamed
    for split in files:
        for cls in files[split]:
            files[split][cls].sort()
    return counts, files, skipped, details


def _checked(images: ImageSource, member: str) -> tuple[bytes, str | None, bool]:
    """The bytes of ``member`` and None, or why it is skipped (decoded fully first); and
    whether a skipped one keeps its place in a fraction split's cut: train's cheap header
    probe (``pipelines.probe_all``) takes it, so train's in-memory split of the same folder
    counts it too, and the two splits agree photo by photo."""
    try:
        data = images.read(member)
    except SkipMember as exc:
        return b"", str(exc), exc.identified
    reason = check_image(data)
    return data, reason, bool(reason) and header_identified(data)


def _twin(first: dict[str, tuple[str, str]], member: str, data: bytes, by_name: bool
          ) -> str | None:
    """The member of this class already met holding the very bytes of ``member``, else None
    (and ``member`` is remembered in ``first``). ``by_name``: the cats/dogs layouts, whose names
    are unique in the original, look for the same photo under the same name (train/ and a
    copy of it); a folder of class folders for the same photo under any name (``IMG_1.jpg``
    and ``IMG_1 (1).jpg``): one cut could put it in train and validate."""
    digest = hashlib.sha256(data).hexdigest()
    key = member_file_name(member).casefold() if by_name else digest
    kept = first.setdefault(key, (digest, member))
    return kept[1] if kept[0] == digest and kept[1] != member else None


def _split_per_class(images, found, plan, opts, tmp, reporter, by_name: bool):
    """Each class's photos in a seeded shuffle, placed until every split has its count. A name
    met twice is renamed (``name-2.jpg``); the very same photo twice is placed once
    (``_twin``)."""
    per_split = {split: n for split, n in plan.items() if split in SPLITS}
    need = sum(per_split.values())
    classes = list(found)
    counts = {split: {cls: 0 for cls in classes} for split in per_split}
    files: dict[str, dict[str, list[str]]] = {split: {cls: [] for cls in classes}
                                              for split in per_split}
    skipped: list[dict[str, str]] = []
    renamed: dict[str, str] = {}
    usable: dict[str, int] = {}
    split_of = [split for split, n in per_split.items() for _ in range(n)]
    # the bar's end: what can be placed (a class holding fewer photos than asked fills its
    # share, then the run stops saying so; a bar of 1110/2800 looked cut short)
    most = sum(min(need, len(found[cls])) for cls in classes)
    with reporter.task("Checking and placing images", total=most) as advance:
        for cls in classes:
            order = sorted(found[cls])
            random.Random(f"{opts.seed}:{cls}").shuffle(order)
            seen_names: dict[str, int] = {}
            first: dict[str, tuple[str, str]] = {}  # _twin's
            placed = 0
            for member in order:
                if placed == need:
                    break
                data, reason, _ = _checked(images, member)
                twin = None if reason else _twin(first, member, data, by_name)
                if twin:
                    reason = f"the same photo as {twin}"
                if reason:
                    skipped.append({"name": member, "class": cls, "reason": reason})
                    continue
                name = _free_file_name(member_file_name(member), seen_names)
                split = split_of[placed]
                folder = tmp / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
                files[split][cls].append(name)
                counts[split][cls] += 1
                if name != member_file_name(member):
                    renamed[f"{split}/{cls}/{name}"] = member
                placed += 1
                advance(1)
            usable[cls] = placed
    short = {cls: n for cls, n in usable.items() if n < need}
    if short:
        have = ", ".join(
            f"{cls}: {usable[cls]} usable" if cls in short else f"{cls}: at least {usable[cls]}"
            for cls in classes)
        asked = " + ".join(f"{n} {split}" for split, n in per_split.items())
        raise TransferError(f"not enough usable images ({have}; {len(skipped)} skipped); asked "
                            f"for {need} per class ({asked}); lower --train-per-class/"
                            "--validate-per-class, use --validation-split to split every "
                            "usable image by fraction, or use a larger archive")
    return counts, files, skipped, renamed


def _split_by_fractions(images, found, plan, opts, tmp, reporter, by_name: bool):
    """Every usable image of each class, split by the fractions: each class in its
    ``stable_order`` (seeded), fully checked into a staging folder, then its first images go
    to validate, the next to test, the rest to train. The very same photo twice (``_twin``),
    which a cut could put on both sides, is placed once: in a folder of class folders the
    copy keeps its place in the cut (train's in-memory split of the folder counts it, and the
    two splits agree photo by photo); in the cats/dogs layouts the copy of train/ sits beside
    its photo and takes no place."""
    skipped: list[dict[str, str]] = []
    kept: dict[str, list[tuple[str, str]]] = {}  # class -> (file name, member), in order
    total = sum(len(names) for names in found.values())
    with reporter.task("Checking images", total=total) as advance:
        for index, cls in enumerate(found):
            order = stable_order(found[cls], opts.seed, cls)
            stage = tmp / STAGING / str(index)
            stage.mkdir(parents=True)
            taken: dict[str, int] = {}
            first: dict[str, tuple[str, str]] = {}  # _twin's
            kept[cls] = []
            for member in order:
                data, reason, keeps_place = _checked(images, member)
                advance(1)
                twin = None if reason else _twin(first, member, data, by_name)
                if twin:
                    reason, keeps_place = f"the same photo as {twin}", not by_name
                if reason:
                    skipped.append({"name": member, "class": cls, "reason": reason})
                    if keeps_place:  # train keeps its place in the cut: so do we
                        kept[cls].append((None, member))
                    continue
                name = _free_file_name(member_file_name(member), taken)
                (stage / name).write_bytes(data)
                kept[cls].append((name, member))
    usable = {cls: sum(name is not None for name, _ in names) for cls, names in kept.items()}
    sizes = {cls: fraction_sizes(len(kept[cls]), plan["validation"], plan["test"])
             if usable[cls] >= 1 + (plan["validation"] > 0) + (plan["test"] > 0) else None
             for cls in kept}
    short = [cls for cls, size in sizes.items() if size is None]
    if short:
        raise TransferError(_too_few(short, found, usable, skipped, plan))
    few = few_images_warning(usable, "usable images")
    if few:
        reporter.warn(few)
    splits = ["train", "validate"] + (["test"] if plan["test"] > 0 else [])
    counts = {split: {cls: 0 for cls in found} for split in splits}
    files: dict[str, dict[str, list[str]]] = {split: {cls: [] for cls in found}
                                              for split in splits}
    renamed: dict[str, str] = {}
    for index, cls in enumerate(found):
        start = 0
        for split in ("validate", "test", "train"):
            if split not in splits:
                continue
            take = [(name, member) for name, member in kept[cls][start:start + sizes[cls][split]]
                    if name is not None]
            start += sizes[cls][split]
            if not take and sizes[cls][split]:
                raise TransferError(
                    f"class {cls}: every photo of its {split} share is unusable ("
                    f"{', '.join(m for _, m in kept[cls][start - sizes[cls][split]:start])}); "
                    "remove or replace those files and run fetch-data again")
            folder = tmp / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for name, member in take:
                os.replace(tmp / STAGING / str(index) / name, folder / name)
                files[split][cls].append(name)
                if name != member_file_name(member):
                    renamed[f"{split}/{cls}/{name}"] = member
            counts[split][cls] = len(take)
    shutil.rmtree(tmp / STAGING)
    return counts, files, skipped, renamed, usable


def stable_order(names: list[str], seed: int, cls: str) -> list[str]:
    """A class's image ``names`` (paths) in the order a fraction split cuts them (validate
    first): by a hash of the seed, the class and each file's own name, ties by path.

    Unlike a seeded shuffle of the sorted list, this order does not move when photos are added
    or removed: each existing photo keeps its place relative to the others, so each photo
    added to a class folder moves at most one of the others across a cut (train's in-memory
    split has one cut; fetch-data with a test fraction two), and the split of the other
    photos (and a bundle's "never seen in training" validation images) stays.
    The file name alone (Unicode NFC) is hashed, so moving a photo into a subfolder, or the
    folder into an archive, leaves it on its side. TensorFlow's retrain.py split by a hash of
    the file name for the same reason."""
    cls = unicodedata.normalize("NFC", cls)  # a zip's class names are NFC, macOS's NFD

    def key(name: str) -> tuple[str, str]:
        posix = unicodedata.normalize("NFC", name.replace("\\", "/"))
        hashed = f"{seed}:{cls}:{posix.rsplit('/', 1)[-1]}"  # a name not UTF-8: its bytes
        digest = hashlib.sha256(hashed.encode("utf-8", "surrogateescape")).hexdigest()
        return digest, posix  # ties (IMG_0001.JPG in two subfolders): by the POSIX path

    return sorted(names, key=key)


def fraction_sizes(n: int, validation: float, test: float = 0.0) -> dict[str, int] | None:
    """How many of a class's ``n`` usable images go to validate, test and train: each
    fraction of ``n`` rounded half up, at least 1 for a fraction above 0, and at least 1 left
    to train on; None when ``n`` is too small for that."""
    need = 1 + (validation > 0) + (test > 0)
    if n < need:
        return None
    val = max(1, math.floor(n * validation + 0.5 + 1e-9)) if validation > 0 else 0
    tst = max(1, math.floor(n * test + 0.5 + 1e-9)) if test > 0 else 0
    while n - val - tst < 1:  # tiny classes with large fractions: keep one to train on
        if tst > 1 and tst >= val:
            tst -= 1
        else:
            val -= 1
    return {"validate": val, "test": tst, "train": n - val - tst}


def _too_few(short, found, usable, skipped, plan) -> str:
    need = 1 + (plan["validation"] > 0) + (plan["test"] > 0)
    parts = []
    for cls in short:
        reasons: dict[str, int] = {}
        for item in skipped:
            if item["class"] == cls:
                reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
        n_skipped = sum(reasons.values())
        why = ""
        if reasons:
            common = max(reasons, key=reasons.get)
            why = f": {common}" + (" ..." if len(reasons) > 1 else "")
        parts.append(f"{cls}: {usable[cls]} usable of {len(found[cls])} "
                     f"({n_skipped} skipped{why})")
    each = " + ".join(["1 train", "1 validate"] + (["1 test"] if plan["test"] > 0 else []))
    return (f"too few usable images to split ({'; '.join(parts)}); each class needs at least "
            f"{need} ({each}): add photos, or remove the class folder")


def _fitting(stem: str, suffix: str, extra: str = "") -> str:
    """``stem + extra + suffix``, its stem cut (at a character) to fit NAME_MAX_BYTES: 90
    Chinese characters are a legal name on Windows and macOS (255 UTF-16 units) and 270 bytes
    of UTF-8 here, which made the whole fetch-data run fail on one photo."""
    while stem and len(os.fsencode(stem + extra + suffix)) > NAME_MAX_BYTES:
        stem = stem[:-1]
    return stem + extra + suffix


def _free_file_name(name: str, taken: dict[str, int]) -> str:
    """``name``, or ``stem-2.jpg``, ``stem-3.jpg``... when a file of that name (in any case,
    its accents composed or not) is already in the class (sub-folders of a class, split
    folders merged); noted in ``taken`` (``_folded``), which also remembers the last number
    used for each name, so that 10,000 photos named IMG_0001.jpg take 10,000 steps, not 50
    million. A name too long
    for the file system is shortened (``_fitting``); the manifest's ``renamed`` keeps the
    original, as for a number added."""
    pure = PurePosixPath(name)
    candidate = name = _fitting(pure.stem, pure.suffix)
    if _folded(candidate) in taken:
        last = "\0" + _folded(name)  # no file name holds a NUL
        n = taken.get(last, 1)
        while _folded(candidate) in taken:
            n += 1
            candidate = _fitting(pure.stem, pure.suffix, f"-{n}")
        taken[last] = n
    taken[_folded(candidate)] = 1
    return candidate


def _folded(name: str) -> str:
    """What a case-insensitive file system that normalises Unicode (macOS's, Windows') takes
    ``name`` for: café.jpg with its accent composed or as e and a combining accent, in any
    case, is one file there."""
    return unicodedata.normalize("NFC", name).casefold()


# --------------------------------------------------------------------------- the swap


def _swap_into_place(data_dir: Path, tmp: Path, manifest: dict, ours: list[str],
                     foreign: list[str]) -> list[str]:
    """Move the split built in ``tmp`` into ``data_dir`` under the journal; return the
    folders moved aside. On any failure (Ctrl-C included) the swap is rolled back at once
    when possible, else by the next run."""
    aside: dict[str, str] = {}
    taken: set[Path] = set()
    for split in foreign:
        name = free_name(data_dir / f"{split}.old", taken)
        taken.add(name)
        aside[split] = name.name
    manifest["moved_aside"] = [str(data_dir / name) for name in aside.values()]
    write_json(tmp / MANIFEST, manifest)
    to_disk(tmp)  # every photo whole on the disk before the manifest commits the split
    old = Path(tempfile.mkdtemp(prefix=OLD_PREFIX, dir=data_dir))
    journal = {"split_id": manifest["split_id"], "tmp": tmp.name, "old": old.name,
               "ours": ours, "foreign": aside, "new": manifest["splits"],
               "files": manifest["files"]}
    try:
        write_json(data_dir / JOURNAL, journal)
        for split, name in aside.items():  # someone else's folders (or manifest): renamed
            os.replace(data_dir / split, data_dir / name)
        for split in ours:  # the previous split: kept until the new manifest is in place
            os.replace(data_dir / split, old / split)
        for split in manifest["splits"]:
            os.replace(tmp / split, data_dir / split)
        os.replace(tmp / MANIFEST, data_dir / MANIFEST)  # the commit
        entries_to_disk(data_dir)
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
                    os.replace(here, free_name(data_dir / f"{split}.old"))
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

