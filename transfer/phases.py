"""The phases of a training run, each a function taking the run plan and returning a small result.

``transfer.training.train`` calls them in order::

    build_model -> extract_features -> train_head -> fine_tune -> final_validation

(``fit_end_to_end`` instead of the two feature phases when the base must run every epoch: the
classic augmented recipe and the CNN from scratch). Timings travel in the results (``Features``,
``Fit``), never in a shared dict.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transfer import bases, features, metrics, pipelines
from transfer.errors import TransferError, at_safe_points
from transfer.head import HeadTrainer, epoch_orders
from transfer.progress import Reporter

if TYPE_CHECKING:  # pragma: no cover
    from transfer.training import RunPlan


# --------------------------------------------------------------------------- results


@dataclass
class Built:
    """The model of a run: the base and three graphs sharing its layers (see training)."""

    strategy: Any
    base_model: Any
    full: Any  # raw pixels -> preprocess -> base -> pooling -> head (saved)
    core: Any  # preprocessed pixels -> base -> pooling -> head (trained end to end)
    feature_model: Any  # preprocessed pixels -> base -> pooling
    head: Any | None  # pooled features -> head (pretrained bases only)
    weights_source: str
    weights_sha256: str | None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


@dataclass
class Features:
    """Pooled features of the training images (one set per augmented copy) and validation,
    each a ``features.FeatureSet`` (shards in memory, or files streamed back)."""

    train_sets: list  # [copy] -> FeatureSet of the training images
    labels: np.ndarray  # the training labels (float32 for two classes, else int64)
    val_set: features.FeatureSet
    cache: str  # "hit", "miss" or "off"
    seconds: float  # time the base ran (0 on a cache hit)
    base_images: int  # images that went through the base (on every worker)
    skipped: list = field(default_factory=list)  # [{"file", "reason"}] left out
    engine: dict | None = None  # what ran the base (EngineInfo.as_dict())
    per_worker: list = field(default_factory=list)  # images each worker ran through the base
    spill: Path | None = None  # temporary shard files (no cache, too big for memory)
    setup_seconds: float = 0.0  # of ``seconds``: converting the base, auto's measure

    @property
    def in_memory(self) -> bool:
        return all(s.in_memory for s in [*self.train_sets, self.val_set])

    @property
    def train(self) -> list:
        """[copy] -> (n_train, width) arrays (joined: for sets that fit in memory)."""
        return [s.array() for s in self.train_sets]

    @property
    def val_x(self) -> np.ndarray:
        return self.val_set.array()

    @property
    def val_y(self) -> np.ndarray:
        return self.val_set.labels.astype(self.labels.dtype)

    def cleanup(self) -> None:
        """Remove the temporary shard files, if any (never the cache)."""
        if self.spill is not None:
            shutil.rmtree(self.spill, ignore_errors=True)


@dataclass
class Fit:
    """Per-epoch history of one or more fits (with a "phase" column) and their wall time."""

    history: dict = field(default_factory=dict)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)  # the head's choices: l2, class weights...

    def then(self, other: Fit) -> Fit:
        history = {k: list(v) for k, v in self.history.items()}
        for key, values in other.history.items():
            history.setdefault(key, []).extend(values)
        return Fit(history, self.seconds + other.seconds, {**self.info, **other.info})


@dataclass
class Validation:
    loss: float
    accuracy: float
    balanced_accuracy: float | None = None  # the mean of the per-class recalls


# --------------------------------------------------------------------------- build


def strategy(name: str):
    """The tf.distribute strategy named by ``--distribute``."""
    from transfer.tf import tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model(plan: RunPlan, cluster=None, reporter=bases.ON_STDERR) -> Built:
    """Seed everything, then build the base (frozen unless scratch) and its graphs (under the
    cluster's MultiWorkerMirroredStrategy for --distribute multi-worker). Keras's weight
    download, if any, is said to ``reporter`` (`bases.downloads_said_to`: nothing for a silent
    one)."""
    from transfer.tf import keras, tf

    hp = plan.settings
    chosen = cluster.strategy if cluster is not None else strategy(hp.distribute)
    keras.utils.set_random_seed(hp.seed)
    try:
        with chosen.scope():
            base_model = bases.build(plan.base, plan.size, plan.alpha, hp.weights,
                                      reporter=reporter)
            base_model.trainable = not plan.base.pretrained  # frozen ImageNet base
            graphs = graphs_of(plan.base, base_model, plan.size, len(plan.names), hp.dropout,
                               hp.dense, flips=plan.flips)
    except (TransferError, tf.errors.OpError) as exc:
        # under the cluster's strategy every variable made is a collective broadcast from the
        # chief: a worker gone then was "could not build MobileNet: {{function_node ...
        # CollectiveBcastSend ...}}", not the one line of a lost worker
        cause = exc if isinstance(exc, tf.errors.OpError) else exc.__cause__
        if cluster is None or not isinstance(cause, tf.errors.OpError):
            raise
        from transfer.cluster import lost

        raise lost(cause, cluster.timeout, "the building of the model",
                   kept=cluster.kept) from None
    source, sha = bases.weights_fingerprint(plan.base, hp.weights, plan.alpha, plan.size,
                                            hp.seed)
    return Built(chosen, base_model, graphs["full"], graphs["core"], graphs["features"],
                 graphs.get("head"), source, sha)


def _split(size: int) -> tuple[int, ...]:
    """``size`` as (a, b) with a * b == size and a the divisor nearest its square root, or
    (size,) when it is prime: the mirror reverses each factor instead of the whole width."""
    a = max(d for d in range(1, int(size ** 0.5) + 1) if size % d == 0)
    return (size,) if a == 1 else (a, size // a)


def mirror_layer(size: int):
    """Raw pixels (batch, h, w, c) -> their mirror image, as plain Keras layers (so model.keras
    still loads without transfer): frozen Dense layers whose kernels are reversal permutations
    (exact: one product by 1, the others by 0), applied to the width axis moved last.

    Reversing a width of a * b pixels is reversing both digits of its index (column a_i * b +
    b_i goes to (a-1-a_i) * b + (b-1-b_i)), so the width is reshaped to (a, b) and each axis
    reversed by its own small permutation: at 288 px 16 x 16 + 18 x 18 weights and 34
    multiply-adds per pixel, not one 288 x 288 matrix (331 KB in every export, and 288
    multiply-adds per pixel, about the base's own work)."""
    from transfer.tf import keras

    layers = keras.layers

    def reverse(n: int, name: str):
        layer = layers.Dense(n, use_bias=False, trainable=False, name=name)
        layer.build((None, n))
        layer.set_weights([np.eye(n, dtype="float32")[::-1]])
        return layer

    factors = _split(size)
    if len(factors) == 1:
        steps = [layers.Permute((1, 3, 2)), reverse(size, "reverse_width"),
                 layers.Permute((1, 3, 2))]
    else:
        a, b = factors  # (h, a, b, c): b last, reversed; a last, reversed; back
        steps = [layers.Reshape((size, a, b, 3)), layers.Permute((1, 2, 4, 3)),
                 reverse(b, "reverse_inner"), layers.Permute((1, 4, 3, 2)),
                 reverse(a, "reverse_outer"), layers.Permute((1, 4, 2, 3)),
                 layers.Reshape((size, size, 3))]
    return keras.Sequential([keras.Input((size, size, 3)), *steps], name="mirror")


def graphs_of(base, base_model, size: int, n_classes: int, dropout: float = 0.2,
              dense: int = 0, flips: bool = False) -> dict:
    """The full, core, features (and head) graphs over one set of layers. With ``flips`` the
    full (saved) model pools the base's features of the photo and of its mirror image and
    feeds their mean to the head: the features the head was trained on."""
    from transfer.tf import keras

    if not base.pretrained:  # a CNN from scratch: its own head; trunk not in inference mode
        return bases.scratch_graphs(base, base_model, size, n_classes)
    layers = keras.layers
    binary = n_classes == 2
    out = layers.Dense(1 if binary else n_classes, activation="sigmoid" if binary else "softmax",
                       name="predictions")
    pool = layers.GlobalAveragePooling2D(name="pool")
    head_layers = [layers.Dropout(dropout, name="dropout")]
    if dense > 0:
        head_layers.append(layers.Dense(dense, activation="relu", name="dense"))
    head_layers.append(out)

    def head(x):
        for layer in head_layers:
            x = layer(x)
        return x

    raw = keras.Input((size, size, 3), name="image")
    x = bases.preprocess_layer(base.preprocess)(raw)
    if flips:
        pooled = layers.Average(name="mirror_mean")([
            pool(base_model(x, training=False)),
            pool(base_model(mirror_layer(size)(x), training=False))])
    else:
        pooled = pool(base_model(x, training=False))
    full = keras.Model(raw, head(pooled), name=f"{base.name}_classifier")
    pre = keras.Input((size, size, 3), name="preprocessed")
    core = keras.Model(pre, head(pool(base_model(pre, training=False))), name="core")
    feature_model = keras.Model(pre, pool(base_model(pre, training=False)), name="features")
    feats = keras.Input((feature_model.output_shape[-1],), name="features")
    return {"full": full, "core": core, "features": feature_model,
            "head": keras.Model(feats, head(feats), name="head")}


# --------------------------------------------------------------------------- features


def samples_of(plan: RunPlan, split: str) -> list:
    """[(path, label)] of the usable images of ``split`` ("train" or "validate"), in the
    plan's order (files found unreadable before this point left out)."""
    return [(s.path if isinstance(s.path, Path) else Path(s.path), int(s.label))
            for s in plan.usable(split)]  # the plan's own paths: no copy per image


def raw_feature_model(plan: RunPlan, built: Built, size: int | None = None):
    """Raw pixels (0-255) -> preprocess -> base -> pooling, over the run's layers: what the
    engines run (the saved model's own path from pixels to features). At another ``size``
    than the model's (FixRes training features) the base is built again at that size with the
    run's weights copied in: the same function of the image, on another grid."""
    from transfer.tf import keras

    size = size or plan.size
    raw = keras.Input((size, size, 3), name="image")
    x = bases.preprocess_layer(plan.base.preprocess)(raw)
    if size == plan.size:
        return keras.Model(raw, built.feature_model(x), name="raw_features")
    other = bases.build(plan.base, size, plan.alpha, "none")
    # Keras builds some bases otherwise with ImageNet weights (EfficientNet adds a Rescaling
    # layer, which has no weights to copy): another layer list is another function
    kinds = [type(layer).__name__ for layer in built.base_model.layers]
    if [type(layer).__name__ for layer in other.layers] != kinds:
        raise TransferError(f"--train-size {size}: Keras builds {plan.base.name} with these "
                            f"weights otherwise than at random, so its features at {size} px "
                            f"cannot be computed here; leave --train-size out")
    other.set_weights(built.base_model.get_weights())
    other.trainable = False
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(other(x, training=False))
    return keras.Model(raw, pooled, name=f"raw_features_{size}")


def weights_size(plan: RunPlan, built: Built, size: int) -> dict:
    """What a key of a pass at ``size`` adds when the model's weights have no fingerprint and
    were chosen for another size: the model's size (MobileNet's ImageNet file depends on it:
    224 px features with the 160 px file are not a 224 px run's). Nothing otherwise: with a
    fingerprint the weights name themselves (FixRes shares --no-augment's 224 px features)."""
    if built.weights_sha256 or size == plan.size:
        return {}
    return {"weights_for_size": plan.size}


class _LazyEngine:
    """Opens the engine (conversion, parity check, auto's measurement) at the first pass that
    misses the cache, on that pass's first batch; nothing at all on a full cache hit."""

    def __init__(self, plan: RunPlan, built: Built, reporter: Reporter, images: int,
                 reader, size: int | None = None, views: int = 1):
        self.plan, self.built, self.reporter = plan, built, reporter
        self.reader = reader  # what reads the first batch: the passes' reader
        self.images = images  # what this engine's passes compute at most (auto's small-run rule)
        self.size = size or plan.size
        self.views = views  # inputs per photo (2 when the pass averages photo and mirror)
        self.engine = None
        self.info = None

    def open(self, paths: list) -> None:
        if self.engine is not None:
            return
        from transfer import engines
        from transfer.images import ImageError

        plan, size = self.plan, self.size
        first = []
        for path in paths:
            if len(first) == features.PASS_BATCH:
                break
            try:
                first.append(self.reader(path, size))
            except (ImageError, OSError):
                continue  # the pass records it
        batch = (np.stack(first).astype("float32") if first
                 else np.zeros((1, size, size, 3), "float32"))
        # random weights (--weights none) have no file to fingerprint: the seed makes them
        key = dict(base=plan.base.name, alpha=plan.alpha, preprocess=plan.base.preprocess,
                   weights=self.built.weights_sha256 or self.built.weights_source, size=size,
                   **({} if self.built.weights_sha256 else {"seed": plan.settings.seed}),
                   **weights_size(plan, self.built, size))
        self.engine, self.info = engines.open_engine(
            raw_feature_model(plan, self.built, size), batch, requested=plan.settings.engine,
            key=key, batch_size=features.CONVERTED_BATCH, reporter=self.reporter,
            images=self.images, views=self.views)

    def __call__(self, batch):
        return self.engine(batch)

    @property
    def name(self):
        return getattr(self.engine, "name", None)


def extract_features(plan: RunPlan, built: Built, reporter: Reporter,
                     cluster=None, ahead=None) -> Features:
    """Run the frozen base once per training image (per augmented copy) and per validation
    image, shard by shard, through the feature cache when it is on. Unreadable images are left
    out, recorded in the plan's skipped list, and the run goes on unless a class is left too
    small.

    Each pass is cut into shards of ``--feature-shard-size`` images (``features.shard_bounds``:
    fixed by the file list, so cache entries serve any number of workers). A shard is kept in
    memory while the run's features fit ``features.memory_budget()``, else as a file (the cache
    entry, or a temporary file without the cache) streamed back by the head; such a pass takes the
    photos classes interleaved (``features.classes_interleaved``), so that every shard, and every
    batch the head reads from it, holds every class. With a ``cluster``
    (``--distribute multi-worker``) the shards the chief lacks are dealt round-robin, worker w
    computing shard r * workers + w in round r, and each round is gathered on every worker:
    memory stays bounded by one round, and only the chief keeps (and caches) the features.

    ``ahead``: a ``DecodeAhead`` holding photos of the passes decoded before them
    (``decode_ahead.for_run``); the passes read through it."""
    hp = plan.settings
    cache_dir = plan.feature_cache_dir
    common = dict(base=plan.base.name, alpha=plan.alpha, weights=built.weights_sha256,
                  classes=plan.names, reader=1, version=4,
                  # random weights (--weights none) are made by the seed
                  **({} if built.weights_sha256 else {"init_seed": hp.seed}))
    width = int(built.feature_model.output_shape[-1])
    workers, rank = (cluster.workers, cluster.rank) if cluster else (1, 0)
    keep = cluster is None or cluster.chief  # who holds the features and trains the head
    train_samples, val_samples = samples_of(plan, "train"), samples_of(plan, "validate")
    rows = len(train_samples) * max(1, plan.copies) + len(val_samples)
    # the passes: training features at plan.feature_size (FixRes: smaller than the model's),
    # validation at the model's own size, each through its size's engine
    train_pass = (plan.feature_size, plan.train_mirror)
    val_pass = (plan.size, plan.flips)
    inputs: dict = {}  # size -> the inputs its engine may run (auto's small-run rule)
    views: dict = {}  # size -> inputs per photo (2 where its pass averages photo and mirror)
    for (size, mirror), n in ((train_pass, len(train_samples) * max(1, plan.copies)),
                              (val_pass, len(val_samples))):
        inputs[size] = inputs.get(size, 0) + n * (2 if mirror else 1)
        views[size] = max(views.get(size, 1), 2 if mirror else 1)
    reader = ahead.read if ahead is not None else features.read_image
    engines_by_size = {size: _LazyEngine(plan, built, reporter, images=n, reader=reader,
                                         size=size, views=views[size])
                       for size, n in inputs.items()}
    in_memory = rows * width * 4 <= features.memory_budget()
    # every worker has the chief's budget (training.same_settings): all cut the same shards
    if not in_memory:  # streamed shard by shard: each shard holds every class, not one
        train_samples = features.classes_interleaved(train_samples)
        val_samples = features.classes_interleaved(val_samples)
    plan.pass_places.clear()  # where each copy's draw comes from (the preview draws them)
    plan.pass_places.update((path, i) for i, (path, _) in enumerate(train_samples))
    hits: list[bool] = []
    seen_engines: set = set()
    skipped: dict[str, str] = {}
    per_worker = [0] * workers  # images each worker ran through the base
    spill: list = []  # the temporary folder of shards not cached and not held in memory
    started = time.perf_counter()
    # setup: converting the base and auto's measure (engine.open), in the seconds, not in the
    # pass's images/s (27 images/s was said of a first run whose pass ran at 517)
    computed = {"seconds": 0.0, "images": 0, "setup": 0.0}
    ran: dict = {}  # size -> [images, seconds] its engine ran (setup left out)
    slowest = [0.0]  # the longest shard this worker computed (seconds)
    warned: list = []  # a cache that cannot be written is said once, not once per shard

    def warn_once(message: str) -> None:
        if not warned:
            warned.append(message)
            reporter.warn(message)

    def spill_path(key: str) -> Path:
        if not spill:
            import tempfile

            spill.append(Path(tempfile.mkdtemp(prefix="transfer-features-")))
        return spill[0] / f"{key}.npz"

    def get(samples, augment, copy, label, size, mirror) -> features.FeatureSet:
        paths = [path for path, _ in samples]
        labels = np.array([y for _, y in samples], "int64")
        bounds = features.shard_bounds(len(paths), hp.feature_shard_size)
        engine = engines_by_size[size]
        keys = [features.cache_key(**common, size=size, **({"mirror": True} if mirror else {}),
                                   **weights_size(plan, built, size),
                                   files=features.file_rows(paths[a:b], plan.root),
                                   labels=labels[a:b].tolist(),
                                   augment=augment.as_dict() if augment else None, copy=copy,
                                   seed=hp.seed if augment else None,
                                   start=a if augment else None) for a, b in bounds]
        parts: list = [None] * len(bounds)
        kept: list = [labels[:0]] * len(bounds)
        done = np.zeros(len(bounds), "int32")
        if hp.feature_cache and keep:
            for i, key in enumerate(keys):
                entry = features.load_entry(cache_dir / f"{key}.npz", with_features=in_memory)
                if entry is None:
                    continue
                parts[i] = entry.features if in_memory else cache_dir / f"{key}.npz"
                kept[i], done[i] = entry.labels.astype("int64"), 1
                if cluster is not None:  # a rerun finds it again (cluster.kept)
                    cluster.features_kept = True
                seen_engines.add(entry.engine)
                a, b = bounds[i]
                for item in features.respelled(entry.skipped, paths[a:b], plan.root):
                    skipped.setdefault(item["file"], item["reason"])
        if cluster is not None:  # the chief's cache decides what is left to compute
            done = cluster.broadcast([done], f"the feature pass ({label})")[0]
            if done.any():  # the others know the chief keeps cached features (cluster.kept)
                cluster.features_kept = True
        todo = [i for i in range(len(bounds)) if not done[i]]
        hits.append(not todo)

        def keep_shard(i, result):
            # (0, width), not (0, 0), when no photo of the shard could be read: a rerun reading
            # it from the cache could not join it to the others
            result.features = np.asarray(result.features, "float32").reshape(-1, width)
            kept[i] = np.asarray(result.labels).astype("int64")
            for item in result.skipped:
                skipped.setdefault(item["file"], item["reason"])
            path = cache_dir / f"{keys[i]}.npz"
            stored = hp.feature_cache and features.store_quietly(path, result, warn_once)
            if stored and cluster is not None:  # a rerun finds it again (cluster.kept)
                cluster.features_kept = True
            if in_memory:
                parts[i] = result.features
            elif stored:
                parts[i] = path
            else:
                features.store(spill_path(keys[i]), result)
                parts[i] = spill_path(keys[i])

        if todo:
            total = sum(bounds[i][1] - bounds[i][0] for i in todo)
            with reporter.task(f"{plan.base.name} features: {label}", total=total) as advance:
                for r in range(math.ceil(len(todo) / workers)):
                    j = r * workers + rank
                    tick = time.perf_counter()
                    if j < len(todo):
                        a, b = bounds[todo[j]]
                        engine.open(paths[a:b])
                        opened_at = time.perf_counter()
                        computed["setup"] += opened_at - tick
                        result = features.run_pass(
                            paths[a:b], labels[a:b], size, engine, augment=augment,
                            seed=hp.seed + 1000 * copy, offset=a, reporter=reporter,
                            mirror=mirror, reader=reader,
                            advance=advance if cluster is None else (lambda k, **_: None),
                            description=f"{plan.base.name} features ({engine.name}): {label}")
                        computed["images"] += result.images
                        ran.setdefault(size, [0, 0.0])
                        ran[size][0] += result.images
                        ran[size][1] += time.perf_counter() - opened_at
                    else:
                        result = features.Pass(np.zeros((0, width), "float32"), labels[:0])
                    own = time.perf_counter() - tick
                    slowest[0] = max(slowest[0], own)
                    # a worker may wait for a slower one's shard: the timeout allows for it
                    # (three times the slowest shard any worker has taken yet). In the first
                    # round, and for a worker with no shard this round, there is no time to
                    # go by: a worker whose converted base was cached, or that had no shard,
                    # gave up on a chief still converting its own, after --worker-timeout. It
                    # waits as for the chief's head; a worker that dies is noticed sooner, by
                    # the heartbeats
                    pieces = ([result] if cluster is None else
                              exchange(cluster, result, width, f"the feature pass ({label})",
                                       cluster.timeout + 3 * slowest[0]
                                       if j < len(todo) and r > 0 else HEAD_WAIT))
                    slowest[0] = max([slowest[0], *(p.seconds for p in pieces)])
                    computed["seconds"] += time.perf_counter() - tick
                    for w, piece in enumerate(pieces):
                        if r * workers + w >= len(todo):
                            continue
                        i = todo[r * workers + w]
                        per_worker[w] += bounds[i][1] - bounds[i][0]
                        if keep:
                            keep_shard(i, piece)
                        elif hp.feature_cache:  # the chief caches this round's shards
                            cluster.features_kept = True
                        if cluster is not None:
                            advance(bounds[i][1] - bounds[i][0])
        if not keep:
            return features.FeatureSet([], [], labels[:0], width)
        sizes = [len(k) for k in kept]
        return features.FeatureSet(parts, sizes, np.concatenate(kept) if kept else labels[:0],
                                   width)

    try:
        if plan.copies:
            train_sets = [get(train_samples, hp.augment, k,
                              f"train, augmented copy {k + 1}/{plan.copies}", *train_pass)
                          for k in range(plan.copies)]
        else:
            train_sets = [get(train_samples, None, 0, "train", *train_pass)]
        val_set = get(val_samples, None, 0, "validate", *val_pass)
        if cluster is not None:  # the chief's list (its cache hits, every worker's shards):
            # every worker leaves out the same photos (the fine-tuning slices the same list)
            _, shared = cluster.state([], {"skipped": skipped} if keep else None,
                                      "sharing the files left out")
            skipped = dict(shared["skipped"])
        record_skipped(plan, skipped, reporter)
        labels = train_sets[0].labels
        if any(not np.array_equal(s.labels, labels) for s in train_sets):
            raise RuntimeError("augmented copies disagree on their images")  # never: same reader
        cache = "off" if not hp.feature_cache else ("hit" if all(hits) else "miss")
        base_images = sum(per_worker)
        opened = {size: e for size, e in engines_by_size.items() if e.info is not None}
        if opened:
            from transfer import engines

            engine_meta = engines.merged_info(
                {size: e.info for size, e in opened.items()}, ran, computed["images"],
                computed["seconds"] - computed["setup"], primary=plan.size)
        else:  # every pass was a cache hit (or another worker ran them all): the base did not run
            engine_meta = {"requested": hp.engine, "name": None, "images": 0,
                           "cached_features_from": sorted(e for e in seen_engines if e)}
        # photos the passes took from the helper, decoded before them (their share of the
        # passes' images/s counts no decoding): 0 without one
        engine_meta["decoded_ahead"] = ahead.hits if ahead is not None else 0
        seconds = computed["seconds"] if cluster is None else time.perf_counter() - started
        return Features(train_sets, labels.astype("float32" if plan.binary else "int64"),
                        val_set, cache, seconds, base_images,
                        skipped=[{"file": f, "reason": r} for f, r in skipped.items()],
                        engine=engine_meta, per_worker=per_worker,
                        spill=spill[0] if spill else None, setup_seconds=computed["setup"])
    except BaseException:  # Ctrl-C or an error in the pass: no shard files left in /tmp
        if spill:
            shutil.rmtree(spill[0], ignore_errors=True)
        raise


def exchange(cluster, result: features.Pass, width: int, during: str,
             timeout: float | None = None) -> list:
    """Every worker's shard result of this round ([worker] -> Pass), on every worker: the
    features, labels, skipped files (as JSON bytes) and the pass's images and seconds."""
    note = np.frombuffer(json.dumps(result.skipped).encode(), np.uint8).astype("int32")
    stats = np.array([result.images, result.seconds], "float32")
    pieces = cluster.gather([np.asarray(result.features, "float32").reshape(-1, width),
                             np.asarray(result.labels).astype("int64"), note, stats], during,
                            timeout)
    return [features.Pass(f, y, json.loads(bytes(n.astype(np.uint8)).decode() or "[]"),
                          float(s[1]), int(s[0]), result.engine)
            for f, y, n, s in pieces]


def record_skipped(plan: RunPlan, skipped: dict, reporter: Reporter) -> None:
    """Put the files the passes left out in the plan's skipped list (``train`` then checks
    that every class still has enough images)."""
    for path, reason in skipped.items():
        plan.skipped.add(path, reason)


# --------------------------------------------------------------------------- the head

# The head's L2 penalty (on the final Dense kernel) when --l2 is not given: each value is
# trained on the cached features and the one with the best validation loss is kept. The grid
# spans "none" to "strong" in decades: the loss is a mean over images, so a penalty l2 *
# sum(w^2) of 1e-2 holds the weights of 256-1280 features of size ~1 to a few tenths (what a
# small or noisy folder needs), 1e-4 barely moves them (what 2000 clean photos need); between
# neighbours the validation loss rarely differs by more than noise. Four values x 10 epochs on
# cached features cost well under a second.
L2_GRID = (0.0, 1e-4, 1e-3, 1e-2)


def class_weights(labels, n_classes: int, mode: str) -> tuple[str, dict | None]:
    """(what applies: "balanced" or "none", {class index: weight} or None).

    balanced: n / (k * n_c), so every class weighs as much in the loss as a balanced set would;
    auto: balanced when the classes are unbalanced (``metrics.unbalanced``: the largest class
    has more than 1.5x the smallest's images)."""
    counts = np.bincount(np.asarray(labels).astype(int).reshape(-1), minlength=n_classes)
    if mode == "none" or counts.min() == 0:
        return "none", None
    if mode == "auto" and not metrics.unbalanced(dict(enumerate(counts))):
        return "none", None
    n, k = int(counts.sum()), n_classes
    return "balanced", {i: float(n / (k * c)) for i, c in enumerate(counts)}


def class_weight_meta(plan: RunPlan, applied: str, weights: dict | None) -> dict:
    """meta.json's training.class_weight: the mode asked for, what applied, each class's
    weight (None when all weigh 1)."""
    return {"mode": plan.settings.class_weight, "applied": applied,
            "weights": None if weights is None else
            {plan.names[i]: round(v, 6) for i, v in weights.items()}}


def schedule_of(schedule: str | None, lr: float, total_steps: int):
    """A constant rate, or cosine decay from ``lr`` to 0 at the last step of the fit."""
    from transfer.tf import keras

    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps),
                                                      alpha=0.0)
    return lr


def train_head(plan: RunPlan, built: Built, feats: Features, reporter: Reporter) -> Fit:
    """Train the head on the cached features, epoch e on augmented copy e % K, with early
    stopping on the validation loss (each head keeps its best epoch's weights); without --l2,
    one head per value of L2_GRID at once, keeping the one with the best validation loss.
    A head that diverges (a --learning-rate far too large) is said once, by train, not as
    NumPy's "overflow encountered in square" lines."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _train_head(plan, built, feats, reporter)


def _train_head(plan: RunPlan, built: Built, feats: Features, reporter: Reporter) -> Fit:
    hp = plan.settings
    n = len(feats.labels)
    applied, weights = class_weights(feats.labels, len(plan.names), hp.class_weight)
    w = (np.ones(n, "float32") if weights is None
         else np.array([weights[int(c)] for c in feats.labels], "float32"))
    streamed = not feats.in_memory  # too large for memory: shard by shard from disk
    if streamed:
        steps = sum(math.ceil(size / hp.batch_size) for size in feats.train_sets[0].sizes)
    else:
        steps = math.ceil(n / hp.batch_size)
    grid = L2_GRID if hp.l2 is None else (float(hp.l2),)
    start = time.perf_counter()
    trainer = HeadTrainer(built.head, plan.binary, hp.batch_size, hp.learning_rate,
                          hp.lr_schedule, hp.epochs * steps, grid, hp.seed)
    if streamed:
        per_class = (np.ones(len(plan.names), "float32") if weights is None else
                     np.array([weights[i] for i in range(len(plan.names))], "float32"))
        rng = np.random.default_rng(hp.seed)

        def run_epoch(epoch):
            return trainer.run_epoch_streamed(feats.train_sets[epoch % len(feats.train_sets)],
                                              per_class, rng, feats.val_set)
    else:
        label_type = "float32" if plan.binary else "int64"
        copies = [np.asarray(x, "float32") for x in feats.train]
        y = np.asarray(feats.labels).astype(label_type)
        val_x, val_y = np.asarray(feats.val_x, "float32"), np.asarray(feats.val_y).astype(
            label_type)
        orders = epoch_orders(n, hp.epochs, hp.seed)

        def run_epoch(epoch):
            return trainer.run_epoch(copies[epoch % len(copies)], y, w, orders[epoch],
                                     val_x, val_y)
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    histories = [{k: [] for k in keys} for _ in grid]
    best = [math.inf] * len(grid)
    best_weights: list = [None] * len(grid)
    wait = [0] * len(grid)
    active = [True] * len(grid)
    rates = [None] * len(grid)
    with reporter.task("Training the head", total=hp.epochs) as advance:
        for epoch in range(hp.epochs):
            *values, rate = run_epoch(epoch)
            for i in range(len(grid)):
                if not active[i]:
                    continue
                for key, column in zip(keys, values, strict=True):
                    histories[i][key].append(float(column[i]))
                rates[i] = rate
                val_loss = float(values[2][i])
                if val_loss < best[i] or best_weights[i] is None:
                    best[i], best_weights[i], wait[i] = val_loss, trainer.weights_of(i), 0
                else:
                    wait[i] += 1
                    active[i] = wait[i] < hp.patience
            lead = int(np.argmin(best))
            h = histories[lead]
            advance(1, status=f"head epoch {epoch + 1}  loss {h['loss'][-1]:.4f}  accuracy "
                              f"{h['accuracy'][-1]:.4f}  val_loss {h['val_loss'][-1]:.4f}  "
                              f"val_accuracy {h['val_accuracy'][-1]:.4f}"
                              + (f"  (l2 {grid[lead]:g})" if len(grid) > 1 else ""))
            if not any(active):
                break
        finite = [b if math.isfinite(b) else math.inf for b in best]
        chosen = int(np.argmin(finite))
        ran = len(histories[chosen]["loss"])
        if epoch + 1 < hp.epochs:  # the bar ends full, saying why it stopped early: the
            # kept head's epochs (of an l2 grid, the last head to stop was said)
            advance(hp.epochs - epoch - 1,
                    status=f"head stopped early after epoch {ran} of {hp.epochs}: no lower "
                           f"val_loss in {hp.patience} epoch" + ("s" if hp.patience != 1 else ""))
    with built.strategy.scope():
        trainer.set_head(best_weights[chosen])
    seconds = time.perf_counter() - start
    history = histories[chosen]
    if hp.tensorboard:
        write_tensorboard(Path(hp.tensorboard) / "head", history)

    def summary(i):
        at = int(np.argmin(histories[i]["val_loss"]))
        return {"best_val_loss": best[i], "best_epoch": at + 1,
                "val_accuracy_at_best": histories[i]["val_accuracy"][at],
                "epochs_run": len(histories[i]["loss"])}

    info = {"l2": grid[chosen], "l2_chosen_by": "validation loss" if hp.l2 is None else "given",
            "l2_grid": {f"{v:g}": summary(i) for i, v in enumerate(grid)},
            "class_weight": class_weight_meta(plan, applied, weights),
            "lr_schedule": hp.lr_schedule, "final_learning_rate": rates[chosen]}
    return Fit(history_of(history, "head"), seconds, info)


def write_tensorboard(folder: Path, history: dict) -> None:
    """Per-epoch loss and accuracy as Keras's TensorBoard callback writes them (train/ and
    validation/ runs, epoch_loss and epoch_accuracy)."""
    from transfer.tf import tf

    for run, prefix in (("train", ""), ("validation", "val_")):
        writer = tf.summary.create_file_writer(str(folder / run))
        with writer.as_default():
            for step, (loss, acc) in enumerate(zip(history[prefix + "loss"],
                                                   history[prefix + "accuracy"], strict=True)):
                tf.summary.scalar("epoch_loss", loss, step=step)
                tf.summary.scalar("epoch_accuracy", acc, step=step)
        writer.close()


# --------------------------------------------------------------------------- fits


@contextlib.contextmanager
def _keras_false_alarms():
    """Keras's "Your input ran out of data; interrupting training", said when it evaluates a
    tf.data validation pipeline whose length it cannot know (unreadable files are left out as
    it goes): the whole split was evaluated, yet a program calling ``train`` was told its
    training was cut short (the CLI hides Keras's warnings). Left out during the fit alone;
    the caller's filters come back after."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Your input ran out of data",
                                category=UserWarning)
        yield


def fit_end_to_end(plan: RunPlan, built: Built, reporter: Reporter, phase: str = "train",
                   learning_rate: float | None = None, epochs: int | None = None) -> Fit:
    """Train the core graph on images through the pipeline (the base runs every epoch)."""
    hp = plan.settings
    epochs = epochs or hp.epochs
    train_data = pipelines.for_plan(plan, "train", hp.augment, shuffle=True)
    val_data = pipelines.for_plan(plan, "validate")
    labels = [y for _, y in samples_of(plan, "train")]
    applied, weights = class_weights(labels, len(plan.names), hp.class_weight)
    steps = pipelines.steps(len(labels), hp.batch_size)
    # fine-tuning keeps its small constant rate; the first fit follows --lr-schedule
    schedule = hp.lr_schedule if phase == "train" else "constant"
    with built.strategy.scope():
        compile_model(built.core, schedule_of(
            schedule, learning_rate or hp.learning_rate, epochs * steps), plan.binary)
    start = time.perf_counter()
    per_epoch = {}
    if not hasattr(train_data, "__getitem__"):
        # a tf.data pipeline, whose length Keras cannot know (unreadable files are left out as
        # it goes): Keras then counted one more step an epoch than it ran, and a cosine
        # schedule reached 0 epochs early (3 of 24 at rate 0). Repeated, with its steps given
        # (reshuffled each pass), every epoch is the `steps` the schedule counts
        train_data, per_epoch = train_data.repeat(), {"steps_per_epoch": steps}
    with reporter.task(f"Training ({phase})", total=epochs) as advance:
        with at_safe_points(), _keras_false_alarms():  # a Ctrl-C stops at a batch end
            fit = built.core.fit(train_data, validation_data=val_data, epochs=epochs,
                                 verbose=0, class_weight=weights,
                                 # both pipelines shuffle themselves, by the seed (Keras
                                 # warned that it ignores shuffle=True for a Dataset; its
                                 # own batch order over the PyDataset's was another under
                                 # a distribution strategy: other weights with --distribute
                                 # mirrored, the same photos)
                                 shuffle=False, **per_epoch,
                                 callbacks=callbacks(plan, phase, advance, epochs))
    info = {"class_weight": class_weight_meta(plan, applied, weights),
            "watched_from": watched_from(plan, phase, epochs)}
    if phase == "train":
        info["lr_schedule"] = schedule
    return Fit(history_of(fit.history, phase), time.perf_counter() - start, info)


def fine_tune(plan: RunPlan, built: Built, reporter: Reporter) -> Fit:
    """Unfreeze the top ``--fine-tune`` layers (BatchNormalization stays frozen) and train end
    to end with ``--fine-tune-lr``."""
    hp = plan.settings
    unfreeze_and_say(plan, built, reporter)
    return fit_end_to_end(plan, built, reporter, "fine-tune", hp.fine_tune_lr,
                          hp.fine_tune_epochs)


def fine_tune_if_better(plan: RunPlan, built: Built,
                        reporter: Reporter) -> tuple[Fit, Validation]:
    """``fine_tune``, kept only if it lowered the validation loss.

    Fine-tuning selects its best epoch among its own epochs, so it can end worse than the
    frozen-base model it started from (too high a rate, too few photos). Both models are
    measured alike, as ``final_validation`` measures the saved one: the validation images
    through TensorFlow (not the cached features, which another engine may have computed, so
    that a near tie is not decided by engine noise). If fine-tuning did not lower the loss, the
    frozen-base weights are restored and the run says so. Returns the fit (its
    "fine_tune_result" info records both measures) and the validation of the model kept."""
    frozen = before_fine_tune(plan, built)
    fit = fine_tune(plan, built, reporter)
    return fit, keep_if_better(plan, built, reporter, frozen, fit)


@dataclass
class Frozen:
    """The frozen-base model before fine-tuning: its validation and every weight's value."""

    validation: Validation
    weights: list  # [(variable, value)]: base and head


def before_fine_tune(plan: RunPlan, built: Built) -> Frozen:
    """The frozen-base model measured (``final_validation`` on the images) and kept, so that
    ``keep_if_better`` can go back to it. Calls the model directly, never Keras's predict: on
    a multi-worker run only the chief does this."""
    return Frozen(final_validation(plan, built, None),
                  [(v, np.array(v)) for v in built.core.weights])


def keep_if_better(plan: RunPlan, built: Built, reporter: Reporter, frozen: Frozen,
                   fit: Fit) -> Validation:
    """After fine-tuning: the fine-tuned model measured as ``frozen`` was, and kept only if its
    validation loss is lower (finite, and below a finite frozen loss); else the frozen
    weights are put back, with a warning. Records both in ``fit.info["fine_tune_result"]``;
    returns the validation of the model kept."""
    tuned = final_validation(plan, built, None)  # the base changed: the images rerun
    before = frozen.validation
    better = math.isfinite(tuned.loss) and (not math.isfinite(before.loss)
                                            or tuned.loss < before.loss)
    fit.info["fine_tune_result"] = {
        "kept": better, "chosen_by": "validation loss",
        "frozen": {"val_loss": before.loss, "val_accuracy": before.accuracy},
        "fine_tuned": {"val_loss": tuned.loss, "val_accuracy": tuned.accuracy}}
    if better:
        return tuned
    for variable, value in frozen.weights:
        variable.assign(value)
    built.base_model.trainable = False
    reporter.warn(f"fine-tuning did not lower the validation loss ({tuned.loss:.4f}, accuracy "
                  f"{tuned.accuracy:.4f}, against {before.loss:.4f} and {before.accuracy:.4f} "
                  "on the frozen base): the model keeps the frozen base and its head; a "
                  "lower --fine-tune-lr or fewer --fine-tune layers may do better")
    return before


def unfreeze_and_say(plan: RunPlan, built: Built, reporter: Reporter) -> None:
    """``unfreeze_top`` with its line (both routes say it: the multi-worker one said nothing)."""
    hp = plan.settings
    unfrozen = unfreeze_top(built.base_model, hp.fine_tune)
    layers = len(built.base_model.layers)
    which = f"the top {hp.fine_tune}" if hp.fine_tune < layers else f"all {layers}"
    more = (f"; --fine-tune {hp.fine_tune} is more than it has" if hp.fine_tune > layers
            else "")
    reporter.info(f"fine-tuning {which} layers of {plan.base.keras_class} "
                  f"({unfrozen} trainable, BatchNormalization frozen{more})")


def unfreeze_top(base_model, n: int) -> int:
    from transfer.tf import keras

    base_model.trainable = True
    for i, layer in enumerate(base_model.layers):
        top = i >= len(base_model.layers) - n
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base_model.layers if layer.trainable and layer.weights)


def compile_model(model, lr, binary: bool) -> None:
    from transfer.tf import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def watched_from(plan: RunPlan, phase: str, epochs: int) -> int:
    """The epochs (0-based) before which early stopping neither stops the run nor keeps its
    weights: the first half of the CNN from scratch's cosine schedule, whose validation
    figures jump while its BatchNorm averages lag the weights (an epoch-1 model guessing at
    chance can have the lowest loss there); 0 for every other run."""
    return epochs // 2 if phase == "train" and plan.base.name == "scratch" else 0


def callbacks(plan: RunPlan, phase: str, advance, epochs: int) -> list:
    """Early stopping (restoring the best weights, from ``watched_from``), the best checkpoint,
    progress, Ctrl-C at batch ends, TensorBoard."""
    from transfer.tf import interrupt_at_batch_ends, keras

    hp = plan.settings
    plan.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    chosen = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience,
                                      restore_best_weights=True,
                                      start_from_epoch=watched_from(plan, phase, epochs)),
        keras.callbacks.ModelCheckpoint(str(plan.checkpoint_dir / f"best-{phase}.weights.h5"),
                                        monitor="val_loss", save_best_only=True,
                                        save_weights_only=True),
        progress_callback(advance, phase),
        interrupt_at_batch_ends(),
    ]
    if hp.tensorboard:
        chosen.append(keras.callbacks.TensorBoard(log_dir=str(Path(hp.tensorboard) / phase)))
    return chosen


def progress_callback(advance, phase: str):
    from transfer.tf import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            parts = [f"{phase} epoch {epoch + 1}"] + [
                f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                if k in logs]
            advance(1, status="  ".join(parts))

    return EpochProgress()


def history_of(history: dict, phase: str) -> dict:
    """Keras's history as plain floats, with a "phase" column naming the fit of each epoch."""
    n = len(next(iter(history.values()), []))
    out = {key: [float(v) for v in values] for key, values in history.items()}
    out["phase"] = [phase] * n
    return out


# --------------------------------------------------------------------------- validation


def final_validation(plan: RunPlan, built: Built, feats: Features | None) -> Validation:
    """Loss and accuracy of the final model on the validation images; from the cached features
    when the base did not change after they were computed (no fine-tuning)."""
    from transfer.tf import keras

    hp = plan.settings
    if feats is not None:
        # the head on cached validation features is the full model on those images (read
        # back shard by shard when they are on disk)
        y = feats.val_y
        # (the head called directly, never Keras's predict: under a multi-worker strategy
        # predict runs collectives, and only the chief validates)
        probs = np.concatenate([np.asarray(built.head(x[i:i + 256], training=False))
                                for x, _ in feats.val_set.chunks()
                                for i in range(0, len(x), 256)]
                               or [np.zeros((0, 1 if plan.binary else len(plan.names)))])
    else:
        val = pipelines.for_plan(plan, "validate")
        outputs, labels = [], []
        for x, y in pipelines.batches(val, pipelines.steps(len(plan.usable("validate")),
                                                           hp.batch_size)):
            if plan.flips:  # as the saved model: the head on the mean of photo and mirror
                pooled = features.mirrored_mean(
                    lambda v: built.feature_model(v, training=False), x)
                outputs.append(np.asarray(built.head(pooled, training=False)))
            else:
                outputs.append(np.asarray(built.core(x, training=False)))
            labels.append(np.asarray(y))
        probs, y = np.concatenate(outputs), np.concatenate(labels).reshape(-1)
    loss_fn = (keras.losses.BinaryCrossentropy() if plan.binary
               else keras.losses.SparseCategoricalCrossentropy())
    loss = float(loss_fn(y.reshape(-1, 1) if plan.binary else y, probs))
    predicted = (probs.reshape(-1) > 0.5).astype(int) if plan.binary else probs.argmax(-1)
    truth = y.reshape(-1).astype(int)
    balanced = metrics.balanced_accuracy(metrics.confusion_matrix(truth, predicted,
                                                                  len(plan.names)))
    return Validation(loss, float(np.mean(predicted == truth)), balanced)


# --------------------------------------------------------------------------- multi-worker


def fit_distributed(plan: RunPlan, built: Built, reporter: Reporter, cluster,
                    phase: str = "train", learning_rate: float | None = None,
                    epochs: int | None = None) -> Fit:
    """Train the core graph end to end on every worker at once, synchronously: a custom loop
    (``strategy.run`` + ``GradientTape``; Keras's ``fit`` fails under
    MultiWorkerMirroredStrategy with Keras 3: tensorflow#72388, keras#20585).

    Each worker reads its own slice of the training images (``samples[rank::workers]``,
    through the tf.data pipeline, augmented as ``--augment`` says) in batches of
    ``--batch-size``; every step all-reduces the gradients, so the global batch is
    ``batch_size x workers`` and every worker takes the same number of steps. Validation is
    split the same way and summed. Early stopping keeps the best epoch's weights, as Keras's
    EarlyStopping does. After every epoch the chief saves a checkpoint (weights, optimizer,
    history) in the run's checkpoint folder; the same command started again resumes after the
    last saved epoch (the chief's checkpoint is broadcast), and the folder is removed when
    the bundle is written."""
    from transfer.tf import keras, tf

    hp = plan.settings
    epochs = epochs or hp.epochs
    strategy, workers, rank = cluster.strategy, cluster.workers, cluster.rank
    train_samples, val_samples = plan.usable("train"), plan.usable("validate")
    labels = [s.label for s in train_samples]
    applied, weights = class_weights(labels, len(plan.names), hp.class_weight)
    per_class = tf.constant([1.0] * len(plan.names) if weights is None else
                            [weights[i] for i in range(len(plan.names))], tf.float32)
    global_batch = hp.batch_size * workers
    steps = max(1, math.ceil(len(train_samples) / global_batch))
    lr = learning_rate or hp.learning_rate
    schedule = hp.lr_schedule if phase == "train" else "constant"
    model = built.core
    augment = hp.augment if hp.augment.enabled else None

    my_train = [0]  # the images this worker's training data holds (set as it is made)

    def dataset(ctx):
        mine = train_samples[ctx.input_pipeline_id::ctx.num_input_pipelines]
        my_train[0] = len(mine)
        data = pipelines.make("tfdata", mine, plan.names, plan.size, plan.base.preprocess,
                              hp.batch_size, augment, True, hp.seed + ctx.input_pipeline_id,
                              plan.skipped)
        return data.repeat()  # every worker takes `steps` full batches per epoch

    try:  # collectives too: the optimizer's variables are broadcast from the chief
        with strategy.scope():
            optimizer = keras.optimizers.Adam(learning_rate=schedule_of(schedule, lr,
                                                                        epochs * steps))
            optimizer.build(model.trainable_variables)
        iterator = iter(strategy.distribute_datasets_from_function(dataset))
    except tf.errors.OpError as exc:  # a worker lost as the loop starts: a traceback was all
        from transfer.cluster import lost

        raise lost(exc, cluster.timeout, f"the start of {phase}", kept=cluster.kept) from None

    def per_image(y, p):
        if plan.binary:
            y = tf.reshape(tf.cast(y, tf.float32), (-1, 1))
            return keras.losses.binary_crossentropy(y, p), tf.cast(
                tf.equal(tf.cast(p[:, 0] > 0.5, tf.float32), y[:, 0]), tf.float32)
        y = tf.cast(y, tf.int64)
        return keras.losses.sparse_categorical_crossentropy(y, p), tf.cast(
            tf.equal(tf.argmax(p, -1), y), tf.float32)

    def replica_step(x, y):
        # the step's images on every worker: a short last batch (or a split smaller than a
        # batch) weighs as Keras's fit weighs it on one machine, a mean over its images; over
        # the full global_batch it made smaller steps (a quarter, for 8 + 8 images of 64)
        images = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(y)[0], tf.float32))
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            loss, right = per_image(y, p)
            w = tf.gather(per_class, tf.cast(tf.reshape(y, (-1,)), tf.int32))
            scaled = tf.reduce_sum(loss * w) / tf.maximum(images, 1.0)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return tf.stack([tf.reduce_sum(loss * w), tf.reduce_sum(right),
                         tf.cast(tf.shape(loss)[0], tf.float32)])

    @tf.function
    def train_step():
        x, y = next(iterator)
        sums = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    @tf.function(reduce_retracing=True)
    def predict(x):
        return model(x, training=False)

    my_val = val_samples[rank::workers]  # this worker's share of every validation

    def validate() -> tuple[float, float]:
        sums = np.zeros(3)
        if my_val:
            data = pipelines.make("tfdata", my_val, plan.names, plan.size, plan.base.preprocess,
                                  hp.batch_size, None, False, hp.seed, plan.skipped)
            for x, y in data:
                loss, right = per_image(y, predict(x))
                sums += [float(tf.reduce_sum(loss)), float(tf.reduce_sum(right)), len(right)]
        total = cluster.total(sums, f"validation ({phase})")
        return total[0] / max(total[2], 1), total[1] / max(total[2], 1)

    state_dir = plan.checkpoint_dir
    state_file = state_dir / f"{phase}.npz"
    identity = checkpoint_identity(plan, phase, workers)
    fingerprint = fingerprint_of(identity)  # the identity's files listed once, not twice
    history = {k: [] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    best, best_weights, wait, first = math.inf, None, 0, 0
    saved = (load_checkpoint(state_file, fingerprint, identity, reporter) if cluster.chief
             else None)
    own = [np.asarray(v) for v in [*model.weights, *optimizer.variables]]
    # whether the chief resumes, and what each worker's data holds, as each counted it
    # (meta.json's per_worker), in the one exchange every worker makes as the loop starts
    said = cluster.gather([np.array([saved is not None, my_train[0], len(my_val)], "int32")],
                          f"resuming {phase}")
    if said[0][0][0]:
        # the chief had a checkpoint of this run: every worker continues from it
        mine = saved[0] if saved else own + [np.asarray(w) for w in model.weights]
        arrays, note = cluster.state(mine, saved[1] if saved else None, f"resuming {phase}")
        for var, value in zip([*model.weights, *optimizer.variables], arrays[:len(own)],
                              strict=True):
            var.assign(value)
        best_weights = [np.array(a) for a in arrays[len(own):]]
        history, best, wait, first = (note["history"], note["best"], note["wait"],
                                      note["epoch"])
        reporter.info(f"{phase}: resumed after epoch {first} from the checkpoint "
                      f"{state_file}")
        cluster.checkpoints_kept = True
    start = time.perf_counter()
    # a run checkpointed after early stopping had ended it stays ended: resumed, it trained
    # one epoch more than the run never interrupted
    stopped = first > 0 and 0 < wait and wait >= hp.patience
    watched = watched_from(plan, phase, epochs)
    with reporter.task(f"Training ({phase}, {workers} workers)", total=epochs) as advance:
        advance(epochs if stopped else first)
        for epoch in range(epochs if stopped else first, epochs):
            sums = np.zeros(3)
            for _ in range(steps):
                try:
                    sums += train_step().numpy()
                except tf.errors.OpError as exc:
                    from transfer.cluster import lost

                    raise lost(exc, cluster.timeout, f"{phase} epoch {epoch + 1}",
                               kept=cluster.kept) from None
            val_loss, val_acc = validate()
            for key, value in zip(history, (sums[0] / sums[2], sums[1] / sums[2], val_loss,
                                            val_acc), strict=True):
                history[key].append(float(value))
            if epoch < watched:  # the noisy first half of a CNN from scratch: not counted,
                # and its weights kept only until a watched epoch's (a checkpoint holds some)
                best_weights = [np.array(w) for w in model.get_weights()]
            elif val_loss < best or best_weights is None:
                best, best_weights, wait = val_loss, [np.array(w) for w in model.get_weights()], 0
            else:
                wait += 1
                stopped = wait >= hp.patience
            if cluster.chief:
                save_checkpoint(state_file, fingerprint, model, optimizer, best_weights,
                                {"history": history, "best": best, "wait": wait,
                                 "epoch": epoch + 1}, identity)
            cluster.checkpoints_kept = True  # the others know the chief saved one (kept)
            advance(1, status=f"{phase} epoch {epoch + 1}  loss {history['loss'][-1]:.4f}  "
                              f"accuracy {history['accuracy'][-1]:.4f}  val_loss {val_loss:.4f}"
                              f"  val_accuracy {val_acc:.4f}")
            if stopped:
                advance(epochs - epoch - 1)
                break
    if best_weights is not None:
        model.set_weights(best_weights)  # as EarlyStopping(restore_best_weights=True)
    if hp.tensorboard and cluster.chief:  # the epochs Keras's callback logs on one machine
        write_tensorboard(Path(hp.tensorboard) / phase, history)
    info = {"class_weight": class_weight_meta(plan, applied, weights), "watched_from": watched,
            "custom_loop": {"workers": workers, "global_batch": global_batch,
                            "steps_per_epoch": steps, "resumed_from_epoch": first,
                            "images_read": {"train": [int(w[0][1]) for w in said],
                                            "validate": [int(w[0][2]) for w in said]}}}
    if phase == "train":
        info["lr_schedule"] = schedule
    return Fit(history_of(history, phase), time.perf_counter() - start, info)


# settings a resumed run may change: they do not change what is trained. The data folders
# as spelled go too: the photos are in the identity, relative to them (a rerun from another
# folder, or with the folder named another way, resumed nothing)
RESUME_ANYWAY = ("force", "command", "output", "worker_timeout", "tensorboard", "models_dir",
                 "preview_augment", "assert_accuracy_at_least", "feature_cache", "engine",
                 "data_dir", "train_dir", "validate_dir")


def checkpoint_identity(plan: RunPlan, phase: str, workers: int) -> dict:
    """What a checkpoint must match to be resumed: the settings (but ``RESUME_ANYWAY``),
    files and cluster size."""
    hp = plan.settings.as_dict()
    for volatile in RESUME_ANYWAY:
        hp.pop(volatile, None)
    return {"settings": hp, "phase": phase, "workers": workers,
            "train": plan.train_files, "validate": plan.val_files}


def checkpoint_fingerprint(plan: RunPlan, phase: str, workers: int) -> str:
    """``checkpoint_identity`` in 32 hex digits."""
    return fingerprint_of(checkpoint_identity(plan, phase, workers))


def fingerprint_of(identity: dict) -> str:
    """A checkpoint identity (``checkpoint_identity``) in 32 hex digits."""
    from transfer.files import digest

    return digest(identity)[:32]


def checkpoint_difference(saved: dict, identity: dict) -> str:
    """Why a checkpoint is not this run's, in words: the settings that differ (as options,
    with both values), else the number of workers, else the files."""
    theirs = saved.get("settings")
    mine = json.loads(json.dumps(identity["settings"], default=str))  # as it was saved
    if isinstance(theirs, dict):
        changed = [f"--{k.replace('_', '-')} was {json.dumps(theirs.get(k))}, now "
                   f"{json.dumps(mine.get(k))}" for k in sorted(set(theirs) | set(mine))
                   if theirs.get(k) != mine.get(k)]
        if changed:
            return "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
        if saved.get("workers") not in (None, identity["workers"]):
            return f"{saved['workers']} workers then, {identity['workers']} now"
        return "other photos, or other files in the split"
    return "other settings, photos or workers"


def save_checkpoint(path: Path, fingerprint: str, model, optimizer, best_weights,
                    note: dict, identity: dict | None = None) -> None:
    """The chief's epoch checkpoint: weights, optimizer state, best weights, history; the
    settings and cluster size of ``identity`` too (what a mismatch is said by)."""
    if identity is not None:
        note = {**note, "settings": identity["settings"], "workers": identity["workers"]}
    from transfer.files import replacing

    arrays = [np.asarray(v) for v in [*model.weights, *optimizer.variables]]
    arrays += [np.asarray(w) for w in best_weights or []]
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        np.savez(tmp, *arrays, note=np.array(json.dumps({**note, "fingerprint": fingerprint},
                                                      default=str)))


def load_checkpoint(path: Path, fingerprint: str, identity: dict | None = None,
                    reporter: Reporter | None = None):
    """(arrays, note) of a checkpoint made by the same run, or None. One of another run (its
    settings changed since) is said, with why, when ``reporter`` is given: it was replaced,
    and the run trained from the start, without a word."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            note = json.loads(str(data["note"]))
            if note.pop("fingerprint", None) != fingerprint:
                if reporter is not None and identity is not None:
                    reporter.warn(f"the checkpoint {path} is of another run "
                                  f"({checkpoint_difference(note, identity)}): not resumed; "
                                  f"{identity['phase']} starts from its first epoch (the "
                                  "checkpoint is replaced)")
                return None
            note.pop("settings", None)
            note.pop("workers", None)
            arrays = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
        return arrays, note
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


HEAD_WAIT = 1800.0  # seconds the other workers wait for the chief's head before fine-tuning


def share_head(cluster, built: Built) -> None:
    """The chief's trained head on every worker (before fine-tuning together)."""
    arrays = [np.asarray(w) for w in built.head.get_weights()]
    # the others wait while the chief trains the head (seconds; longer on streamed shards)
    got, _ = cluster.state(arrays, None, "sharing the head", timeout=HEAD_WAIT)
    with built.strategy.scope():
        built.head.set_weights(got)
