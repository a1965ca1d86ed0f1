"""semdep — Xue, Jiang, Wang, Yang 2019, "Multi-label classification based on attention mechanism and semantic
dependencies" (融合注意力机制和语义关联性的多标签图像分类, Opto-Electronic Engineering 46(9): 180468).

No public code exists (METHODS.md §6); the structure follows the paper, and SRN (Zhu et al. 2017) where the paper
is silent. Equation numbers refer to the paper.

Graph (shapes for DenseNet-121 at 448 px: H = W = 14, D = 1024)::

    X = f_cnn(image)                          (2)  backbone.forward_features, (B, D, H, W)
    y' = FC(GAP(X))                                 backbone head ("denseNet 输出 ... 平均池化层和全连接层")
    Z = conv_att(X)                            (3)  1×1×512 → ReLU → 3×3×512 → ReLU → 1×1×C   (B, C, H, W)
    A = softmax over H·W of each channel       (4)  attention maps, each sums to 1
    M = F_cc(A)                                (8)  SE → 1×1×256 → SE → 1×1×256 → SE → 1×1×512 → SE → 1×1×1024
                                                    (ReLU after every conv; SE = eqs. (5)–(7), reduction 16)
    ỹ = FC(GAP(M))
    ŷ = α·y' + (1 − α)·ỹ                       (9)  α ∈ [0, 1] learnable, initialised to 0.48

Choices where the paper is ambiguous (each one is a reading, not a fact of the paper):

* Eq. (9) puts α on the *backbone* output y' and 1 − α on the dependency output ỹ; we keep the paper's exact form.
  α ∈ [0, 1] is kept there by a sigmoid: α = σ(alpha_logit), alpha_logit initialised to logit(0.48).
* Eq. (3): no activation is printed between the three attention convs; ReLU between them, as in SRN's f_att.
* Eq. (6) prints σ(W2 σ(W1 z)); read as the SE paper's σ(W2 δ(W1 z)) with δ = ReLU.
* F_cc (eq. 8) uses 1×1 kernels for all four convs, as printed ("1×1×256、1×1×256、1×1×512、1×1×1024"), not
  SRN's grouped 14×14 last conv (METHODS.md's guess); ReLU after each conv. "4 层卷积和 SE 模块交叉" plus Table 4
  (SEblock1 removes the attention's negative responses, SEblock3 sits between two convs, "5SEblock+5Convs" is the
  deeper variant) is read as SE1 on A, then conv/SE alternating: SE1, conv1, SE2, conv2, SE3, conv3, SE4, conv4.
* A consequence of the paper as written: eq. (5) averages a map that eq. (4) normalised to sum to 1, so SE1's
  squeeze is the constant 1/(H·W) and its gate is a learned per-label gain that does not depend on the image. It
  cannot suppress absent labels per image as the paper says; SE2–SE4 (after ReLU convs) are image dependent.
  We implement the equations as printed, SE1's squeeze as that constant, so the exported gate is one too.
* The dependency branch's input is A itself (eq. 8: M = F_cc(A)), not A ⊙ X; its values are ≈ 1/(H·W).
* Four-stage training (§3.1): (1) fine-tune the feature extractor ("backbone": backbone + its GAP/FC head, loss
  on y'); (2) fix the extractor, train the attention convs ("attention"); (3) fix both, train the semantic
  dependency part ("dependency": SE blocks, the four convs, its FC, and α; loss on ŷ); (4) fine-tune everything
  ("joint", loss on ŷ). The paper does not say what loss trains stage 2 (A only feeds F_cc, which stage 3 trains);
  we follow SRN, whose attention stage is supervised by the attention-weighted confidence ŷ_att^l = Σ_ij a^l_ij s^l_ij,
  taking the label's own score map Z as s (no extra parameters): ŷ_att^l = Σ_ij a^l_ij z^l_ij.

API for the trainer: ``STAGES`` (stage names, in order), ``training_stages()`` (the :class:`Stage` table),
``set_trainable(model, stage)`` (name or 0-based index; sets ``requires_grad``, the loss ``training_loss`` uses, and
keeps frozen parts in eval mode so a frozen backbone's BatchNorm statistics do not move). ``apply_stage`` is the same
function. A model starts in ``"joint"`` (everything trains, loss on ŷ), so training without stages is plain
end-to-end training. The paper recipe trains in the four stages in turn (``Recipe.stages = "sequential"``).

The quick recipe trains stages 1-3 at once (``"concurrent"``, ours, not the paper's): the sum of the three stages'
losses, each part held fixed for the parts after it by stopped gradients, as the paper's stages hold them fixed in
turn: y' trains the backbone and its head; ŷ_att the attention convs on X with no gradient into X; ŷ the dependency
branch and α on A and y' with no gradient into them. Why, measured on the zoo benchmark's set (12 epochs from
scratch, 96 px, seed 0): end to end the gradients through the attention and dependency branches cost the backbone
(its own head y' 51 against the baseline's 55.4; fused 52.9) while the dependency branch stayed at chance; the four
stages in turn, 3 epochs each, reached 47.4; concurrent stages 56.6 (seeds 0/1/2: 56.6/56.9/56.3 against the
baseline's 55.4/55.9/57.3). There too the dependency branch alone stays near chance at 3×3 attention maps and ŷ ≈ y':
the gain is the backbone's, not the branch's (benchmarks/results/zoo.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from mlic_edge.models.backbone import create_backbone
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.models.layers.attention import LabelAttention, SEBlock
from mlic_edge.models.recipe import QUICK, Recipe
from mlic_edge.models.registry import register_model

PARAMETER_GROUPS: tuple[str, ...] = ("backbone", "cls_head", "attention", "dependency", "alpha")
"""How :meth:`SemDep.parameter_groups` splits the parameters; every parameter is in exactly one group."""


@dataclass(frozen=True)
class Stage:
    name: str
    trains: tuple[str, ...]
    """The parameter groups (of ``PARAMETER_GROUPS``) with ``requires_grad``; the others are frozen."""
    loss_on: str
    """Which output ``training_loss`` supervises: ``"cls"`` (y'), ``"att"`` (ŷ_att), ``"fused"`` (ŷ) or
    ``"stopped"`` (the three, each part's input detached: the concurrent stage)."""
    description: str


_STAGES: tuple[Stage, ...] = (
    Stage("backbone", ("backbone", "cls_head"), "cls",
          "stage 1: fine-tune the feature extractor and its GAP+FC head on the multi-label loss"),
    Stage("attention", ("attention",), "att",
          "stage 2: extractor fixed, train the attention convs (eqs. 3-4) through ŷ_att = Σ_ij A·Z"),
    Stage("dependency", ("dependency", "alpha"), "fused",
          "stage 3: extractor and attention fixed, train SE blocks + convs + FC (eqs. 5-8) and α (eq. 9)"),
    Stage("joint", PARAMETER_GROUPS, "fused", "stage 4: fine-tune the whole model on ŷ"),
)

STAGES: tuple[str, ...] = tuple(stage.name for stage in _STAGES)
"""Stage names in the paper's order: ``("backbone", "attention", "dependency", "joint")``."""

CONCURRENT = Stage("concurrent", PARAMETER_GROUPS, "stopped",
                   "stages 1-3 at once: loss on y' + ŷ_att (attention on X detached) + ŷ (dependency on A and y' "
                   "detached)")


def training_stages(model: nn.Module | None = None) -> list[Stage]:
    """The paper's four training stages (§3.1), in order. ``model`` is accepted for API symmetry and unused."""
    return list(_STAGES)


def get_stage(stage: str | int) -> Stage:
    if isinstance(stage, int) and not isinstance(stage, bool):
        if not 0 <= stage < len(_STAGES):
            raise ValueError(f"stage index must be in 0..{len(_STAGES) - 1}, got {stage}")
        return _STAGES[stage]
    for entry in (*_STAGES, CONCURRENT):
        if entry.name == stage:
            return entry
    raise ValueError(f"unknown semdep stage {stage!r}; expected one of {', '.join(STAGES)}, {CONCURRENT.name} "
                     "or an index")


def set_trainable(model: "SemDep", stage: str | int) -> Stage:
    """Freeze everything but ``stage``'s parameter groups, select its loss, and return the :class:`Stage`."""
    entry = get_stage(stage)
    for group, params in model.parameter_groups().items():
        for param in params:
            param.requires_grad_(group in entry.trains)
    model.stage = entry.name
    model.train(model.training)  # re-apply: frozen modules go to eval mode
    return entry


apply_stage = set_trainable


class DependencyBranch(nn.Module):
    """F_cc of eq. (8) plus its head: SE/conv alternating over the C attention maps, GAP, FC → ỹ."""

    def __init__(self, num_classes: int, channels: Sequence[int] = (256, 256, 512, 1024),
                 se_reduction: int = 16) -> None:
        super().__init__()
        widths = [num_classes, *channels]
        self.se = nn.ModuleList(SEBlock(w, se_reduction) for w in widths[:-1])
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size=1) for a, b in zip(widths[:-1], widths[1:]))
        self.fc = nn.Linear(widths[-1], num_classes)

    def features(self, attention: torch.Tensor) -> torch.Tensor:
        """M = F_cc(A), eq. (8). SE1's squeeze (eq. 5) of maps that each sum to 1 is 1/(H·W) whatever the image, so
        its gate is computed from that constant: the same value and (zero) gradient as averaging A, and an exported
        graph in which the gate is a constant (a calibrator measuring it over images sees no range at all)."""
        channels, height, width = (int(size) for size in attention.shape[1:])  # ints: constants when traced
        squeeze = torch.full((1, channels), 1.0 / (height * width), dtype=attention.dtype, device=attention.device)
        first, *rest = self.se
        x = torch.relu(self.convs[0](attention * first.excite(squeeze)[:, :, None, None]))
        for se, conv in zip(rest, self.convs[1:]):
            x = torch.relu(conv(se(x)))
        return x

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(attention).mean(dim=(2, 3)))


PAPER_RECIPE = Recipe(
    source="paper §3.1 (no public code, METHODS.md §6): SGD momentum 0.9, lr 1e-3 divided by 10 every 30 epochs, "
           "weight decay 5e-4, batch 24, images resized to 512 and randomly cropped to 448 with horizontal flips "
           "(crop_scale 0.75 = (448/512)² of the area), cross-entropy (eq. 10), four stages (backbone, attention, "
           "dependency, joint). Silent there, chosen: 30 epochs per stage, each stage its own step schedule (×0.1 at "
           "60 % and 85 % of it) and no warm-up, no gradient clipping (none mentioned)",
    optimizer="sgd", lr=1e-3, weight_decay=5e-4, schedule="step", warmup_epochs=0.0, epochs=120, batch_size=24,
    img_size=448, grad_clip=None, crop_scale=0.75, loss="bce", stages="sequential")

QUICK_RECIPE = QUICK.with_changes(
    stages="concurrent",
    source=f"{QUICK.source}; semdep trains stages 1-3 at once with stopped gradients (concurrent: 56.6 mAP on the "
           "zoo benchmark's set against 52.9 end to end and 47.4 in turn, the module docstring)")


@register_model(name="semdep", paper="Xue et al. 2019, attention + SE semantic dependencies (OEE 46(9))",
                default_backbone="densenet121", default_img_size=448, recipe=PAPER_RECIPE, quick=QUICK_RECIPE)
class SemDep(MultiLabelModel):
    """Label attention, SE-gated semantic-dependency convs and a learnable α fusion with the backbone head."""

    training_stages = STAGES
    concurrent_stage = CONCURRENT.name

    def __init__(
        self,
        num_classes: int,
        backbone: str = "densenet121",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        attention_hidden: int = 512,
        dependency_channels: Sequence[int] = (256, 256, 512, 1024),
        se_reduction: int = 16,
        alpha_init: float = 0.48,
    ) -> None:
        dependency_channels = tuple(int(c) for c in dependency_channels)
        super().__init__("semdep", num_classes, backbone, attention_hidden=attention_hidden,
                         dependency_channels=dependency_channels, se_reduction=se_reduction,
                         alpha_init=alpha_init)
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must be in (0, 1), got {alpha_init}")
        if not dependency_channels:
            raise ValueError("dependency_channels needs at least one conv width")
        self.backbone = create_backbone(backbone, pretrained, pretrained_file, global_pool="")
        width = int(self.backbone.num_features)
        self.cls_head = nn.Linear(width, num_classes)
        self.attention = LabelAttention(width, num_classes, attention_hidden)
        self.dependency = DependencyBranch(num_classes, dependency_channels, se_reduction)
        self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha_init / (1.0 - alpha_init))))
        self.stage = "joint"

    def set_training_stage(self, stage: str) -> None:
        set_trainable(self, stage)

    @property
    def alpha(self) -> torch.Tensor:
        """α of eq. (9), in (0, 1)."""
        return torch.sigmoid(self.alpha_logit)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "backbone": list(self.backbone.parameters()),
            "cls_head": list(self.cls_head.parameters()),
            "attention": list(self.attention.parameters()),
            "dependency": list(self.dependency.parameters()),
            "alpha": [self.alpha_logit],
        }

    def train(self, mode: bool = True) -> "SemDep":
        super().train(mode)
        if mode:
            trains = get_stage(self.stage).trains
            modules = {"backbone": self.backbone, "cls_head": self.cls_head, "attention": self.attention,
                       "dependency": self.dependency}
            for group, module in modules.items():
                if group not in trains:
                    module.eval()
        return self

    def spatial_features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(images)
        if features.ndim != 4:
            raise ValueError(f"semdep needs a CNN backbone with (B, D, H, W) features, got {tuple(features.shape)}")
        return features

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate: ``features`` X, ``scores`` Z, ``attention`` A, ``cls`` y', ``att`` ŷ_att,
        ``dep`` ỹ and ``logits`` ŷ."""
        x = self.spatial_features(images)
        y_cls = self.cls_head(x.mean(dim=(2, 3)))
        z, a = self.attention(x)
        y_dep = self.dependency(a)
        alpha = self.alpha
        return {"features": x, "scores": z, "attention": a, "cls": y_cls, "att": (a * z).sum(dim=(2, 3)),
                "dep": y_dep, "logits": alpha * y_cls + (1.0 - alpha) * y_dep}

    def attention_maps(self, images: torch.Tensor) -> torch.Tensor:
        """A of eq. (4): (B, C, H, W), each map sums to 1 over H·W."""
        return self.attention(self.spatial_features(images))[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.spatial_features(images)
        y_cls = self.cls_head(x.mean(dim=(2, 3)))
        y_dep = self.dependency(self.attention(x)[1])
        alpha = self.alpha
        return alpha * y_cls + (1.0 - alpha) * y_dep

    def training_loss(self, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
        loss_on = get_stage(self.stage).loss_on
        if loss_on == "fused":
            return criterion(self(images), targets)
        x = self.spatial_features(images)
        if loss_on == "cls":
            return criterion(self.cls_head(x.mean(dim=(2, 3))), targets)
        z, a = self.attention(x.detach() if loss_on == "stopped" else x)
        y_att = (a * z).sum(dim=(2, 3))
        if loss_on == "att":
            return criterion(y_att, targets)
        y_cls, alpha = self.cls_head(x.mean(dim=(2, 3))), self.alpha
        fused = alpha * y_cls.detach() + (1.0 - alpha) * self.dependency(a.detach())
        return criterion(y_cls, targets) + criterion(y_att, targets) + criterion(fused, targets)
