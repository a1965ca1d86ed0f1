"""Dense graph layers on label graphs (ML-GCN, ML-GAT; reusable by other label-graph models).

Label graphs have at most a few hundred nodes, so every layer here is dense: the graph is a (N, N) matrix, not an
edge list.

Graph convention (the same as PyG's ``DenseGATConv`` and the pyGAT code, METHODS.md §2):
``adj[i, j] != 0`` means **node i receives from / attends node j**; attention softmaxes run over j (row i is the
target). For PyG's sparse ``GATConv`` the equivalent edge list is ``stack([j, i])`` (source first). The ML-GCN
co-occurrence graph is asymmetric, so the direction matters.

Layers:

* ``GraphConvolution(in_features, out_features, bias=False)`` — Kipf & Welling, as in ML-GCN:
  ``forward(x, adj) = adj @ (x @ W) [+ b]``; ``W`` is (in, out); init U(±1/√out) for W and b.
* ``DenseGATLayer(in_features, out_features, heads=1, concat=True, negative_slope=0.2, dropout=0.0,
  residual=False, bias=True, add_self_loops=True)`` — Veličković et al. 2018 with PyG's parameterisation
  (``lin``, ``att_src``, ``att_dst``, ``bias``), no activation inside. See its docstring.
* ``cooccurrence_mask(cooccurrence, counts, tau)`` — ``(B + I) > 0`` of ML-GCN's conditional-probability graph
  (the attention mask of ML-GAT).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mlic_edge.label_graph import conditional_edges

__all__ = ["GraphConvolution", "DenseGATLayer", "cooccurrence_mask"]


def cooccurrence_mask(cooccurrence: np.ndarray, counts: np.ndarray, tau: float = 0.4) -> torch.Tensor:
    """Bool (C, C): ``B_ij = 1[P(L_j | L_i) >= tau]`` plus the diagonal, i.e. ``(B + I) > 0``.

    Row i holds the labels j that i attends (``P(j | i) >= tau``: "when i is present, j usually is"). Note that
    ML-GCN's Â is built from Bᵀ (``mlgcn_adjacency``), i.e. its row i aggregates the labels that imply i.
    """
    edges = conditional_edges(cooccurrence, counts, tau)
    return torch.from_numpy((edges + np.eye(len(edges))) > 0)


class GraphConvolution(nn.Module):
    """One GCN layer as in ML-GCN: ``H' = adj @ (H @ W) [+ b]`` (no activation; the caller applies one).

    ``weight`` is (in_features, out_features), initialised U(±1/√out_features) like the ML-GCN reference; the
    optional ``bias`` (out_features,) uses the same range. ``x`` is (N, in) or (B, N, in); ``adj`` is (N, N) or
    (B, N, N).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.out_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        out = adj @ (x @ self.weight)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class DenseGATLayer(nn.Module):
    """Dense multi-head graph attention layer (GAT, Veličković et al. 2018), numerically equal to PyG's
    ``DenseGATConv`` for ``residual=False`` (METHODS.md §2)::

        h_i^k  = Θ^k x_i                                          (Θ = ``lin``, no bias; k = head)
        e_ij^k = LeakyReLU(att_dst^k · h_i^k + att_src^k · h_j^k)  (= aᵀ[h_i ‖ h_j], a = [att_dst; att_src])
        α_ij^k = softmax over j with adj[i, j] != 0 (plus j = i when ``add_self_loops``), then dropout
        out_i  = concat_k (Σ_j α_ij^k h_j^k)    if concat  → heads·out_features
                 mean_k  (Σ_j α_ij^k h_j^k)     otherwise  → out_features
        out_i += bias;  out_i += residual(x_i, h_i)

    Args:
        in_features, out_features: per-node input width and per-head output width.
        heads: number of attention heads.
        concat: concatenate heads (hidden GAT layers) or average them (GAT's output layer).
        negative_slope: LeakyReLU slope of the attention scores (0.2 in GAT).
        dropout: dropout on the attention coefficients α (training only; GAT uses 0.6).
        residual: ``False``/``"none"``: no residual. ``True``/``"input"``: add x itself when its width equals the
            output width, else ``Linear(x)`` without bias (DGL style). ``"linear"``: always ``Linear(x)`` without
            bias (PyG ``GATConv(residual=True)``). ``"projected"``: add ``h = Θx`` (heads concatenated/averaged like
            the output; the pyGAT/MSRN ``α h + h`` form).
        bias: learnable bias added after concat/mean, zero-initialised (PyG).
        add_self_loops: always let each node attend itself (PyG ``add_loop``); without it a row with no
            neighbour outputs zero (plus bias/residual) instead of NaN.

    No activation is applied: the caller applies σ (ELU in GAT). Init: Glorot for Θ and a, zeros for the bias
    (PyG). ``forward(x, adj)``: x (N, in) or (B, N, in); adj (N, N) or (B, N, N), any dtype, nonzero = edge.
    ``attention(x, adj)`` returns α (…, heads, N, N) and h (…, heads, N, out) for inspection.
    """

    _RESIDUAL_MODES = ("none", "input", "linear", "projected")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        residual: bool | str = False,
        bias: bool = True,
        add_self_loops: bool = True,
    ) -> None:
        super().__init__()
        if residual is True:
            residual = "input"
        elif residual is False or residual is None:
            residual = "none"
        if residual not in self._RESIDUAL_MODES:
            raise ValueError(f"residual must be a bool or one of {self._RESIDUAL_MODES}, got {residual!r}")
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.in_features, self.out_features, self.heads = in_features, out_features, heads
        self.concat, self.negative_slope, self.dropout = concat, negative_slope, dropout
        self.residual, self.add_self_loops = residual, add_self_loops
        self.out_total = heads * out_features if concat else out_features

        self.lin = nn.Linear(in_features, heads * out_features, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_features))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_features))
        self.bias = nn.Parameter(torch.empty(self.out_total)) if bias else None
        if residual == "linear" or (residual == "input" and in_features != self.out_total):
            self.res = nn.Linear(in_features, self.out_total, bias=False)
        else:
            self.res = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.lin.weight)
        for att in (self.att_src, self.att_dst):  # Glorot on the (heads, out) slice, as PyG's glorot()
            bound = math.sqrt(6.0 / (att.shape[-2] + att.shape[-1]))
            nn.init.uniform_(att, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.res is not None:
            nn.init.xavier_uniform_(self.res.weight)

    def attention(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """α (…, heads, N, N), rows summing to 1 over allowed j (before dropout), and h (…, heads, N, out)."""
        n = x.shape[-2]
        h = self.lin(x).unflatten(-1, (self.heads, self.out_features)).transpose(-3, -2)  # (…, H, N, F)
        score_dst = (h * self.att_dst.transpose(0, 1)).sum(-1)  # (…, H, N): target i
        score_src = (h * self.att_src.transpose(0, 1)).sum(-1)  # (…, H, N): source j
        scores = F.leaky_relu(score_dst.unsqueeze(-1) + score_src.unsqueeze(-2), self.negative_slope)
        allowed = adj != 0
        if self.add_self_loops:
            allowed = allowed | torch.eye(n, dtype=torch.bool, device=adj.device)
        allowed = allowed.unsqueeze(-3)  # broadcast over heads
        # A finite fill (not -inf): exp underflows to exactly 0 all the same, and a row with no allowed j (only
        # possible without self-loops) stays finite, gradients included, before it is zeroed below.
        alpha = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)
        if not self.add_self_loops:  # no neighbour, no message
            alpha = alpha.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
        return alpha, h

    def _merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(…, H, N, F) → (…, N, H·F) or (…, N, F)."""
        if self.concat:
            return t.transpose(-3, -2).flatten(-2)
        return t.mean(dim=-3)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        alpha, h = self.attention(x, adj)
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = self._merge_heads(alpha @ h)
        if self.bias is not None:
            out = out + self.bias
        if self.residual == "projected":
            out = out + self._merge_heads(h)
        elif self.residual != "none":
            out = out + (x if self.res is None else self.res(x))
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, heads={self.heads}, concat={self.concat}, "
                f"dropout={self.dropout}, residual={self.residual!r}, bias={self.bias is not None}, "
                f"add_self_loops={self.add_self_loops}")
