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

    layers = keras.layers
    binary = n_classes == 2
    out = layers.Dense(1 if binary else n_classes, activation="sigmoid" if binary else "softmax",
                       name="predictions")
    if base.pretrained:
        pool = layers.GlobalAveragePooling2D(name="pool")
        head_layers = [layers.Dropout(dropout, name="dropout")]
        if dense > 0:
            head_layers.append(layers.Dense(dense, activation="relu", name="dense"))
    else:  # the seeds' CNN: Flatten-Dense128-Dropout0.5
        pool = layers.Flatten(name="flatten")
        head_layers = [layers.Dense(128, activation="relu", name="dense"),
                       layers.Dropout(0.5, name="dropout")]
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
    graphs = {"full": full, "core": core, "features": feature_model}
    if base.pretrained:
        feats = keras.Input((feature_model.output_shape[-1],), name="features")
        graphs["head"] = keras.Model(feats, head(feats), name="head")
    return graphs


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
                  size=plan.size, classes=plan.names, reader=1, version=2)
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
            result, hit = features.cached(cache_dir, key, compute)
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
    """The head trained on cached features by one compiled function per epoch.

    One ``tf.function`` runs a whole epoch (shuffled batches gathered from the features in
    memory, the head's own Keras layers with dropout active, a Keras Adam, class weights, the
    L2 penalty); another computes the validation loss and accuracy. Called once per epoch, so
    Keras's per-step overhead (a Python round trip, callbacks, a data iterator) is gone; the
    trained layers are the head's, so the saved model is the same.
    """

    def __init__(self, head, binary: bool, batch_size: int, lr):
        from transfer.tf import keras, tf

        self.head, self.binary = head, binary
        self.variables = list(head.trainable_variables)
        self.optimizer = keras.optimizers.Adam(learning_rate=lr)
        self.optimizer.build(self.variables)
        self.initial = [np.array(v.numpy()) for v in self.optimizer.variables]
        self.kernel = head.get_layer("predictions").kernel
        self.l2 = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="head_l2")
        bs = int(batch_size)

        def per_image(y, p):
            if binary:
                return keras.losses.binary_crossentropy(tf.reshape(y, (-1, 1)), p)
            return keras.losses.sparse_categorical_crossentropy(y, p)

        def right(y, p):
            if binary:
                guess = tf.cast(tf.reshape(p, (-1,)) > 0.5, tf.float32)
                return tf.cast(tf.equal(guess, tf.cast(y, tf.float32)), tf.float32)
            return tf.cast(tf.equal(tf.argmax(p, -1), tf.cast(y, tf.int64)), tf.float32)

        def epoch(x, y, w, order):
            n = tf.shape(order)[0]
            loss_sum, hits = tf.constant(0.0), tf.constant(0.0)
            for i in tf.range((n + bs - 1) // bs):
                idx = order[i * bs:tf.minimum((i + 1) * bs, n)]
                xb, yb, wb = tf.gather(x, idx), tf.gather(y, idx), tf.gather(w, idx)
                with tf.GradientTape() as tape:
                    p = head(xb, training=True)
                    loss = (tf.reduce_mean(per_image(yb, p) * wb)
                            + self.l2 * tf.reduce_sum(tf.square(self.kernel)))
                grads = tape.gradient(loss, self.variables)
                self.optimizer.apply_gradients(zip(grads, self.variables, strict=True))
                m = tf.cast(tf.shape(idx)[0], tf.float32)
                loss_sum += loss * m
                hits += tf.reduce_sum(right(yb, p))
            return loss_sum / tf.cast(n, tf.float32), hits / tf.cast(n, tf.float32)

        def evaluate(x, y):
            p = head(x, training=False)
            return tf.reduce_mean(per_image(y, p)), tf.reduce_mean(right(y, p))

        self.epoch = tf.function(epoch, reduce_retracing=True)
        self.evaluate = tf.function(evaluate, reduce_retracing=True)

    def reset(self, weights: list, l2: float) -> None:
        """The head's initial weights, a fresh optimizer state, and this L2 penalty."""
        self.head.set_weights(weights)
        for variable, value in zip(self.optimizer.variables, self.initial, strict=True):
            variable.assign(value)
        self.l2.assign(float(l2))

    def run_epoch(self, x, y, w, order):
        loss, accuracy = self.epoch(x, y, w, order)
        return float(loss), float(accuracy)

    def learning_rate(self) -> float:
        return float(np.asarray(self.optimizer.learning_rate))


def epoch_orders(n: int, epochs: int, seed: int):
    """The shuffled order of every epoch (the same for every L2 value of the grid)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n).astype("int32") for _ in range(epochs)]


def train_head(plan: RunPlan, built: Built, feats: Features, reporter: Reporter) -> Fit:
    """Train the head on the cached features, epoch e on augmented copy e % K, with early
    stopping on the validation loss (the best epoch's weights kept); without --l2, once per
    value of L2_GRID, keeping the value with the best validation loss."""
    from transfer.tf import tf

    hp = plan.settings
    n = len(feats.labels)
    applied, weights = class_weights(feats.labels, len(plan.names), hp.class_weight)
    w = (np.ones(n, "float32") if weights is None
         else np.array([weights[int(c)] for c in feats.labels], "float32"))
    steps = math.ceil(n / hp.batch_size)
    grid = L2_GRID if hp.l2 is None else (float(hp.l2),)
    scope = built.strategy.scope() if built.replicas > 1 else _no_scope()
    start = time.perf_counter()
    with scope:
        trainer = HeadTrainer(built.head, plan.binary, hp.batch_size,
                              schedule_of(hp.lr_schedule, hp.learning_rate, hp.epochs * steps))
    initial = built.head.get_weights()
    copies = [tf.constant(x) for x in feats.train]
    y, wt = tf.constant(feats.labels), tf.constant(w)
    val_x, val_y = tf.constant(feats.val_x), tf.constant(feats.val_y)
    orders = [tf.constant(o) for o in epoch_orders(n, hp.epochs, hp.seed)]
    runs = {}
    with reporter.task("Training the head", total=hp.epochs * len(grid)) as advance:
        for l2 in grid:
            with scope:
                trainer.reset(initial, l2)
            history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
            best, best_weights, wait = math.inf, None, 0
            for epoch in range(hp.epochs):
                with scope:
                    loss, accuracy = trainer.run_epoch(copies[epoch % len(copies)], y, wt,
                                                       orders[epoch])
                    val_loss, val_accuracy = (float(v) for v in trainer.evaluate(val_x, val_y))
                for key, value in zip(history, (loss, accuracy, val_loss, val_accuracy),
                                      strict=True):
                    history[key].append(value)
                label = f"l2 {l2:g} " if len(grid) > 1 else ""
                advance(1, status=f"head {label}epoch {epoch + 1}  loss {loss:.4f}  accuracy "
                                  f"{accuracy:.4f}  val_loss {val_loss:.4f}  val_accuracy "
                                  f"{val_accuracy:.4f}")
                if val_loss < best or best_weights is None:
                    best, best_weights, wait = val_loss, built.head.get_weights(), 0
                else:
                    wait += 1
                    if wait >= hp.patience:
                        break
            advance(hp.epochs - len(history["loss"]))
            runs[l2] = (best, history, best_weights, trainer.learning_rate())
    chosen = min(grid, key=lambda v: (runs[v][0] if math.isfinite(runs[v][0]) else math.inf))
    _, history, best_weights, final_lr = runs[chosen]
    with scope:
        built.head.set_weights(best_weights)
    seconds = time.perf_counter() - start
    if hp.tensorboard:
        write_tensorboard(Path(hp.tensorboard) / "head", history)
    info = {"l2": chosen, "l2_chosen_by": "validation loss" if hp.l2 is None else "given",
            "l2_grid": {f"{v:g}": {"best_val_loss": runs[v][0],
                                   "best_epoch": int(np.argmin(runs[v][1]["val_loss"])) + 1,
                                   "val_accuracy_at_best": runs[v][1]["val_accuracy"][
                                       int(np.argmin(runs[v][1]["val_loss"]))],
                                   "epochs_run": len(runs[v][1]["loss"])} for v in grid},
            "class_weight": {"mode": hp.class_weight, "applied": applied,
                             "weights": None if weights is None else
                             {plan.names[i]: round(v, 6) for i, v in weights.items()}},
            "lr_schedule": hp.lr_schedule, "final_learning_rate": final_lr}
    return Fit(history_of(history, "head"), seconds, info)


class _no_scope:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


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
