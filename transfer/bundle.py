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

from transfer.constants import PREVIEW_PNG
from transfer.errors import TransferError, raise_if_interrupted
from transfer.files import (
    entries_to_disk,
    free_name,
    new_folders_kept_on_success,
    sweep_left_by_killed,
    temp_prefix,
    to_disk,
    write_json,
)
from transfer.seeds import keeps_random_state

SCHEMA_VERSION = 1
META = "meta.json"
MODEL = "model.keras"
SETTINGS = "settings.json"  # the resolved settings, to repeat the run (also meta["settings"])
TRAIN_FILES = "train-files.csv"  # file name and bytes of every training image
# The fields every bundle's meta.json has, whatever trained it (``meta`` writes them).
COMMON_FIELDS = ("schema_version", "kind", "class_names", "image_size", "channels",
                 "preprocessing", "metrics", "seed", "command", "settings", "versions",
                 "created")


def default_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _meta_or_none(folder: Path) -> dict | None:
    """``folder``'s meta.json as an object, or None when it is missing, unreadable or odd."""
    try:
        meta = json.loads((Path(folder) / META).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_bundle(path: Path) -> bool:
    return _is_bundle_meta(_meta_or_none(path))


def _is_bundle_meta(meta: dict | None) -> bool:
    return meta is not None and "schema_version" in meta and "class_names" in meta


class Landing:
    """Where ``writing`` puts a bundle: ``folder`` to fill, then ``path`` where it landed, and
    ``kept``: (where the replaced bundle went, the files in it the tool did not write) when it
    held such files, else None."""

    def __init__(self, folder: Path, target: Path):
        self.folder, self.path = folder, target
        self.kept: tuple[Path, list[str]] | None = None


# what commands write into a bundle after training (evaluate, report, export): replaced with it
MADE_LATER = frozenset({"report.json", "confusion.png", "misclassified.png", "suspects.csv",
                        "report.html", "export"})
PICTURES = {  # pictures a run of one kind draws into its bundle (transfer mnist), with a caption
    "samples.png": "training images with their labels",
    "filters.png": "the first layer's trained kernels",
    "feature_maps.png": "first-layer activations for one test image",
    "noise.png": "test accuracy under Gaussian noise",
}
# what a run writes into its bundle, by its meta.json's kind, whatever its settings: a bundle
# replaced by one of another kind (a digit bundle by train --force) or other settings holds no
# file of the user's for having them (a photo bundle's samples.png is the user's)
MADE_BY_RUNS = {"transfer": frozenset({META, MODEL, SETTINGS, TRAIN_FILES, "history.csv",
                                       "curves.png", PREVIEW_PNG}),
                "mnist": frozenset({META, MODEL, SETTINGS, "history.csv", "curves.png",
                                    *PICTURES})}


def own_file(path: Path) -> Path | None:
    """The bundle's own file ``path`` is (links followed), or None: what a run of its
    kind or a later command (report.json, report.html, ...) writes into it. Another command's
    output must never replace one (``export --output models/b/model.keras --force`` broke the
    bundle: "meta.json lists 3 classes but the model has 10 outputs")."""
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    meta = _meta_or_none(real.parent)
    if not _is_bundle_meta(meta):
        return None
    kind = meta.get("kind")
    ours = MADE_LATER | MADE_BY_RUNS.get(kind if isinstance(kind, str) else "", frozenset())
    return real if real.name in ours - {"export"} else None


def bundles_as_photos(where, names: list[str], option: str) -> TransferError:
    """The one line for a models folder given as photos (``option``: --data-dir, --archive):
    each bundle in ``names`` would be a "class" of its pictures."""
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    one = len(names) == 1
    what = "is a model bundle" if one else "are model bundles"
    return TransferError(f"{where}: {shown} {what} (what transfer train writes), not "
                         f"{'a class folder' if one else 'class folders'} of photos; give "
                         f"{option} the folder of class folders (or move "
                         f"{'it' if one else 'them'} out of it)")


def _exported_names() -> frozenset:
    """What ``transfer export`` writes into a bundle's ``export/`` folder by default: each
    format's file (each quantized TFLite model's too) and its ``.meta.json``."""
    from transfer.export import default_name
    from transfer.settings import QUANTIZE

    names = {default_name(fmt) for fmt in ("keras", "savedmodel", "tflite")}
    names |= {default_name("tflite", mode) for mode in QUANTIZE}
    return frozenset(names | {f"{name}.meta.json" for name in names if name != "saved_model"})


def not_written_by_transfer(old: Path, new: Path) -> list[str]:
    """The entries of the bundle ``old`` that neither the bundle replacing it (``new``) nor a
    later command (``MADE_LATER``; in ``export/``, what ``transfer export`` names by default)
    wrote: the user's own files, which keep the old bundle from being deleted."""
    theirs = []
    kind = (_meta_or_none(old) or {}).get("kind")
    if not isinstance(kind, str):  # an odd meta.json: nothing is known to be a run's
        kind = None
    # a killed run's leftovers of these too
    ours = {*MADE_LATER, *MADE_BY_RUNS.get(kind, ()), *(p.name for p in new.iterdir())}
    for path in sorted(old.iterdir()):
        if path.name == "export" and path.is_dir() and not path.is_symlink():
            exported = _exported_names()
            for p in sorted(path.iterdir()):
                if p.name not in exported and not _left_by_a_killed_run(p.name, exported):
                    theirs.append(f"export/{p.name}")
                elif p.name == "saved_model" and p.is_dir() and not p.is_symlink():
                    theirs += [f"export/saved_model/{q}" for q in not_in_a_savedmodel(p)]
        elif path.name not in ours and not _left_by_a_killed_run(path.name, ours):
            theirs.append(path.name)
    return theirs


def _left_by_a_killed_run(name: str, ours) -> bool:
    """Whether ``name`` is the temporary file or folder of one of ``ours`` that a command
    killed while writing it left (``.model.tflite.tmp-x7f2``, ``.report.tmp-4242.json``)."""
    if not name.startswith(".") or ".tmp-" not in name:
        return False
    stem = name[1:name.index(".tmp-")]
    return any(stem in (n, Path(n).stem) for n in ours)


def not_in_a_savedmodel(folder: Path) -> list[str]:
    """What a SavedModel folder holds that ``transfer export`` does not write there: besides
    saved_model.pb, fingerprint.pb, variables/variables.*, an empty assets/ and
    assets.extra/'s meta.json and labels.txt (a folder of theirs is named once). What
    ``train --force`` and ``export --force`` keep, moving the old folder aside."""
    ours = {"saved_model.pb", "fingerprint.pb", "variables", "assets", "assets.extra"}
    theirs = [p.name for p in sorted(folder.iterdir()) if p.name not in ours]
    for sub, allowed in (("variables", lambda name: name.startswith("variables.")),
                         ("assets", lambda name: False),  # export writes none there
                         ("assets.extra", lambda name: name in (META, "labels.txt"))):
        inside = folder / sub
        if inside.is_dir() and not inside.is_symlink():
            theirs += [f"{sub}/{p.name}" for p in sorted(inside.iterdir()) if not allowed(p.name)]
        elif inside.exists() or inside.is_symlink():
            theirs.append(sub)  # a file or a link where export makes a folder
    return theirs


def kept_aside(what: str, target: Path, theirs: list[str], aside: Path) -> str:
    """The warning of a ``--force`` that moved the old ``what`` at ``target`` aside, whole,
    because it held files transfer did not write (``theirs``, the first five named)."""
    named = ", ".join(sorted(theirs)[:5]) + (" ..." if len(theirs) > 5 else "")
    return (f"the {what} replaced in {target} held files transfer did not write ({named}): "
            f"it was moved, whole, to {aside}")


def check_replaceable(target: Path, force: bool) -> None:
    """A bundle folder may be written at ``target``: it is free, an empty folder, or (with
    ``force``) a bundle. A folder that is no bundle is never replaced, --force or not."""
    target = Path(target)
    if not (target.exists() or target.is_symlink()):
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return  # an empty folder made for it beforehand
    if not is_bundle(target):
        raise TransferError(f"{target} exists and is not a model bundle; refusing to replace "
                            "it (choose another --output)")
    if not force:
        raise TransferError(f"{target} already exists; use --force to replace it")


@contextlib.contextmanager
def writing(target: Path, force: bool):
    """Yield a Landing: fill its temporary ``folder``; on success the folder is renamed into
    place and ``Landing.path`` says where. A bundle at ``target`` is replaced only with force.
    Without force, a ``target`` that appeared during the run (another run named in the same
    second, or given the same --output) is kept: this bundle lands at the first free
    ``target-2``, ``target-3``, ... (each rename is atomic: it fails on an existing folder)."""
    target = Path(target)
    check_replaceable(target, force)
    with new_folders_kept_on_success(target.parent):  # a failed run leaves no new folders
        sweep_left_by_killed(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        landing = Landing(tmp, target)
        try:
            yield landing
            # a Ctrl-C or SIGTERM that native code swallowed during the run: nothing lands
            raise_if_interrupted()
            to_disk(tmp)  # every file whole on the disk before the bundle has its name
            if force and target.exists():
                old = tmp.with_name(tmp.name + "-old")
                try:
                    os.replace(target, old)
                    os.replace(tmp, target)
                except BaseException:  # stopped between the two: the old bundle goes back
                    if old.exists() and not (target.exists() or target.is_symlink()):
                        os.replace(old, target)
                    raise
                theirs = None if old.is_symlink() else not_written_by_transfer(old, target)
                if theirs is None:  # a link named as the output: it goes, its bundle stays
                    old.unlink()
                elif theirs:  # files the tool did not write: the old bundle is kept, whole
                    landing.kept = (free_name(target.with_name(f"{target.name}.old")), theirs)
                    os.replace(old, landing.kept[0])
                else:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                landing.path = _land(tmp, target)
            entries_to_disk(target.parent)
        except OSError as exc:
            import errno

            # a write inside that fails for room (Keras's zip on a full disk): say where; not
            # another error without a name (reading a photo for the preview, say)
            if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(exc.errno, exc.strerror, str(target)) from exc
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def say_where_it_landed(target: Path, landed: Path, reporter) -> None:
    """Warn when ``write`` put the bundle beside ``target`` (which appeared during the run)."""
    if Path(landed) != Path(target):
        reporter.warn(f"{target} appeared during this run (another run?) and is kept; this "
                      f"model is {landed}")


def _land(folder: Path, target: Path) -> Path:
    """Rename ``folder`` to ``target``, or to the first free ``target-N`` when another
    process put something there first."""
    for n in range(1, 1000):
        path = target if n == 1 else target.with_name(f"{target.name}-{n}")
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            continue
        try:
            os.rename(folder, path)  # onto an existing folder with files: fails, atomically
            return path
        except OSError:
            if not path.exists():
                raise
    raise TransferError(f"no free name beside {target} (tried {target.name}-2 to -999)")


def meta(*, kind: str, class_names: list, image_size: int, channels: int, preprocessing: dict,
         seed: int, command: str, settings: dict, metrics: dict, **fields) -> dict:
    """A bundle's meta.json, for every kind of run ("transfer" or "mnist").

    The common fields come first, in one order (schema_version, kind, class_names, image_size,
    channels, preprocessing, metrics, seed, command, settings: the resolved settings that
    repeat the run, versions, created); ``fields`` adds what a kind knows besides.
    """
    import platform

    from transfer import __version__
    from transfer.tf import keras, tf

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "class_names": list(class_names),
        "image_size": image_size,
        "channels": channels,
        "preprocessing": preprocessing,
        **fields,
        "metrics": metrics,
        "seed": seed,
        "command": command,
        "settings": settings,
        "versions": {"transfer": __version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write(target: Path, force: bool, model, meta: dict, history: dict, title: str = "",
          extra=None, reporter=None) -> Path:
    """Write a bundle (model.keras, meta.json, settings.json, history.csv, curves.png, and
    whatever ``extra(folder)`` adds) into a temporary folder, rename it into place and point
    ``latest`` at it when it sits in a models folder of its own kind. Returns where it landed:
    ``target``, or ``target-N`` when ``target`` appeared meanwhile (see ``writing``)."""
    from transfer import plots

    with writing(target, force) as landing:
        tmp = landing.folder
        model.save(tmp / MODEL)
        write_json(tmp / META, meta)
        if meta.get("settings") is not None:
            write_json(tmp / SETTINGS, meta["settings"])
        write_history(tmp / "history.csv", history)
        plots.curves(history, tmp / "curves.png", title=title,
                     flips=bool((meta.get("test_time") or {}).get("flips")))
        if extra is not None:
            extra(tmp)
    if landing.kept is not None and reporter is not None:
        aside, theirs = landing.kept
        reporter.warn(kept_aside("bundle", target, theirs, aside))
    if meta.get("kind") == "transfer":
        try:
            update_latest(landing.path)
        except OSError as exc:  # a full disk, or a file system without links (FAT, SMB)
            if reporter is not None:  # the bundle is whole: the run did not fail
                reporter.warn(f"{landing.path.parent / LATEST} was not pointed at this bundle "
                              f"({exc.strerror or exc}); use --model {landing.path}")
    return landing.path


LATEST = "latest"  # in a models folder: the link to its newest bundle


def check_output_place(output: Path) -> None:
    """Refuse a bundle folder that would break ``latest`` or another bundle: one named
    ``latest`` (the link itself), or one inside an existing bundle."""
    output = Path(output)
    if output.name == LATEST:
        raise TransferError(f"--output {output}: {LATEST} is the link to the newest bundle; "
                            f"name the bundle itself (e.g. --output {output.parent / 'my-model'})")
    inside = next((p for p in output.absolute().parents if is_bundle(p)), None)
    if inside is not None:
        raise TransferError(f"--output {output} is inside the bundle {inside}; choose a folder "
                            "outside it")


def lasting(folder: Path) -> Path:
    """A bundle's path as given, but a link at its end (``models/latest``, which moves on to
    the next bundle trained) replaced by the folder it leads to now: relative as given
    (``models/mobilenet-20261205-190414``), absolute when that cannot be relative."""
    folder = Path(folder)
    if not folder.is_symlink():
        return folder
    real = folder.resolve()
    if folder.is_absolute():
        return real
    try:
        return Path(os.path.relpath(real))
    except ValueError:  # another drive (Windows)
        return real


def shown_name(folder: Path) -> str:
    """A bundle's name in titles: its folder's, or for ``models/latest`` (a link that moves
    on) and ".", the name of the folder it is now."""
    folder = Path(folder)
    return folder.resolve().name if folder.name in ("", ".", LATEST) else folder.name


def fine_tune_undone(result: dict | None) -> bool:
    """Whether a run's ``training.fine_tune_result`` (meta.json; compare.json's rows copy
    it) says fine-tuning was undone for not lowering the validation loss."""
    return bool(result) and not result.get("kept", True)


def update_latest(target: Path) -> None:
    """Point ``<models>/latest`` at ``target`` (a relative symlink, replaced atomically)."""
    target = Path(target)
    latest = target.parent / LATEST
    if latest.exists() and not latest.is_symlink():
        return  # a real folder named latest is the user's: leave it alone
    with contextlib.suppress(OSError):
        pointed = os.readlink(latest)
        if "/" in pointed or os.sep in pointed:
            return  # ours name a bundle beside it: a link elsewhere (../releases/v3) is yours
    tmp = target.parent / f"{temp_prefix(LATEST)}link"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target.name, tmp)
        os.replace(tmp, latest)
        entries_to_disk(latest.parent)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_train_files(path: Path, rows: list[tuple[str, str, int, str]]) -> None:
    """``train-files.csv``: (class, file name, bytes, absolute path) of each image the model
    trained on, so that ``evaluate`` can tell when it is shown them again."""
    # a name that is not UTF-8 (a Latin-1 folder's "ph\xf6to.jpg") as its own bytes, read
    # back the same way by train_files
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "file", "bytes", "path"])
        writer.writerows(rows)


def train_files(folder: Path) -> dict[tuple[str, int], list[tuple[str, Path | None]]] | None:
    """(file name, size) -> (class, path) of the bundle's training images of that name and
    size (path None for a row of a list written before it kept paths); None for a bundle
    without the list (made before it, or by mnist)."""
    try:
        with open(Path(folder) / TRAIN_FILES, newline="", encoding="utf-8",
                  errors="surrogateescape") as handle:
            found: dict[tuple[str, int], list[tuple[str, Path | None]]] = {}
            for row in csv.DictReader(handle):
                path = Path(row["path"]) if row.get("path") else None
                found.setdefault((row["file"], int(row["bytes"])), []).append((row["class"],
                                                                                path))
            return found
    except (OSError, KeyError, ValueError, TypeError, csv.Error):  # TypeError: a row cut short
        return None


def write_history(path: Path, history: dict[str, list]) -> None:
    keys = list(history)
    rows = len(next(iter(history.values()), []))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for i in range(rows):
            writer.writerow([i + 1, *(history[k][i] for k in keys)])


def read_meta(bundle: Path) -> dict:
    bundle = Path(bundle)
    path = bundle / META
    if bundle.is_file():
        raise TransferError(file_not_bundle(bundle))
    if not bundle.is_dir():
        raise TransferError(no_bundle(bundle))
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise TransferError(f"{bundle} has no {META}: not a transfer model bundle") from None
    except ValueError as exc:
        raise TransferError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise TransferError(f"{path} holds a JSON {type(meta).__name__}, not a bundle's "
                            "meta (an object)")
    for key in ("schema_version", "class_names", "image_size", "preprocessing"):
        if key not in meta:
            raise TransferError(f"{path} lacks {key!r}: not a transfer model bundle")
    check_meta_types(meta, path)
    if meta["schema_version"] > SCHEMA_VERSION:
        raise TransferError(f"{path} has schema version {meta['schema_version']}; this transfer "
                            f"reads up to {SCHEMA_VERSION}: upgrade transfer")
    return meta


def file_not_bundle(path: Path) -> str:
    """Why the file ``path`` is no bundle, and which folder to give: the bundle it sits in
    (its model.keras, an export in its export/ folder), or, for an exported model elsewhere,
    the bundle it was exported from (``--model models/latest/export/model.tflite`` said only
    that a folder was expected)."""
    wanted = f"one holding {META} and {MODEL}"
    owner = next((folder for folder in list(path.parents)[:2] if is_bundle(folder)), None)
    if owner is not None:
        return (f"{path} is a file, not a bundle folder ({wanted}): it is in the bundle "
                f"{owner}; pass --model {owner}")
    if path.suffix.lower() in (".tflite", ".keras", ".pb"):
        return (f"{path} is a file, not a bundle folder (an exported model? --model takes the "
                f"bundle folder it was exported from, {wanted})")
    return (f"{path} is a file; --model expects a bundle folder ({wanted}, as `transfer "
            "train` writes)")


def no_bundle(path: Path) -> str:
    """Why there is no bundle at ``path``: a link (``models/latest``) to a bundle since
    renamed or deleted is said as such (it said "train one with `transfer train`", as if
    none had ever been trained)."""
    try:
        target = os.readlink(path)
    except OSError:  # not a link: nothing there
        return f"no model bundle at {path}: train one with `transfer train`"
    from transfer.files import resolved

    if resolved(path) is None:  # lp1 -> lp2 -> lp1 was "points at lp2, which is missing"
        return (f"{path} is a loop of symbolic links (it leads back to itself); pass --model "
                "DIR")
    # the words predict's default model (inference.open_classifier) says it in, too
    return (f"{path} points at {target}, which is missing (moved or deleted?); pass --model "
            "DIR, or train again")


# meta.json's fields that the commands and the server read, and what each must be: a field
# of another type (a hand edit, another tool's file) is one error naming it, not a crash deep
# in the code that trusted it
_META_TYPES = {"schema_version": int, "image_size": int, "channels": int,
               "preprocessing": dict, "metrics": dict, "data": dict, "test_time": dict,
               "training": dict, "head": dict, "weights": dict, "engine": dict,
               "timings": dict, "augmentation": dict, "settings": dict, "versions": dict,
               "base": str, "output": str, "kind": str, "created": str, "alpha": (int, float),
               "skipped": list}


def check_field_types(record: dict, types: dict, path: Path | str, required=()) -> None:
    """TransferError naming the first field of ``record`` (a JSON file's object, read from
    ``path``) whose value is not of its type in ``types``; ``null`` or absent is accepted but
    for the ``required`` fields. A bool is no number; ``bool``: true or false only."""
    for key, kind in types.items():
        value = record.get(key)
        if value is None and key not in required:
            continue
        if (isinstance(value, bool) != (kind is bool)) or not isinstance(value, kind):
            wanted = {int: "a whole number", dict: "an object", str: "a string",
                      list: "a list", bool: "true or false"}.get(kind, "a number")
            raise TransferError(f"{path}: {key} must be {wanted}, not "
                                f"{json.dumps(value)[:80]}")


def check_meta_types(meta: dict, path: Path) -> None:
    """Raise TransferError when a field of ``meta`` that transfer reads has the wrong type:
    ``class_names`` a list of at least two distinct strings, ``image_size`` a positive whole
    number, the dicts dicts, and so on (``_META_TYPES``; ``null`` is accepted where a field is
    optional)."""
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) >= 2
            and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)):
        raise TransferError(f"{path}: class_names must be a list of at least two distinct "
                            f"names, not {json.dumps(names)[:80]}")
    check_field_types(meta, _META_TYPES, path,
                      required=("schema_version", "image_size", "preprocessing"))
    if meta["image_size"] < 1:
        raise TransferError(f"{path}: image_size must be positive, not {meta['image_size']}")
    for key, value in (meta.get("metrics") or {}).items():  # printed with number formats
        if value is not None and not isinstance(value, dict) and (  # dict: noise_accuracy
                isinstance(value, bool) or not isinstance(value, int | float)):
            raise TransferError(f"{path}: metrics.{key} must be a number, not "
                                f"{json.dumps(value)[:80]}")
    for key in ("root", "train_dir", "validate_dir", "cwd"):  # folders looked for
        value = (meta.get("data") or {}).get(key)
        if value is not None and not isinstance(value, str):
            raise TransferError(f"{path}: data.{key} must be a folder's path, not "
                                f"{json.dumps(value)[:80]}")


def data_folder(meta: dict, key: str) -> Path | None:
    """A folder of meta.json's "data" (``"root"``, ``"train_dir"`` or ``"validate_dir"``), or
    None when training named none.

    Training records the folder as it was given, often relative (``data/validate``): it is
    found from the folder training ran in (``data["cwd"]``), so a notebook one folder down
    still finds ``data/validate``, and another project's ``data/validate`` (run from there)
    is not taken for it; else (the project moved, a bundle from another machine) from the
    current folder. When neither exists the path is returned as named, for the error message.
    """
    data = meta.get("data") or {}
    named = data.get(key)
    if not named:
        return None
    path = Path(named)
    if path.is_absolute() or not data.get("cwd"):
        return path
    there = Path(data["cwd"]) / path
    return there if there.exists() else path


def validate_dir(meta: dict) -> Path | None:
    """The validation folder the bundle was trained against (see ``data_folder``), or None."""
    return data_folder(meta, "validate_dir")


@keeps_random_state  # building the layers draws initial weights from Python's random
def load_keras(path: Path):
    """A ``.keras`` file, loaded with Keras's safe_mode on (no code from the file runs); the
    caller's Python and NumPy random generators are left as they were."""
    from transfer.bases import preprocess_layer_class
    from transfer.tf import keras

    path = Path(path)
    problem = _keras_file_problem(path)
    if problem:
        raise TransferError(f"cannot load {path}: {problem}")
    preprocess_layer_class()  # old bundles hold transfer>Preprocess: register it first
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TransferError(f"cannot load {path}: {first}") from exc


def _keras_file_problem(path: Path) -> str | None:
    """What is wrong with a .keras file, in words, or None when it looks like one (a zip
    archive holding config.json)."""
    import zipfile

    if not path.exists():
        return "the file does not exist"
    if path.is_dir():
        return "it is a folder, not a .keras file"
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes); the bundle is damaged, train it again"
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                return "the zip archive holds no config.json: not a Keras model file"
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        return (f"the file ({size} bytes) is not a Keras model archive (not a zip file: "
                "truncated or damaged); train the model again")
    except OSError as exc:
        return f"the file cannot be read ({exc.strerror or exc})"
    if damaged is not None:
        return f"the archive member {damaged} is damaged (bad CRC); train the model again"
    return None


def load(bundle: Path):
    """(model, meta) of a bundle, loaded with Keras's safe_mode on and checked against meta.

    meta.json and the model are read from one folder: a bundle replaced while it is read
    (``train --force`` renames its new folder into place) is read again, whole, rather than
    pairing the old meta.json with the new model ("the bundle is inconsistent")."""
    model, meta, _ = load_with_stat(bundle)
    return model, meta


def load_with_stat(bundle: Path):
    """(model, meta, stat) as ``load``, with the (size, mtime_ns, inode) of the model.keras
    that was read (None if it could not be taken): what a cache keyed by that file checks it
    against later. Taken in the read that succeeded, within an unchanged folder."""
    for attempt in range(3):
        before = _folder_identity(bundle)
        stat = file_stat(Path(bundle) / MODEL)
        try:
            model, meta = _load_once(bundle)
        except Exception:
            if attempt < 2 and _folder_identity(bundle) != before:
                continue  # replaced meanwhile: the failure may be the mix of two bundles
            raise
        if _folder_identity(bundle) == before:
            return model, meta, stat
    raise TransferError(f"{bundle} was replaced while it was read, three times running; "
                        "try again when its run has finished")


def file_stat(path: Path) -> tuple | None:
    """(size, mtime_ns, inode) of a file, or None: whether it is still the file it was."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder a path leads to now (None: nothing there): a bundle
    replaced by a rename is another inode."""
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def adopt(bundle: Path, model):
    """(model, meta, stat) as ``load_with_stat`` gives them, for the model this process just
    wrote to ``bundle`` and still holds (train's, for its report): meta.json read and the
    model checked against it, without loading model.keras a second time."""
    stat = file_stat(Path(bundle) / MODEL)
    meta = read_meta(bundle)
    check_model(bundle, model, meta)
    return model, meta, stat


def _load_once(bundle: Path):
    meta = read_meta(bundle)
    path = Path(bundle) / MODEL
    if not path.exists():
        raise TransferError(f"{bundle} has no {MODEL}: the bundle is incomplete")
    model = load_keras(path)
    check_model(bundle, model, meta)
    return model, meta


def check_model(bundle: Path, model, meta: dict) -> None:
    """The model's outputs and input are those meta.json describes, or a TransferError."""
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
