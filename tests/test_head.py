"""The head trained on cached features (transfer/head.py) against Keras and TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from transfer import head as head_module
from transfer.head import HeadTrainer, epoch_orders


def make_head(n_in: int, n_classes: int, hidden: int, dropout: float, l2: float = 0.0):
    from transfer.tf import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((n_in,))
    x = keras.layers.Dropout(dropout)(inputs)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu", name="dense")(x)
    out = keras.layers.Dense(1 if n_classes == 2 else n_classes, name="predictions",
                             activation="sigmoid" if n_classes == 2 else "softmax",
                             kernel_regularizer=keras.regularizers.l2(l2) if l2 else None)(x)
    return keras.Model(inputs, out)


def data(n: int, n_in: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype("float32")
    y = rng.integers(0, n_classes, n).astype("float32" if n_classes == 2 else "int64")
    return x, y


@pytest.mark.parametrize("n_classes, hidden, l2", [(2, 0, 0.0), (3, 0, 0.0), (2, 6, 1e-2),
                                                   (4, 6, 1e-2)])
def test_the_head_computes_what_keras_fit_computes(n_classes, hidden, l2):
    """Without dropout, the same batches, class weights: the weights and the loss Keras's fit
    with its Adam reaches (sigmoid and softmax heads, with and without a hidden ReLU layer and
    the L2 penalty)."""
    from transfer.tf import keras, tf

    x, y = data(50, 16, n_classes)
    class_weight = {c: 1.0 + 0.5 * c for c in range(n_classes)}
    w = np.array([class_weight[int(c)] for c in y], "float32")
    ours, theirs = (make_head(16, n_classes, hidden, 0.0, l2) for _ in range(2))
    trainer = HeadTrainer(ours, n_classes == 2, 8, 1e-2, "constant", 21, (l2,), 1)
    orders = epoch_orders(50, 3, 5)
    for order in orders:
        loss, *_ = trainer.run_epoch(x, y, w, order, x, y)
    trainer.set_head(trainer.weights_of(0))
    theirs.compile(optimizer=keras.optimizers.Adam(1e-2),
                   loss="binary_crossentropy" if n_classes == 2 else
                   "sparse_categorical_crossentropy")

    def batches():
        for order in orders:
            for i in range(0, 50, 8):
                yield x[order[i:i + 8]], y[order[i:i + 8]]

    dataset = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, 16), tf.float32), tf.TensorSpec((None,), tf.as_dtype(y.dtype))))
    fit = theirs.fit(dataset, epochs=3, steps_per_epoch=7, verbose=0, class_weight=class_weight)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)
    assert loss[0] == pytest.approx(fit.history["loss"][-1], rel=1e-5)


class FixedMasks:
    """Stands in for the trainer's random generator: the uniform draws are given."""

    def __init__(self, draws):
        self.draws = iter(draws)

    def random(self, shape, dtype):
        draw = next(self.draws)
        assert draw.shape == tuple(shape)
        return draw.astype(dtype)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_dropout_and_the_hand_derived_gradient_match_tensorflows(n_classes):
    """With dropout 0.4, a hidden layer, an L2 penalty and given dropout draws: five Adam steps
    of the NumPy head equal TensorFlow's GradientTape with Keras's Adam on the same masks."""
    from transfer.tf import keras, tf

    rate, l2, bs = 0.4, 1e-2, 10
    x, y = data(50, 12, n_classes, seed=2)
    model = make_head(12, n_classes, 5, rate)
    rng = np.random.default_rng(9)
    draws = [rng.random((bs, 12)) for _ in range(5)]
    trainer = HeadTrainer(model, n_classes == 2, bs, 3e-2, "constant", 5, (l2,), 1)
    trainer.rng = FixedMasks(draws)
    trainer.train_part(x, y, np.ones(50, "float32"), np.arange(50))

    reference = [tf.Variable(np.asarray(v)) for v in model.get_weights()]
    adam = keras.optimizers.Adam(3e-2)
    for step, draw in enumerate(draws):
        xb, yb = x[step * bs:(step + 1) * bs], y[step * bs:(step + 1) * bs]
        with tf.GradientTape() as tape:
            h = tf.where(draw >= rate, xb / (1 - rate), 0.0)
            h = tf.nn.relu(h @ reference[0] + reference[1])
            z = h @ reference[2] + reference[3]
            if n_classes == 2:
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(yb[:, None], z))
            else:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, z))
            loss += l2 * tf.reduce_sum(tf.square(reference[2]))
        adam.apply_gradients(zip(tape.gradient(loss, reference), reference, strict=True))
    for ours, theirs in zip(trainer.weights_of(0), reference, strict=True):
        np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-6)


def test_each_l2_value_trains_as_if_alone():
    """The grid's heads share batches and masks but nothing else: head 0 of (0, 1e-2) ends
    where a grid of (0,) alone ends, and the penalised head ends elsewhere with smaller
    weights."""
    x, y = data(64, 10, 2, seed=4)
    w = np.ones(64, "float32")
    ends = []
    for grid in ((0.0, 1e-2), (0.0,)):
        trainer = HeadTrainer(make_head(10, 2, 0, 0.3), True, 16, 1e-2, "cosine", 40, grid, 7)
        for order in epoch_orders(64, 10, 1):
            trainer.run_epoch(x, y, w, order, x, y)
        ends.append([trainer.weights_of(i) for i in range(len(grid))])
    for a, b in zip(ends[0][0], ends[1][0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.abs(ends[0][1][0]).sum() < np.abs(ends[0][0][0]).sum()


def test_the_cosine_rate_reaches_zero_at_the_last_step():
    trainer = HeadTrainer(make_head(4, 2, 0, 0.0), True, 4, 1e-2, "cosine", 8, (0.0,), 0)
    assert trainer.rate_now() == pytest.approx(1e-2)
    x, y = data(32, 4, 2)[:2]
    trainer.train_part(x[:8], y[:8], np.ones(8, "float32"), np.arange(8))
    # a quarter of the way (2 of 8 steps): the cosine's 0.854, not a straight line's 0.75
    # (the two ends alone let a linear decay pass)
    assert trainer.step == 2
    assert trainer.rate_now() == pytest.approx(1e-2 * 0.5 * (1 + np.cos(np.pi / 4)))
    trainer.train_part(x[8:], y[8:], np.ones(24, "float32"), np.arange(24))
    assert trainer.step == 8 and trainer.rate_now() == pytest.approx(0.0, abs=1e-12)


def test_a_hidden_activation_it_cannot_differentiate_is_refused():
    from transfer.tf import keras

    inputs = keras.Input((4,))
    out = keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.Dense(3, activation="tanh")(inputs))
    with pytest.raises(ValueError, match="tanh"):
        HeadTrainer(keras.Model(inputs, out), True, 4, 1e-2, None, 8, (0.0,), 0)
    assert head_module.EPSILON == 1e-7  # Keras's backend epsilon, which the clip uses


def test_each_epochs_order_is_drawn_when_asked_and_is_the_one_drawn_up_front():
    """--epochs 1000000 (early stopping ended the run at epoch 67) drew every epoch's order
    before the first: seconds and 788 MB for 160 images. The orders are now drawn when their
    epoch comes, one kept at a time, and are the very arrays the list drawn up front held
    (the same seed trains the same head, and a cached run repeats its numbers)."""
    import tracemalloc

    rng = np.random.default_rng(11)
    up_front = [rng.permutation(50).astype("int32") for _ in range(6)]
    orders = epoch_orders(50, 6, 11)
    assert len(orders) == 6
    for epoch in (0, 1, 2, 5, 3, 3, 0, -1):  # in order, skipping, back again, from the end
        assert orders[epoch].dtype == np.int32
        np.testing.assert_array_equal(orders[epoch], up_front[epoch])
    assert [o.tolist() for o in orders] == [o.tolist() for o in up_front]
    with pytest.raises(IndexError):
        orders[6]  # noqa: B018
    tracemalloc.start()
    try:
        many = epoch_orders(500, 50_000, 0)  # up front: 100 MB of orders before epoch 1
        for epoch in range(3):
            assert len(many[epoch]) == 500
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes for three epochs' orders"


def test_a_streamed_epoch_visits_the_shards_in_a_new_random_order_rows_shuffled_within():
    """Features beyond memory train shard by shard: each epoch takes the shards in a random
    order, the rows of each shuffled, batches never crossing shards. That is run_epoch over
    the rows in that composed order: the same losses and weights, exactly (nothing checked
    the order: visiting the shards in their order, rows unshuffled, passed)."""
    from transfer.features import FeatureSet

    x, y = data(64, 5, 2, seed=4)
    shards = [(x[a:a + 16], y[a:a + 16]) for a in range(0, 64, 16)]  # 2 batches of 8 each
    train_set = FeatureSet([p for p, _ in shards], [16] * 4, y.astype("int64"), 5)
    val_x, val_y = data(12, 5, 2, seed=5)
    val_set = FeatureSet([val_x], [12], val_y.astype("int64"), 5)
    per_class = np.array([1.0, 2.0], "float32")
    streamed = HeadTrainer(make_head(5, 2, 0, 0.0), True, 8, 1e-1, "constant", 16, (0.0,), 1)
    plain = HeadTrainer(make_head(5, 2, 0, 0.0), True, 8, 1e-1, "constant", 16, (0.0,), 1)
    rng, replay = np.random.default_rng(9), np.random.default_rng(9)
    visits = []
    for _ in range(2):
        got = streamed.run_epoch_streamed(train_set, per_class, rng, val_set)
        visit = [int(i) for i in replay.permutation(4)]
        visits.append(visit)
        order = np.concatenate([16 * i + replay.permutation(16) for i in visit]).astype("int32")
        want = plain.run_epoch(x, y, per_class[y.astype(int)], order, val_x, val_y)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    assert visits[0] != [0, 1, 2, 3] and visits[0] != visits[1], visits  # the seed's draws
    for a, b in zip(streamed.variables, plain.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
