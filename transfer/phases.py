"""The phases of a training run, each a function taking the run plan and returning a small result.

``transfer.training.train`` calls them in order::

    build_model -> extract_features -> train_head -> fine_tune -> final_validation

(``fit_end_to_end`` instead of the two feature phases when the base must run every epoch: the
classic augmented recipe and the CNN from scratch). Timings travel in the results (``Features``,
``Fit``), never in a shared dict.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transfer import bases, features, pipelines
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
    """Pooled features of the training images (one array per augmented copy) and validation."""

    train: list  # [copy] -> (n_train, width) float32
    labels: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    cache: str  # "hit", "miss" or "off"
    seconds: float  # time the base ran (0 on a cache hit)
    base_images: int  # images that went through the base
    skipped: list = field(default_factory=list)  # [{"file", "reason"}] left out
    engine: dict | None = None  # what ran the base (EngineInfo.as_dict())


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


# --------------------------------------------------------------------------- build


def strategy(name: str):
    """The tf.distribute strategy named by ``--distribute``."""
    from transfer.tf import tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model(plan: RunPlan) -> Built:
    """Seed everything, then build the base (frozen unless scratch) and its graphs."""
    from transfer.tf import keras

    hp = plan.settings
    keras.utils.set_random_seed(hp.seed)
    chosen = strategy(hp.distribute)
    with chosen.scope():
        base_model = bases.build(plan.base, plan.size, plan.alpha, hp.weights)
        base_model.trainable = not plan.base.pretrained  # frozen ImageNet base; scratch learns
        graphs = graphs_of(plan.base, base_model, plan.size, len(plan.names), hp.dropout,
                           hp.dense)
    source, sha = bases.weights_fingerprint(plan.base, hp.weights, plan.alpha, plan.size,
                                            hp.seed)
    return Built(chosen, base_model, graphs["full"], graphs["core"], graphs["features"],
                 graphs.get("head"), source, sha)


def graphs_of(base, base_model, size: int, n_classes: int, dropout: float = 0.2,
              dense: int = 0) -> dict:
    """The full, core, features (and head) graphs over one set of layers."""
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
    full = keras.Model(raw, head(pool(base_model(x, training=False))),
                       name=f"{base.name}_classifier")
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
    return [(Path(s.path), int(s.label)) for s in plan.usable(split)]


def raw_feature_model(plan: RunPlan, built: Built):
    """Raw pixels (0-255) -> preprocess -> base -> pooling, over the run's layers: what the
    engines run (the saved model's own path from pixels to features)."""
    from transfer.tf import keras

    raw = keras.Input((plan.size, plan.size, 3), name="image")
    x = bases.preprocess_layer(plan.base.preprocess)(raw)
    return keras.Model(raw, built.feature_model(x), name="raw_features")


class _LazyEngine:
    """Opens the engine (conversion, parity check, auto's measurement) at the first pass that
    misses the cache, on that pass's first batch; nothing at all on a full cache hit."""

    def __init__(self, plan: RunPlan, built: Built, reporter: Reporter):
        self.plan, self.built, self.reporter = plan, built, reporter
        self.engine = None
        self.info = None

    def open(self, paths: list) -> None:
        if self.engine is not None:
            return
        from transfer import engines
        from transfer.images import ImageError

        plan, size = self.plan, self.plan.size
        first = []
        for path in paths:
            if len(first) == features.PASS_BATCH:
                break
            try:
                first.append(features.read_image(path, size))
            except (ImageError, OSError):
                continue  # the pass records it
        batch = (np.stack(first).astype("float32") if first
                 else np.zeros((1, size, size, 3), "float32"))
        key = dict(base=plan.base.name, alpha=plan.alpha, preprocess=plan.base.preprocess,
                   weights=self.built.weights_sha256 or self.built.weights_source, size=size)
        self.engine, self.info = engines.open_engine(
            raw_feature_model(plan, self.built), batch, requested=plan.settings.engine,
            key=key, batch_size=features.PASS_BATCH, reporter=self.reporter)

    def __call__(self, batch):
        return self.engine(batch)

    @property
    def name(self):
        return getattr(self.engine, "name", None)


def extract_features(plan: RunPlan, built: Built, reporter: Reporter) -> Features:
    """Run the frozen base once per training image (per augmented copy) and per validation
    image, through the feature cache when it is on. Unreadable images are left out, recorded
    in the plan's skipped list, and the run goes on unless a class is left too small."""
    hp = plan.settings
    cache_dir = Path(hp.data_dir) / ".cache" / "features"
    common = dict(base=plan.base.name, alpha=plan.alpha, weights=built.weights_sha256,
                  size=plan.size, classes=plan.names, reader=1, version=3)
    engine = _LazyEngine(plan, built, reporter)
    hits: list[bool] = []
    passes: list[features.Pass] = []
    skipped: dict[str, str] = {}

    def get(samples, augment, copy, label):
        paths = [path for path, _ in samples]
        labels = np.array([y for _, y in samples], "int64")
        key = features.cache_key(**common, files=features.file_rows(paths, plan.root),
                                 labels=labels.tolist(),
                                 augment=augment.as_dict() if augment else None, copy=copy,
                                 seed=hp.seed if augment else None)

        def compute():
            engine.open(paths)
            return features.run_pass(paths, labels, plan.size, engine, augment=augment,
                                     seed=hp.seed + 1000 * copy, reporter=reporter,
                                     description=f"{plan.base.name} features ({engine.name}): "
                                                 f"{label}")

        if not hp.feature_cache:
            result, hit = compute(), False
        else:
            result, hit = features.cached(cache_dir, key, compute, warn=reporter.warn)
        hits.append(hit)
        passes.append(result)
        for item in result.skipped:
            skipped.setdefault(item["file"], item["reason"])
        return (result.features.astype("float32"),
                result.labels.astype("float32" if plan.binary else "int64"))

    train_samples, val_samples = samples_of(plan, "train"), samples_of(plan, "validate")
    if plan.copies:
        train_sets = [get(train_samples, hp.augment, k,
                          f"train, augmented copy {k + 1}/{plan.copies}")
                      for k in range(plan.copies)]
    else:
        train_sets = [get(train_samples, None, 0, "train")]
    val_x, val_y = get(val_samples, None, 0, "validate")
    record_skipped(plan, skipped, reporter)
    labels = train_sets[0][1]
    if any(len(y) != len(labels) or not np.array_equal(y, labels) for _, y in train_sets):
        raise RuntimeError("augmented copies disagree on their images")  # never: same reader
    cache = "off" if not hp.feature_cache else ("hit" if all(hits) else "miss")
    ran = [p for p in passes if p.images]
    seconds = sum(p.seconds for p in ran)
    base_images = sum(p.images for p in ran)
    if engine.info is not None:
        engine.info.images, engine.info.seconds = base_images, seconds
        engine_meta = engine.info.as_dict()
    else:  # every pass was a cache hit: the base did not run
        engine_meta = {"requested": hp.engine, "name": None, "images": 0,
                       "cached_features_from": sorted({p.engine for p in passes if p.engine})}
    return Features([x for x, _ in train_sets], labels, val_x, val_y, cache, seconds,
                    base_images, skipped=[{"file": f, "reason": r} for f, r in skipped.items()],
                    engine=engine_meta)


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
IMBALANCE = 1.5  # --class-weight auto: balanced when the largest class > 1.5x the smallest


def class_weights(labels, n_classes: int, mode: str) -> tuple[str, dict | None]:
    """(what applies: "balanced" or "none", {class index: weight} or None).

    balanced: n / (k * n_c), so every class weighs as much in the loss as a balanced set would;
    auto: balanced when the largest class has more than IMBALANCE x the smallest's images."""
    counts = np.bincount(np.asarray(labels).astype(int).reshape(-1), minlength=n_classes)
    if mode == "none" or counts.min() == 0:
        return "none", None
    if mode == "auto" and counts.max() <= IMBALANCE * counts.min():
        return "none", None
    n, k = int(counts.sum()), n_classes
    return "balanced", {i: float(n / (k * c)) for i, c in enumerate(counts)}


def schedule_of(schedule: str | None, lr: float, total_steps: int):
    """A constant rate, or cosine decay from ``lr`` to 0 at the last step of the fit."""
    from transfer.tf import keras

    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps),
                                                      alpha=0.0)
    return lr


class HeadTrainer:
    """Heads trained on cached features, one compiled call per epoch, every L2 value at once.

    The head is small (dropout, an optional hidden Dense, the final Dense), so its function is
    written out here in TensorFlow ops over the head's own layers' weights, with one copy of
    the weights per L2 value stacked on a leading axis: one ``tf.function`` runs a whole epoch
    for all of them (the same shuffled batches, initial weights and dropout masks: only the
    penalty differs), then their validation loss and accuracy. What Keras's ``fit``
    spends per step (a Python round trip, callbacks, a data iterator; about 3 s for 10 epochs
    of 2000 features) and the tracing of Keras's optimizer (about 1 s) are gone: 10 epochs of
    the grid take a few tenths of a second, most of it the one tracing.

    It computes what Keras would: Adam exactly as ``keras.optimizers.Adam`` updates (beta 0.9,
    0.999, epsilon 1e-7, bias correction), the learning rate constant or cosine-decayed to 0
    over the fit's steps (``keras.optimizers.schedules.CosineDecay``), the mean over the batch
    of class-weighted cross-entropy (from logits) plus ``l2 * sum(kernel**2)`` of the final
    Dense, inverted dropout; the validation loss is Keras's cross-entropy on the probabilities
    (clipped at 1e-7), so it equals ``final_validation``'s. The chosen weights are set into the
    head's Keras layers: the saved model is the same graph as before.
    """

    EPSILON = 1e-7

    def __init__(self, head, binary: bool, batch_size: int, learning_rate: float,
                 schedule: str | None, total_steps: int, l2_values, seed: int):
        from transfer.tf import keras, tf

        self.head, self.binary = head, binary
        self.l2_values = [float(v) for v in l2_values]
        g = len(self.l2_values)
        self.layers = []  # ("dropout", rate) | ("dense", keras layer)
        for layer in head.layers:
            if isinstance(layer, keras.layers.Dropout):
                self.layers.append(("dropout", float(layer.rate)))
            elif isinstance(layer, keras.layers.Dense):
                self.layers.append(("dense", layer))
        self.dense = [layer for kind, layer in self.layers if kind == "dense"]
        self.initial = [np.asarray(w) for layer in self.dense for w in layer.get_weights()]
        self.variables = [tf.Variable(np.repeat(w[None], g, axis=0), dtype=tf.float32)
                          for w in self.initial]
        self.m = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self.v = [tf.Variable(tf.zeros_like(v)) for v in self.variables]
        self.step = tf.Variable(0, dtype=tf.int64)
        l2 = tf.constant(self.l2_values, tf.float32)[:, None, None]
        bs, eps = int(batch_size), self.EPSILON
        lr0, total = float(learning_rate), float(max(1, total_steps))
        cosine = schedule == "cosine"
        last = self.dense[-1]
        softmax = not binary

        def rate_at(step):
            if not cosine:
                return tf.constant(lr0)
            done = tf.minimum(tf.cast(step, tf.float32), total) / total
            return lr0 * 0.5 * (1.0 + tf.cos(np.pi * done))

        def logits(x, training, step):
            h = tf.tile(x[None], (g, 1, 1))
            weights = iter(self.variables)
            for index, (kind, spec) in enumerate(self.layers):
                if kind == "dropout":
                    if training and spec > 0:  # one mask for every head: only l2 differs
                        keep = tf.random.stateless_uniform(
                            tf.shape(h)[1:], seed=tf.stack([tf.cast(seed, tf.int64) + index,
                                                            step]), dtype=tf.float32)
                        h = tf.where(keep[None] >= spec, h / (1.0 - spec), 0.0)
                    continue
                kernel, bias = next(weights), next(weights)
                h = tf.matmul(h, kernel) + bias[:, None, :]  # (g, b, in) @ (g, in, out)
                if spec is not last:
                    h = keras.activations.get(spec.activation)(h)
            return h  # (g, batch, units) before the last activation

        def per_image_from_logits(y, z):
            if softmax:
                labels = tf.tile(tf.cast(y, tf.int64)[None], (g, 1))
                return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, z)
            target = tf.tile(tf.cast(y, tf.float32)[None, :, None], (g, 1, 1))
            return tf.nn.sigmoid_cross_entropy_with_logits(target, z)[..., 0]

        def right(y, z):
            if softmax:
                return tf.cast(tf.equal(tf.argmax(z, -1), tf.cast(y, tf.int64)[None]),
                               tf.float32)
            return tf.cast(tf.equal(tf.cast(z[..., 0] > 0.0, tf.float32),
                                    tf.cast(y, tf.float32)[None]), tf.float32)

        def keras_loss(y, z):
            """Keras's cross-entropy on the probabilities, per head: (g,)."""
            if softmax:
                p = tf.clip_by_value(tf.nn.softmax(z), eps, 1.0 - eps)
                hot = tf.one_hot(tf.cast(y, tf.int32), tf.shape(z)[-1])[None]
                picked = tf.reduce_sum(p * hot, axis=-1)
                return tf.reduce_mean(-tf.math.log(picked), axis=1)
            p = tf.clip_by_value(tf.sigmoid(z[..., 0]), eps, 1.0 - eps)
            t = tf.cast(y, tf.float32)[None]
            return tf.reduce_mean(-(t * tf.math.log(p) + (1 - t) * tf.math.log(1 - p)), axis=1)

        def epoch(x, y, w, order, val_x, val_y):
            n = tf.shape(order)[0]

            def step(i, loss_sum, hits):
                idx = order[i * bs:tf.minimum((i + 1) * bs, n)]
                xb, yb, wb = tf.gather(x, idx), tf.gather(y, idx), tf.gather(w, idx)
                with tf.GradientTape() as tape:
                    z = logits(xb, True, self.step)
                    data = tf.reduce_mean(per_image_from_logits(yb, z) * wb[None], axis=1)
                    penalty = tf.reduce_sum(l2 * tf.square(self.variables[-2]), axis=(1, 2))
                    loss = data + penalty  # (g,): each head's own loss
                    total_loss = tf.reduce_sum(loss)  # the heads are independent
                grads = tape.gradient(total_loss, self.variables)
                rate = rate_at(self.step)
                with tf.control_dependencies([self.step.assign_add(1)]):
                    t = tf.cast(self.step, tf.float32)
                alpha = rate * tf.sqrt(1.0 - 0.999 ** t) / (1.0 - 0.9 ** t)
                for var, grad, m, v in zip(self.variables, grads, self.m, self.v, strict=True):
                    m.assign_add((grad - m) * 0.1)
                    v.assign_add((tf.square(grad) - v) * 0.001)
                    var.assign_sub(m * alpha / (tf.sqrt(v) + eps))
                size = tf.cast(tf.shape(idx)[0], tf.float32)
                return (i + 1, loss_sum + loss * size,
                        hits + tf.reduce_sum(right(yb, z), axis=1))

            steps = (n + bs - 1) // bs
            _, loss_sum, hits = tf.while_loop(
                lambda i, *_: i < steps, step, (tf.constant(0), tf.zeros((g,)), tf.zeros((g,))))
            count = tf.cast(n, tf.float32)
            zv = logits(val_x, False, self.step)
            return (loss_sum / count, hits / count, keras_loss(val_y, zv),
                    tf.reduce_mean(right(val_y, zv), axis=1), rate_at(self.step))

        # no autograph: converting these functions cost more than a second of tracing
        self.epoch = tf.function(epoch, reduce_retracing=True, autograph=False)

    def run_epoch(self, x, y, w, order, val_x, val_y) -> tuple:
        """(loss, accuracy, val_loss, val_accuracy) per L2 value, and the learning rate."""
        loss, acc, val_loss, val_acc, rate = self.epoch(x, y, w, order, val_x, val_y)
        return (loss.numpy(), acc.numpy(), val_loss.numpy(), val_acc.numpy(), float(rate))

    def weights_of(self, index: int) -> list:
        """The weights of head ``index`` (an L2 value), as the Keras layers take them."""
        return [np.array(v[index].numpy()) for v in self.variables]

    def set_head(self, weights: list) -> None:
        """Put ``weights`` (from ``weights_of``) into the head's Keras layers."""
        it = iter(weights)
        for layer in self.dense:
            layer.set_weights([next(it), next(it)])


def epoch_orders(n: int, epochs: int, seed: int):
    """The shuffled order of every epoch (the same for every L2 value of the grid)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n).astype("int32") for _ in range(epochs)]


def train_head(plan: RunPlan, built: Built, feats: Features, reporter: Reporter) -> Fit:
    """Train the head on the cached features, epoch e on augmented copy e % K, with early
    stopping on the validation loss (each head keeps its best epoch's weights); without --l2,
    one head per value of L2_GRID at once, keeping the one with the best validation loss."""
    from transfer.tf import tf

    hp = plan.settings
    n = len(feats.labels)
    applied, weights = class_weights(feats.labels, len(plan.names), hp.class_weight)
    w = (np.ones(n, "float32") if weights is None
         else np.array([weights[int(c)] for c in feats.labels], "float32"))
    steps = math.ceil(n / hp.batch_size)
    grid = L2_GRID if hp.l2 is None else (float(hp.l2),)
    start = time.perf_counter()
    trainer = HeadTrainer(built.head, plan.binary, hp.batch_size, hp.learning_rate,
                          hp.lr_schedule, hp.epochs * steps, grid, hp.seed)
    copies = [tf.constant(x) for x in feats.train]
    y, wt = tf.constant(feats.labels), tf.constant(w)
    val_x, val_y = tf.constant(feats.val_x), tf.constant(feats.val_y)
    orders = epoch_orders(n, hp.epochs, hp.seed)
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    histories = [{k: [] for k in keys} for _ in grid]
    best = [math.inf] * len(grid)
    best_weights: list = [None] * len(grid)
    wait = [0] * len(grid)
    active = [True] * len(grid)
    rates = [None] * len(grid)
    with reporter.task("Training the head", total=hp.epochs) as advance:
        for epoch in range(hp.epochs):
            *values, rate = trainer.run_epoch(copies[epoch % len(copies)], y, wt,
                                              tf.constant(orders[epoch]), val_x, val_y)
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
                advance(hp.epochs - epoch - 1)
                break
    finite = [b if math.isfinite(b) else math.inf for b in best]
    chosen = int(np.argmin(finite))
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
            "class_weight": {"mode": hp.class_weight, "applied": applied,
                             "weights": None if weights is None else
                             {plan.names[i]: round(v, 6) for i, v in weights.items()}},
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
    with reporter.task(f"Training ({phase})", total=epochs) as advance:
        fit = built.core.fit(train_data, validation_data=val_data, epochs=epochs, verbose=0,
                             class_weight=weights, callbacks=callbacks(plan, phase, advance))
    info = {"class_weight": {"mode": hp.class_weight, "applied": applied,
                             "weights": None if weights is None else
                             {plan.names[i]: round(v, 6) for i, v in weights.items()}}}
    if phase == "train":
        info["lr_schedule"] = schedule
    return Fit(history_of(fit.history, phase), time.perf_counter() - start, info)


def fine_tune(plan: RunPlan, built: Built, reporter: Reporter) -> Fit:
    """Unfreeze the top ``--fine-tune`` layers (BatchNormalization stays frozen) and train end
    to end with ``--fine-tune-lr``."""
    hp = plan.settings
    unfrozen = unfreeze_top(built.base_model, hp.fine_tune)
    reporter.info(f"fine-tuning the top {hp.fine_tune} layers of {plan.base.keras_class} "
                  f"({unfrozen} trainable, BatchNormalization frozen)")
    return fit_end_to_end(plan, built, reporter, "fine-tune", hp.fine_tune_lr,
                          hp.fine_tune_epochs)


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


def callbacks(plan: RunPlan, phase: str, advance) -> list:
    """Early stopping (restoring the best weights), the best checkpoint, progress, TensorBoard."""
    from transfer.tf import keras

    hp = plan.settings
    plan.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    chosen = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience,
                                      restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(plan.checkpoint_dir / f"best-{phase}.weights.h5"),
                                        monitor="val_loss", save_best_only=True,
                                        save_weights_only=True),
        progress_callback(advance, phase),
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
        # the head on cached validation features is the full model on those images
        y = feats.val_y
        probs = built.head.predict(feats.val_x, verbose=0, batch_size=256)
    else:
        val = pipelines.for_plan(plan, "validate")
        outputs, labels = [], []
        for x, y in pipelines.batches(val, pipelines.steps(len(plan.usable("validate")),
                                                           hp.batch_size)):
            outputs.append(np.asarray(built.core(x, training=False)))
            labels.append(np.asarray(y))
        probs, y = np.concatenate(outputs), np.concatenate(labels).reshape(-1)
    loss_fn = (keras.losses.BinaryCrossentropy() if plan.binary
               else keras.losses.SparseCategoricalCrossentropy())
    loss = float(loss_fn(y.reshape(-1, 1) if plan.binary else y, probs))
    predicted = (probs.reshape(-1) > 0.5).astype(int) if plan.binary else probs.argmax(-1)
    return Validation(loss, float(np.mean(predicted == y.reshape(-1).astype(int))))
