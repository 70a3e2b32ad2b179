"""Training the classifier head on cached features, in NumPy.

The head of a frozen base is small: dropout, an optional hidden Dense (ReLU), the final Dense
(sigmoid or softmax). On cached features the cost of fitting it is not arithmetic (a batch of
32 rows of 256-1280 features) but overhead per step: Keras's ``fit`` spends about 3 s on 10
epochs of 2,000 features, and even one compiled ``tf.function`` per epoch spends 0.3 s on
tracing and about 0.35 ms a step in TensorFlow's executor. The same step written out in NumPy,
with the gradient derived by hand, takes a few tens of microseconds and needs no tracing.

Every L2 value of the grid is trained at once: one copy of the weights per value, stacked on a
leading axis, the same shuffled batches, initial weights and dropout masks (only the penalty
differs). What is computed is what Keras computes:

- the loss: the mean over the batch of the class-weighted cross-entropy (from logits), plus
  ``l2 * sum(kernel ** 2)`` of the final Dense;
- Adam as ``keras.optimizers.Adam`` updates (beta 0.9 and 0.999, epsilon 1e-7, bias
  correction), the rate constant or cosine-decayed to 0 over the fit's steps
  (``keras.optimizers.schedules.CosineDecay``);
- inverted dropout;
- the validation loss is Keras's cross-entropy on the probabilities (clipped at 1e-7), so it
  equals ``phases.final_validation``'s.

The chosen weights are set into the head's Keras layers, so the saved model is the same graph
as ever. ``tests/test_head.py`` checks the weights and loss against Keras's ``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EPSILON = 1e-7
BETA_1, BETA_2 = 0.9, 0.999


class EpochOrders(Sequence):
    """The shuffled order of every epoch (the same for every L2 value of the grid), drawn when
    an epoch asks for it: epoch e's is the (e + 1)-th permutation of one generator seeded with
    ``seed``, the very arrays a list drawn up front held, but only one is kept. The list built
    every epoch's order before the first: ``--epochs 1000000``, which early stopping ends
    after tens of epochs, spent seconds and 788 MB on 160 images (8 GB for 2,000, more an
    out-of-memory kill). Epochs are asked in order; an earlier one is drawn again from the
    seed."""

    def __init__(self, n: int, epochs: int, seed: int):
        self.n, self.epochs, self.seed = int(n), int(epochs), seed
        self._rng: np.random.Generator | None = None
        self._drawn = 0  # permutations the generator has given
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.epochs

    def __getitem__(self, epoch):
        if isinstance(epoch, slice):
            return [self[i] for i in range(*epoch.indices(self.epochs))]
        epoch = int(epoch) + (self.epochs if epoch < 0 else 0)
        if not 0 <= epoch < self.epochs:
            raise IndexError(f"epoch {epoch} of {self.epochs}")
        if self._last is not None and self._last[0] == epoch:
            return self._last[1]
        if self._rng is None or epoch < self._drawn:  # from the start: the same draws again
            self._rng, self._drawn = np.random.default_rng(self.seed), 0
        while self._drawn <= epoch:
            order = self._rng.permutation(self.n).astype("int32")
            self._drawn += 1
        self._last = (epoch, order)
        return order


def epoch_orders(n: int, epochs: int, seed: int) -> EpochOrders:
    """The shuffled order of every epoch (the same for every L2 value of the grid), each drawn
    when its epoch comes (``EpochOrders``): ``orders[e]`` is epoch e's."""
    return EpochOrders(n, epochs, seed)


def _softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


class HeadTrainer:
    """Heads trained on features, one per L2 value, in NumPy (see the module's docstring).

    Args:
        head: the Keras head (Dropout and Dense layers; hidden Dense with ReLU).
        binary: one sigmoid unit (else softmax over the classes).
        batch_size, learning_rate: as Keras's fit and Adam take them.
        schedule: "cosine" (decay to 0 at ``total_steps``) or a constant rate.
        total_steps: the steps of the whole fit (for the schedule).
        l2_values: the penalties to train at once.
        seed: the dropout masks' seed.
    """

    def __init__(self, head, binary: bool, batch_size: int, learning_rate: float,
                 schedule: str | None, total_steps: int, l2_values, seed: int):
        from transfer.tf import keras

        self.head, self.binary = head, binary
        self.l2_values = [float(v) for v in l2_values]
        g = len(self.l2_values)
        self.layers: list = []  # ("dropout", rate) | ("dense", keras layer, relu?)
        for layer in head.layers:
            if isinstance(layer, keras.layers.Dropout):
                self.layers.append(("dropout", float(layer.rate)))
            elif isinstance(layer, keras.layers.Dense):
                self.layers.append(("dense", layer))
        self.dense = [spec for kind, spec in self.layers if kind == "dense"]
        for layer in self.dense[:-1]:
            name = getattr(layer.activation, "__name__", str(layer.activation))
            if name not in ("relu", "linear"):
                raise ValueError(f"the head's hidden activation {name!r} is not supported")
        self.relu = {id(layer): getattr(layer.activation, "__name__", "") == "relu"
                     for layer in self.dense[:-1]}
        # per Dense: kernel (g, in, out), bias (g, out); Adam's m and v beside them
        self.variables = [np.repeat(np.asarray(w, "float32")[None], g, axis=0)
                          for layer in self.dense for w in layer.get_weights()]
        self.m = [np.zeros_like(v) for v in self.variables]
        self.v = [np.zeros_like(v) for v in self.variables]
        self.step = 0
        self.l2 = np.asarray(self.l2_values, "float32")[:, None, None]
        self.batch_size = int(batch_size)
        self.lr0, self.total = float(learning_rate), float(max(1, total_steps))
        self.cosine = schedule == "cosine"
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ the function

    def rate_now(self) -> float:
        if not self.cosine:
            return self.lr0
        done = min(float(self.step), self.total) / self.total
        return self.lr0 * 0.5 * (1.0 + math.cos(math.pi * done))

    def _forward(self, x, training: bool):
        """Logits (g, batch, units) before the last activation, and what backprop needs:
        per layer, (kind, input, mask or pre-activation)."""
        h, tape = x, []
        weights = iter(self.variables)
        last = self.dense[-1]
        for kind, spec in self.layers:
            if kind == "dropout":
                if training and spec > 0:  # one mask for every head: only l2 differs
                    shape = h.shape[-2:]
                    mask = (self.rng.random(shape, dtype=np.float32) >= spec) / np.float32(
                        1.0 - spec)
                    h = h * mask
                    tape.append(("dropout", mask))
                continue
            kernel, bias = next(weights), next(weights)
            tape.append(("dense", h))
            z = np.matmul(h, kernel) + bias[:, None, :]  # (b, in) or (g, b, in) @ (g, in, out)
            if spec is not last and self.relu[id(spec)]:
                tape.append(("relu", z > 0))
                z = np.maximum(z, 0)
            h = z
        return h, tape

    def _per_image(self, y, z):
        """Cross-entropy from logits per head and image: (g, batch)."""
        if self.binary:
            z0 = z[..., 0]
            return _softplus(z0) - z0 * y[None]
        zmax = z.max(axis=-1, keepdims=True)
        lse = (zmax + np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True)))[..., 0]
        return lse - np.take_along_axis(z, np.broadcast_to(y[None, :, None], z.shape[:2] + (1,)),
                                        axis=-1)[..., 0]

    def _right(self, y, z):
        """1 where a head's answer is right: (g, batch)."""
        if self.binary:
            return ((z[..., 0] > 0) == (y[None] > 0.5)).astype("float32")
        return (z.argmax(-1) == y[None]).astype("float32")

    def _keras_loss(self, y, z):
        """Keras's cross-entropy on the clipped probabilities, per head: (g,)."""
        if self.binary:
            p = np.clip(_sigmoid(z[..., 0]), EPSILON, 1.0 - EPSILON)
            t = y[None]
            return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)), axis=1)
        p = np.clip(_softmax(z), EPSILON, 1.0 - EPSILON)
        picked = np.take_along_axis(p, np.broadcast_to(y[None, :, None], p.shape[:2] + (1,)),
                                    axis=-1)[..., 0]
        return np.mean(-np.log(picked), axis=1)

    def _step(self, xb, yb, wb):
        """One Adam step of every head on one batch: (loss per head, right answers per head)."""
        z, tape = self._forward(xb, True)
        size = len(yb)
        per_image = self._per_image(yb, z)  # (g, b)
        kernel_last = self.variables[-2]
        loss = (per_image * wb[None]).mean(axis=1) + (self.l2[:, 0, 0] *
                                                      np.square(kernel_last).sum(axis=(1, 2)))
        # d(mean loss)/d(logits)
        if self.binary:
            dz = (_sigmoid(z) - yb[None, :, None]) * (wb[None, :, None] / np.float32(size))
        else:
            dz = _softmax(z)
            dz[np.arange(dz.shape[0])[:, None], np.arange(size)[None], yb[None]] -= 1.0
            dz *= wb[None, :, None] / np.float32(size)
        grads: list = [None] * len(self.variables)
        index = len(self.variables)
        for kind, value in reversed(tape):
            if kind in ("relu", "dropout"):  # value: where it passes, or the scaled mask
                dz = dz * value
            else:  # dense: value is its input
                index -= 2
                h = value
                ht = np.swapaxes(h, -1, -2)  # (in, b) or (g, in, b)
                grads[index] = np.matmul(ht, dz)  # (g, in, out)
                grads[index + 1] = dz.sum(axis=1)
                if index == 0:
                    break  # nothing to learn below the first Dense
                dz = np.matmul(dz, np.swapaxes(self.variables[index], -1, -2))
        grads[-2] = grads[-2] + 2.0 * self.l2 * kernel_last
        rate = self.rate_now()
        self.step += 1
        t = float(self.step)
        alpha = np.float32(rate * math.sqrt(1.0 - BETA_2 ** t) / (1.0 - BETA_1 ** t))
        for var, grad, m, v in zip(self.variables, grads, self.m, self.v, strict=True):
            m += (grad - m) * np.float32(1 - BETA_1)
            v += (np.square(grad) - v) * np.float32(1 - BETA_2)
            var -= m * alpha / (np.sqrt(v) + np.float32(EPSILON))
        return loss, self._right(yb, z).sum(axis=1)

    # ------------------------------------------------------------------ epochs

    def train_part(self, x, y, w, order) -> tuple[np.ndarray, np.ndarray]:
        """One pass over ``order``'s rows of x in batches: (loss sum, right answers) per
        head, the loss per image before averaging."""
        x, y, w, order = _arrays(self.binary, x, y, w, order)
        g = len(self.l2_values)
        loss_sum, hits = np.zeros(g), np.zeros(g)
        bs = self.batch_size
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            loss, right = self._step(x[idx], y[idx], w[idx])
            loss_sum += loss * len(idx)
            hits += right
        return loss_sum, hits

    def evaluate_part(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(Keras's validation loss summed over the rows, right answers) per head."""
        x, y = _arrays(self.binary, x, y)
        z, _ = self._forward(x, False)
        return self._keras_loss(y, z) * len(y), self._right(y, z).sum(axis=1)

    def run_epoch(self, x, y, w, order, val_x, val_y) -> tuple:
        """(loss, accuracy, val_loss, val_accuracy) per L2 value, and the learning rate."""
        loss_sum, hits = self.train_part(x, y, w, order)
        n = max(len(order), 1)
        val_loss, val_hits = self.evaluate_part(val_x, val_y)
        m = max(len(val_y), 1)
        return loss_sum / n, hits / n, val_loss / m, val_hits / m, self.rate_now()

    def run_epoch_streamed(self, train_set, weights, rng, val_set) -> tuple:
        """``run_epoch`` over FeatureSets read back one shard at a time: the shards in a new
        random order, the rows of each shuffled (batches do not cross shards)."""
        g = len(self.l2_values)
        loss_sum, hits, n = np.zeros(g), np.zeros(g), 0
        for i in rng.permutation(len(train_set.parts)):
            x, y = train_set.part(int(i))
            if not len(y):
                continue
            w = weights[np.asarray(y).astype(int)].astype("float32")
            order = rng.permutation(len(y)).astype("int32")
            part_loss, part_hits = self.train_part(x, y, w, order)
            loss_sum += part_loss
            hits += part_hits
            n += len(y)
        val_loss, val_hits, m = np.zeros(g), np.zeros(g), 0
        for x, y in val_set.chunks():
            if not len(y):
                continue
            part_loss, part_hits = self.evaluate_part(x, y)
            val_loss += part_loss
            val_hits += part_hits
            m += len(y)
        return (loss_sum / max(n, 1), hits / max(n, 1), val_loss / max(m, 1),
                val_hits / max(m, 1), self.rate_now())

    # ------------------------------------------------------------------ weights

    def weights_of(self, index: int) -> list:
        """The weights of head ``index`` (an L2 value), as the Keras layers take them."""
        return [np.array(v[index]) for v in self.variables]

    def set_head(self, weights: list) -> None:
        """Put ``weights`` (from ``weights_of``) into the head's Keras layers."""
        it = iter(weights)
        for layer in self.dense:
            layer.set_weights([next(it), next(it)])


def _arrays(binary: bool, x, y, w=None, order=None):
    """NumPy views of what may come as tensors: features float32, labels float32 (binary) or
    int64, weights float32, order int."""
    out = [np.asarray(x, "float32"), np.asarray(y, "float32" if binary else "int64")]
    if w is not None:
        out += [np.asarray(w, "float32"), np.asarray(order)]
    return out
