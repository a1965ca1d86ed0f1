"""MSRN's label-group embedding blocks (seed paper 004, §3.2): a residual single-head GAT layer, one level of
differentiable pooling (DiffPool) built from two such layers, and the group compactness loss.

Graph convention (as in PyG and the pyGAT code MSRN uses): ``mask[i, j]`` True means node i attends node j, and the
softmax runs over j (each row i is a target). All blocks are dense: label graphs have at most a few hundred nodes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlic_edge.models.layers.graph import DenseGATLayer


class ResidualGATLayer(nn.Module):
    """One single-head GAT layer with MSRN's residual (paper eqs. 2-3; METHODS.md §5):

        h = x U                                     (U: in x out, no bias)
        e_ij = LeakyReLU_0.2(p_dst·h_i + p_src·h_j)  (= P[h_i || h_j] with P = [p_dst; p_src], eq. 2)
        α = softmax_j(e masked to mask[i, j] or j = i)
        h'_i = ELU(Σ_j α_ij h_j + h_i)              (eq. 3: the "+ U v_i" residual, σ = ELU)

    Built on the shared ``DenseGATLayer`` (``heads=1, residual="projected", bias=False, add_self_loops=True``)
    with the ELU applied here. The diagonal is always allowed (a node with no neighbour attends only itself).
    Initialisation: Xavier-uniform with gain 1.414 for U and P, as the MSRN reference code (P as one (2·out, 1)
    matrix), rather than the shared layer's plain Glorot.
    """

    def __init__(self, in_features: int, out_features: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.gat = DenseGATLayer(in_features, out_features, heads=1, negative_slope=negative_slope,
                                 residual="projected", bias=False, add_self_loops=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.gat.lin.weight, gain=1.414)
        bound = 1.414 * math.sqrt(6.0 / (2 * self.out_features + 1))
        nn.init.uniform_(self.gat.att_dst, -bound, bound)
        nn.init.uniform_(self.gat.att_src, -bound, bound)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.elu(self.gat(x, mask))

    def extra_repr(self) -> str:
        return "activation=ELU"


class DiffPool(nn.Module):
    """One level of differentiable pooling (Ying et al. 2018; MSRN eq. 5) with GAT layers as its GNNs:

        z = GAT_embed(x)                 (N, d)
        S = softmax_rows(GAT_assign(x))  (N, K): soft assignment of each label to one of K groups
        G = Sᵀ z                         (K, d): group embeddings

    As in the MSRN reference code, the pooled adjacency SᵀAS is not used downstream and DiffPool's link and
    entropy losses are not trained; MSRN's own compactness loss (``group_compactness_loss``) replaces them.
    """

    def __init__(self, in_features: int, num_groups: int, embed_features: int | None = None) -> None:
        super().__init__()
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups = num_groups
        self.embed = ResidualGATLayer(in_features, embed_features or in_features)
        self.assign = ResidualGATLayer(in_features, num_groups)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G (K, d), S (N, K))."""
        z = self.embed(x, mask)
        assignment = torch.softmax(self.assign(x, mask), dim=-1)
        return assignment.transpose(0, 1) @ z, assignment


def group_compactness_loss(labels: torch.Tensor, groups: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Σ_i ‖L_i − G_{argmax_k S_ik}‖₂ — MSRN's L2 (eq. 6) as its reference code computes it: each label is
    pulled towards the group it is hard-assigned to, with the Euclidean norm *not* squared (eq. 6 squares it).
    The argmax carries no gradient; L and G both do."""
    nearest = groups[assignment.argmax(dim=1)]
    return torch.linalg.vector_norm(labels - nearest, dim=1).sum()
