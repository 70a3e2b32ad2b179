"""The metrics evaluate reports, checked against their definitions (NumPy only)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from transfer import metrics


def _pairwise_auc(y, scores) -> float:
    """The definition: P(score of a positive > score of a negative), ties counting half."""
    pairs = itertools.product(np.flatnonzero(y == 1), np.flatnonzero(y == 0))
    return float(np.mean([1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n]
                          else 0.0 for p, n in pairs]))


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_matches_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes present
    decimals = int(rng.integers(0, 3))  # 0: few distinct values, many ties
    scores = np.round(rng.random(n) * 0.6 + 0.3 * y, decimals)
    assert len(np.unique(scores)) < n  # ties on purpose
    assert metrics.roc_auc(y, scores) == pytest.approx(_pairwise_auc(y, scores), abs=1e-12)


def test_roc_auc_edges():
    assert metrics.roc_auc([1, 1], [0.2, 0.3]) is None
    assert metrics.roc_auc([0, 0, 0], [0.2, 0.3, 0.1]) is None
    assert metrics.roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5  # all tied: chance
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0


def test_average_ranks_by_brute_force():
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 7, 50):
        values = rng.integers(0, 5, n).astype(float)
        # rank = 1 + how many are smaller + half of the others equal to it
        expected = [1 + np.sum(values < v) + (np.sum(values == v) - 1) / 2 for v in values]
        np.testing.assert_array_equal(metrics.average_ranks(values), expected)
    np.testing.assert_array_equal(metrics.average_ranks([3.0, 1.0, 2.0]), [3, 1, 2])


def test_per_class_and_loss_by_hand():
    matrix = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    rows = metrics.per_class(matrix, ["a", "b", "c"])
    assert rows["a"] == {"precision": 5 / 7, "recall": 5 / 6,
                         "f1": pytest.approx(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6)),
                         "support": 6}
    assert rows["c"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert metrics.macro_average(rows) == {
        "precision": pytest.approx((5 / 7 + 3 / 4) / 2),
        "recall": pytest.approx((5 / 6 + 3 / 5) / 2),
        "f1": pytest.approx((rows["a"]["f1"] + rows["b"]["f1"]) / 2)}
    assert metrics.confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3).tolist() == [
        [1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert metrics.log_loss([0, 1], [[0.5, 0.5], [0.25, 0.75]]) == pytest.approx(
        -(np.log(0.5) + np.log(0.75)) / 2)
    np.testing.assert_allclose(metrics.class_probabilities([[0.2], [0.9]]),
                               [[0.8, 0.2], [0.1, 0.9]])


def test_metrics_need_no_scipy():
    import subprocess
    import sys

    code = ("import sys; sys.modules['scipy'] = None; from transfer import metrics; "
            "print(metrics.roc_auc([0, 1, 1], [0.1, 0.4, 0.4]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert float(done.stdout) == 1.0


def test_balanced_accuracy_and_macro_f1_on_unbalanced_classes_by_hand():
    # 10 a (8 right), 4 b (1 right), 2 c (never predicted), 0 d (predicted once)
    y_true = [0] * 10 + [1] * 4 + [2] * 2 + [0]
    y_pred = [0] * 8 + [1] * 2 + [1] + [0] * 3 + [0, 1] + [3]
    matrix = metrics.confusion_matrix(y_true, y_pred, 4)
    assert matrix.tolist() == [[8, 2, 0, 1], [3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    # balanced accuracy: mean recall of the classes that have images (a, b, c)
    assert metrics.balanced_accuracy(matrix) == pytest.approx((8 / 11 + 1 / 4 + 0 / 2) / 3)
    assert metrics.balanced_accuracy(np.zeros((2, 2), int)) is None
    rows = metrics.per_class(matrix, ["a", "b", "c", "d"])
    f1_a = 2 * (8 / 12) * (8 / 11) / (8 / 12 + 8 / 11)
    f1_b = 2 * (1 / 4) * (1 / 4) / (1 / 4 + 1 / 4)
    assert rows["a"]["f1"] == pytest.approx(f1_a) and rows["b"]["f1"] == pytest.approx(f1_b)
    # c has images but is never predicted, d is predicted but has none: F1 0, not undefined
    assert rows["c"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2}
    assert rows["d"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0}
    # macro averages over the same four classes, undefined counting 0 (scikit-learn's
    # average="macro", zero_division=0): precision 0/0 of c and recall 0/0 of d count 0
    assert metrics.macro_average(rows) == {"precision": pytest.approx((8 / 12 + 1 / 4) / 4),
                                           "recall": pytest.approx((8 / 11 + 1 / 4) / 4),
                                           "f1": pytest.approx((f1_a + f1_b) / 4)}
    # one class in the images, one photo predicted as the other: all three on both classes
    one = metrics.per_class(np.array([[19, 1], [0, 0]]), ["cats", "dogs"])
    assert metrics.macro_average(one) == {"precision": pytest.approx(1 / 2),
                                          "recall": pytest.approx(19 / 20 / 2),
                                          "f1": pytest.approx(38 / 39 / 2)}
    assert metrics.balanced_accuracy(matrix) != pytest.approx(np.trace(matrix) / matrix.sum())


def test_which_classes_count_as_unbalanced():
    """Over 1.5x between the largest and the smallest class (the rule of --class-weight auto
    and of train's summary); a class with no image beside others with some is unbalanced."""
    assert not metrics.unbalanced({"a": 15, "b": 10})  # 1.5x: not above
    assert metrics.unbalanced({"a": 16, "b": 10})
    assert metrics.unbalanced({"a": 5, "b": 0})
    assert not metrics.unbalanced({"a": 0, "b": 0}) and not metrics.unbalanced({})
    assert not metrics.unbalanced(None)
    assert metrics.unbalanced({"a": 31, "b": 10}, 3)
    assert not metrics.unbalanced({"a": 30, "b": 10}, 3)


def test_confident_mistakes_come_first_and_only_mistakes():
    """misclassified.png of evaluate and mnist: the most confident mistakes (mnist showed its
    first 25 errors under the report's caption 'the most confident mistakes')."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.05, 0.95], [0.7, 0.3],
                      [0.6, 0.4]])
    labels = np.array([0, 0, 0, 0, 1, 1])  # rows 1, 2, 3, 4 and 5 are wrong
    assert metrics.confident_mistakes(probs, labels, 10).tolist() == [3, 1, 4, 5, 2]
    assert metrics.confident_mistakes(probs, labels, 2).tolist() == [3, 1]
    assert metrics.confident_mistakes(probs, np.array([0, 1, 1, 1, 0, 0]), 5).tolist() == []


def test_a_macro_average_that_counts_a_blank_cell_as_0_says_so():
    """A class never predicted (precision blank) or with no image (recall blank) counts 0 in the
    macro average: the table showed a blank cell and a mean that disagreed with it, beside a
    balanced accuracy that leaves such classes out, without a word."""
    matrix = metrics.confusion_matrix([0] * 10 + [1] * 4 + [2] * 2 + [0],
                                      [0] * 8 + [1] * 2 + [1] + [0] * 3 + [0, 1] + [3], 4)
    note = metrics.macro_note(metrics.per_class(matrix, ["a", "b", "c", "d"]))
    assert note == ("macro average: a blank precision or recall counts as 0 (as scikit-learn's "
                    "zero_division=0); balanced accuracy averages the recalls of the classes "
                    "with images")
    assert metrics.macro_note(metrics.per_class(np.array([[9, 1], [2, 8]]), ["x", "y"])) is None
