"""MSRN: Multi-layered Semantic Representation Network (Qu et al., seed paper 004; official code chehao2628/MSRN,
details in METHODS.md §5).

Equations below are the seed paper's. Where the paper and the official code differ, this file follows the code
(METHODS.md §5) and says so:

* Backbone (§3.1, §4.1): the last three stages (ResNet layer2/3/4) feed three branches. Branches 1 and 2 get a
  1×1 "buffer" conv (same width, with bias); every branch is then max-pooled 2×2 (stride 2) and projected by a
  1×1 conv (with bias) to the embedding width d (``embed_dim``, 512): f_b = conv1×1(f̄_b).
* Pool rounding (``pool_rounding``): the code's ``MaxPool2d(2, 2)`` rounds down ("floor"): an odd map loses its last
  row and column. "ceil" pools them as a window of their own, and a 1×1 map (tiny inputs) survives. The two agree
  whenever the three branch maps are even — the paper's 448 px on ResNet (56/28/14) — and differ elsewhere: 224,
  352, 416, 480 px give an odd layer4 map on ResNet-101 (224: 7×7 → 3×3 floor, 4×4 ceil). Imported official
  checkpoints use "floor" (``mlic_edge.models.official.msrn``). New training defaults to "ceil", measured
  2026-12-02 on a shared 2-core Intel Xeon (CPU, torch 2.14.1): resnet10t MSRN (d 64, fc 128), 8-class synthetic
  data (``mlic_edge.data.synth``, 240 train / 80 val images), 80 px (layer3 5×5, layer4 3×3: both odd), AdamW
  2e-3, 3 epochs; final val mAP floor / ceil: seed 0 51.79 / 55.37, seed 1 50.01 / 51.94. Ceil was ahead in both
  seeds (+3.6, +1.9 points), weak evidence from two short runs, but nothing favours floor; ceil also keeps 1×1 maps
  of tiny inputs, and checkpoints saved before the option existed (trained with ceil) rebuild unchanged.
* Label embeddings (§3.2.1, eqs. 2-4): GloVe vectors V → Linear(label_dim, 256) (the code's ``fc_label``, not
  in the paper) → GAT(256→300) → GAT(300→d). Each GAT layer is single-head with the residual of eq. 3:
  h' = ELU(softmax_j(mask(e))·h + h), mask = Â > 0 with ML-GCN's Â at τ = ``tau`` (0.4) — as the code; Â is
  built from Bᵀ, so row i attends the labels j with P(i | j) ≥ τ (and itself). The paper (eq. 2) only says
  "neighbourhood N_i" of the co-occurrence graph.
* Buffer convs: §4.1 puts them on "the last two branches"; the code (followed here) puts them on the layer2 and
  layer3 branches, the ones from lower layers that the buffer is meant to damp.
* Group embeddings (§3.2.2, eq. 5): one DiffPool level on ReLU(E_l): z = GAT(ReLU(E_l)),
  S = softmax_rows(GAT_{→K}(ReLU(E_l))), E_g = Sᵀz, with K = max(1, round(pool_ratio·C)). Paper: m = 4 groups;
  code: K = int(pool_ratio·C), truncated and possibly 0 (VOC 0.2 → 4, COCO 0.05 → 4). ``pool_ratio`` defaults to
  0.2 (VOC's 4 groups of 20). An imported checkpoint passes pool_ratio = K / C with K read from its tensors, which
  the rounding turns back into K exactly, so no separate group-count option is needed.
* Group compactness loss (eq. 6): the code's λ·Σ_i ‖E_l^i − E_g^{argmax S_i}‖₂ — Euclidean norm, **not
  squared** as in eq. 6 — with λ = ``group_loss_weight`` = 1e-4 (code; the paper's §4.1 says 1e-3). Total loss
  L1 + λ·L2 (§3.3), L1 = the trainer's criterion (eq. 1).
* SGA (§3.3, eqs. 7-9): per branch and per label/group embedding e, s = f^{w,h} ⊙ e (eq. 7), softmax over the
  H·W positions separately for each of the d channels (eq. 8), o = Σ_{w,h} a^{w,h} ⊙ f^{w,h} (eq. 9).
* Head (§3.3): O (C × 3d) and Q (K × 3d) — the three branches concatenated along channels — stacked to
  M = [O; Q], ŷ = fc2(LeakyReLU_0.01(fc1(flatten(tanh(M))))), fc1: (C+K)·3d → ``fc_hidden`` (2048),
  fc2: → C. fc1 acts on the flattened M (the code's choice); it grows with C: (C+K)·1536·2048 weights at d=512.

E_l and E_g do not depend on the image: ``fold_static`` computes them once and the exported graph holds them as
constants (no GAT or DiffPool ops, no GAT weights in the ONNX).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlic_edge.label_graph import LabelGraph, mlgcn_adjacency
from mlic_edge.models.backbone import create_backbone
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.models.label_branch import label_vectors_of
from mlic_edge.models.layers.diffpool import DiffPool, ResidualGATLayer, group_compactness_loss
from mlic_edge.models.recipe import Recipe, quick_at
from mlic_edge.models.registry import register_model

BRANCH_STAGES = (2, 3, 4)
"""timm feature indices of ResNet's layer2, layer3, layer4 (index 0 is the stem)."""
POOL_ROUNDINGS = ("floor", "ceil")
"""How the 2×2 branch pooling treats an odd map: "floor" drops its last row/column (the official code), "ceil" pools
it alone (a 1×1 map survives)."""


def num_groups_for(num_classes: int, pool_ratio: float) -> int:
    """K = max(1, round(pool_ratio·C)): at least one group, whatever the label count."""
    return max(1, int(round(pool_ratio * num_classes)))


def semantic_guided_attention(features: torch.Tensor, embeddings: torch.Tensor, return_weights: bool = False):
    """SGA (eqs. 7-9): features P (B, HW, d), embeddings E (N, d) → (B, N, d).

    a[b, n, p, c] = softmax_p(P[b, p, c]·E[n, c]) (softmax over positions, per channel);
    o[b, n, c] = Σ_p a[b, n, p, c]·P[b, p, c]. With ``return_weights`` also a (B, N, HW, d).
    """
    scores = features[:, None, :, :] * embeddings[None, :, None, :]  # (B, N, HW, d), eq. 7
    weights = torch.softmax(scores, dim=2)  # eq. 8
    out = (weights * features[:, None, :, :]).sum(dim=2)  # eq. 9
    return (out, weights) if return_weights else out


class _ImageSide(nn.Module):
    """What runs per image: backbone, branches, SGA and the head — shared by ``MSRN`` and its folded form."""

    def __init__(self, backbone: nn.Module, channels: list[int], embed_dim: int, num_rows: int,
                 fc_hidden: int, num_classes: int, pool_rounding: str) -> None:
        super().__init__()
        self.backbone = backbone
        # Buffer convs on all but the last branch (layer2, layer3), same width, with bias (§4.1; code).
        self.buffer_convs = nn.ModuleList(nn.Conv2d(c, c, kernel_size=1) for c in channels[:-1])
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=pool_rounding == "ceil")
        self.projections = nn.ModuleList(nn.Conv2d(c, embed_dim, kernel_size=1) for c in channels)
        self.fc1 = nn.Linear(len(channels) * embed_dim * num_rows, fc_hidden)
        self.fc2 = nn.Linear(fc_hidden, num_classes)

    def branch_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """f_b of each branch as (B, H_b·W_b, d)."""
        stages = self.backbone(images)
        out = []
        for index, (stage, projection) in enumerate(zip(stages, self.projections)):
            if index < len(self.buffer_convs):
                stage = self.buffer_convs[index](stage)
            f = projection(self.pool(stage))
            out.append(f.flatten(2).transpose(1, 2))
        return out

    def forward(self, images: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        embeddings = torch.cat([labels, groups], dim=0)  # (C + K, d): SGA is row-wise, so O and Q in one pass
        rows = torch.cat([semantic_guided_attention(f, embeddings) for f in self.branch_features(images)],
                         dim=2)  # M = [O; Q]: (B, C + K, 3d)
        hidden = F.leaky_relu(self.fc1(torch.tanh(rows).flatten(1)), negative_slope=0.01)
        return self.fc2(hidden)


PAPER_RECIPE = Recipe(
    source="MSRN official code (chehao2628/MSRN demo_voc2007_gcn.py; METHODS.md §5): SGD lr 0.1, backbone 0.01, "
           "weight decay 1e-4, gradient norm 10, MultiScaleCrop (1 to 0.6), 448 px, MultiLabelSoftMarginLoss (+ the "
           "model's group loss); epochs and batch size as ML-GCN's (20, 32), the paper's being unconfirmed",
    optimizer="sgd", lr=0.1, backbone_lr_scale=0.1, weight_decay=1e-4, schedule="step", warmup_epochs=0.0,
    epochs=20, batch_size=32, img_size=448, grad_clip=10.0, crop_scale=0.6, loss="softmargin")


QUICK_RECIPE = quick_at(1e-3, (
    "for MSRN lr 1e-3: on the zoo benchmark's set the shared 3e-3 reached 52.8 mAP (the baseline 55.4), "
    "1e-3 reached 56.4"))


@register_model(name="msrn", paper="Qu et al. 2021, Multi-layered Semantic Representation Network (MSRN)",
                default_backbone="resnet101", default_img_size=448, needs_label_graph=True,
                recipe=PAPER_RECIPE, quick=QUICK_RECIPE)
class MSRN(MultiLabelModel):
    """Label (GAT) and group (DiffPool) embeddings attend three backbone stages (SGA); an MLP on all of them."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        label_graph: LabelGraph | None = None,
        tau: float = 0.4,
        pool_ratio: float = 0.2,
        embed_dim: int = 512,
        label_hidden: int = 256,
        gat_hidden: int = 300,
        group_loss_weight: float = 1e-4,
        fc_hidden: int = 2048,
        label_dim: int | None = None,
        pool_rounding: str = "ceil",
    ) -> None:
        if pool_rounding not in POOL_ROUNDINGS:
            raise ValueError(f"pool_rounding must be one of {', '.join(POOL_ROUNDINGS)}, got {pool_rounding!r}")
        vectors, label_dim = label_vectors_of(label_graph, num_classes, label_dim, "msrn")
        num_groups = num_groups_for(num_classes, pool_ratio)
        super().__init__("msrn", num_classes, backbone, tau=tau, pool_ratio=pool_ratio, embed_dim=embed_dim,
                         label_hidden=label_hidden, gat_hidden=gat_hidden, group_loss_weight=group_loss_weight,
                         fc_hidden=fc_hidden, label_dim=label_dim, pool_rounding=pool_rounding)
        self.num_groups = num_groups
        self.group_loss_weight = group_loss_weight

        if label_graph is not None:
            _, a_hat = mlgcn_adjacency(label_graph.cooccurrence, label_graph.counts, tau=tau)
            mask = torch.from_numpy(a_hat) > 0
        else:  # filled by load_state_dict
            vectors = torch.zeros(num_classes, label_dim)
            mask = torch.eye(num_classes, dtype=torch.bool)
        self.register_buffer("label_vectors", vectors)
        self.register_buffer("adjacency_mask", mask)

        features = create_backbone(backbone, pretrained, pretrained_file, features_only=True,
                                   out_indices=BRANCH_STAGES)
        channels = list(features.feature_info.channels())
        self.image_side = _ImageSide(features, channels, embed_dim, num_classes + num_groups, fc_hidden,
                                     num_classes, pool_rounding)

        self.label_fc = nn.Linear(label_dim, label_hidden)
        self.label_gat = nn.ModuleList([ResidualGATLayer(label_hidden, gat_hidden),
                                        ResidualGATLayer(gat_hidden, embed_dim)])
        self.group_pool = DiffPool(embed_dim, num_groups)

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor (the trainer reads its ``pretrained_cfg`` for mean/std)."""
        return self.image_side.backbone

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E_l (C, d), E_g (K, d), S (C, K)) — image-independent (eqs. 2-5)."""
        labels = self.label_fc(self.label_vectors)
        for layer in self.label_gat:
            labels = layer(labels, self.adjacency_mask)
        groups, assignment = self.group_pool(F.relu(labels), self.adjacency_mask)
        return labels, groups, assignment

    def group_loss(self) -> torch.Tensor:
        labels, groups, assignment = self.embeddings()
        return group_compactness_loss(labels, groups, assignment)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels, groups, _ = self.embeddings()
        return self.image_side(images, labels, groups)

    def training_loss(self, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
        labels, groups, assignment = self.embeddings()
        logits = self.image_side(images, labels, groups)
        loss = criterion(logits, targets)
        if self.group_loss_weight:
            loss = loss + self.group_loss_weight * group_compactness_loss(labels, groups, assignment)
        return loss

    def fold_static(self) -> nn.Module:
        with torch.no_grad():
            labels, groups, _ = self.embeddings()
        return _FoldedMSRN(self.image_side, labels, groups)


class _FoldedMSRN(nn.Module):
    """The exported MSRN: E_l and E_g as constants, only the image side runs (shares its weights)."""

    def __init__(self, image_side: _ImageSide, labels: torch.Tensor, groups: torch.Tensor) -> None:
        super().__init__()
        self.image_side = image_side
        self.register_buffer("label_embeddings", labels.detach().clone())
        self.register_buffer("group_embeddings", groups.detach().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_side(images, self.label_embeddings, self.group_embeddings)
