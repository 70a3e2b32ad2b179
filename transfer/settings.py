"""Every command's settings: one dataclass each, holding the defaults and the checks.

The CLI reads its defaults from these classes and calls ``validated()`` before anything heavy
(TensorFlow) is imported, so a bad option fails in a fraction of a second with one line. Any
Python program can fill the same classes and call the library directly, e.g.::

    from transfer.settings import TrainSettings
    from transfer.training import train

    train(TrainSettings(base="mobilenet", alpha=0.25, data_dir="my_photos"))

This module imports no TensorFlow and nothing heavy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transfer.constants import (
    COMPARE_JSON,
    COMPARE_PNG,
    TRAIN_FOLDERS,
    VALIDATE_FOLDERS,
    gradcam_png,
    is_ignored_folder,
)
from transfer.errors import TransferError

# Registries of choices that are not bases (bases live in transfer.bases).
PIPELINES = ("generator", "tfdata")
DISTRIBUTE = ("none", "mirrored", "multi-worker")
FETCH_SOURCES = ("auto", "kaggle", "microsoft", "archive")
PREDICT_FORMATS = ("table", "json", "csv")
EXPORT_FORMATS = ("keras", "savedmodel", "tflite")
QUANTIZE = ("none", "dynamic", "float16", "int8")
ENGINES = ("auto", "tf", "tflite")
CLASS_WEIGHTS = ("auto", "balanced", "none")
TTA_MODES = ("auto", "flip", "none")  # auto: flips where the base's registry entry measured them
LR_SCHEDULES = ("constant", "cosine")

# Training recipes: the defaults of epochs, learning rate, patience and schedule depend on what
# trains. A frozen base only trains a small head; a CNN from scratch learns every weight and
# needs many more epochs with a decaying learning rate (docs/BENCHMARKS.md has the runs).
RECIPES = {
    "frozen": {"epochs": 100, "learning_rate": 1e-3, "patience": 5, "lr_schedule": "constant"},
    "scratch": {"epochs": 24, "learning_rate": 2e-3, "patience": 10, "lr_schedule": "cosine"},
    # the seeds' CNN (Flatten-Dense128, 5.3 M weights) stays at chance with 2e-3: its own
    "scratch-seeds": {"epochs": 10, "learning_rate": 1e-3, "patience": 3,
                      "lr_schedule": "constant"},
}
# train's --epochs at most: far more than any run goes (early stopping ends a frozen base's
# head after tens of epochs, a CNN from scratch's recipe is 24); a larger number is a typo,
# and the CNN from scratch, which watches only the second half of its epochs, would run
# for days before early stopping may end it
MAX_EPOCHS = 100_000
MAX_DENSE = 16_384  # --dense: InceptionV3's 2048 features x 16384 units are 134 MB of weights
INVERT = ("auto", "yes", "no")
MNIST_DATASETS = ("mnist", "fashion")
MNIST_ARCHS = ("cnn", "tiny")
MICROSOFT_URL = (
    "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
    "kagglecatsanddogs_5340.zip"
)


# --------------------------------------------------------------------------- checks


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def at_least(name: str, value, low) -> None:
    """A whole number (every such option counts something) of at least ``low``."""
    whole_number(name, value)
    if value < low:
        raise TransferError(f"{_flag(name)} must be at least {low}, not {value}")


SEED_LIMIT = 2**32  # NumPy's (and so Keras's) seeds are 0 to 2**32 - 1


def a_seed(name: str, value) -> None:
    """A seed NumPy takes: a whole number from 0 to 2**32 - 1 (a negative one ended a run in
    a traceback after the data was read)."""
    at_least(name, value, 0)
    if value >= SEED_LIMIT:
        raise TransferError(f"{_flag(name)} must be below 2**32 ({SEED_LIMIT}), not {value}")


def whole(value) -> bool:
    """True for an int (NumPy's too), not a bool, a float or a string of digits."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole_number(name: str, value) -> None:
    if not whole(value):
        raise TransferError(f"{_flag(name)} must be a whole number, not {value!r}")


def a_path(name: str, value) -> None:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise TransferError(f"{_flag(name)} must be a path, not {value!r}")


def real(value) -> bool:
    """True for a finite int or float (NumPy's too), not a bool or a string of digits."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def shown(value) -> str:
    """A value as a message quotes it: a number plainly, anything else as Python writes it
    (so the string "0.2" is not mistaken for the number)."""
    return str(value) if real(value) else repr(value)


def a_bool(name: str, value) -> None:
    """A switch must be True or False: from Python, "no" would silently mean on."""
    if not isinstance(value, bool):
        raise TransferError(f"{_flag(name)} must be True or False, not {value!r}")


WORKER_TIMEOUT_MAX = 1e8  # seconds (about three years), as TRANSFER_STARTUP_SECONDS


def positive(name: str, value) -> None:
    if not (real(value) and value > 0):
        raise TransferError(f"{_flag(name)} must be a positive number, not {shown(value)}")


def fraction(name: str, value, *, upper_open: bool = True) -> None:
    ok = real(value) and 0 <= value and (value < 1 if upper_open else value <= 1)
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise TransferError(f"{_flag(name)} must be in {interval}, not {shown(value)}")


def open_fraction(name: str, value) -> None:
    """A share strictly between 0 and 1 (a split that leaves both sides some images)."""
    if not (real(value) and 0 < value < 1):
        raise TransferError(f"{_flag(name)} must be a fraction in (0, 1), not {shown(value)}")


def one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise TransferError(f"{_flag(name)} must be one of {', '.join(map(str, choices))}, "
                            f"not {value!r}")


def not_a_file(name: str, path: Path | None) -> None:
    """A folder option must not name an existing file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise TransferError(f"{_flag(name)} {path} is a file, not a folder")


def writable(name: str, path: Path | None, *, file: bool = False, given: bool = True) -> None:
    """The nearest existing folder at or above ``path`` accepts a new file (probed with a
    temporary file that is removed at once: nothing is left behind), so that a run that would
    end by writing there fails now, not after minutes of work. ``given``: the user named
    ``path`` with the option (the error says "--name path"); else it is the default, named
    alone."""
    if path is None:
        return
    said = f"{_flag(name)} {path}" if given else str(path)
    from transfer.files import resolved

    if resolved(path) is None:  # found now, not by the write after minutes of work
        raise TransferError(f"{said}: a loop of symbolic links (a link that leads back to "
                            "itself); name another path")
    folder = Path(path).absolute().parent if file else Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise TransferError(f"{said}: {folder} is a file, not a folder")
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".transfer-write-probe-"):
            pass
    except OSError as exc:
        raise TransferError(f"{said}: cannot write in {folder} "
                            f"({exc.strerror or exc})") from None


def bundle_output(output: Path, force: bool) -> None:
    """The folder a bundle will be written to (train's and mnist's ``--output``): not a file,
    not ``latest`` nor inside another bundle, writable, and an existing one replaced only with
    ``force`` and only when it is a bundle."""
    from transfer import bundle

    output = Path(output)
    not_a_file("output", output)
    bundle.check_output_place(output)
    writable("output", output)
    bundle.check_replaceable(output, force)


def outside_data(name: str, path: Path | None, *folders: Path | None) -> None:
    """Refuse an output folder inside a data folder: what is written there (bundles, pictures)
    would be read as photos, or as a class, by the next train or evaluate of that folder."""
    if path is None:
        return
    out = Path(path).resolve()
    for folder in folders:
        if folder is None:
            continue
        data = Path(folder).resolve()
        if out == data or data in out.parents:
            raise TransferError(f"{_flag(name)} {path} is inside the data folder {folder}: what "
                                "is written there would be read as photos next time; choose a "
                                "folder outside it")


def existing_file(name: str, path: Path | None) -> None:
    if path is not None and not Path(path).exists():
        raise TransferError(f"{_flag(name)} {path} does not exist")


@functools.cache
def _kinds(cls) -> dict[str, tuple]:
    """field -> the types its annotation allows (``Path | None`` -> (Path, NoneType))."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) or (hints[f.name],)
            for f in dataclasses.fields(cls)}


def a_number(name: str, value) -> None:
    """A number's type (an int or float, NumPy's too; not a bool or a string of digits): its
    range, finite included, is each option's own check."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TransferError(f"{_flag(name)} must be a number, not {shown(value)}")


def some_paths(name: str, value) -> list:
    """A list of paths: one path is a list of one (not its letters); each must be a path."""
    items = [value] if isinstance(value, str | os.PathLike) else value
    if not isinstance(items, list | tuple):
        raise TransferError(f"{_flag(name)} must be paths, not {value!r}")
    for item in items:
        if not isinstance(item, str | os.PathLike):
            raise TransferError(f"{_flag(name)} must be paths, not {item!r}")
    return list(items)


def _has_folders(path) -> bool:
    """Whether ``path`` is a folder holding folders (class folders: a data folder)."""
    try:
        return Path(path).is_dir() and any(child.is_dir() for child in Path(path).iterdir())
    except OSError:
        return False


def no_empty_path(name: str, paths: list) -> None:
    """An empty path is the current folder to Path: every photo under it, classified or drawn
    on (the CLI refuses an empty argument; a library caller's unset variable got this)."""
    if any(isinstance(p, str) and not p.strip() for p in paths):
        raise TransferError(f"{name} holds an empty path (an unset variable?); name the "
                            "images, or . for the current folder")


def given(value, cls: type, function: str):
    """``value`` when it is a ``cls``; else one TransferError showing the call (a path given
    to a command that takes settings failed with an AttributeError on ``validated``)."""
    if not isinstance(value, cls):
        raise TransferError(f"{function} takes a {cls.__name__} (from transfer.settings), not "
                            f"{value!r}: {function}({cls.__name__}(...))")
    return value


class Settings:
    """Shared behaviour of the settings classes."""

    def typed(self, *, but: tuple[str, ...] = ()):
        """Check each field holds the kind of value its annotation declares, before any
        other check: from Python, ``force="no"`` is true (and replaced files), and "x" for a
        number failed deep inside with a TypeError. Switches must be True or False, paths a
        str or os.PathLike, counts whole numbers, other numbers numbers; names and lists
        are checked by each class (``but``: fields it checks itself). A NumPy number (a sweep
        over ``np.arange(3)``) becomes Python's: Keras refused ``seed=np.int64(7)`` and
        ``Dense(np.int64(16))``, a socket ``port=np.int64(8765)``, after the data was read."""
        for name, kinds in _kinds(type(self)).items():
            value = getattr(self, name)
            if name in but or (value is None and type(None) in kinds):
                continue
            if bool in kinds:
                a_bool(name, value)
            elif Path in kinds:
                a_path(name, value)
            elif int in kinds:
                whole_number(name, value)
                if type(value) is not int:
                    setattr(self, name, int(value))
            elif float in kinds:
                a_number(name, value)
                if type(value) not in (int, float):
                    setattr(self, name, float(value))
        return self

    def as_dict(self) -> dict:
        """JSON-ready: paths as strings (saved in bundles as the resolved settings)."""

        def plain(value):
            if isinstance(value, Path):
                return str(value)
            if type(value).__module__ == "numpy" and hasattr(value, "item"):
                return value.item()  # np.float32(0.25) -> 0.25 (JSON wrote the string "0.25")
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [plain(v) for v in value]
            return value

        return plain(asdict(self))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def defaults(cls) -> Settings:
    """An instance holding ``cls``'s defaults (for the CLI's option defaults)."""
    return cls()


# --------------------------------------------------------------------------- fetch-data

# The cats/dogs tour's split, per class (a folder of class folders is split by fraction).
TOUR_PER_CLASS = {"train": 1000, "validate": 400, "test": 0}


def split_folder(data_dir: Path, names) -> Path | None:
    """The split folder of ``data_dir`` named one of ``names`` in any case (``Train/``,
    ``VAL/``) that holds class folders (as fetch-data decides): a vehicle classifier's
    ``train/`` of nothing but photos of trains is a class, not a split."""
    try:
        entries = sorted(Path(data_dir).iterdir())
    except OSError:
        return None
    for wanted in names:
        for entry in entries:
            if entry.name.lower() != wanted or not entry.is_dir():
                continue
            if any(e.is_dir() and not is_ignored_folder(e.name) for e in entry.iterdir()):
                return entry
    return None


def download_address(url: str) -> None:
    """Refuse a TRANSFER_MICROSOFT_URL that names nothing to download: a path (a local copy is
    given with --archive), another scheme, an http address without a host. They ended in a
    traceback ("unknown url type") or five retries of a "lost connection"."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is no number)
    except ValueError as exc:
        raise TransferError(f"TRANSFER_MICROSOFT_URL {url!r} is not a valid address ({exc})"
                            ) from None
    if parts.scheme.lower() not in ("http", "https", "file"):
        local = " (a local copy is given with --archive PATH)" if not parts.scheme else ""
        raise TransferError(f"TRANSFER_MICROSOFT_URL {url!r} is not an http://, https:// or "
                            f"file:// address{local}")
    if parts.scheme.lower() in ("http", "https") and not parts.hostname:
        raise TransferError(f"TRANSFER_MICROSOFT_URL {url!r} names no host")


@dataclass
class FetchOptions(Settings):
    """Everything `transfer fetch-data` can be told; the CLI fills one of these."""

    source: str = "auto"  # auto | kaggle | microsoft | archive
    archive: Path | None = None  # a local zip or folder; implies source "archive"
    competition: str = "dogs-vs-cats"
    data_dir: Path = Path("data")
    # Counts per class; None: not given (the tour's 1000 / 400 / 0 for the cats/dogs layouts;
    # a folder of class folders is then split by fraction).
    train_per_class: int | None = None
    validate_per_class: int | None = None
    test_per_class: int | None = None
    # Fractions of each class's usable images (a stratified split); None: not given (0.2 and
    # 0 for a folder of class folders). Either fractions or counts, not both.
    validation_split: float | None = None
    test_split: float | None = None
    seed: int = 42
    force: bool = False
    microsoft_url: str = field(
        # an empty TRANSFER_MICROSOFT_URL (`export TRANSFER_MICROSOFT_URL=` to undo a mirror)
        # is the default, not the address ''
        default_factory=lambda: os.environ.get("TRANSFER_MICROSOFT_URL") or MICROSOFT_URL)

    def per_split(self) -> dict[str, int]:
        asked = {"train": self.train_per_class, "validate": self.validate_per_class,
                 "test": self.test_per_class}
        counts = {split: TOUR_PER_CLASS[split] if n is None else n for split, n in asked.items()}
        return {split: n for split, n in counts.items() if n > 0}

    def validated(self) -> FetchOptions:
        opts = self.typed()  # data_dir, archive, seed, the counts, force
        if opts.archive is not None and opts.source in ("auto", "archive"):
            opts = opts.replace(source="archive", archive=Path(opts.archive))
        elif opts.archive is not None:
            raise TransferError(f"--archive implies --source archive, not --source {opts.source}")
        one_of("source", opts.source, FETCH_SOURCES)
        if opts.source == "archive" and opts.archive is None:
            raise TransferError("--source archive needs --archive PATH (a zip or a folder)")
        if not (isinstance(opts.competition, str) and opts.competition.strip()):
            raise TransferError(f"--competition must be a Kaggle competition's name, not "
                                f"{opts.competition!r}")
        if not isinstance(opts.microsoft_url, str):  # from a program (the CLI: the variable)
            raise TransferError(f"microsoft_url must be an address (a str), not "
                                f"{opts.microsoft_url!r}")
        if opts.source in ("auto", "microsoft"):
            download_address(opts.microsoft_url)
        if opts.archive is not None and not Path(opts.archive).exists():
            raise TransferError(f"--archive {opts.archive} does not exist")
        a_seed("seed", opts.seed)  # as train's: the same seeds name the same splits
        for name, low in (("train_per_class", 1), ("validate_per_class", 1),
                          ("test_per_class", 0)):
            if getattr(opts, name) is not None:
                at_least(name, getattr(opts, name), low)
        if opts.validation_split is not None:
            open_fraction("validation_split", opts.validation_split)
        if opts.test_split is not None:
            fraction("test_split", opts.test_split)
        if opts.test_split == 0:  # no test split, the default (as --test-per-class 0): it
            opts = opts.replace(test_split=None)  # turned the tour's counts into fractions
        if opts.validation_split is not None or opts.test_split is not None:
            total = ((0.2 if opts.validation_split is None else opts.validation_split)
                     + (opts.test_split or 0.0))
            if total >= 1:
                raise TransferError(f"--validation-split + --test-split is {total:g}: it must "
                                    "stay below 1, to leave images to train on")
            if opts.train_per_class is not None or opts.validate_per_class is not None or \
                    opts.test_per_class not in (None, 0):  # 0: no test split, the default
                raise TransferError(
                    "give either --validation-split/--test-split (fractions of every class) or "
                    "--train-per-class/--validate-per-class/--test-per-class (counts), not both")
        not_a_file("data_dir", opts.data_dir)
        writable("data_dir", opts.data_dir)
        return opts.replace(data_dir=Path(opts.data_dir))


# --------------------------------------------------------------------------- train


@dataclass
class Augment(Settings):
    """Augmentation settings, shared by both pipelines (ImageDataGenerator's units)."""

    enabled: bool = True
    rotation: float = 20.0  # degrees
    shift: float = 0.2  # fraction of width/height
    shear: float = 0.2  # degrees, as ImageDataGenerator's shear_range
    zoom: float = 0.2  # +- fraction
    flip: bool = True  # horizontal

    def validated(self) -> Augment:
        self.typed()
        if not (real(self.rotation) and 0 <= self.rotation <= 180):
            raise TransferError("--rotation must be in [0, 180] degrees, not "
                                f"{shown(self.rotation)}")
        fraction("shift", self.shift)
        fraction("zoom", self.zoom)
        if not (math.isfinite(self.shear) and 0 <= self.shear <= 90):
            raise TransferError(f"--shear must be in [0, 90] degrees, not {self.shear}")
        return self


@dataclass
class TrainSettings(Settings):
    """Every setting of a training run (the CLI fills one; so can any Python program)."""

    data_dir: Path = Path("data")  # train/ + validate/, or class folders split in memory
    train_dir: Path | None = None  # default: <data_dir>/train when it exists
    # default: the validate/ (validation/, val/, valid/) beside train_dir, else data_dir's
    validate_dir: Path | None = None
    validation_split: float = 0.2  # of each class, when data_dir holds the class folders
    base: str = "inception"
    alpha: float = 1.0
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    engine: str = "auto"  # what runs the frozen feature pass: auto | tf | tflite
    pipeline: str = "generator"
    augment: Augment = field(default_factory=Augment)
    # random-affine copies of the training features; None: 1, or none with test-time flips
    # (the head then trains on the plain photos at train_size, or at one size on each photo's
    # mean with its mirror image): docs/BENCHMARKS.md
    augment_copies: int | None = None
    tta: str = "auto"  # test-time flips in the saved model: auto | flip | none
    image_size: int | None = None  # default: the base's native size
    # the size the head's training features are computed at (frozen route); None: the base's
    # native size when test-time flips run the model at the registry's larger test_size
    # (FixRes: train small, test large; docs/BENCHMARKS.md), else the image size
    train_size: int | None = None
    dropout: float = 0.2
    dense: int = 0
    l2: float | None = None  # the head's L2 penalty; None: chosen on the validation split
    class_weight: str = "auto"  # auto: balanced when the largest class > 1.5x the smallest
    epochs: int | None = None  # None: the recipe's (RECIPES)
    batch_size: int = 32
    learning_rate: float | None = None  # None: the recipe's
    lr_schedule: str | None = None  # constant | cosine; None: the recipe's
    patience: int | None = None  # None: the recipe's
    fine_tune: int = 0
    fine_tune_lr: float = 1e-5
    fine_tune_epochs: int = 5
    seed: int = 42
    distribute: str = "none"  # none | mirrored (this machine's devices) | multi-worker (TF_CONFIG)
    worker_timeout: float = 60.0  # multi-worker: seconds a collective or heartbeat may wait
    feature_shard_size: int = 512  # images per feature shard (cache entry, streaming unit)
    tensorboard: Path | None = None
    models_dir: Path = Path("models")
    output: Path | None = None  # default: <models_dir>/<base>-<timestamp>
    force: bool = False
    feature_cache: bool = True
    preview_augment: bool = False  # also write the augmentation preview beside the data
    assert_accuracy_at_least: float | None = None  # below it (validation): exit code 3
    command: str = ""

    def recipe(self) -> str:
        """The recipe's name: "frozen" for a pretrained base; for a CNN from scratch its own
        entry when it has one (scratch-seeds), else "scratch"."""
        from transfer import bases

        if bases.get(self.base).pretrained:
            return "frozen"
        return self.base if self.base in RECIPES else "scratch"

    def __post_init__(self):
        if isinstance(self.augment, dict):  # from settings.json: TrainSettings(**json) repeats
            unknown = sorted(set(self.augment) - {f.name for f in dataclasses.fields(Augment)})
            if unknown:
                raise TransferError(f"augment= has no setting {', '.join(map(repr, unknown))}; "
                                    "it takes " + ", ".join(
                                        f.name for f in dataclasses.fields(Augment)))
            self.augment = Augment(**self.augment)

    def resolved(self) -> TrainSettings:
        """Paths made explicit (train/validate folders under data_dir when they exist; None
        when data_dir holds the class folders themselves) and the recipe's defaults filled."""
        data_dir = Path(self.data_dir)

        def folder(given, names):
            if given is not None:
                return Path(given)
            return split_folder(data_dir, names)

        recipe = RECIPES[self.recipe()] if self.base else RECIPES["frozen"]
        filled = {key: value for key, value in recipe.items() if getattr(self, key) is None}
        train_dir = folder(self.train_dir, TRAIN_FOLDERS)
        if self.validate_dir is not None:
            validate_dir = Path(self.validate_dir)
        elif train_dir is None:  # without a train split, valid/ or val/ is a class
            validate_dir = None
        else:
            validate_dir = self.validate_beside(train_dir) or split_folder(data_dir,
                                                                           VALIDATE_FOLDERS)
        return self.replace(
            data_dir=data_dir,
            train_dir=train_dir,
            validate_dir=validate_dir,
            models_dir=Path(self.models_dir),
            output=Path(self.output) if self.output is not None else None,
            tensorboard=Path(self.tensorboard) if self.tensorboard is not None else None,
            **filled)

    @staticmethod
    def validate_beside(train_dir) -> Path | None:
        """The validation folder beside ``train_dir`` (any name of VALIDATE_FOLDERS, in any
        case, holding class folders), not ``train_dir`` itself: what a run given --train-dir
        and no --validate-dir validates on (``--train-dir pets/train`` validated on
        ./data/validate, the tour's photos, while pets/validate sat beside it)."""
        train = Path(train_dir)
        found = split_folder(train.absolute().parent, VALIDATE_FOLDERS)
        if found is None or found.resolve() == train.resolve():
            return None
        written = train.parent / found.name  # as the user wrote the training folder's path
        # "--train-dir ." (its parent "." again) or "a/.."; the folder found, from here
        return written if written.resolve() == found.resolve() else Path(
            os.path.relpath(found))

    def preview_folder(self) -> Path:
        """Where --preview-augment writes its picture: the data folder, or the folder holding
        --train-dir (not --data-dir's default, which that run does not read)."""
        hp = self.resolved()
        return Path(hp.train_dir).parent if hp.train_dir is not None else Path(hp.data_dir)

    def preview_path(self) -> Path:
        """The augmentation preview's file: ``augment-preview.png`` in ``preview_folder()``."""
        from transfer.constants import PREVIEW_PNG

        return self.preview_folder() / PREVIEW_PNG

    def folders_read(self) -> list[Path]:
        """The photo folders a run reads: the train and validate folders, or the data folder
        itself when it holds the class folders (every folder in it is a class)."""
        hp = self.resolved()
        if hp.train_dir is not None:
            return [p for p in (hp.train_dir, hp.validate_dir) if p is not None]
        return [hp.data_dir]

    def validated(self, *, preview_only: bool = False) -> TrainSettings:
        """Every option checked, without TensorFlow; raises one TransferError per problem.
        ``preview_only``: for `train --preview-only` (``training.preview``), which writes the
        augmentation preview alone: its place is checked, not the bundle's, models folder's
        or logs'."""
        from transfer import bases

        self.typed(but=("data_dir",))  # needed only without train_dir
        if self.train_dir is None:
            a_path("data_dir", self.data_dir)
        if not isinstance(self.augment, Augment):
            raise TransferError(f"augment= must be an Augment(...), not {self.augment!r}")
        base = bases.get(self.base)
        bases.check_alpha(base, self.alpha)
        if self.image_size is not None:
            bases.check_size(base, self.image_size)
        if self.train_size is not None:
            try:
                bases.check_size(base, self.train_size)
            except TransferError as exc:
                raise TransferError(f"--train-size: {exc}") from None
            if not (base.pretrained and (not self.augment.enabled or self.augment_copies != 0)):
                raise TransferError("--train-size needs features computed once: a pretrained "
                                    "base and not --augment-copies 0")
        a_path("weights", self.weights)
        if self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            raise TransferError(f"--weights must be imagenet, none or a weights file; "
                                f"{self.weights} is not a file")
        if self.weights not in ("imagenet", "none") and not base.pretrained:
            # it was taken, recorded in settings.json, and never loaded: a fresh network
            raise TransferError(f"--weights FILE applies to pretrained bases (a file of the "
                                f"base's weights), not {base.name}, which starts from random "
                                "weights")
        one_of("pipeline", self.pipeline, PIPELINES)
        one_of("distribute", self.distribute, DISTRIBUTE)
        if self.distribute == "multi-worker":
            from transfer import cluster

            cluster.read_tf_config()  # one line when TF_CONFIG is missing or malformed
        positive("worker_timeout", self.worker_timeout)
        if self.worker_timeout > WORKER_TIMEOUT_MAX:  # TensorFlow's heartbeat bound is an
            # int64 of milliseconds: 1e17 s ended in its ValueError's traceback
            raise TransferError(f"--worker-timeout must be at most {WORKER_TIMEOUT_MAX:g} "
                                f"seconds, not {shown(self.worker_timeout)}")
        at_least("feature_shard_size", self.feature_shard_size, 1)
        one_of("engine", self.engine, ENGINES)
        one_of("class_weight", self.class_weight, CLASS_WEIGHTS)
        self.augment.validated()
        if self.augment_copies is not None:
            at_least("augment_copies", self.augment_copies, 0)
        one_of("tta", self.tta, TTA_MODES)
        if self.tta == "flip" and not self.augment.flip:
            # refused, not warned: either option silently undoes the other (the model
            # averaging photo and mirror cannot tell apart what --no-flip says differs)
            raise TransferError("--tta flip averages each photo with its mirror image, and "
                                "--no-flip says a mirror image is a different picture (left "
                                "from right): give one or the other")
        fraction("dropout", self.dropout)
        a_seed("seed", self.seed)
        at_least("dense", self.dense, 0)
        if self.l2 is not None and not (real(self.l2) and self.l2 >= 0):
            raise TransferError(f"--l2 must be 0 or a positive number, not {shown(self.l2)}")
        open_fraction("validation_split", self.validation_split)
        if self.assert_accuracy_at_least is not None:
            fraction("assert_accuracy_at_least", self.assert_accuracy_at_least,
                     upper_open=False)
        filled = self.replace(**{k: v for k, v in RECIPES[self.recipe()].items()
                                 if getattr(self, k) is None})
        at_least("epochs", filled.epochs, 1)
        if filled.epochs > MAX_EPOCHS:
            raise TransferError(f"--epochs must be at most {MAX_EPOCHS}, not {filled.epochs}: "
                                "early stopping ends a run long before (a frozen base's head "
                                "after tens of epochs); to let it decide, 1000 is plenty")
        at_least("batch_size", self.batch_size, 1)
        positive("learning_rate", filled.learning_rate)
        at_least("patience", filled.patience, 0)
        one_of("lr_schedule", filled.lr_schedule, LR_SCHEDULES)
        at_least("fine_tune", self.fine_tune, 0)
        if self.fine_tune:
            if not base.pretrained:
                raise TransferError("--fine-tune applies to pretrained bases, not "
                                    f"{base.name}")
            positive("fine_tune_lr", self.fine_tune_lr)
            at_least("fine_tune_epochs", self.fine_tune_epochs, 1)
            if self.fine_tune_epochs > MAX_EPOCHS:
                raise TransferError(f"--fine-tune-epochs must be at most {MAX_EPOCHS}, not "
                                    f"{self.fine_tune_epochs}")
        if self.tta == "flip" and (not base.pretrained or (
                self.augment.enabled and self.augment_copies == 0)):  # as plan() refuses it,
            # before compare's first run trains (every run is checked before the first)
            raise TransferError("--tta flip needs features computed once: a pretrained base "
                                "and not --augment-copies 0")
        if self.dense > MAX_DENSE:
            raise TransferError(f"--dense must be at most {MAX_DENSE}, not {self.dense}: a "
                                "head that wide holds gigabytes of weights")
        hp = self.resolved()
        # with --output nothing goes into --models-dir (bundle, latest and checkpoints land
        # beside the output): a file named models where one stands did not stop such a run
        unused = ("models_dir",) if hp.output is not None else ()
        for name in ("data_dir", "train_dir", "validate_dir", "models_dir", "tensorboard"):
            if name not in unused:
                not_a_file(name, getattr(hp, name))
        read = hp.folders_read()
        if not preview_only:  # `train --preview-only` writes its picture alone: no bundle
            outside_data("output", hp.output, *read)
            if hp.output is None:
                outside_data("models_dir", hp.models_dir, *read)
            outside_data("tensorboard", hp.tensorboard, *read)
            if hp.tensorboard is not None and hp.output is not None:
                logs, out = Path(hp.tensorboard).resolve(), Path(hp.output).resolve()
                if logs == out or out in logs.parents:  # the bundle lands whole at the end
                    raise TransferError(f"--tensorboard {hp.tensorboard} is inside --output "
                                        f"{hp.output}, which is written whole when training "
                                        f"ends; put the logs beside it (--tensorboard "
                                        f"{hp.output}-logs)")
        if hp.train_dir is not None and hp.validate_dir is not None:
            train, validate = Path(hp.train_dir).resolve(), Path(hp.validate_dir).resolve()
            if train == validate or train in validate.parents or validate in train.parents:
                raise TransferError(f"--validate-dir {hp.validate_dir} and --train-dir "
                                    f"{hp.train_dir} hold the same photos: validating on "
                                    "training photos measures nothing; give two folders apart")
        if preview_only:  # nor models folder nor logs
            return hp._preview_checked(preview_only=True)
        if "models_dir" not in unused:
            writable("models_dir", hp.models_dir)
        writable("tensorboard", hp.tensorboard)
        if hp.preview_augment:  # written into the data folder at the end: checked now
            hp._preview_checked()
        if hp.output is not None:
            bundle_output(hp.output, hp.force)
        return hp

    def _preview_checked(self, preview_only: bool = False) -> TrainSettings:
        """The augmentation preview's place: writable, and an existing picture replaced only
        with force; said as the option the user gave (--preview-augment or --preview-only)."""
        from transfer.files import refuse_existing

        name = "preview_only" if preview_only else "preview_augment"
        preview = self.preview_path()
        writable(name, preview, file=True)
        refuse_existing(preview, self.force, f"{_flag(name)}:")
        return self


HParams = TrainSettings  # the name TF Hub's make_image_classifier uses; kept for callers


# --------------------------------------------------------------------------- predict, evaluate


@dataclass
class PredictSettings(Settings):
    """`transfer predict`: which images, which model, how to print."""

    paths: list = field(default_factory=list)  # files, folders (recursed) or globs
    model: Path | None = None  # a bundle folder; default models/latest, else ImageNet mode
    imagenet: bool = False
    base: str = "inception"  # ImageNet mode's base
    alpha: float = 1.0
    top: int | None = None  # default 1 (3 in ImageNet mode)
    format: str | None = None  # table | json | csv; default from output's suffix
    output: Path | None = None
    invert: str | None = None  # digit models: auto | yes | no
    batch_size: int = 32
    models_dir: Path = Path("models")
    force: bool = False
    # what runs a bundle's model: auto | tf | tflite (auto: TFLite for a large folder when it
    # is faster here; transfer.inference.ModelEngine)
    engine: str = "auto"

    def named_format(self) -> str | None:
        """The format ``output``'s name says (``.json``, ``.csv``), or None."""
        suffix = Path(self.output).suffix.lower() if self.output else ""
        return {".json": "json", ".csv": "csv"}.get(suffix)

    def resolved_format(self) -> str:
        return self.format or self.named_format() or "table"

    def format_note(self) -> str | None:
        """A word when what goes into ``output`` is not what its name says (a table drawn in
        box characters in ``predictions.xlsx``, JSON in ``o.csv``): written as asked, said."""
        if self.output is None:
            return None
        suffix = Path(self.output).suffix.lower()
        named = self.named_format()
        written = self.resolved_format()
        if named is not None and named != written:
            return f"writing {written} into {self.output}, as --format says (its name says {named})"
        if named is None and written == "table" and suffix not in ("", ".txt", ".text", ".log"):
            return (f"writing the table, as text, into {self.output}: predict writes CSV into a "
                    ".csv file and JSON into a .json file (or give --format csv)")
        return None

    def classifier_validated(self) -> PredictSettings:
        """The checks of the fields that choose the classifier, which ``open_classifier``
        runs (it takes no paths): ``imagenet="no"`` was ImageNet mode there (a non-empty
        string is true), ``models_dir=""`` the current folder, ``models_dir=5`` a
        TypeError."""
        from transfer import bases

        self.typed()
        not_a_file("models_dir", self.models_dir)  # else "no bundle": ImageNet mode instead
        if self.invert is not None:
            one_of("invert", self.invert, INVERT)
        one_of("engine", self.engine, ENGINES)
        if self.imagenet or self.base != "inception":
            bases.check_alpha(bases.get(self.base), self.alpha)
        elif self.alpha != 1.0:  # --alpha alone: a MobileNet width (for a bundle: refused by
            bases.check_alpha(bases.get("mobilenet"), self.alpha)  # open_classifier, said why)
        return self

    def validated(self) -> PredictSettings:
        from transfer.images import is_one_image

        self.classifier_validated()
        paths = [self.paths] if is_one_image(self.paths) else self.paths  # not its letters
        try:
            paths = list(paths)  # a list, a tuple, Path.glob's generator
        except TypeError:
            raise TransferError(f"paths must be a list of images, folders or globs, not "
                                f"{paths!r}") from None
        if not paths:
            raise TransferError("give at least one image, folder or glob")
        no_empty_path("paths", paths)
        one_of("format", self.resolved_format(), PREDICT_FORMATS)
        at_least("batch_size", self.batch_size, 1)
        if self.top is not None:
            at_least("top", self.top, 1)
        if self.output is not None:
            named = os.fspath(self.output)
            if named.endswith(("/", os.sep)):  # Path() drops the slash: a file of that name
                raise TransferError(f"--output {named} names a folder; name a file")
            if named == "-":  # the CLI's standard output; from Python a file named "-"
                raise TransferError("--output - is the command line's standard output; from "
                                    "Python leave output None and use the result "
                                    "(result.render(format))")
            if Path(self.output).is_dir():
                raise TransferError(f"--output {self.output} is a folder; name a file")
            from transfer.files import is_device_or_pipe, refuse_existing, standard_stream

            # /dev/stdout (wherever the shell sent it), a pipe: written to, kept
            if not is_device_or_pipe(self.output) and standard_stream(self.output) is None:
                from transfer.inference import named_among

                if named_among(paths, self.output):  # checked before "use --force"
                    raise TransferError(f"--output {self.output} is one of the photos to "
                                        "classify: name another file (--force does not "
                                        "replace a photo)")
                refuse_existing(self.output, self.force)
                writable("output", self.output, file=True)
        return self.replace(paths=list(paths), format=self.resolved_format(),
                            output=Path(self.output) if self.output else None)


@dataclass
class EvaluateSettings(Settings):
    """`transfer evaluate`: a bundle on a folder of class subfolders."""

    model: Path = Path("models/latest")
    data_dir: Path | None = None  # default: the bundle's validation folder
    output: Path | None = None  # default: the bundle
    batch_size: int = 32
    worst: int = 16  # most confident mistakes: misclassified.png and suspects.csv
    assert_accuracy_at_least: float | None = None  # below it: exit code 3 (a CI gate)
    force: bool = False
    engine: str = "auto"  # what runs the model: auto | tf | tflite (as predict's)

    def validated(self) -> EvaluateSettings:
        self.typed()
        at_least("batch_size", self.batch_size, 1)
        at_least("worst", self.worst, 0)
        one_of("engine", self.engine, ENGINES)
        if self.assert_accuracy_at_least is not None:
            fraction("assert_accuracy_at_least", self.assert_accuracy_at_least,
                     upper_open=False)
        not_a_file("output", self.output)
        not_a_file("data_dir", self.data_dir)
        outside_data("output", self.output, self.data_dir)
        writable("output", self.output)
        return self.replace(model=Path(self.model))


@dataclass
class ExplainSettings(Settings):
    """`transfer explain`: Grad-CAM of one image (``image``; ``output`` a PNG), or of many
    (``images``: files, folders, globs; ``output`` a folder)."""

    image: Path | None = None
    model: Path = Path("models/latest")
    output: Path | None = None  # default: <image>.gradcam.png beside each image
    class_name: str | None = None
    invert: str | None = None
    force: bool = False
    images: list | None = None

    def validated(self) -> ExplainSettings:
        self.typed(but=("image",))  # a photo in memory gets its own message below
        if self.invert is not None:
            one_of("invert", self.invert, INVERT)
        if self.images is not None:
            if self.image is not None:
                raise TransferError("give either image or images, not both")
            images = some_paths("images", self.images)
            if not images:
                raise TransferError("give the images to explain")
            no_empty_path("images", images)
            # its pictures keep their class folders: inside a folder of class folders given
            # (a data folder), they are a class of pictures to its next train or evaluate
            outside_data("output", self.output, *[p for p in images if _has_folders(p)])
            if self.output is not None and (Path(self.output).is_file()
                                            or Path(self.output).suffix.lower() == ".png"):
                raise TransferError(f"--output {self.output} names a file; with several images "
                                    "it names the folder for their pictures")
            writable("output", self.output)
            return self.replace(images=[str(p) for p in images], model=Path(self.model))
        if self.image is None:
            raise TransferError("give the image to explain")
        if not isinstance(self.image, str | os.PathLike):  # bytes, a Pillow image, an array
            raise TransferError(f"explain takes the path of an image file, not a "
                                f"{type(self.image).__name__} (predict takes photos in "
                                "memory; save this one to a file to explain it)")
        output = self.output
        if output is not None and (Path(output).is_dir()
                                   or Path(output).suffix.lower() != ".png"):
            # a folder (gradcam/, or a name without .png): the picture goes into it
            output = Path(output) / gradcam_png(Path(self.image).name)
        if Path(self.image).is_dir():
            raise TransferError(f"{self.image} is a folder; explain takes one image file "
                                "(explain_all and the command line take folders)")
        from transfer import images

        try:  # predict's reasons: no such file, a broken link (to...), a pipe, empty
            images.existing_file(self.image)
        except images.ImageError as exc:
            raise TransferError(f"{self.image}: {exc}") from None
        png = Path(output) if output is not None else gradcam_png(self.image)
        writable("output", png, file=True, given=output is not None)
        return self.replace(image=Path(self.image), model=Path(self.model), output=output)


@dataclass
class ExportSettings(Settings):
    """`transfer export`: a bundle as Keras, SavedModel or TFLite, checked before it lands."""

    model: Path = Path("models/latest")
    format: str = "tflite"
    output: Path | None = None  # default: MODEL/export/<model.keras|saved_model|model.tflite>
    check_images: list | None = None
    quantize: str = "none"  # tflite only: dynamic | float16 | int8 (calibrated on train images)
    force: bool = False

    def validated(self) -> ExportSettings:
        self.typed()
        check_images = (None if self.check_images is None
                        else some_paths("check_images", self.check_images))
        one_of("format", self.format, EXPORT_FORMATS)
        one_of("quantize", self.quantize, QUANTIZE)
        if self.quantize != "none" and self.format != "tflite":
            raise TransferError("--quantize applies to --format tflite only")
        suffix = None if self.output is None else Path(self.output).suffix.lower()
        if self.format == "keras" and suffix is not None and Path(self.output).suffix != ".keras":
            raise TransferError("a Keras export must end in .keras (in lower case: Keras "
                                "saves and loads no other name)")
        if self.format == "tflite" and suffix not in (None, ".tflite"):  # what devices look for
            raise TransferError("a TFLite export must end in .tflite")
        if self.format == "savedmodel" and suffix in (".keras", ".tflite", ".h5"):
            raise TransferError(f"a SavedModel is a folder: name --output without {suffix}, "
                                "or choose that --format")
        for path in check_images or []:
            existing_file("check_images", path)
        if self.output is not None:
            writable("output", self.output, file=True)
        return self.replace(model=Path(self.model), check_images=check_images)


# --------------------------------------------------------------------------- serve, report


@dataclass
class ServeSettings(Settings):
    """`transfer serve`: a web page and an HTTP API over the bundles of a models folder."""

    models_dir: Path = Path("models")
    model: str | None = None  # the page's default bundle (a name inside models_dir)
    imagenet: bool = False  # make --base's ImageNet classifier the page's default model
    base: str = "mobilenet"  # ImageNet mode's base
    alpha: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 20.0
    top: int = 3  # classes shown per image
    cache_size: int = 4  # models kept loaded (least recently used dropped first)

    def validated(self) -> ServeSettings:
        from transfer import bases

        self.typed()
        base = bases.get(self.base)
        bases.check_alpha(base, self.alpha)
        if self.model is not None and not isinstance(self.model, str | os.PathLike):
            raise TransferError(f"--model must be a bundle's name or path, not {self.model!r}")
        if self.model is not None and self.imagenet:  # --imagenet won't be the default then
            raise TransferError("give either --model or --imagenet, not both (the page's "
                                "default model)")
        if not isinstance(self.host, str):
            raise TransferError(f"--host must be an address, not {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise TransferError(f"--port must be in [0, 65535], not {self.port}")
        positive("max_upload_mb", self.max_upload_mb)
        at_least("top", self.top, 1)
        at_least("cache_size", self.cache_size, 1)
        not_a_file("models_dir", self.models_dir)
        model = self.model
        # "lib1/", as a shell's tab completion writes it: the bundle lib1
        named = (os.fspath(model).rstrip("/" + os.sep) or os.fspath(model)) if model else model
        if named and ("/" in named or os.sep in named):  # ./lib1 too (Path drops its "./")
            # a path, as every other command takes it: fine when it leads into --models-dir
            path, root = Path(named), Path(self.models_dir)
            inside = (path.parent == root or os.path.realpath(path.parent)
                      == os.path.realpath(root))
            if not inside or path.name in ("", ".", ".."):
                if not path.exists():  # no advice that leads to another error
                    raise TransferError(f"--model {model}: no such bundle")
                if path.is_file():  # the bundle it sits in named, as the other commands do
                    from transfer.bundle import file_not_bundle

                    raise TransferError(f"--model {file_not_bundle(path)}")
                if not (path / "meta.json").is_file():
                    raise TransferError(f"--model {model} is not a bundle (no meta.json in it)")
                raise TransferError(
                    f"--model {model} is not a bundle directly inside --models-dir {root}: "
                    f"serve it with --models-dir {path.parent} --model {path.name}")
            model = path.name
        else:
            model = named
        return self.replace(models_dir=Path(self.models_dir), model=model)


def not_a_report_folder(folder) -> str:
    """Why ``folder`` (not a folder) has no report to make: missing, or a file given."""
    if Path(folder).is_file():
        return (f"{folder} is a file, not a bundle or evaluation folder (report takes the "
                "folder that train, mnist, evaluate or compare wrote)")
    return f"{folder}: no such bundle or evaluation folder"


@dataclass
class ReportSettings(Settings):
    """`transfer report`: rebuild the one-file HTML report of a bundle or an evaluation."""

    folder: Path = Path("models/latest")
    output: Path | None = None  # default: FOLDER/report.html
    force: bool = False  # replace an --output that is not a transfer report

    def validated(self) -> ReportSettings:
        self.typed()
        if not Path(self.folder).is_dir():
            raise TransferError(not_a_report_folder(self.folder))
        if self.output is not None:
            named = os.fspath(self.output)
            if named.endswith(("/", os.sep)):  # Path() drops the slash: a file of that name
                raise TransferError(f"--output {named} names a folder; name an .html file")
            writable("output", self.output, file=True)
        return self.replace(folder=Path(self.folder),
                            output=None if self.output is None else Path(self.output))


# --------------------------------------------------------------------------- compare

COMPARE_RUNS = ("scratch", "frozen", "fine-tuned")


COMPARE_ALPHA = 0.25  # compare's MobileNet width when --alpha is not given (the tour's)


@dataclass
class CompareSettings(Settings):
    """`transfer compare`: the course's three runs on the same split, side by side."""

    data_dir: Path = Path("data")  # anything `train --data-dir` accepts
    output: Path = Path("runs/compare")
    runs: list = field(default_factory=lambda: list(COMPARE_RUNS))
    base: str = "mobilenet"  # the pretrained base of the frozen and fine-tuned runs
    alpha: float | None = None  # MobileNet's width: COMPARE_ALPHA unless given; 1.0 for others
    validation_split: float = 0.2
    fine_tune: int = 60  # layers unfrozen in the fine-tuned run
    seed: int = 42
    force: bool = False

    def validated(self) -> CompareSettings:
        from transfer import bases

        self.typed()
        named = self.runs if isinstance(self.runs, list | tuple) else str(self.runs).split(",")
        for run in named:
            if not isinstance(run, str):
                one_of("runs", run, COMPARE_RUNS)
        runs = [r.strip() for r in named if r.strip()]
        if not runs:
            raise TransferError("--runs needs at least one of " + ", ".join(COMPARE_RUNS))
        for run in runs:
            one_of("runs", run, COMPARE_RUNS)
        if len(set(runs)) != len(runs):
            raise TransferError(f"--runs names a run twice: {','.join(runs)}")
        base = bases.get(self.base)
        if not base.pretrained:
            raise TransferError(f"--base must be a pretrained base, not {self.base}")
        alpha = self.alpha if self.alpha is not None else (
            COMPARE_ALPHA if base.has_alpha else 1.0)
        alpha = bases.check_alpha(base, alpha)
        at_least("fine_tune", self.fine_tune, 1)
        open_fraction("validation_split", self.validation_split)
        a_seed("seed", self.seed)
        not_a_file("data_dir", self.data_dir)
        not_a_file("output", self.output)
        outside_data("output", self.output, *TrainSettings(data_dir=self.data_dir).folders_read())
        writable("output", self.output)
        from transfer.files import refuse_existing

        refuse_existing(Path(self.output) / COMPARE_JSON, self.force)
        refuse_existing(Path(self.output) / COMPARE_PNG, self.force)  # a picture of yours
        if (Path(self.output) / "report.json").is_file() and not self.force:
            # an evaluate --output folder: compare's page would replace the evaluation's
            raise TransferError(f"{self.output} holds an evaluation (report.json): the "
                                "comparison's report.html would replace its page; use --force "
                                "or --output another folder")
        from transfer.report import REPORT_HTML, check_replaceable

        check_replaceable(Path(self.output) / REPORT_HTML, self.force)
        return self.replace(runs=runs, data_dir=Path(self.data_dir), output=Path(self.output),
                            alpha=alpha)

    def unused(self, runs: list) -> list[str]:
        """A warning for each option given (on these settings, as given) that the chosen
        ``runs`` do not use: the base's with the scratch run alone, --fine-tune without the
        fine-tuned run (compare.json recorded null for them, without a word)."""
        from transfer import bases

        default, said = CompareSettings(), []
        if all(run == "scratch" for run in runs):
            # validated() fills the alpha in: the width it fills is no option given (the CLI
            # passes validated settings; "--alpha 0.25 unused" was said to every scratch run)
            filled = COMPARE_ALPHA if bases.get(self.base).has_alpha else 1.0
            base = ([f"--base {self.base}"] if self.base != default.base else []) + (
                [f"--alpha {self.alpha:g}"] if self.alpha not in (None, filled) else [])
            if base:
                said.append(f"{' '.join(base)} unused: the scratch run trains a CNN from "
                            "scratch, no pretrained base")
        if "fine-tuned" not in runs and self.fine_tune != default.fine_tune:
            said.append(f"--fine-tune {self.fine_tune} unused: it is the fine-tuned run's, and "
                        f"--runs {','.join(runs)} has none")
        return said


# --------------------------------------------------------------------------- mnist


@dataclass
class MnistParams(Settings):
    """`transfer mnist`: the small CNN trained from scratch on MNIST or Fashion-MNIST."""

    dataset: str = "mnist"
    arch: str = "cnn"
    epochs: int = 5
    batch_size: int = 128
    validation_split: float = 0.1
    learning_rate: float = 2e-3  # Adam's learning rate
    ema: float = 0.99  # momentum of the weights' moving average the model ends with; 0: off
    label_smoothing: float = 0.0  # of the cross-entropy's one-hot targets; 0: off
    shift: int = 0  # random shifts of up to this many pixels (training only); 0: off
    data: Path | None = None
    limit: int | None = None
    output: Path | None = None  # default models/<dataset>-<arch>: models/mnist-cnn...
    seed: int = 42
    force: bool = False
    command: str = ""

    def target(self) -> Path:
        return Path(self.output or Path("models") / f"{self.dataset}-{self.arch}")

    def validated(self) -> MnistParams:
        self.typed()
        one_of("dataset", self.dataset, MNIST_DATASETS)
        one_of("arch", self.arch, MNIST_ARCHS)
        at_least("epochs", self.epochs, 1)
        at_least("batch_size", self.batch_size, 1)
        fraction("validation_split", self.validation_split)
        fraction("ema", self.ema)
        positive("learning_rate", self.learning_rate)
        fraction("label_smoothing", self.label_smoothing)
        at_least("shift", self.shift, 0)
        a_seed("seed", self.seed)
        if self.shift > 13:
            raise TransferError(f"--shift must be at most 13 pixels, not {self.shift}")
        if self.limit is not None:
            at_least("limit", self.limit, 10)
        existing_file("data", self.data)
        bundle_output(self.target(), self.force)
        return self


MnistSettings = MnistParams
