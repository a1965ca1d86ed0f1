"""INT8 that meets an accuracy target by itself: measure the quantized model against fp32 on held-out training
images, and keep the most sensitive layers in float, a group at a time, until the target holds or the budget of
float layers is spent.

The measurement set is a held-out part of the *training* split, disjoint from the calibration images and never the
eval split: the eval split is what ``parity`` and the build report judge the result on, so a target fitted to it
would be graded on its own answers. The ranking is the per-layer sensitivity (``calibration/sensitivity.py``: the
error each layer adds); groups grow 1, 1, 2, 4, ... layers, so a model that needs many float layers costs a few
quantizations rather than one per layer. Each quantization reuses the calibration record (no image is calibrated
twice), and is scored by ONNX Runtime on the CPU, where a layer kept in float runs in fp32 (a TensorRT build runs it
in fp16 or fp32, as its precision flags allow).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mlic_edge import metrics
from mlic_edge.spec import DEFAULT_THRESHOLD, INT8_TARGET_AGREEMENT, INT8_TARGET_DELTA_POINTS

Quantize = Callable[[list[str]], Path]  # keep_fp -> the int8 ONNX quantized with those layers in float
Progress = Callable[[str], None]


@dataclass(frozen=True)
class AccuracyTarget:
    """What the int8 model must keep of the fp32 one, measured on held-out images.

    The held-out share of identical label sets is an estimate from a few hundred images: a model at exactly the
    target passes it half the time and then misses on the eval split as often. The search therefore asks for
    ``margin_se`` standard errors of that estimate above ``min_agreement`` (about one point at 97 % on 256 images;
    0: the bare target)."""

    max_delta_points: float = INT8_TARGET_DELTA_POINTS  # |mAP(int8) − mAP(fp32)| in points
    min_agreement: float = INT8_TARGET_AGREEMENT  # share of images whose predicted label set is the fp32 one
    threshold: float = DEFAULT_THRESHOLD  # score at which a label is predicted
    margin_se: float = 1.0

    def required_agreement(self, images: int) -> float:
        """``min_agreement`` plus the margin for an estimate from ``images`` images (at most 1)."""
        p = self.min_agreement
        return min(1.0, p + self.margin_se * math.sqrt(p * (1 - p) / max(images, 1)))

    def met_by(self, delta_points: float, agreement: float, images: int) -> bool:
        return (abs(delta_points) <= self.max_delta_points + 1e-9
                and agreement + 1e-9 >= self.required_agreement(images))


@dataclass
class Step:
    kept_fp: list[str]
    delta_mAP_points: float
    labelset_agreement: float
    met: bool
    source: str = "post-training"  # or how the graph was fine-tuned (the build's fallback)


@dataclass
class KeepFpSearch:
    """The search's outcome: the layers kept in float (the user's first), every step measured, and why it stopped."""

    target: AccuracyTarget
    kept_fp: list[str]
    images: int
    mAP_fp32: float
    steps: list[Step] = field(default_factory=list)
    stopped: str = ""  # "met" | "budget" | "no more layers"

    @property
    def final(self) -> Step:
        return self.steps[-1]

    @property
    def met(self) -> bool:
        return self.final.met

    def as_dict(self) -> dict:
        return {**asdict(self), "met": self.met, "required_agreement": self.target.required_agreement(self.images)}


def onnx_scores(path: Path, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Sigmoid scores of ``images`` (preprocessed NCHW) by ONNX Runtime on the CPU, batch by batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch_size
    return np.concatenate([session.run(None, {name: images[start:start + step]})[0]
                           for start in range(0, len(images), step)])


def compare(scores: np.ndarray, fp32_scores: np.ndarray, targets: np.ndarray, threshold: float
            ) -> tuple[float, float]:
    """(ΔmAP in points against fp32, share of images with fp32's label set)."""
    delta = metrics.mean_average_precision(scores, targets).map - metrics.mean_average_precision(fp32_scores,
                                                                                               targets).map
    same = np.all((scores >= threshold) == (fp32_scores >= threshold), axis=1)
    return float(delta) * 100, float(same.mean())


def measure_step(int8_path: Path, fp32_scores: np.ndarray, images: np.ndarray, targets: np.ndarray,
                 target: AccuracyTarget, kept_fp: Sequence[str] = ()) -> Step:
    """The int8 graph at ``int8_path`` scored on ``images`` against fp32's scores of them, judged by ``target``."""
    delta, agreement = compare(onnx_scores(int8_path, images), fp32_scores, targets, target.threshold)
    return Step(list(kept_fp), delta, agreement, target.met_by(delta, agreement, len(images)))


def improves_on(candidate: Step, incumbent: Step, target: AccuracyTarget) -> bool:
    """Whether ``candidate`` should replace ``incumbent`` (which misses ``target``): it meets the target, or it keeps
    more label sets without a ΔmAP beyond both the target's and the incumbent's."""
    return candidate.met or (candidate.labelset_agreement > incumbent.labelset_agreement
                             and abs(candidate.delta_mAP_points) <= max(abs(incumbent.delta_mAP_points),
                                                                        target.max_delta_points))


def group_sizes(budget: int) -> list[int]:
    """How many more layers each step keeps in float: 1, 1, 2, 4, ... up to ``budget`` in all."""
    sizes, total, size = [], 0, 1
    while total < budget:
        take = min(size, budget - total)
        sizes.append(take)
        total += take
        size = 1 if len(sizes) == 1 else size * 2
    return sizes


def search_keep_fp(quantize: Quantize, fp32_path: Path, images: np.ndarray, targets: np.ndarray,
                   ranking: Sequence[str], target: AccuracyTarget, budget: int, keep_fp: Sequence[str] = (),
                   progress: Progress | None = None) -> KeepFpSearch:
    """Quantize with ``keep_fp``, then with more of ``ranking`` (most sensitive first) in float, group by group,
    until ``target`` holds on ``images`` or ``budget`` more layers are float; returns every step measured."""
    say = progress or (lambda message: None)
    fp32_scores = onnx_scores(fp32_path, images)
    search = KeepFpSearch(target=target, kept_fp=list(keep_fp), images=len(images),
                          mAP_fp32=float(metrics.mean_average_precision(fp32_scores, targets).map))
    candidates = [name for name in ranking if name not in set(keep_fp)]
    sizes = iter(group_sizes(min(budget, len(candidates))))
    kept, added = list(keep_fp), 0
    while True:
        say(f"measuring with {len(kept)} layer(s) in float")
        search.steps.append(measure_step(quantize(kept), fp32_scores, images, targets, target, kept))
        if search.final.met:
            search.stopped = "met"
            break
        size = next(sizes, None)
        if size is None:
            search.stopped = "budget" if len(candidates) > added else "no more layers"
            break
        kept += candidates[added:added + size]
        added += size
    search.kept_fp = search.final.kept_fp
    return search
