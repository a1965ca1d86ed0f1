"""Multi-label losses: BCE, soft-margin, focal, ASL, DBL (distribution-balanced) and DAB.

Every loss is an ``nn.Module`` whose ``forward(logits (N, C), targets (N, C)) -> scalar`` takes raw logits and targets
in {1, 0, -1}; entries marked -1 are unknown and are masked out (they add nothing to the loss, the normaliser or the
gradient). Losses compute in float32 whatever the logits' dtype (AMP), and move their class statistics to the logits'
device themselves (the trainer does not call ``loss.to(device)``).

Build one with :func:`create_loss` (``name`` from :data:`LOSSES`, hyperparameters as keyword options, checked) and list
a loss's hyperparameters and their defaults with :func:`loss_options`. ``dbl`` and ``dab`` need the training class
counts (``class_counts``, images holding each class) and ``dbl`` also the number of training images (``num_images``)
for its negative-tolerant regularisation. ``dbl`` is meant to be trained with
:class:`mlic_edge.train.samplers.ClassAwareSampler` (``--sampler class-aware``), as in its paper.

Formulas and defaults follow /work/shared/METHODS.md §4; DAB follows its paper (seed 002), see :class:`DABLoss`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mlic_edge.errors import MlicError

# Arguments of a loss's __init__ that are training statistics given by create_loss, not hyperparameters.
_STATISTICS = ("class_counts", "num_images")
_REDUCTIONS = ("mean", "sum")


# ----------------------------------------------------------------------------------------------------------- helpers
def _known(targets: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the labelled entries (targets 0 or 1)."""
    return targets >= 0


def _reduce(loss: torch.Tensor, known: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum or mean of ``loss`` over the known entries (``torch.where`` so that an ignored entry cannot leak a nan)."""
    total = torch.where(known, loss, torch.zeros_like(loss)).sum()
    if reduction == "sum":
        return total
    return total / known.sum().clamp(min=1).to(total.dtype)


def _prepare(logits: torch.Tensor, targets: torch.Tensor,
             num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked float32 (logits, targets with -1 as 0, known-entry mask): what every loss starts from."""
    _check_shapes(logits, targets, num_classes)
    logits = logits.float()
    targets = targets.to(logits.dtype)
    return logits, targets.clamp(min=0), _known(targets)


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> None:
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise MlicError(f"loss expects logits and targets of the same shape (N, C), got {tuple(logits.shape)} and "
                        f"{tuple(targets.shape)}", hint="the model's head must output one logit per class")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise MlicError(f"loss was built for {num_classes} classes but the logits have {logits.shape[1]}",
                        hint="class_counts must come from the same training set as the model's classes")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _require(name: str, value: Any, ok, valid: str) -> None:
    """Raise a one-line MlicError unless ``value`` is a number and ``ok(value)`` holds."""
    if not _is_number(value) or not math.isfinite(float(value)) or not ok(float(value)):
        raise MlicError(f"loss option {name}={value!r} is out of range", hint=f"{name} must be {valid}")


def _require_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise MlicError(f"loss option {name}={value!r} is not a boolean", hint=f"{name} must be true or false")


def _require_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MlicError(f"loss option {name}={value!r} is not valid", hint=f"{name} must be one of {', '.join(choices)}")


def _counts_tensor(class_counts, loss_name: str) -> torch.Tensor:
    if class_counts is None:
        raise MlicError(f"loss {loss_name!r} needs the training class counts",
                        hint="pass class_counts (images holding each class, e.g. train_set.class_counts())")
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise MlicError(f"loss {loss_name!r} got invalid class_counts (shape {counts.shape})",
                        hint="class_counts must be a 1-D array of non-negative image counts, one per class")
    return torch.as_tensor(counts, dtype=torch.float32)


def rebalance_weight(positives: torch.Tensor, freq_inv: torch.Tensor, offset: float, scale: float,
                     threshold: float) -> torch.Tensor:
    """DBL's rebalance weight (= DAB's class-balanced resampling rate ŝ, DAB eq. 3–6), shape (N, C).

    r_ik = (1/n_k) / Σ_{j: y_ij = 1} 1/n_j and ŵ_ik = offset + σ(scale·(r_ik − threshold)); the same weight is used for
    the positive and the negative entries of class k. ``positives`` is the (N, C) 0/1 float mask of y = 1. An image with
    no positive label has r = +∞ (as in the reference code), i.e. ŵ = offset + 1 (offset + 0.5 if scale = 0).
    """
    repeat_rate = (positives * freq_inv).sum(dim=1, keepdim=True)  # Σ_{j: y_ij = 1} 1/n_j, eq. (4)
    has_pos = repeat_rate > 0
    ratio = freq_inv.unsqueeze(0) / torch.where(has_pos, repeat_rate, torch.ones_like(repeat_rate))  # eq. (5)
    squashed = torch.sigmoid(scale * (ratio - threshold))  # eq. (6)
    limit = torch.full_like(squashed, 1.0 if scale > 0 else 0.5)
    return offset + torch.where(has_pos, squashed, limit)


# ------------------------------------------------------------------------------------------------------------ losses
class MaskedBCE(nn.Module):
    """Binary cross-entropy over the known entries, averaged over them (``bce``)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, y, known = _prepare(logits, targets)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return _reduce(loss, known, "mean")


class SoftMarginLoss(nn.Module):
    """``torch.nn.MultiLabelSoftMarginLoss`` semantics (``softmargin``).

    Per image, the mean over its known classes of BCE(z, y); then the mean over the images that have at least one
    known class. With no -1 entries this equals ``MultiLabelSoftMarginLoss()`` (mean over classes, then over images),
    which differs from ``bce`` only when images have different numbers of known classes.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, y, known = _prepare(logits, targets)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        per_class = torch.where(known, loss, torch.zeros_like(loss))
        counted = known.sum(dim=1)
        per_image = per_class.sum(dim=1) / counted.clamp(min=1).to(loss.dtype)
        has_known = counted > 0
        return torch.where(has_known, per_image, torch.zeros_like(per_image)).sum() / has_known.sum().clamp(min=1)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017) (``focal``): −α_t (1 − p_t)^γ log p_t per entry.

    p_t = σ(z) for positives and 1 − σ(z) for negatives; α_t = alpha for positives and 1 − alpha for negatives, or 1
    when ``alpha`` is None (the default here). The focusing weight is not detached. ``reduction`` "mean" (over the
    known entries, default) or "sum".
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, reduction: str = "mean") -> None:
        super().__init__()
        _require("gamma", gamma, lambda v: v >= 0, "a number >= 0")
        if alpha is not None:
            _require("alpha", alpha, lambda v: 0 <= v <= 1, "None or a number in [0, 1]")
        _require_choice("reduction", reduction, _REDUCTIONS)
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, y, known = _prepare(logits, targets)
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # −log p_t
        p = torch.sigmoid(logits)
        one_minus_pt = y * (1 - p) + (1 - y) * p
        loss = ce * one_minus_pt.pow(self.gamma) if self.gamma else ce
        if self.alpha is not None:
            loss = loss * (y * self.alpha + (1 - y) * (1 - self.alpha))
        return _reduce(loss, known, self.reduction)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss, ASL (Ridnik et al. 2021) (``asl``), METHODS.md §4.

    p = σ(z), p_m = max(p − clip, 0) and
    L = −Σ [ y (1 − p)^{γ+} log(max(p, eps)) + (1 − y) p_m^{γ−} log(max(1 − p_m, eps)) ].
    Defaults are those of the reference ``AsymmetricLoss`` class: γ− = 4, γ+ = 1, clip = 0.05, eps = 1e-8, focusing
    weights treated as constants (``disable_grad_focal=True``) and sum reduction ("mean" divides by the known entries).
    (The reference train.py recipe uses γ+ = 0.) With γ± = 0 and clip = 0 this is BCEWithLogits(reduction='sum').
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                 disable_grad_focal: bool = True, reduction: str = "sum") -> None:
        super().__init__()
        _require("gamma_neg", gamma_neg, lambda v: v >= 0, "a number >= 0")
        _require("gamma_pos", gamma_pos, lambda v: v >= 0, "a number >= 0")
        _require("clip", clip, lambda v: 0 <= v < 1, "a number in [0, 1)")
        _require("eps", eps, lambda v: 0 < v < 1, "a number in (0, 1)")
        _require_bool("disable_grad_focal", disable_grad_focal)
        _require_choice("reduction", reduction, _REDUCTIONS)
        self.gamma_neg, self.gamma_pos = float(gamma_neg), float(gamma_pos)
        self.clip, self.eps = float(clip), float(eps)
        self.disable_grad_focal = bool(disable_grad_focal)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, y, known = _prepare(logits, targets)
        p = torch.sigmoid(logits)
        p_neg = 1 - p
        if self.clip > 0:
            p_neg = (p_neg + self.clip).clamp(max=1)  # 1 − p_m
        loss = y * torch.log(p.clamp(min=self.eps)) + (1 - y) * torch.log(p_neg.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.disable_grad_focal):
                weight = y * (1 - p).pow(self.gamma_pos) + (1 - y) * (1 - p_neg).pow(self.gamma_neg)
            loss = loss * weight
        return _reduce(-loss, known, self.reduction)


class DistributionBalancedLoss(nn.Module):
    """Distribution-balanced loss, DBL (Wu et al., ECCV 2020) (``dbl``), following the reference code as described in
    METHODS.md §4 ("the code is the reference").

    * Rebalance weight (same for positives and negatives of class k): r_ik = (1/n_k) / Σ_{j: y_ij=1} 1/n_j,
      ŵ_ik = map_alpha + σ(map_beta · (r_ik − map_gamma)).
    * Negative-tolerant regularisation (``ntr``): a fixed, not learned logit shift v_k = init_bias · b̂_k / neg_scale with
      b̂_k = −log(N/n_k − 1); z' = z + v. Positives: ŵ·BCE(z', 1); negatives: (ŵ/neg_scale)·BCE(neg_scale·z', 0).
    * Focal term (``focal``): × balance_param · (1 − p_t)^gamma, p_t = exp(−BCE) of the adjusted logits (not detached).
    * Mean over the known entries of B × C (``reduction="sum"`` sums).

    Defaults: VOC-MLT config (map_gamma 0.3, neg_scale 5; COCO-MLT uses 0.2 and 2). ``n_k`` below 1 is taken as 1 (a class
    with no training positive) and the prior n_k/N is clipped to [0.5/N, 1 − 0.5/N] so b̂ stays finite. Train with
    :class:`mlic_edge.train.samplers.ClassAwareSampler` (``--sampler class-aware``) as the paper does.
    """

    def __init__(self, class_counts, num_images: int | None = None, map_alpha: float = 0.1, map_beta: float = 10.0,
                 map_gamma: float = 0.3, init_bias: float = 0.05, neg_scale: float = 5.0, focal: bool = True,
                 gamma: float = 2.0, balance_param: float = 2.0, ntr: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        counts = _counts_tensor(class_counts, "dbl")
        _require("map_alpha", map_alpha, lambda v: v >= 0, "a number >= 0")
        _require("map_beta", map_beta, lambda v: v >= 0, "a number >= 0")
        _require("map_gamma", map_gamma, lambda v: v >= 0, "a number >= 0")
        _require("init_bias", init_bias, lambda v: v >= 0, "a number >= 0")
        _require("neg_scale", neg_scale, lambda v: v > 0, "a number > 0")
        _require_bool("focal", focal)
        _require("gamma", gamma, lambda v: v >= 0, "a number >= 0")
        _require("balance_param", balance_param, lambda v: v > 0, "a number > 0")
        _require_bool("ntr", ntr)
        _require_choice("reduction", reduction, _REDUCTIONS)
        self.map_alpha, self.map_beta, self.map_gamma = float(map_alpha), float(map_beta), float(map_gamma)
        self.init_bias, self.neg_scale = float(init_bias), float(neg_scale)
        self.focal, self.gamma, self.balance_param = bool(focal), float(gamma), float(balance_param)
        self.ntr, self.reduction = bool(ntr), reduction
        self.register_buffer("freq_inv", 1.0 / counts.clamp(min=1.0), persistent=False)
        shift = torch.zeros_like(counts)
        if self.ntr:
            if num_images is None:
                raise MlicError("loss 'dbl' needs the number of training images for its logit shift (NTR)",
                                hint="pass num_images=len(train_set), or ntr=false")
            if not _is_number(num_images) or num_images < 1 or float(counts.max()) > num_images:
                raise MlicError(f"loss 'dbl' got num_images={num_images!r} for class counts up to {float(counts.max())}",
                                hint="num_images must be the number of training images, at least every class count")
            n = float(num_images)
            prior = (counts.double() / n).clamp(0.5 / n, 1 - 0.5 / n)
            b_hat = -torch.log(1.0 / prior - 1.0)  # −log(N/n_k − 1)
            shift = (self.init_bias * b_hat / self.neg_scale).float()
        self.register_buffer("logit_shift", shift, persistent=False)

    @property
    def num_classes(self) -> int:
        return int(self.freq_inv.numel())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, y, known = _prepare(logits, targets, self.num_classes)
        freq_inv = self.freq_inv.to(logits.device)
        weight = rebalance_weight(y, freq_inv, self.map_alpha, self.map_beta,
                                  self.map_gamma)
        z = logits
        if self.ntr:
            z = z + self.logit_shift.to(logits.device)
            z = y * z + (1 - y) * self.neg_scale * z
            weight = y * weight + (1 - y) * weight / self.neg_scale
        ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        loss = weight * ce
        if self.focal:
            pt = torch.exp(-ce)
            loss = self.balance_param * (1 - pt).pow(self.gamma) * loss
        return _reduce(loss, known, self.reduction)


class DABLoss(nn.Module):
    """DAB, Distribution Asymmetric Balance (Zhu & Xiong, 计算机科学 2022, seed 002) (``dab``).

    Reading of the paper (its equation numbers):

    * ŝ_ik, eq. (3)–(6): p^c = 1/n_i, p^f = Σ_{j: y_j = 1} 1/n_j, s = p^c / p^f, ŝ = β + σ(μ(s − ε)) — exactly DBL's
      rebalance weight with DAB β = DBL map_alpha, DAB μ = DBL map_beta, DAB ε = DBL map_gamma.
    * eq. (8): L_S-BCE is the BCE of each entry weighted by ŝ_ik, averaged over the C classes.
    * eq. (9)–(10): φ = 1 − (E_i/E_m)² and L_SR-BCE = (1 − φ)·L_S-BCE + φ·L_BCE, i.e. **φ multiplies the plain BCE** and
      1 − φ the resampled one: training starts on the original distribution (φ = 1) and moves to the resampled one, as
      the text after eq. (10) and §4.6 describe (BBN's cumulative-learning parabola). Per entry the two branches share
      their focusing and log terms, so the weight is (1 − φ)·ŝ_ik + φ. (Eq. (16) as printed puts ŝ in front of both
      branches, which would make φ cancel; it is read through eq. (10).) ``set_epoch(e, E)`` sets φ = 1 − (e/E)² with
      the trainer's 0-based epoch index (φ = 1 in the first epoch, as in BBN; it reaches 0 only at e = E). Before any
      ``set_epoch`` call φ = 1. Option ``phi`` fixes φ instead (0: resampled only, 1: BCE only — §4.6's ablations).
    * eq. (12)–(13): asymmetric focusing, positives (1 − p)^{γ+} log p, negatives p^{γ−} log(1 − p) as in ASL (eq. (15)
      and (16) print (1 − p)^{γ−} for negatives, which would down-weight hard negatives, contradicting the text around
      eq. (14); read as a misprint).
    * eq. (14): p̂ = σ(M·p) with **p the raw network output (logit) z**: M = 1 (the paper's setting, §4.3) must give the
      ordinary sigmoid probability (with p a probability, σ(p) would stay in [0.5, 0.73]). Following eq. (16), p̂
      replaces p in both focusing weights and in the negative log term; the positive log term is log σ(z). No hard
      margin (the paper replaces ASL's clip by this soft probability).

    Per known entry: −[(1 − φ)·ŝ + φ]·[y (1 − p̂)^{γ+} log σ(z) + (1 − y) p̂^{γ−} log(1 − p̂)], mean over the known entries
    (eq. (8)'s 1/C, then over the batch) or sum. With ŝ off (φ = 1), M = 1 and sum reduction this is ASL with clip 0;
    with φ = 0, γ± = 0, M = 1 it is DBL's rebalance-weighted BCE (no focal, no NTR); with φ = 1, γ± = 0 plain BCE.

    Defaults: β = 0.1, ε = 0.3 (not given in the paper: DBL's VOC values); μ = 5 (the paper's sensitivity analysis,
    §4.7 (1), peaks at μ = 5; DBL uses 10); γ+ = 0 (§4.7 (2): best); γ− = 4 (the paper's sweep 0–3 rises with γ−, final
    value not printed: ASL's recipe, which also uses γ+ = 0); M = 1 (§4.3). The focusing weights are constants for the
    gradient by default (``disable_grad_focal``, as ASL's class).
    """

    def __init__(self, class_counts, beta: float = 0.1, mu: float = 5.0, epsilon: float = 0.3, gamma_pos: float = 0.0,
                 gamma_neg: float = 4.0, soft_scale: float = 1.0, phi: float | None = None,
                 disable_grad_focal: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        counts = _counts_tensor(class_counts, "dab")
        _require("beta", beta, lambda v: v >= 0, "a number >= 0")
        _require("mu", mu, lambda v: v >= 0, "a number >= 0")
        _require("epsilon", epsilon, lambda v: v >= 0, "a number >= 0")
        _require("gamma_pos", gamma_pos, lambda v: v >= 0, "a number >= 0")
        _require("gamma_neg", gamma_neg, lambda v: v >= 0, "a number >= 0")
        _require("soft_scale", soft_scale, lambda v: v > 0, "a number > 0 (M in p̂ = σ(M·z))")
        if phi is not None:
            _require("phi", phi, lambda v: 0 <= v <= 1, "None (the schedule) or a number in [0, 1]")
        _require_bool("disable_grad_focal", disable_grad_focal)
        _require_choice("reduction", reduction, _REDUCTIONS)
        self.beta, self.mu, self.epsilon = float(beta), float(mu), float(epsilon)
        self.gamma_pos, self.gamma_neg, self.soft_scale = float(gamma_pos), float(gamma_neg), float(soft_scale)
        self.fixed_phi = None if phi is None else float(phi)
        self.disable_grad_focal = bool(disable_grad_focal)
        self.reduction = reduction
        self.scheduled_phi = 1.0
        self.register_buffer("freq_inv", 1.0 / counts.clamp(min=1.0), persistent=False)

    @property
    def num_classes(self) -> int:
        return int(self.freq_inv.numel())

    @staticmethod
    def phi_schedule(epoch: int, total_epochs: int) -> float:
        """φ = 1 − (E_i/E_m)², eq. (9), clipped to [0, 1]."""
        if total_epochs < 1:
            raise MlicError(f"total_epochs must be at least 1, got {total_epochs}", hint="pass the number of epochs")
        return float(min(1.0, max(0.0, 1.0 - (epoch / total_epochs) ** 2)))

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Move φ along the schedule (the trainer calls this at the start of every epoch, 0-based)."""
        self.scheduled_phi = self.phi_schedule(epoch, total_epochs)

    @property
    def phi(self) -> float:
        return self.scheduled_phi if self.fixed_phi is None else self.fixed_phi

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, y, known = _prepare(logits, targets, self.num_classes)
        phi = self.phi
        if phi < 1.0:
            s_hat = rebalance_weight(y, self.freq_inv.to(logits.device), self.beta,
                                     self.mu, self.epsilon)
            weight = (1.0 - phi) * s_hat + phi
        else:
            weight = torch.ones_like(logits)
        soft = logits * self.soft_scale  # M·z, eq. (14)
        log_pos = F.logsigmoid(logits)  # log σ(z)
        log_neg = F.logsigmoid(-soft)  # log(1 − p̂)
        loss = y * log_pos + (1 - y) * log_neg
        if self.gamma_pos > 0 or self.gamma_neg > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.disable_grad_focal):
                p_hat = torch.sigmoid(soft)
                focus = y * (1 - p_hat).pow(self.gamma_pos) + (1 - y) * p_hat.pow(self.gamma_neg)
            loss = loss * focus
        return _reduce(-weight * loss, known, self.reduction)


# ---------------------------------------------------------------------------------------------------------- registry
LOSSES: dict[str, type[nn.Module]] = {
    "bce": MaskedBCE,
    "softmargin": SoftMarginLoss,
    "focal": FocalLoss,
    "asl": AsymmetricLoss,
    "dbl": DistributionBalancedLoss,
    "dab": DABLoss,
}


def _loss_class(name: str) -> type[nn.Module]:
    if name not in LOSSES:
        raise MlicError(f"unknown loss {name!r}", hint=f"available: {', '.join(LOSSES)}")
    return LOSSES[name]


def _init_parameters(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    if cls.__init__ is nn.Module.__init__:
        return {}
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def loss_options(name: str) -> dict[str, Any]:
    """The hyperparameters of loss ``name`` and their defaults (training statistics such as class_counts excluded)."""
    return {k: p.default for k, p in _init_parameters(_loss_class(name)).items() if k not in _STATISTICS}


def create_loss(name: str, class_counts: np.ndarray | None = None, num_images: int | None = None,
                **options: Any) -> nn.Module:
    """Build loss ``name`` with hyperparameters ``options`` (see :func:`loss_options`).

    ``class_counts`` (images holding each class in the training set) and ``num_images`` (training images) are passed
    to the losses that use them (dbl, dab) and ignored by the others. Raises MlicError for an unknown loss, an unknown
    or out-of-range option, or missing class statistics.
    """
    cls = _loss_class(name)
    params = _init_parameters(cls)
    valid = loss_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise MlicError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for loss {name!r}",
                        hint=f"valid options (defaults): {listed}")
    statistics = {"class_counts": class_counts, "num_images": num_images}
    kwargs = {k: v for k, v in statistics.items() if k in params}
    return cls(**kwargs, **options)
