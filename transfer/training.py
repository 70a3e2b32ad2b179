"""`transfer train`: a new head on a frozen ImageNet base, optionally fine-tuned.

The recipe, top to bottom (``train`` below; each step is a function of ``transfer.phases``
taking the ``RunPlan`` and returning a small result):

0. Check every setting (``TrainSettings.validated``, before TensorFlow loads) and resolve the
   run plan (``plan``): class names, file lists, base, size, output folder, cache use.
1. Read the class folders of ``train`` and ``validate`` (sorted names are the class order).
2. Build the base from the registry, frozen, and three graphs that share the same layers::

       full:  raw pixels -> preprocess -> base(training=False) -> pooling -> head   (saved)
       core:  preprocessed pixels -> base -> pooling -> head      (trained end to end)
       head:  pooled features -> head                             (trained on cached features)

3. With a frozen base the features never change, so each training image passes the base once
   (or once per augmented copy) and the head trains on cached arrays: ``--augment-copies K``
   precomputes K augmented copies and cycles through them across epochs; ``--no-augment`` needs
   one pass; ``--augment-copies 0`` is the classic recipe (the base runs every epoch).
4. Optionally unfreeze the top ``--fine-tune N`` layers (BatchNormalization stays frozen and
   in inference mode) and train end to end with a small learning rate.
5. Validate the final model once more, then write the bundle: ``model.keras`` (takes raw
   0-255 RGB; its preprocessing is a plain Keras layer), ``meta.json`` (with the resolved
   settings, also as ``settings.json``), ``history.csv``, ``curves.png``, and point
   ``models/latest`` at it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer import bases, bundle, decode_ahead, errors, metrics, phases, pipelines
from transfer.bases import Base
from transfer.constants import FEW_IMAGES, TEST_FOLDERS, few_images_warning, is_ignored_folder
from transfer.errors import TransferError
from transfer.files import exclusive, replacing
from transfer.progress import Reporter
from transfer.seeds import keeps_random_state
from transfer.settings import DISTRIBUTE, HParams, TrainSettings, given  # noqa: F401


@dataclass
class Timings:
    """Where a run's time went, in seconds."""

    feature_extraction: float = 0.0  # the base's passes over the images for the cache
    base_images: int = 0  # images that went through the base for the cache
    training: float = 0.0  # every fit (head, end to end, fine-tune)
    total: float = 0.0
    engine_setup: float = 0.0  # of feature_extraction: the base's conversion, auto's measure
    tensorflow_import: float = 0.0  # of total: importing TensorFlow, when the run did it
    # after total (so not in meta.json, written during it): the bundle, its preview and its
    # report written; TrainResult's timings have it, and the summary line says it
    writing: float = 0.0

    def as_meta(self) -> dict:
        running = self.feature_extraction - self.engine_setup  # the pass's own speed
        speed = round(self.base_images / running, 2) if running > 0 else None
        return {"feature_extraction_seconds": round(self.feature_extraction, 3),
                "engine_setup_seconds": round(self.engine_setup, 3),
                "training_seconds": round(self.training, 3),  # every fit
                "total_seconds": round(self.total, 3),
                "tensorflow_import_seconds": round(self.tensorflow_import, 3),
                "base_images_per_second": speed}


def import_seconds_since(started: float) -> float:
    """Seconds this process spent importing TensorFlow after ``started`` (a
    ``time.perf_counter()``): a `transfer train` process pays it inside its run, a program
    that imported TensorFlow before calling ``train`` does not."""
    loaded = sys.modules.get("transfer.tf")
    return loaded.IMPORT_SECONDS if loaded is not None and loaded.IMPORTED_AT >= started else 0.0


@dataclass
class TrainResult:
    """What a training run produced: the bundle folder, its meta.json, the per-epoch history."""

    bundle: Path | None  # None on a worker other than the chief (it writes nothing)
    meta: dict
    history: dict
    timings: Timings = field(default_factory=Timings)

    @property
    def counts(self) -> dict:
        """{"train": {class: n}, "validate": {class: n}}: the images each split used."""
        return self.meta.get("data", {}).get("counts", {})

    @property
    def skipped(self) -> list:
        """[{"file", "reason"}]: every unreadable file the run left out."""
        return self.meta.get("skipped", [])

    @property
    def gate_failed(self) -> bool:
        """True when ``assert_accuracy_at_least`` was given and the validation accuracy is
        below it (recorded in ``meta["gate"]``; the bundle is written all the same)."""
        gate = self.meta.get("gate")
        return gate is not None and not gate["passed"]


@dataclass(frozen=True)
class RunPlan:
    """A run resolved from its settings, before any model exists: what to read, what to build,
    where to write. Every phase takes it."""

    settings: TrainSettings  # validated and resolved (explicit train/validate folders or None)
    base: Base
    alpha: float
    size: int
    names: list  # class names, sorted: the output order
    train: list  # [pipelines.Sample] the training images (label = index in names)
    validate: list  # [pipelines.Sample] the validation images
    train_files: list  # (relative path, size, mtime_ns) rows of train: the feature cache's key
    val_files: list  # the same for validate
    target: Path  # the bundle folder to write
    use_cache: bool  # train the head on features computed once (frozen pretrained base)
    copies: int  # augmented copies of the training features (0: one plain pass)
    flips: bool = False  # test-time flips: features and the saved model average photo and mirror
    # the size of the head's training features: ``size`` unless FixRes (train_size_of)
    train_size: int | None = None
    split: str = "folders"  # "folders" (train/ + validate/) or "in-memory" (one folder split)
    root: Path | None = None  # the folder the class folders (or train/ validate/) are in
    skipped: pipelines.Skipped = field(default_factory=pipelines.Skipped)  # unreadable files
    # each training photo's place in the feature pass's list (its copies' draws go by it),
    # filled by the pass: the preview draws the very copies (unreadable files and a streamed
    # pass's interleaved classes move places from the usable list's)
    pass_places: dict = field(default_factory=dict)
    # the files left out before an in-memory split was cut (not images by their header): with
    # the split's seed and fraction they make the same split again (meta data.split_excluded)
    split_excluded: list = field(default_factory=list)
    # photos in a format the reader does not take (HEIC, camera raw) in the class folders:
    # left out, said, and listed in meta.json data.unread_photos
    unread: list = field(default_factory=list)

    @property
    def binary(self) -> bool:
        return len(self.names) == 2

    @property
    def feature_size(self) -> int:
        """The size the training features are computed at (``size`` unless FixRes)."""
        return self.train_size or self.size

    @property
    def train_mirror(self) -> bool:
        """Whether each training feature is the mean of photo and mirror: with test-time
        flips at one size. Under FixRes (smaller training size) the head trains on the plain
        photos, the variant measured best (docs/BENCHMARKS.md)."""
        return self.flips and self.feature_size == self.size

    @property
    def train_views(self) -> str | None:
        """What each training feature is made of (meta.json ``test_time.train_views``, the
        preview's picture): "photo and mirror", "photo", or None off the frozen route."""
        if not self.use_cache:
            return None
        return "photo and mirror" if self.train_mirror else "photo"

    @property
    def transforms_unused(self) -> bool:
        """True when --augment's random transforms take no part in the run: with test-time
        flips the head trains on the plain photos (FixRes) or on each photo's mean with its
        mirror image, with no transformed copies and no fine-tuning (which trains on
        transformed photos)."""
        hp = self.settings
        return (hp.augment.enabled and self.use_cache and self.flips and self.copies == 0
                and hp.fine_tune == 0)

    @property
    def pipeline_used(self) -> bool:
        """Whether images go through ``--pipeline`` end to end (no cached features, or
        fine-tuning); else the head trains on features computed once, without it."""
        return not self.use_cache or self.settings.fine_tune > 0

    @property
    def feature_cache_dir(self) -> Path:
        """Where the features are cached: in fetch-data's data folder, else in the user's
        cache, never among the user's photos (``features.cache_folder``)."""
        from transfer import features

        return features.cache_folder(Path(self.root or self.settings.data_dir))

    @property
    def checkpoint_dir(self) -> Path:
        """Beside the bundle being made (in --models-dir, or beside --output): never in the
        photo folders, which --models-dir may be when --output is given."""
        return self.target.parent / f".{self.target.name}.checkpoints"

    @property
    def counts(self) -> dict:
        """{"train": {class: n}, "validate": {class: n}}: the usable images of each split (the
        files found unreadable so far left out)."""
        out = {}
        for split, samples in (("train", self.train), ("validate", self.validate)):
            n = np.bincount([s.label for s in pipelines.usable(samples, self.skipped)],
                            minlength=len(self.names))
            out[split] = {name: int(n[i]) for i, name in enumerate(self.names)}
        return out

    def usable(self, split: str) -> list:
        """The Samples of "train" or "validate" without the files found unreadable so far."""
        return pipelines.usable(self.train if split == "train" else self.validate, self.skipped)


def test_time_flips(hp: TrainSettings, base: Base, use_cache: bool) -> bool:
    """Whether the saved model averages each photo with its mirror image (``--tta``).

    The head first trains on features computed once (plain photos at a smaller size, or each
    the mean of photo and mirror: ``RunPlan.train_mirror``), so
    the route must compute them once: a pretrained base, not ``--augment-copies 0``. A
    ``--fine-tune`` after it trains the base on single (randomly flipped) views; the saved
    model and the final validation still average the two views. auto: on that route in a run
    that augments, for a base whose registry entry has a ``test_size`` (where it was measured
    to pay), and not with --no-flip; flip: on that route for any pretrained base; none: off.

    ``--no-flip`` says a photo's mirror image is another picture (a left hand and a right
    hand, an arrow pointing left or right): a model that averages the two cannot tell them
    apart, so auto leaves the flips off then (``--tta flip`` with it is refused by
    ``TrainSettings.validated``)."""
    if hp.tta == "flip" and not use_cache:
        raise TransferError("--tta flip needs features computed once: a pretrained base and "
                            "not --augment-copies 0")
    if hp.tta == "flip":
        return True
    return (hp.tta == "auto" and use_cache and hp.augment.enabled and hp.augment.flip
            and base.test_size is not None)


def train_size_of(hp: TrainSettings, base: Base, size: int, use_cache: bool,
                  flips: bool) -> int:
    """The size of the head's training features: --train-size, else the base's own size when
    test-time flips run the saved model at the registry's larger ``test_size`` (FixRes,
    Touvron et al. 2019: the ImageNet weights saw objects larger than a whole photo shows them
    at the training size, so a head trained at 224 px is tested best at 288 px; measured in
    docs/BENCHMARKS.md), else the image size. Only the frozen route computes features once;
    the others train on images at the image size (``TrainSettings.validated`` refuses
    --train-size there)."""
    if hp.train_size is not None and use_cache:
        return hp.train_size
    if flips and hp.image_size is None and size == base.test_size:
        return base.size
    return size


def augmented_copies(hp: TrainSettings, flips: bool) -> int:
    """Random-affine copies of the training features: --augment-copies, else 1, or none with
    test-time flips (the head trains on the plain photos, or on each photo's mean with its
    mirror image)."""
    if not hp.augment.enabled:
        return 0
    if hp.augment_copies is not None:
        return hp.augment_copies
    return 0 if flips else 1


def plan(settings: TrainSettings) -> RunPlan:
    """Read the class folders and resolve base, size, output and cache use (no TensorFlow).

    The data: ``train/`` + ``validate/`` under ``--data-dir`` (or ``--train-dir`` and
    ``--validate-dir``), or one folder of class folders split in memory (``--validation-split``
    of each class, seeded: the split ``fetch-data --archive`` makes of the same folder).
    Files that are not images even by their header (zero bytes, text named .jpg) are recorded
    as skipped here, before the split; the others are decoded later, by whatever reads them.

    Raises:
        TransferError: the folders are missing, hold one class or an empty class, disagree on
            their classes; a class without enough usable images; --tensorboard without the
            tensorboard package.
    """
    hp = settings
    base = bases.get(hp.base)
    alpha = bases.check_alpha(base, hp.alpha)
    use_cache = base.pretrained and (not hp.augment.enabled or hp.augment_copies != 0)
    flips = test_time_flips(hp, base, use_cache)
    size = bases.check_size(base, hp.image_size or (flips and base.test_size) or base.size)
    skipped = pipelines.Skipped()
    if hp.train_dir is None and hp.validate_dir is not None:
        raise TransferError(f"--validate-dir {hp.validate_dir} given without training images: "
                            f"{Path(hp.data_dir) / 'train'} does not exist (give --train-dir)")
    if hp.validate_dir is None:
        # one folder of class folders (data_dir itself, or a train/ without validate/)
        root = Path(hp.train_dir if hp.train_dir is not None else hp.data_dir)
        names = pipelines.class_names(root)
        pipelines.probe_all(pipelines.samples_of(root, names), skipped)
        train_set, val_set = pipelines.split_in_memory(root, names, hp.validation_split,
                                                       hp.seed, skipped)
        split = "in-memory"
    else:
        root = Path(hp.train_dir).parent
        names = pipelines.class_names(hp.train_dir)
        # compared before the validation folder's own checks: its one class of two is a
        # mismatch ("p3/validate has one class" hid which class was missing)
        listed = (pipelines.class_folders(hp.validate_dir) if Path(hp.validate_dir).is_dir()
                  else [])
        val_names = (listed if listed and listed != names
                     else pipelines.class_names(hp.validate_dir))
        if val_names != names:
            raise TransferError(f"class folders differ: {hp.train_dir} has {names}, "
                                f"{hp.validate_dir} has {val_names}")
        train_set = pipelines.samples_of(hp.train_dir, names)
        val_set = pipelines.samples_of(hp.validate_dir, names)
        pipelines.probe_all(train_set + val_set, skipped)
        train_set = pipelines.usable(train_set, skipped)
        val_set = pipelines.usable(val_set, skipped)
        split = "folders"
    if hp.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise TransferError("--tensorboard needs the tensorboard package: pip install "
                            "tensorboard (or leave --tensorboard out)")
    target = Path(hp.output) if hp.output else Path(hp.models_dir) / bundle.default_name(hp.base)
    train_root = root if split == "in-memory" else Path(hp.train_dir)
    val_root = root if split == "in-memory" else Path(hp.validate_dir)
    folders = list(dict.fromkeys([train_root, val_root]))  # the one root when split in memory
    run = RunPlan(hp, base, alpha, size, names, train_set, val_set,
                  pipelines.rows(train_set, train_root), pipelines.rows(val_set, val_root),
                  target, use_cache, augmented_copies(hp, flips), flips=flips,
                  train_size=train_size_of(hp, base, size, use_cache, flips),
                  split=split, root=root, skipped=skipped,
                  split_excluded=[item["file"] for item in skipped.as_list()]
                  if split == "in-memory" else [],
                  unread=[str(folder / name / rel) for folder in folders for name in names
                          for rel in pipelines.unread_photos(folder / name)])
    pipelines.check_enough(run)
    return run


@keeps_random_state
def train(settings: TrainSettings, reporter: Reporter | None = None) -> TrainResult:
    """Train a classifier as ``settings`` describe and write its bundle.

    Args:
        settings: every option of the run (``TrainSettings``, alias ``HParams``); checked
            first, before TensorFlow loads.
        reporter: progress and messages; silent by default.

    Returns:
        TrainResult: the bundle folder, its meta.json (with the resolved settings) and the
        per-epoch history.

    Raises:
        TransferError: a bad option, missing or unreadable images, an existing --output
            without --force, weights that cannot be found.
    """
    started = time.perf_counter()
    settings = given(settings, TrainSettings, "train")
    # --train-dir without --validate-dir: the validation folder is looked for (beside it, else
    # under --data-dir), and the data line says where it was found
    looked_for = settings.train_dir is not None and settings.validate_dir is None
    settings = settings.validated()
    reporter = reporter or Reporter()
    with reading_the_data(settings):
        return _train(settings, reporter, started, looked_for)


@contextlib.contextmanager
def reading_the_data(settings: TrainSettings):
    """Read while no fetch-data writes a split there (and none starts until the run ends):
    the data folder, or --train-dir and --validate-dir and the folders holding them."""
    named = [settings.train_dir, *([settings.validate_dir] if settings.validate_dir else [])]
    folders = ([Path(settings.data_dir)] if settings.train_dir is None else
               sorted({f for d in named for f in (Path(d), Path(d).absolute().parent)}))
    with contextlib.ExitStack() as held:
        for folder in folders:
            if folder.is_dir():
                held.enter_context(exclusive(folder, f"fetch-data is writing the split in "
                                                     f"{folder}; wait for it to end, then "
                                                     "train", shared=True))
        yield


def draw_preview(run: RunPlan, path: Path) -> Path:
    """The augmentation preview of ``run`` (``preview.preview_augment``): what its network
    trains on, drawn as the run draws it."""
    from transfer.preview import preview_augment

    settings, usable = run.settings, run.usable("train")
    feature_views = run.use_cache and (run.copies > 0 or run.transforms_unused)
    # the cached copies: the very ones the pass computed (each photo's draw goes by its place
    # in the training list), as many as there are, up to three
    copied = feature_views and run.copies > 0
    return preview_augment([(s.path, run.names[s.label]) for s in usable],  # rows by class
                           # transformed copies of the features are drawn at the training
                           # size; fine-tuning's transforms at the model's, by its pipeline
                           settings.augment, run.feature_size if feature_views else run.size,
                           path, seed=settings.seed,
                           copies=min(3, run.copies) if copied else 3,
                           pipeline="features" if feature_views else pipeline_ran(run),
                           views=run.train_views if run.transforms_unused else None,
                           indices=(run.pass_places or {s.path: i for i, s in
                                                        enumerate(usable)}) if copied
                           else None)


@keeps_random_state  # TensorFlow's first import draws from Python's random
def preview(settings: TrainSettings, reporter: Reporter | None = None) -> Path:
    """Write the augmentation preview ``train(settings)`` would write with
    ``preview_augment=True`` (``augment-preview.png`` in the data folder), without training:
    change ``--rotation``, ``--zoom``, ... and look again in seconds (`train --preview-only`).

    Raises:
        TransferError: a bad option, missing photos, or an existing preview without force.
    """
    # no bundle, models folder or logs are written: --output, --models-dir and --tensorboard
    # are not this call's business (nor --preview-augment: the picture is all it writes)
    settings = given(settings, TrainSettings, "preview").validated(preview_only=True)
    reporter = reporter or Reporter()
    path = settings.preview_path()
    with reading_the_data(settings):
        run = plan(settings)
        report_data(run, reporter)
        with reporter.task("Drawing the augmentation preview", total=1) as advance:
            draw_preview(run, path)  # (no total: the bar said "0/?" when done)
            advance(1)
    reporter.info(f"augmentation preview: {path} (nothing trained: --preview-only)")
    return path


def pass_images(run: RunPlan) -> int:
    """The images the feature passes take, each pass counted (every augmented copy of the
    training photos, and the validation photos): what the cache may hold."""
    return (len(run.usable("train")) * max(1, run.copies)) + len(run.usable("validate"))


def cache_state(cache: str, computed: int, needed: int) -> str:
    """meta.json's ``feature_cache`` (and the summary line's): "hit" (every pass read from
    the cache), "miss" (every one computed), "off" (--no-feature-cache), or "partial: R of N
    features read, C computed" when a pass was read and another computed (a rerun after a
    Ctrl-C in the pass, --augment-copies raised): it said "miss", as if nothing was read.
    ``computed``: the images that went through the base; ``needed``: ``pass_images``."""
    if cache == "miss" and 0 < computed < needed:
        return f"partial: {needed - computed} of {needed} features read, {computed} computed"
    return cache


def kept_for_a_rerun(run, cluster) -> str:
    """What a multi-worker run stopped by a lost worker leaves on this worker's disk for the
    same command to resume from, in words ("" for nothing: stopped before a shard of features
    or an epoch checkpoint was written, or --no-feature-cache on the frozen route). Another
    worker than the chief keeps nothing itself: what the chief keeps on its machine, which this
    one cannot see but knows of, working in step (it said "nothing of this run is kept" while
    the chief said the opposite)."""
    kept = []
    # without --output the bundle's name is this run's time, and so is its checkpoints' folder:
    # the same command again names another and starts over (the line said it resumed)
    named = run.settings.output is not None
    if not cluster.chief:
        if run.use_cache and run.settings.feature_cache and cluster.features_kept:
            kept.append("the features the chief cached")
        if run.pipeline_used and cluster.checkpoints_kept:
            kept.append("the epoch checkpoints the chief saved" + (
                "" if named else " (found again only with the --output the chief's line "
                "names)"))
        return " and ".join(kept)
    if run.use_cache and run.settings.feature_cache and cluster.features_kept:
        kept.append(f"the features cached in {run.feature_cache_dir}")
    if run.pipeline_used and any(p.is_file() for p in _files_under(run.checkpoint_dir)):
        kept.append(f"the epoch checkpoints in {run.checkpoint_dir}" + (
            "" if named else f" (found again only with --output {run.target})"))
    return " and ".join(kept)


def _files_under(folder: Path):
    """Everything under ``folder`` (nothing when it does not exist)."""
    return Path(folder).rglob("*") if Path(folder).is_dir() else ()


def chiefs_check(run, cluster) -> None:
    """``pipelines.check_enough`` on the chief after a multi-worker feature pass, its outcome
    shared: a class left too few readable images stops every worker with the chief's line."""
    problem = None
    if cluster.chief:
        try:
            pipelines.check_enough(run)
        except TransferError as exc:
            problem = str(exc)
    # one array beside the note: a collective of nothing (an empty vector) crashed the chief
    _, note = cluster.state([np.zeros(1)], {"problem": problem},
                            "the chief's check of the usable images")
    problem = (note or {}).get("problem")
    if problem:
        raise TransferError(problem if cluster.chief else f"the chief stopped: {problem}")


def _train(settings: TrainSettings, reporter: Reporter, started: float,
           looked_for: bool = False) -> TrainResult:
    warn_tf_config_unused(settings, reporter)
    run = plan(settings)
    report_data(run, reporter, validate_looked_for=looked_for)
    if not run.use_cache:
        # the base runs every epoch on the images: decode each once first, so that unreadable
        # files are known (and a class left too small is refused) before any epoch
        pipelines.decode_all(run.train + run.validate, run.size, run.skipped, reporter)
        pipelines.check_enough(run)
    cluster = join_cluster(settings, reporter, lambda joined: kept_for_a_rerun(run, joined))
    if cluster is not None:
        same_settings(run, cluster)
        same_files(run, cluster)
    ahead = None
    try:
        # one core imports TensorFlow and builds the model: a helper decodes photos meanwhile
        ahead = decode_ahead.for_run(run) if cluster is None else None
        built = phases.build_model(run, cluster, reporter)
    except BaseException:
        if ahead is not None:
            ahead.close()
        raise
    feats = validation = None
    chief = cluster is None or cluster.chief
    try:
        if run.use_cache:
            needed = pass_images(run)  # before the pass leaves out what it cannot read
            feats = phases.extract_features(run, built, reporter, cluster, ahead)
            feats.cache = cache_state(feats.cache, feats.base_images, needed)
            if ahead is not None:
                ahead.close()  # its buffer is not needed any more
            # the feature pass recorded what it could not read: the chief, which holds every
            # feature, checks what is left, and tells the others (they were told a worker
            # was down and that the same command again would do, when it would fail again)
            if cluster is not None:
                chiefs_check(run, cluster)
            if chief:  # it trains the head
                if cluster is None:
                    pipelines.check_enough(run)
                fit = phases.train_head(run, built, feats, reporter)
            else:
                fit = phases.Fit()
        elif cluster is not None:
            fit = phases.fit_distributed(run, built, reporter, cluster)
        else:
            fit = phases.fit_end_to_end(run, built, reporter)
        if settings.fine_tune > 0:
            if cluster is not None:
                if run.use_cache:
                    phases.share_head(cluster, built)
                # the chief measures the frozen-base model (the others wait, as for its head)
                frozen = phases.before_fine_tune(run, built) if chief else None
                cluster.barrier("the chief's measure of the frozen model",
                                timeout=phases.HEAD_WAIT)
                phases.unfreeze_and_say(run, built, reporter)
                tuned = phases.fit_distributed(run, built, reporter, cluster, "fine-tune",
                                               settings.fine_tune_lr, settings.fine_tune_epochs)
                if chief:  # the others wait for its bundle; it writes the model it keeps
                    validation = phases.keep_if_better(run, built, reporter, frozen, tuned)
                fit = fit.then(tuned)
            else:
                tuned, validation = phases.fine_tune_if_better(run, built, reporter)
                fit = fit.then(tuned)
        for name in pipelines.unmeasured(run) if chief else []:
            reporter.warn(f"class {name} has no usable validation image (its share of the split "
                          "held only damaged files, listed at the end): it is trained, but "
                          "its accuracy is not measured; repair or replace those files")
        if not chief:  # the chief validates and writes; this worker waits for it, then ends
            cluster.barrier(waiting_for_the_chief(run), timeout=FINAL_WAIT)
            cluster.farewell()
            reporter.info(f"{cluster.topology.describe()}: done; the chief wrote the bundle")
            return TrainResult(None, {"workers": cluster.workers, "rank": cluster.rank},
                               fit.history)
        # after fine-tuning the base changed: the cached features are stale, the images rerun
        if validation is None:
            validation = phases.final_validation(run, built,
                                                 None if settings.fine_tune > 0 else feats)
        if not np.isfinite(validation.loss):
            reporter.warn(f"the training diverged (the model's outputs are not numbers): this "
                          f"model is no use; try a lower --learning-rate than "
                          f"{settings.learning_rate:g}")
    except BaseException:
        if cluster is None:  # a multi-worker run keeps its epoch checkpoints to resume
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        raise
    finally:
        if ahead is not None:
            ahead.close()
        if feats is not None:
            feats.cleanup()
    try:  # until the bundle lands, an interrupt removes the checkpoints as above
        timings = Timings(feats.seconds if feats else 0.0, feats.base_images if feats else 0,
                          fit.seconds, time.perf_counter() - started,
                          feats.setup_seconds if feats else 0.0, import_seconds_since(started))
        report_skipped(run, reporter)
        meta = training_meta(run, built, feats, fit, validation, timings)
        if settings.assert_accuracy_at_least is not None:  # recorded as evaluate records it
            threshold = settings.assert_accuracy_at_least
            meta["gate"] = {"threshold": threshold, "accuracy": validation.accuracy,
                            "passed": validation.accuracy >= threshold}
        from transfer.preview import PREVIEW_PNG

        def extras(folder):  # besides the model: what the network saw, and what it trained on
            usable = run.usable("train")
            draw_preview(run, Path(folder) / PREVIEW_PNG)
            trained = {s.path for s in usable}  # sizes as the plan read them (the cache's key)
            bundle.write_train_files(Path(folder) / bundle.TRAIN_FILES, [
                (run.names[s.label], s.path.name, size, str(Path(s.path).absolute()))
                for s, (_, size, _) in zip(run.train, run.train_files, strict=True)
                if s.path in trained])

        meta["workers"] = cluster.workers if cluster is not None else 1
        if cluster is not None:
            meta["per_worker"] = worker_meta(feats, fit, cluster)
        landed = bundle.write(run.target, settings.force, built.full, meta, fit.history,
                              title=f"{run.base.name} on {run.root}", extra=extras,
                              reporter=reporter)
    except BaseException:
        if cluster is None:
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        raise
    bundle.say_where_it_landed(run.target, landed, reporter)
    try:
        # (a multi-worker model's variables are the cluster's: the report loads the file)
        _after_writing(run, landed, reporter, cluster, built.full if cluster is None else None)
    except KeyboardInterrupt:  # the model is in place (and latest at it): say so, then stop
        reporter.warn(f"interrupted after the model was saved in {landed}; its report was not "
                      f"written (transfer report {landed} writes it)")
        raise
    timings.writing = time.perf_counter() - started - timings.total
    return TrainResult(landed, meta, fit.history, timings)


def _after_writing(run: RunPlan, landed: Path, reporter: Reporter, cluster, model) -> None:
    """What follows the bundle's landing: the checkpoints go, the augmentation preview is
    copied, the report written (its Grad-CAM overlays by ``model``, the one just saved, not
    loaded again), the other workers released."""
    from transfer import report
    from transfer.preview import PREVIEW_PNG

    settings = run.settings
    shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    if settings.preview_augment:
        preview = settings.preview_path()
        try:  # whole or not at all (a full disk); the bundle, already written, keeps its copy
            with replacing(preview) as tmp:
                shutil.copyfile(landed / PREVIEW_PNG, tmp)
            reporter.info(f"augmentation preview: {preview}")
        except OSError as exc:
            reporter.warn(f"augmentation preview not copied to {preview} ({exc.strerror or exc});"
                          f" it is in the bundle: {landed / PREVIEW_PNG}")
    from transfer.inference import BundleClassifier

    classifier = None
    if model is not None:
        with contextlib.suppress(TransferError):  # else the report loads the bundle itself
            classifier = BundleClassifier(landed, model=model)
    report.write_quietly(landed, reporter, classifier=classifier)
    if cluster is not None:  # the bundle is whole: a worker lost now costs nothing
        from transfer.cluster import WorkerLost

        try:
            cluster.barrier("the end of the run", timeout=FINAL_WAIT)
            cluster.farewell()
        except WorkerLost:
            reporter.warn("another worker did not answer at the end (it ended, or stopped "
                          "answering); the bundle is complete")


FINAL_WAIT = 1800.0  # seconds the other workers wait for the chief to validate and write


def waiting_for_the_chief(run: RunPlan) -> str:
    """What the other workers wait for at the end, as a lost chief's line says it: on the
    frozen route without fine-tuning the chief trains the head first (the workers computed
    features with it, then wait), else it only validates and writes."""
    from transfer.cluster import HEAD_THEN_WRITING, WRITING

    return WRITING if run.pipeline_used else HEAD_THEN_WRITING


def warn_tf_config_unused(settings: TrainSettings, reporter: Reporter, environ=None) -> None:
    """TF_CONFIG names a cluster, but --distribute multi-worker was forgotten on this machine:
    it trained alone, wrote its own bundle and moved models/latest, while the others waited
    for it. Said at the start; not refused (TF_CONFIG may be set for other tools)."""
    import os

    environ = os.environ if environ is None else environ
    if settings.distribute == "multi-worker" or not environ.get("TF_CONFIG", "").strip():
        return
    from transfer import cluster as clusters

    try:
        topology = clusters.read_tf_config(environ)
    except TransferError:
        where = ""
    else:
        if topology.workers < 2:
            return
        where = f" (worker {topology.rank} of {topology.workers})"
    reporter.warn(f"TF_CONFIG is set{where} but --distribute is not multi-worker: training on "
                  "this machine alone (add --distribute multi-worker to train with the others)")


def join_cluster(settings: TrainSettings, reporter: Reporter, keeps=None):
    """The cluster of TF_CONFIG for --distribute multi-worker (None otherwise), joined.
    ``keeps``: the function of the cluster that says what a rerun resumes from, asked when a
    worker is lost (``Cluster.kept``)."""
    if settings.distribute != "multi-worker":
        return None
    import signal
    import threading

    default_term = (threading.current_thread() is threading.main_thread()
                    and getattr(signal.getsignal(signal.SIGTERM), "transfer_cli", False))
    from transfer import cluster as clusters

    topology = clusters.read_tf_config()
    from transfer.tf import tf  # noqa: F401 (imported before the wait is said: its seconds
    # are not the wait's, where a signal stops the worker at once)

    reporter.info(f"multi-worker: this is {topology.describe()}; waiting for the others "
                  f"(up to {clusters.startup_seconds():g} s)")
    try:  # the wait for the others is in Python (cluster.rendezvous): a signal stops it
        joined = clusters.Cluster(topology, settings.worker_timeout)
    except KeyboardInterrupt as exc:  # the CLI's SIGTERM raises Terminated, Ctrl-C this
        errors.clear_interrupted()
        stopped = TransferError("interrupted while waiting for the other workers")
        stopped.exit_code = 143 if isinstance(exc, errors.Terminated) else 130
        raise stopped from None
    joined.keeps = keeps
    if default_term:
        # TensorFlow's waits hold the interpreter, where no Python handler runs: SIGTERM ends
        # a worker at once (the CLI's handler would wait for ever; the CLI puts its caller's
        # handler back at the end; a library caller's own is left alone). Joining also
        # installed TensorFlow's own SIGTERM handler (its preemption notice), under which a
        # worker told to stop trained on to the end and wrote its bundle.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    joined.check_same_cluster()
    reporter.info(f"multi-worker: {joined.workers} workers joined in "
                  f"{joined.joined_seconds:.1f} s")
    return joined


# the settings every worker must share (one model is trained; paths, the engine and the
# chief's outputs may differ from machine to machine)
SHARED_SETTINGS = ("validation_split", "base", "alpha", "pipeline", "augment",
                   "augment_copies", "tta", "image_size", "train_size", "dropout", "dense", "l2",
                   "class_weight", "epochs", "batch_size", "learning_rate", "lr_schedule",
                   "patience", "fine_tune", "fine_tune_lr", "fine_tune_epochs", "seed",
                   "feature_shard_size")


MEMORY_VARIABLE = "TRANSFER_FEATURE_MEMORY_MB"  # compared as bytes, as features read it


def same_settings(run: RunPlan, cluster) -> None:
    """Every worker must train with the same settings (``SHARED_SETTINGS``): each sends its
    own, and a worker started with others is one line naming them (before, a different
    --epochs ended in "a worker is down or unreachable (Collective instance 310 ...)", and a
    different --learning-rate went unnoticed)."""
    import numpy as np

    from transfer.cluster import WorkerLost
    from transfer.files import sha256_file
    from transfer.settings import _flag as flag

    everything = run.settings.as_dict()
    mine = {k: everything[k] for k in SHARED_SETTINGS}
    weights = run.settings.weights  # a weights file may lie elsewhere on each machine
    mine["weights"] = weights if weights in ("imagenet", "none") else \
        f"a file with SHA-256 {sha256_file(Path(weights))[:12]}"
    from transfer import features

    # how a pass's shards are cut (streamed beyond it: classes interleaved) must be one
    mine[MEMORY_VARIABLE] = features.memory_budget()
    text = json.dumps(mine, sort_keys=True, default=str).encode()
    seen = cluster.gather([np.frombuffer(text, np.uint8).astype("int32")],
                          "comparing the workers' settings")
    chief = json.loads(bytes(seen[0][0].astype(np.uint8)).decode())
    for w, (sent,) in enumerate(seen):
        theirs = json.loads(bytes(sent.astype(np.uint8)).decode())
        differ = [k for k in (*SHARED_SETTINGS, "weights", MEMORY_VARIABLE)
                  if theirs.get(k) != chief.get(k)]
        if differ:
            said = "; ".join(f"{k if k == MEMORY_VARIABLE else flag(k)} "
                             f"{json.dumps(theirs.get(k))} (the chief: "
                             f"{json.dumps(chief.get(k))})" for k in differ)
            raise WorkerLost(f"worker {w} was started with other settings than the chief: "
                             f"{said}; start the same command on every worker")


def same_files(run: RunPlan, cluster) -> None:
    """Every worker must see the same images (names, sizes, classes, split): shards are cut by
    position in the file list. Compared by digest across the workers; one line if not."""
    import numpy as np

    from transfer.cluster import WorkerLost
    from transfer.files import digest

    listing = {"classes": run.names,
               "train": [(name, size) for name, size, _ in run.train_files],
               "validate": [(name, size) for name, size, _ in run.val_files]}
    mine = np.frombuffer(bytes.fromhex(digest(listing)[:32]), np.uint8).astype("int32")
    counts = np.array([len(run.train_files), len(run.val_files)], "int64")
    seen = cluster.gather([mine, counts], "comparing the workers' files")
    differ = [w for w, (d, _) in enumerate(seen) if not np.array_equal(d, seen[0][0])]
    if differ:
        w = differ[0]
        raise WorkerLost(
            f"the workers do not see the same images: worker {w} lists {int(seen[w][1][0])} "
            f"train + {int(seen[w][1][1])} validate files, the chief "
            f"{int(seen[0][1][0])} + {int(seen[0][1][1])}, or the same counts with other "
            "names or sizes; give every worker the same files under --data-dir")


def worker_meta(feats, fit, cluster) -> list:
    """meta.json's "per_worker": what each worker did (images through the base for the
    feature cache; its slice of the images in an end-to-end fit)."""
    n = cluster.workers
    out = []
    for w in range(n):
        item = {"rank": w, "address": cluster.topology.addresses[w]}
        if feats is not None:
            item["feature_images"] = feats.per_worker[w] if feats.per_worker else 0
        if "custom_loop" in fit.info:  # each worker's own count of its slice
            item["train_images"] = fit.info["custom_loop"]["images_read"]["train"][w]
            item["validate_images"] = fit.info["custom_loop"]["images_read"]["validate"][w]
        out.append(item)
    return out


UNBALANCED = 3  # the largest class more than this many times the smallest: warned about
SHOWN_CLASSES = 12  # classes named in the data line (all are in meta.json)


def _beside_the_splits(run: RunPlan) -> list[str]:
    """Folders of photos that sit beside the train/ (and validate/) folders of --data-dir and
    are not read (a class folder put next to a download's splits); a test/ is held out, and
    the run's own models folder (`transfer train --data-dir .` inside a split writes models/
    there: its pictures are not photos left out)."""
    hp = run.settings
    data_dir = Path(hp.data_dir)
    if hp.train_dir is None or Path(hp.train_dir).parent != data_dir:
        return []
    used = {Path(hp.train_dir), Path(hp.validate_dir) if hp.validate_dir else None}
    written = Path(hp.output or hp.models_dir).resolve()  # holding it, a folder is the run's
    return [f"{d.name}/" for d in sorted(data_dir.iterdir())
            if d.is_dir() and d not in used and not is_ignored_folder(d.name)
            and d.name.lower() not in TEST_FOLDERS
            and not written.is_relative_to(d.resolve())
            and pipelines.image_files(d)]


def report_data(run: RunPlan, reporter: Reporter, validate_looked_for: bool = False
                ) -> None:
    """One line on the data (where, how split, images per class and split) and a warning for
    classes under constants.FEW_IMAGES images or far from balanced. ``validate_looked_for``:
    --train-dir was given without --validate-dir (the line says which folder was found; one
    not beside the training folder, --data-dir's, is a warning)."""
    counts = run.counts
    elsewhere = None  # a validation folder found away from --train-dir: said after the line
    if run.split == "in-memory":
        how = (f"{run.root}: class folders split in memory (validation "
               f"{run.settings.validation_split:g}, seed {run.settings.seed})")
    else:
        how = f"{run.settings.train_dir} and {run.settings.validate_dir}"
        if validate_looked_for:
            train_dir, validate_dir = Path(run.settings.train_dir), Path(run.settings.validate_dir)
            if validate_dir.resolve().parent == train_dir.resolve().parent:
                how += " (the validation folder beside it)"
            else:
                how += f" (found under --data-dir {run.settings.data_dir})"
                elsewhere = (f"validating on {validate_dir}, which is not beside --train-dir "
                             f"{train_dir} (no validation folder there): check they are photos "
                             "of the same things, or give --validate-dir")
        data_dir = Path(run.settings.data_dir)
        if data_dir != Path(TrainSettings.data_dir) and data_dir.resolve() not in (
                Path(run.settings.train_dir).resolve().parent,
                Path(run.settings.validate_dir).resolve().parent):  # given, and not read
            reporter.warn(f"--data-dir {data_dir} unused: the photos are --train-dir's and "
                          "its validation folder's")
        split = run.settings.validation_split
        if split != TrainSettings.validation_split:  # given, and meaningless here
            reporter.warn(f"--validation-split {split:g} unused: the photos are split into "
                          "their train and validate folders already")
    shown = run.names[:SHOWN_CLASSES]
    per_class = ", ".join(f"{name} {counts['train'][name]}+{counts['validate'][name]}"
                          for name in shown)
    if len(run.names) > len(shown):
        per_class += f" and {len(run.names) - len(shown)} more classes (meta.json data.counts)"
    reporter.info(f"data: {how}; {sum(counts['train'].values())} train + "
                  f"{sum(counts['validate'].values())} validate images ({per_class})")
    if elsewhere:
        reporter.warn(elsewhere)
    for line in unused_options(run):
        reporter.warn(line)
    beside = _beside_the_splits(run)
    if beside:
        reporter.warn(f"left out: {', '.join(beside)} beside the split folders in "
                      f"{run.settings.data_dir}; only {Path(run.settings.train_dir).name}/ "
                      + (f"and {Path(run.settings.validate_dir).name}/ " if
                         run.settings.validate_dir else "") + "are read")
    unread = pipelines.unread_summary(run.unread)
    if unread:
        reporter.warn(f"left out: {unread}, which transfer cannot read; "
                      f"{pipelines.UNREAD_HINT}")
    if run.split == "in-memory":
        loose = [p.name for p in Path(run.root).iterdir()
                 if pipelines.is_image_name(p.name) and p.is_file()]
        if loose:
            one = len(loose) == 1
            reporter.warn(f"{len(loose)} image{'' if one else 's'} directly in {run.root} "
                          f"{'is' if one else 'are'} in no class folder and left out (e.g. "
                          f"{sorted(loose)[0]}); move {'it' if one else 'them'} into the "
                          "folder of its class")
    sizes = {name: counts["train"][name] + counts["validate"][name] for name in run.names}
    few = few_images_warning(sizes)
    if few:
        reporter.warn(few)
    if run.split == "in-memory":  # enough photos, but the split leaves few to learn from
        # (classes already said to be few are not said twice; the others still are)
        left = {name: counts["train"][name] for name in run.names
                if counts["train"][name] < FEW_IMAGES // 2 and sizes[name] >= FEW_IMAGES}
        if left:
            listed = ", ".join(f"{name} {n}" for name, n in list(left.items())[:SHOWN_CLASSES])
            reporter.warn(f"--validation-split {run.settings.validation_split:g} leaves too few "
                          f"training photos to learn from ({listed}); the default "
                          f"{TrainSettings.validation_split:g} keeps "
                          f"{1 - TrainSettings.validation_split:.0%} of each class for training")
    large, small = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
    if metrics.unbalanced(sizes, UNBALANCED):
        reporter.warn(f"unbalanced classes: {large} has {sizes[large]} images, {small} "
                      f"{sizes[small]} ({sizes[large] / sizes[small]:.0f}x): accuracy mostly "
                      "counts the large classes; read the balanced accuracy (the mean of the "
                      "per-class recalls) beside it")
    if len(run.skipped):
        reporter.warn(f"{len(run.skipped)} file{'' if len(run.skipped) == 1 else 's'} "
                      "skipped so far (not images); all are listed at the end")


def unused_options(run: RunPlan) -> list[str]:
    """A warning for each group of options given that this run does not use (they trained
    as if never given, and settings.json recorded them as used): the random transforms when
    the head trains on plain or mirrored photos, fine-tuning's without --fine-tune,
    augmentation's with --no-augment, the head's with a CNN from scratch (its head is fixed),
    --l2 off the head trained on features (an end-to-end fit), --pipeline on that head, the
    feature pass's own (--engine, --feature-shard-size, --no-feature-cache) where there is
    none, --worker-timeout on one worker."""
    from transfer.settings import Augment

    hp, default = run.settings, TrainSettings()

    def given(*names: str) -> list[str]:
        return [f"--{name.replace('_', '-')} {getattr(hp, name):g}" for name in names
                if getattr(hp, name) is not None and getattr(hp, name) != getattr(default, name)]

    transforms = [f"--{name} {getattr(hp.augment, name):g}"
                  for name in ("rotation", "shift", "shear", "zoom")
                  if getattr(hp.augment, name) != getattr(Augment(), name)]
    said = []
    if run.transforms_unused and transforms:
        trains_on = ("each photo's mean with its mirror image (test-time flips)"
                     if run.train_mirror else
                     f"the photos as they are at {run.feature_size} px (the saved model "
                     f"averages photo and mirror at {run.size} px)")
        said.append(f"{' '.join(transforms)} unused: the head trains on {trains_on}, which "
                    "takes no random transform; --augment-copies N adds N randomly "
                    "transformed copies of the training photos")
    tuning = given("fine_tune_epochs", "fine_tune_lr")
    if tuning and hp.fine_tune == 0 and run.base.pretrained:
        said.append(f"{' '.join(tuning)} unused: no fine-tuning without --fine-tune N (the "
                    "top N layers of the base to unfreeze)")
    elif tuning and not run.base.pretrained:
        said.append(f"{' '.join(tuning)} unused: a CNN from scratch trains whole from the "
                    "start; there is no pretrained base to fine-tune")
    if hp.distribute == "mirrored" and not run.pipeline_used:
        said.append("--distribute mirrored unused: this run's base runs once a photo (the "
                    "feature pass) and its head trains on those features, neither under "
                    "Keras's strategy; it spreads end-to-end fits over the devices (--fine-tune "
                    "N, --augment-copies 0, --base scratch)")
    # --no-flip keeps test-time flips off (test_time_flips); with --no-augment they are off
    # and no photo is flipped anyway
    no_flip = [] if hp.augment.flip else ["--no-flip"]
    if not hp.augment.enabled and (given("augment_copies") or transforms or no_flip):
        said.append(f"{' '.join(given('augment_copies') + transforms + no_flip)} unused: "
                    "--no-augment turns augmentation off")
    if not run.base.pretrained:
        heading = given("dropout", "dense", "l2")
        if heading:
            said.append(f"{' '.join(heading)} unused: a CNN from scratch has its own fixed "
                        "head (meta.json's head)")
        if hp.augment.enabled and given("augment_copies"):
            said.append(f"{given('augment_copies')[0]} unused: a CNN from scratch learns from "
                        "photos transformed afresh each epoch, not from copies of features "
                        "computed once")
    elif not run.use_cache and hp.l2 is not None:
        said.append(f"--l2 {hp.l2:g} unused: it is the penalty of the head trained on "
                    "features computed once; this run fits end to end (--augment-copies 0)")
    passing = ([f"--engine {hp.engine}"] if hp.engine != default.engine else []) + given(
        "feature_shard_size") + ([] if hp.feature_cache else ["--no-feature-cache"])
    if not run.use_cache and passing:
        concern = ("they concern" if len(passing) > 1 else "it runs" if hp.engine !=
                   default.engine else "it concerns")
        said.append(f"{' '.join(passing)} unused: {concern} the frozen base's feature pass, and "
                    "this run has none: it fits end to end (" + (
                        "--base scratch" if not run.base.pretrained else
                        "--augment-copies 0") + ")")
    if hp.distribute != "multi-worker" and hp.worker_timeout != default.worker_timeout:
        said.append(f"--worker-timeout {hp.worker_timeout:g} unused: it bounds the waits of "
                    "a run over several workers (--distribute multi-worker)")
    if not run.pipeline_used and hp.pipeline != default.pipeline:
        said.append(f"--pipeline {hp.pipeline} unused: the head trains on features computed "
                    "once (the base runs once a photo, through the one image reader); it "
                    "applies to end-to-end fits (--fine-tune N, --augment-copies 0, --base "
                    "scratch)")
    return said


def report_skipped(run: RunPlan, reporter: Reporter) -> None:
    """Every file the run skipped, one line each (also in meta.json's "skipped")."""
    items = run.skipped.as_list()
    if not items:
        return
    reporter.warn(f"skipped {len(items)} unreadable file{'' if len(items) == 1 else 's'} "
                  "(the run went on without them):")
    for item in items:
        reporter.warn(f"  {item['file']}: {item['reason']}")


def data_meta(run: RunPlan) -> dict:
    """meta.json's "data": where the images came from, how they were split, how many of each
    class each split used (unreadable files left out)."""
    hp = run.settings
    counts = run.counts
    data = {"split": run.split, "root": str(run.root),
            "train_dir": str(hp.train_dir) if hp.train_dir is not None else None,
            "validate_dir": str(hp.validate_dir) if hp.validate_dir is not None else None,
            # the folder those (often relative) paths start from: bundle.data_folder
            "cwd": str(Path.cwd())}
    if run.split == "in-memory":
        # pipelines.split_in_memory(root, class_names, validation_split, seed, split_excluded,
        # split_order)
        # makes the same split again
        data.update(validation_split=hp.validation_split, seed=hp.seed,
                    split_order=pipelines.STABLE_ORDER,
                    split_excluded=list(run.split_excluded))
    data.update(train_images=sum(counts["train"].values()),
                validate_images=sum(counts["validate"].values()),
                counts=counts, skipped_images=len(run.skipped))
    if run.unread:  # HEIC, camera raw: not images training could read, left out (said)
        data["unread_photos"] = list(run.unread)
    return data


def saved_epoch(history: dict, fine_tune_kept: bool = True, watched_from: int = 0) -> int:
    """The epoch (1-based, over all phases) whose weights the bundle holds: the lowest
    validation loss of the last phase, which restores its own best epoch (fine-tuning's, not
    an earlier head epoch that scored lower on other views), or of the phase before
    fine-tuning when fine-tuning was not kept, from its ``watched_from``-th epoch (0-based:
    the CNN from scratch's first half is not kept); 1 without validation losses."""
    losses = history.get("val_loss") or []
    phases = history.get("phase") or []
    if not losses:
        return 1
    chosen = phases[-1] if phases else None
    if not fine_tune_kept:
        chosen = next((p for p in phases if p != "fine-tune"), chosen)
    last = ([i for i, p in enumerate(phases) if p == chosen]
            if phases and len(phases) == len(losses) else list(range(len(losses))))
    last = last[watched_from:] or last  # a run stopped before (Ctrl-C): its best at all
    return min(last, key=lambda i: losses[i]) + 1


def pipeline_ran(run: RunPlan) -> str:
    """The pipeline the images went through end to end: --pipeline's, except that the
    multi-worker loop reads through tf.data whatever --pipeline says (meta.json said
    "generator" of such a run)."""
    return "tfdata" if run.settings.distribute == "multi-worker" else run.settings.pipeline


def training_meta(run: RunPlan, built: phases.Built, feats: phases.Features | None,
                  fit: phases.Fit, validation: phases.Validation, timings: Timings) -> dict:
    """meta.json of a transfer run (the common fields come from ``bundle.meta``).

    ``metrics.best_val_accuracy`` is the validation accuracy of the saved epoch
    (``best_epoch``: the lowest validation loss, ``saved_epoch``), not the highest accuracy of
    history.csv, which an epoch with a higher loss may reach (0.825 at one epoch of the
    flowers where the saved one had 0.80). Choosing by accuracy would pick an epoch on a
    handful of validation photos' noise; the name stays, for the readers that use it."""
    hp, base = run.settings, run.base
    val_losses = fit.history.get("val_loss", [])
    tuned = fit.info.get("fine_tune_result")
    best_index = saved_epoch(fit.history, tuned is None or tuned["kept"],
                             fit.info.get("watched_from", 0)) - 1
    accuracies = fit.history.get("val_accuracy") or []
    trained_at = run.feature_size if run.use_cache else None  # the head's training features
    return bundle.meta(
        kind="transfer", class_names=run.names, image_size=run.size, channels=3,
        preprocessing={"mode": base.preprocess, "in_model": True,
                       "input": "RGB pixels 0-255, resized to image_size (bilinear)",
                       "reader": "transfer.images", "resize": "pil"},
        seed=hp.seed, command=hp.command or shlex.join(sys.argv),
        # the training size resolved: TrainSettings(**settings) repeats this run even after
        # the default changes (it changed on 2026-12-05: FixRes)
        settings={**hp.as_dict(), "train_size": trained_at},
        metrics={
            "val_accuracy": validation.accuracy,
            "val_loss": validation.loss,
            # the mean of the per-class recalls: what accuracy would be on balanced classes
            "val_balanced_accuracy": validation.balanced_accuracy,
            # the saved epoch's (best_epoch: the lowest val_loss), as its phase measured it
            # (fine-tuning: on single views); NOT history.csv's highest val_accuracy
            "best_val_accuracy": float(accuracies[best_index] if best_index < len(accuracies)
                                       else validation.accuracy),
            "best_epoch": best_index + 1,
            "epochs_run": len(val_losses),
            # the CNN from scratch: its best among the epochs from this one on (the first
            # half, whose figures jump, is not watched)
            **({"best_epoch_from": watched + 1} if (watched := fit.info.get("watched_from", 0))
               and len(val_losses) > watched else {}),
        },
        base=base.name,
        keras_class=base.keras_class or "scratch CNN",
        alpha=run.alpha if base.has_alpha else None,
        weights={"source": built.weights_source, "sha256": built.weights_sha256},
        output="sigmoid" if run.binary else "softmax",
        # the pipeline images went through end to end; "features": none (the head trained on
        # features computed once; --pipeline took no part)
        pipeline=pipeline_ran(run) if run.pipeline_used else "features",
        augmentation={**hp.augment.as_dict(), "copies": run.copies if run.use_cache else None,
                      # whether rotation/shift/shear/zoom took part (not with test-time flips
                      # alone: the head then trains on plain photos, or photo-mirror means)
                      "random_transforms": hp.augment.enabled and not run.transforms_unused},
        # the head's training features: their size (FixRes: smaller than the test size) and
        # views (photo, or the mean of photo and mirror); None on the routes without them
        test_time={"tta": hp.tta, "flips": run.flips, "size": run.size,
                   "train_size": trained_at, "train_views": run.train_views},
        head={"dropout": hp.dropout, "dense": hp.dense,
              **{k: fit.info[k] for k in ("l2", "l2_chosen_by", "l2_grid") if k in fit.info}}
             if base.pretrained else bases.head_meta(base),
        training={"epochs": hp.epochs, "batch_size": hp.batch_size,
                  "learning_rate": hp.learning_rate, "patience": hp.patience,
                  "lr_schedule": fit.info.get("lr_schedule", hp.lr_schedule),
                  "class_weight": fit.info.get("class_weight"),
                  "fine_tune": hp.fine_tune, "fine_tune_lr": hp.fine_tune_lr,
                  "fine_tune_epochs": hp.fine_tune_epochs if hp.fine_tune else 0,
                  # kept or not, with the frozen and the fine-tuned model's validation
                  **({"fine_tune_result": tuned} if tuned else {}),
                  # the strategy spreads end-to-end fits only (unused_options says so)
                  "distribute": hp.distribute,
                  "replicas": built.replicas if run.pipeline_used else 1,
                  "custom_loop": fit.info.get("custom_loop")},
        data=data_meta(run),
        skipped=run.skipped.as_list(),
        feature_cache=feats.cache if feats else "off",
        engine=feats.engine if feats else None,
        timings=timings.as_meta(),
    )
