"""ML-GAT (seed paper 000: Zhang, Zhang & Huang, "Multi-label Image Classification Model Based on Graph Attention
Network", J. Chongqing Technology and Business Univ. (Nat. Sci.) 39 — in Chinese).

The extracted paper text prints no equation numbers; they are numbered here in order of appearance:

    (1) F = f_ResNet(I)                           §1.1  ResNet-101 without pooling/fc, 448×448 in, F: W×H×D
    (2) x = GMP(conv2(conv1(F)))                  §1.2  conv1 keeps D channels (shrinks W,H), conv2 1×1 D→d″
        Z_l = conv_{1×f, stride f}(Z_0)           §1.3  label-vector reduction C×L → C×L/f = C×d′
    (3) e_ij = a([W z_i ‖ W z_j]), j ∈ N_i       §1.4  W: M×d′ ("raises the dimension" to M; last layer M = d″)
    (4) α_ij = softmax_j(LeakyReLU(e_ij))
    (5) z′_i = σ(Σ_j α_ij W z_j)
    (6) Z_{l+1} = f_GAT(Z_l, U) + Z_l             two layers, residual, U built as in ML-GCN
    (7) ŷ = Z_{l+2} x                              §1.5
    (8) L = MultiLabelSoftMarginLoss(ŷ, y)         the paper's loss — choose it with the trainer's --loss
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlic_edge.label_graph import LabelGraph
from mlic_edge.models.backbone import create_backbone
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.models.label_branch import FoldedClassifier, label_vectors_of
from mlic_edge.models.layers.graph import DenseGATLayer, cooccurrence_mask
from mlic_edge.models.registry import register_model
from mlic_edge.models.zoo.mlgcn import PAPER_RECIPE as MLGCN_RECIPE

VOC_SIZED = 20
"""Label sets up to this size get the paper's VOC settings (d″ = 512, conv1 keeps W×H); larger ones its COCO
settings (d″ = 1280, 5×5 conv1 without padding: 14×14 → 10×10). The paper's VOC conv1 "does not change W, H" but
its kernel is not given: a 1×1 conv (no padding to invent; 4 M instead of 105 M weights at D = 2048)."""


PAPER_RECIPE = replace(MLGCN_RECIPE, source="no public code for ML-GAT: ML-GCN's recipe, the model family it extends "
                                            "(METHODS.md §1)")


@register_model(name="mlgat", paper="Zhang et al. 2022, ML-GAT (multi-label classification with graph attention)",
                default_backbone="resnet101", default_img_size=448, needs_label_graph=True,
                recipe=PAPER_RECIPE)
class MLGAT(MultiLabelModel):
    """Two residual GAT layers on reduced label vectors make the classifiers of a conv-reduced, max-pooled CNN.

    Paper settings (§2.1) and how the ambiguities are resolved:

    * Label-vector reduction (§1.3): one conv with kernel 1×f and stride f over the C×L matrix, one input and one
      output channel (the output is C×L/f), with a bias (PyTorch default; the paper does not say). f =
      ``reduce_factor`` = 4 (paper: BERT L = 1024 → d′ = 256). Any label vectors work: d′ = ⌊L/f⌋.
    * GAT (eqs. 3-6): single head (the paper describes one attention vector a; ``heads`` > 1 averages heads so the
      widths stay). LeakyReLU slope 0.2 and σ = ELU, as in GAT [23] (the paper names neither). No bias (eq. 5 has
      none). Attention dropout ``gat_dropout`` = 0 (not given). Widths: both layers map to M = d″
      (``hidden`` = d″ by default; eq. 3's W "raises" the dimension and the last layer has M = d″).
    * Residual (eq. 6) is added after σ: Z_{l+1} = ELU(GAT(Z_l)) + R(Z_l), R the identity when the widths agree
      (layer 2) and a bias-free Linear otherwise (layer 1, d′ → d″; the paper's "+ Z_l" cannot be literal there).
    * Neighbourhoods (eqs. 3-4): U "built as in ML-GCN", used as a mask: row i attends j iff (B + I)_ij > 0 with
      B_ij = 1[P(L_j | L_i) ≥ τ], τ = 0.4 (METHODS.md §2; ``cooccurrence_mask``). Buffer ``adjacency_mask``.
    * Image reduction (eq. 2): conv1 keeps D channels; VOC keeps W×H (kernel not given), COCO uses a 5×5 kernel
      (14 → 10). Here ``conv1_kernel`` = 1 for ≤ 20 labels (keeps W×H without inventing padding), 5 otherwise;
      ``conv1_padding`` = 0. conv2 is 1×1 D → d″. Both convs have biases and no activation between them (the
      paper names none). Then GMP. NB: the COCO conv1 alone holds D²·25 = 105 M weights at D = 2048 (the paper's
      literal reading), and needs a feature map of at least 5×5 (≥ 160 px input for a stride-32 backbone).
    * d″ = ``d_reduced``: 512 for ≤ 20 labels (VOC best), 1280 otherwise (COCO best).
    * Backbone: a CNN whose ``forward_features`` gives (N, D, H, W); ResNet-101 at 448 px in the paper.
    * Loss (eq. 8): MultiLabelSoftMarginLoss; SGD lr 0.005, momentum 0.9, wd 1e-4, 100 epochs (§2.1).

    Buffers: ``label_vectors`` (C, L) and ``adjacency_mask`` (C, C, bool); zeros / identity when rebuilt from a
    checkpoint, filled by ``load_state_dict``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        label_graph: LabelGraph | None = None,
        tau: float = 0.4,
        reduce_factor: int = 4,
        d_reduced: int | None = None,
        hidden: int | None = None,
        heads: int = 1,
        gat_dropout: float = 0.0,
        conv1_kernel: int | None = None,
        conv1_padding: int = 0,
        label_dim: int | None = None,
    ) -> None:
        vectors, label_dim = label_vectors_of(label_graph, num_classes, label_dim, "mlgat")
        if reduce_factor < 1 or label_dim < reduce_factor:
            raise ValueError(f"reduce_factor must be in [1, label_dim={label_dim}], got {reduce_factor}")
        voc_sized = num_classes <= VOC_SIZED
        d_reduced = int(d_reduced or (512 if voc_sized else 1280))
        hidden = int(hidden or d_reduced)
        conv1_kernel = int(conv1_kernel or (1 if voc_sized else 5))
        super().__init__("mlgat", num_classes, backbone, tau=tau, reduce_factor=reduce_factor, d_reduced=d_reduced,
                         hidden=hidden, heads=heads, gat_dropout=gat_dropout, conv1_kernel=conv1_kernel,
                         conv1_padding=conv1_padding, label_dim=label_dim)
        if label_graph is not None:
            mask = cooccurrence_mask(label_graph.cooccurrence, label_graph.counts, tau)
        else:  # filled by load_state_dict
            vectors = torch.zeros(num_classes, label_dim)
            mask = torch.eye(num_classes, dtype=torch.bool)
        self.register_buffer("label_vectors", vectors)
        self.register_buffer("adjacency_mask", mask)

        self.image = _ReducedImageFeatures(create_backbone(backbone, pretrained, pretrained_file), d_reduced,
                                           conv1_kernel, conv1_padding)

        # §1.3: Z_0 (C, L) as C rows of one channel; kernel f, stride f → (C, L // f).
        self.label_reduce = nn.Conv1d(1, 1, kernel_size=reduce_factor, stride=reduce_factor)
        reduced_dim = label_dim // reduce_factor
        widths = [reduced_dim, hidden, d_reduced]
        self.gat = nn.ModuleList(
            DenseGATLayer(w_in, w_out, heads=heads, concat=False, dropout=gat_dropout, bias=False)
            for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.gat_residual = nn.ModuleList(
            nn.Identity() if w_in == w_out else nn.Linear(w_in, w_out, bias=False)
            for w_in, w_out in zip(widths[:-1], widths[1:]))

    @property
    def backbone(self) -> nn.Module:
        """The timm model (the trainer reads its ``pretrained_cfg`` for mean/std)."""
        return self.image.backbone

    def label_embeddings(self) -> torch.Tensor:
        """Z_{l+2} (C, d″): the per-label classifiers — image-independent (eqs. 3-6)."""
        z = self.label_reduce(self.label_vectors.unsqueeze(1)).squeeze(1)
        for layer, residual in zip(self.gat, self.gat_residual):
            z = F.elu(layer(z, self.adjacency_mask)) + residual(z)
        return z

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image(images) @ self.label_embeddings().t()  # eq. 7, batched: ŷ = x Zᵀ

    def fold_static(self) -> nn.Module:
        with torch.no_grad():
            embeddings = self.label_embeddings()
        return FoldedClassifier(self.image, embeddings)


class _ReducedImageFeatures(nn.Module):
    """Eqs. 1-2: x = GMP(conv2(conv1(F))), F the backbone's unpooled feature map."""

    def __init__(self, backbone: nn.Module, d_reduced: int, conv1_kernel: int, conv1_padding: int) -> None:
        super().__init__()
        self.backbone = backbone
        channels = int(backbone.num_features)
        self.conv1 = nn.Conv2d(channels, channels, conv1_kernel, padding=conv1_padding)
        self.conv2 = nn.Conv2d(channels, d_reduced, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(images)
        return torch.amax(self.conv2(self.conv1(features)), dim=(2, 3))
