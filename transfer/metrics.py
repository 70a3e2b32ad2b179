"""Classification metrics from labels and probabilities (NumPy only, no scikit-learn)."""

from __future__ import annotations

import numpy as np

IMBALANCE = 1.5  # classes are unbalanced when the largest has more than 1.5x the smallest


def below(value: float, threshold: float) -> str:
    """``value`` with 4 decimals, or as many more as show it under ``threshold`` (0.86667
    read "0.8667 is below 0.8667")."""
    for digits in range(4, 10):
        shown = f"{value:.{digits}f}"
        if float(shown) < threshold:
            return shown
    return repr(value)


def unbalanced(counts: dict | None, ratio: float = IMBALANCE) -> bool:
    """Whether ``counts`` (images per class) has a class with more than ``ratio`` x the images
    of the smallest one (a class with none, beside others with some, too): then accuracy
    mostly counts the large classes, and the balanced accuracy is read beside it."""
    sizes = [int(n) for n in (counts or {}).values()]
    return bool(sizes) and max(sizes) > ratio * min(sizes)


def confusion_matrix(y_true, y_pred, n: int) -> np.ndarray:
    """(n, n) counts; rows are the true class, columns the predicted one."""
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def per_class(matrix: np.ndarray, names: list[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of every class.

    Precision is None for a class never predicted (0/0), recall None for a class with no
    images. F1 is 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted): the harmonic mean of
    the two where both exist, 0 for a class that has images but is never predicted (or is
    predicted but has no images), None only for a class neither present nor predicted: the
    convention of scikit-learn's ``f1_score`` with ``zero_division=0``.
    """
    matrix = np.asarray(matrix)
    rows = {}
    for i, name in enumerate(names):
        tp = int(matrix[i, i])
        predicted = int(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = 2 * tp / (support + predicted) if support + predicted else None
        rows[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return rows


def macro_average(rows: dict[str, dict]) -> dict[str, float | None]:
    """Unweighted mean of precision, recall and F1 over one set of classes: those present in
    the labels or the predictions (F1 defined), an undefined precision or recall counting 0.
    scikit-learn's ``precision_recall_fscore_support(average="macro", zero_division=0)``:
    a class predicted but absent from the images pulls all three down alike (before, its
    undefined recall was left out of the recall mean only)."""
    present = [r for r in rows.values() if r["f1"] is not None]
    if not present:
        return {"precision": None, "recall": None, "f1": None}
    return {key: float(np.mean([r[key] or 0.0 for r in present]))
            for key in ("precision", "recall", "f1")}


def macro_note(rows: dict[str, dict]) -> str | None:
    """The line under a table whose macro average counts a blank cell (an undefined precision
    or recall of a class it averages) as 0, or None when it has none."""
    blank = [r for r in rows.values() if r.get("f1") is not None
             and (r.get("precision") is None or r.get("recall") is None)]
    if not blank:
        return None
    return ("macro average: a blank precision or recall counts as 0 (as scikit-learn's "
            "zero_division=0); balanced accuracy averages the recalls of the classes with images")


def balanced_accuracy(matrix: np.ndarray) -> float | None:
    """Mean recall over the classes that have images (rows with support): the accuracy a
    classifier would have if every class were equally frequent. None with no images."""
    matrix = np.asarray(matrix)
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return None
    return float(np.mean(np.diag(matrix)[present] / support[present]))


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
    """Area under the ROC curve for binary labels (ties count half); None with one class, or
    when a score is not a number (a diverged model's: ranked by position, they made 1.0)."""
    y_true = np.asarray(y_true, int)
    scores = np.asarray(scores, float)
    positives = int(y_true.sum())
    negatives = len(y_true) - positives
    if positives == 0 or negatives == 0 or not np.isfinite(scores).all():
        return None
    ranks = average_ranks(scores)  # the Mann-Whitney U statistic
    return float((ranks[y_true == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def confident_mistakes(probabilities, y_true, n: int) -> np.ndarray:
    """Indices of up to ``n`` wrongly classified images, the most confident mistake first
    (ties in their order): what misclassified.png shows, for evaluate and mnist alike."""
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != np.asarray(y_true))
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:n]


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
