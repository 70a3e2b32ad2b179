"""Classification metrics from labels and probabilities (NumPy only, no scikit-learn)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n: int) -> np.ndarray:
    """(n, n) counts; rows are the true class, columns the predicted one."""
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def per_class(matrix: np.ndarray, names: list[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of every class (None where undefined: 0/0)."""
    matrix = np.asarray(matrix)
    rows = {}
    for i, name in enumerate(names):
        tp = int(matrix[i, i])
        predicted = int(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0
              else (0.0 if precision is not None and recall is not None else None))
        rows[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return rows


def macro_average(rows: dict[str, dict]) -> dict[str, float | None]:
    """Unweighted mean of each metric over the classes where it is defined."""
    result = {}
    for key in ("precision", "recall", "f1"):
        values = [r[key] for r in rows.values() if r[key] is not None]
        result[key] = float(np.mean(values)) if values else None
    return result


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks (what
    ``scipy.stats.rankdata`` calls the "average" method)."""
    values = np.asarray(values, float).ravel()
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(values) else \
        np.zeros(0, int)
    ends = np.r_[starts[1:], len(values)]  # one past each group of equal values
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def roc_auc(y_true, scores) -> float | None:
    """Area under the ROC curve for binary labels (ties count half); None with one class."""
    y_true = np.asarray(y_true, int)
    scores = np.asarray(scores, float)
    positives = int(y_true.sum())
    negatives = len(y_true) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = average_ranks(scores)  # the Mann-Whitney U statistic
    return float((ranks[y_true == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def log_loss(y_true, probabilities, eps: float = 1e-7) -> float:
    """Mean cross-entropy of the true class under the predicted distribution (N, C)."""
    probabilities = np.clip(np.asarray(probabilities, float), eps, 1.0)
    picked = probabilities[np.arange(len(probabilities)), np.asarray(y_true, int)]
    return float(-np.mean(np.log(picked)))


def class_probabilities(outputs) -> np.ndarray:
    """(N, C) class probabilities from a model's outputs: one sigmoid column -> [1-p, p]."""
    outputs = np.asarray(outputs, dtype="float64")
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if outputs.shape[1] == 1:
        return np.concatenate([1.0 - outputs, outputs], axis=1)
    return outputs
