"""Multi-label classification metrics (numpy only).

Conventions (METHODS.md):

* ``scores`` is a float array ``(N, C)`` of probabilities or any monotone score.
* ``targets`` is an int array ``(N, C)``: 1 = present, 0 = absent, -1 = ignore
  (e.g. VOC "difficult"). Average precision leaves the -1 entries of a class
  out; thresholded metrics count -1 as negative.
* mAP is the mean of per-class non-interpolated AP, identical to
  scikit-learn's ``average_precision_score`` (tied scores form one threshold).
  ``mode="voc07"`` gives the VOC 2007 11-point interpolated AP instead.
  Classes with no positives are left out of the mean and reported.
* ``threshold_metrics`` is ML-GCN's ``overall`` / ``overall_topk``
  (CP, CR, CF1, OP, OR, OF1), as fractions in [0, 1].
* ``group_map`` is the head / middle / tail mAP of the long-tail papers
  (DBL, DAB): head = training count > 100, tail = count < 20.
* A NaN or inf score is refused (NonFiniteError, a ValueError): sorted or
  thresholded, it would count as a real score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mlic_edge.spec import DEFAULT_THRESHOLD, require_finite

__all__ = [
    "MapResult",
    "average_precision",
    "average_precision_voc07",
    "evaluate",
    "group_map",
    "mean_average_precision",
    "threshold_metrics",
]

AP_MODES = ("standard", "voc07")
_METRIC_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")
NON_FINITE_HINT = "a model or file that gives NaN or inf is broken: make it again"


# --------------------------------------------------------------------------- helpers


def _as_1d_pair(scores_1d, targets_1d) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (scores, targets) pair for one class; drop the -1 (ignore) entries."""
    s = np.asarray(scores_1d, dtype=np.float64)
    t = np.asarray(targets_1d)
    if s.ndim != 1 or t.ndim != 1:
        raise ValueError(
            f"scores and targets must be 1-D for one class, got shapes {s.shape} and {t.shape}"
        )
    if s.shape != t.shape:
        raise ValueError(f"scores and targets differ in length: {s.shape[0]} vs {t.shape[0]}")
    require_finite("scores", s, hint=NON_FINITE_HINT)
    keep = t != -1
    if not keep.all():
        s, t = s[keep], t[keep]
    return s, (t == 1)


def _pr_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Precision and recall at each distinct score value, highest score first.

    Mirrors scikit-learn's ``_binary_clf_curve`` / ``precision_recall_curve``:
    tied scores share one threshold. Returns None when there is no positive.
    """
    if scores.size == 0:
        return None
    order = np.argsort(scores, kind="mergesort")[::-1]
    s = scores[order]
    y = positive[order].astype(np.float64)
    distinct = np.nonzero(np.diff(s))[0]
    idx = np.concatenate([distinct, [s.size - 1]])
    tps = np.cumsum(y, dtype=np.float64)[idx]
    if tps[-1] == 0:
        return None
    fps = 1 + idx.astype(np.float64) - tps
    precision = tps / (tps + fps)  # tps + fps = idx + 1 > 0
    recall = tps / tps[-1]
    return precision, recall


# --------------------------------------------------------------------------- per-class AP


def average_precision(scores_1d, targets_1d) -> float:
    """Non-interpolated AP of one class, equal to sklearn's ``average_precision_score``.

    AP = sum_n (R_n - R_{n-1}) * P_n over the distinct score thresholds (ties
    grouped). Entries with target -1 are left out. Returns nan if the class has
    no positive.
    """
    s, pos = _as_1d_pair(scores_1d, targets_1d)
    curve = _pr_curve(s, pos)
    if curve is None:
        return math.nan
    precision, recall = curve
    # Same order of operations as sklearn: reversed curve with (recall 0, precision 1) appended.
    p = np.concatenate([precision[::-1], [1.0]])
    r = np.concatenate([recall[::-1], [0.0]])
    return float(max(0.0, -np.sum(np.diff(r) * p[:-1])))


def average_precision_voc07(scores_1d, targets_1d) -> float:
    """VOC 2007 11-point interpolated AP of one class.

    Mean over t in {0, 0.1, ..., 1} (exact tenths) of the maximum precision at
    recall >= t (0 if that recall is never reached), on the same tie-grouped
    precision/recall curve as :func:`average_precision`. Entries with target -1
    are left out. Returns nan if the class has no positive.
    """
    s, pos = _as_1d_pair(scores_1d, targets_1d)
    curve = _pr_curve(s, pos)
    if curve is None:
        return math.nan
    precision, recall = curve
    # Interpolated precision: running max from the high-recall end.
    interp = np.maximum.accumulate(precision[::-1])[::-1]
    levels = np.arange(11) / 10.0
    # First curve point with recall >= t (recall is non-decreasing along the curve).
    first = np.searchsorted(recall, levels, side="left")
    vals = np.where(first < recall.size, interp[np.minimum(first, recall.size - 1)], 0.0)
    return float(np.mean(vals))


# --------------------------------------------------------------------------- mAP


@dataclass
class MapResult:
    """mAP over the classes that have positives.

    ``per_class`` is (C,) with nan for classes without positives; those class
    indices are listed in ``classes_without_positives``. ``map`` is nan when no
    class has a positive.
    """

    map: float
    per_class: np.ndarray
    classes_without_positives: list[int] = field(default_factory=list)


def _as_2d_pair(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets)
    if s.ndim != 2 or t.ndim != 2:
        raise ValueError(
            f"scores and targets must be 2-D (N images, C classes), got shapes {s.shape} and {t.shape}"
        )
    if s.shape != t.shape:
        raise ValueError(f"scores shape {s.shape} does not match targets shape {t.shape}")
    require_finite("scores", s, hint=NON_FINITE_HINT)
    if t.dtype == bool:
        t = t.astype(np.int64)
    if t.size and not np.isin(t, (-1, 0, 1)).all():
        bad = np.unique(t[~np.isin(t, (-1, 0, 1))])[:5]
        raise ValueError(
            f"targets must hold only 1 (present), 0 (absent) or -1 (ignore); found {bad.tolist()}"
        )
    return s, t


def mean_average_precision(scores, targets, mode: str = "standard") -> MapResult:
    """Per-class AP and their mean over the classes with positives.

    ``mode`` is ``"standard"`` (non-interpolated, = sklearn) or ``"voc07"``
    (11-point interpolated). -1 targets are left out per class.
    """
    if mode not in AP_MODES:
        raise ValueError(f"unknown AP mode {mode!r}; expected one of {list(AP_MODES)}")
    s, t = _as_2d_pair(scores, targets)
    fn = average_precision if mode == "standard" else average_precision_voc07
    num_classes = s.shape[1]
    per_class = np.full(num_classes, np.nan, dtype=np.float64)
    for c in range(num_classes):
        per_class[c] = fn(s[:, c], t[:, c])
    missing = [int(c) for c in np.flatnonzero(np.isnan(per_class))]
    valid = per_class[~np.isnan(per_class)]
    value = float(valid.mean()) if valid.size else math.nan
    return MapResult(map=value, per_class=per_class, classes_without_positives=missing)


# --------------------------------------------------------------------------- thresholded


def threshold_metrics(
    scores, targets, threshold: float = DEFAULT_THRESHOLD, top_k: int | None = None
) -> dict[str, float]:
    """ML-GCN's CP, CR, CF1, OP, OR, OF1 (fractions in [0, 1]).

    A label is predicted iff ``score >= threshold`` and, when ``top_k`` is
    given, it is also among the image's ``top_k`` highest scores (ties broken
    by lower class index). Targets of -1 count as negative.

    Per class: Ng = ground-truth positives, Np = predicted positives (1 when 0),
    Nc = correct positives. CP = mean over all classes of Nc/Np; CR = mean of
    Nc/Ng over classes with Ng > 0; OP = sum Nc / sum Np; OR = sum Nc / sum Ng;
    CF1, OF1 are harmonic means (0 when both parts are 0). A ratio with
    nothing to average or a zero denominator is 0.
    """
    s, t = _as_2d_pair(scores, targets)
    gt = t == 1
    pred = s >= threshold
    if top_k is not None:
        if int(top_k) < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        k = min(int(top_k), s.shape[1])
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        in_top = np.zeros_like(pred)
        np.put_along_axis(in_top, top, True, axis=1)
        pred &= in_top

    n_g = gt.sum(axis=0).astype(np.float64)
    n_p = pred.sum(axis=0).astype(np.float64)
    n_c = (gt & pred).sum(axis=0).astype(np.float64)
    n_p[n_p == 0] = 1.0

    num_classes = s.shape[1]
    cp = float(np.sum(n_c / n_p) / num_classes) if num_classes else 0.0
    has_pos = n_g > 0
    cr = float(np.mean(n_c[has_pos] / n_g[has_pos])) if has_pos.any() else 0.0
    total_p, total_g, total_c = n_p.sum(), n_g.sum(), n_c.sum()
    op = float(total_c / total_p) if total_p > 0 else 0.0
    orr = float(total_c / total_g) if total_g > 0 else 0.0

    def f1(p: float, r: float) -> float:
        return 2.0 * p * r / (p + r) if (p + r) > 0 else 0.0

    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orr, "OF1": f1(op, orr)}


# --------------------------------------------------------------------------- long tail


def group_map(
    per_class_ap,
    class_counts,
    head_threshold: int = 100,
    tail_threshold: int = 20,
) -> dict[str, float | int | None]:
    """Head / middle / tail mAP by training class count.

    head: count > ``head_threshold``; tail: count < ``tail_threshold``; middle:
    the rest. Each group's value is the mean AP of its classes with a finite AP
    (None if there is none). Group sizes (all classes in the group) are under
    ``head_classes``, ``middle_classes``, ``tail_classes``.
    """
    ap = np.asarray(per_class_ap, dtype=np.float64)
    counts = np.asarray(class_counts)
    if ap.ndim != 1 or counts.ndim != 1:
        raise ValueError(
            f"per_class_ap and class_counts must be 1-D, got shapes {ap.shape} and {counts.shape}"
        )
    if ap.shape != counts.shape:
        raise ValueError(
            f"per_class_ap has {ap.shape[0]} classes but class_counts has {counts.shape[0]}"
        )
    if tail_threshold > head_threshold:
        raise ValueError(
            f"tail_threshold ({tail_threshold}) must not exceed head_threshold ({head_threshold})"
        )
    head = counts > head_threshold
    tail = counts < tail_threshold
    middle = ~head & ~tail
    out: dict[str, float | int | None] = {}
    for name, mask in (("head", head), ("middle", middle), ("tail", tail)):
        vals = ap[mask]
        vals = vals[np.isfinite(vals)]
        out[name] = float(vals.mean()) if vals.size else None
    for name, mask in (("head", head), ("middle", middle), ("tail", tail)):
        out[f"{name}_classes"] = int(mask.sum())
    return out


# --------------------------------------------------------------------------- report


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def evaluate(
    scores,
    targets,
    names: list[str],
    class_counts=None,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = 3,
    mode: str = "standard",
) -> dict:
    """All metrics in one JSON-ready dict (plain floats/ints/str/None only).

    Keys: ``mAP`` (None if no class has a positive), ``CP`` ``CR`` ``CF1``
    ``OP`` ``OR`` ``OF1`` (at ``threshold``), ``top{top_k}`` (the same six with
    the top-k rule), ``per_class_ap`` ({name: AP or None}),
    ``classes_without_positives`` ([names]), ``num_images``, ``num_classes``,
    ``threshold``, ``ap_mode``, and ``groups`` (:func:`group_map`) when
    ``class_counts`` is given.
    """
    s, t = _as_2d_pair(scores, targets)
    names = [str(n) for n in names]
    num_images, num_classes = s.shape
    if len(names) != num_classes:
        raise ValueError(f"names has {len(names)} entries but scores have {num_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    if class_counts is not None and np.asarray(class_counts).shape != (num_classes,):
        raise ValueError(
            f"class_counts must have shape ({num_classes},), got {np.asarray(class_counts).shape}"
        )
    if top_k is None or int(top_k) < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    top_k = int(top_k)

    m = mean_average_precision(s, t, mode=mode)
    overall = threshold_metrics(s, t, threshold=threshold)
    topk = threshold_metrics(s, t, threshold=threshold, top_k=top_k)

    result: dict = {"mAP": _json_float(m.map)}
    result.update({k: float(overall[k]) for k in _METRIC_KEYS})
    result[f"top{top_k}"] = {k: float(topk[k]) for k in _METRIC_KEYS}
    result["per_class_ap"] = {n: _json_float(a) for n, a in zip(names, m.per_class)}
    result["classes_without_positives"] = [names[c] for c in m.classes_without_positives]
    result["num_images"] = int(num_images)
    result["num_classes"] = int(num_classes)
    result["threshold"] = float(threshold)
    result["ap_mode"] = mode
    if class_counts is not None:
        result["groups"] = group_map(m.per_class, class_counts)
    return result
