"""Transformer parts of Query2Label (Q2L) and BatchFormerV2, built from plain ``torch.nn`` modules.

Everything here follows /work/shared/METHODS.md §3 (DETR-style, post-norm, sequence-first tensors ``(L, B, d)``):

- :func:`sine_position_encoding` — DETR's 2-D sine encoding (normalised, scale 2π, T = 10000, d/2 features per axis,
  ``[y, x]`` order). It depends only on the feature-map size, so it is computed from shapes in ``forward`` with ops
  that export with a dynamic batch (``arange`` on the spatial sizes; the batch axis is broadcast, never materialised).
- :class:`Attention` — ``nn.MultiheadAttention``'s computation with its four projections as ``nn.Linear`` modules
  (so quantization-aware fine-tuning reaches the in-projection); ``nn.MultiheadAttention``'s state loads into it.
- :class:`EncoderLayer` / :class:`DecoderLayer` — post-norm layers; the positional encoding is added to the
  **queries and keys only**, never to the values. The decoder layer can drop its self-attention (Q2L's default).
- :class:`Q2LTransformer` — ``encode`` (encoder layers, no final norm in post-norm) and ``decode`` (decoder layers
  plus a final ``LayerNorm``), kept separate so BatchFormerV2 can sit between them.
- :class:`GroupWiseLinear` — one linear classifier per label query: ``z_k = Σ_d W_{k,d} h_{k,d} + b_k``.
- :class:`BatchFormerV2` — an ``nn.TransformerEncoderLayer`` applied across the *batch* at every spatial position.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping

import torch
import torch.nn as nn
import torch.nn.functional as F


def sine_position_encoding(features: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's 2-D sine encoding for a ``(B, *, H, W)`` feature map, returned as ``(H*W, 1, dim)`` (broadcasts over B).

    As DETR with no padding mask: ``y = (1..H) / (H + 1e-6) · 2π``, ``x`` likewise; ``dim/2`` features per axis,
    ``sin`` on even and ``cos`` on odd frequencies interleaved, then ``cat([pos_y, pos_x])``. Only the spatial sizes of
    ``features`` are read, so a traced/ONNX graph depends on H and W, never on the batch.
    """
    if dim % 4:
        raise ValueError(f"the sine encoding needs a hidden size divisible by 4, got {dim}")
    height, width = features.shape[-2], features.shape[-1]
    num_feats = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=features.device)
    x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=features.device)
    y_embed = y_embed / (y_embed[-1:] + eps) * scale  # (H,)
    x_embed = x_embed / (x_embed[-1:] + eps) * scale  # (W,)
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=features.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_y = y_embed[:, None] / dim_t  # (H, F)
    pos_x = x_embed[:, None] / dim_t  # (W, F)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((pos_y[:, None, :].expand(-1, width, -1), pos_x[None, :, :].expand(height, -1, -1)), dim=2)
    return pos.reshape(-1, 1, dim).to(features.dtype)  # (H*W, 1, d), row-major like features.flatten(2)


IN_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def split_in_projection(state: MutableMapping[str, torch.Tensor], prefix: str) -> None:
    """``nn.MultiheadAttention``'s packed in-projection under ``prefix`` (``in_proj_weight`` (3d, d), ``in_proj_bias``
    (3d), query rows first) replaced in ``state`` by :class:`Attention`'s ``{q,k,v}_proj.{weight,bias}``."""
    for packed, part in (("in_proj_weight", "weight"), ("in_proj_bias", "bias")):
        if prefix + packed in state:
            for name, chunk in zip(IN_PROJECTIONS, state.pop(prefix + packed).chunk(len(IN_PROJECTIONS))):
                state[f"{prefix}{name}.{part}"] = chunk


class Attention(nn.Module):
    """``nn.MultiheadAttention(dim, num_heads, dropout)`` on sequence-first tensors without masks, its query, key,
    value and output projections ``nn.Linear`` modules.

    ``nn.MultiheadAttention`` runs its in-projection as ``F.linear`` on one packed parameter, which quantizers acting
    on Linear modules (ModelOpt, so ``mlic-edge qat`` and the build's fine-tuning) neither simulate nor fine-tune:
    an int8 graph then had to keep it float. Same initialisation (xavier over the packed (3d, d) in-projection,
    biases 0) and the same state: checkpoints written with ``nn.MultiheadAttention`` (``in_proj_weight``,
    ``in_proj_bias``) load, split in three (:func:`split_in_projection`).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        packed = torch.empty(len(IN_PROJECTIONS) * self.out_proj.in_features, self.out_proj.in_features)
        nn.init.xavier_uniform_(packed)
        with torch.no_grad():
            for name, chunk in zip(IN_PROJECTIONS, packed.chunk(len(IN_PROJECTIONS))):
                getattr(self, name).weight.copy_(chunk)
                getattr(self, name).bias.zero_()
            self.out_proj.bias.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        split_in_projection(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``query`` (L, B, d), ``key`` and ``value`` (S, B, d) -> (L, B, d)."""
        def heads(tensor: torch.Tensor) -> torch.Tensor:  # (N, B, d) -> (B·heads, N, d/heads)
            return tensor.reshape(tensor.shape[0], -1, self.head_dim).transpose(0, 1)

        attended = F.scaled_dot_product_attention(heads(self.q_proj(query)), heads(self.k_proj(key)),
                                                  heads(self.v_proj(value)),
                                                  dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(attended.transpose(0, 1).reshape(query.shape[0], -1, self.out_proj.in_features))


def _with_pos(tensor: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return tensor if pos is None else tensor + pos


class EncoderLayer(nn.Module):
    """Post-norm encoder layer: self-attention (pos on q, k) then a ReLU FFN, each with residual + LayerNorm."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: [self-attention,] cross-attention to the memory, FFN.

    Q2L removes the self-attention of every decoder layer by default (``self_attention=False``): the layer then has
    no ``self_attn``/``norm1``/``dropout1`` at all. ``query_pos`` ((C, d) or (C, 1, d)) is added to the query of
    every attention, ``pos`` to the memory keys of the cross-attention (never to values).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        if self_attention:
            self.self_attn = Attention(dim, num_heads, dropout)
            self.dropout1 = nn.Dropout(dropout)
            self.norm1 = nn.LayerNorm(dim)
        self.has_self_attention = self_attention
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None,
                query_pos: torch.Tensor | None) -> torch.Tensor:
        if query_pos is not None and query_pos.dim() == 2:
            # Unsqueezed here, not by the caller: a no-grad view of a parameter passed as a module argument breaks
            # torch's module tracker (FlopCounterMode, used by ``mlic-edge models``).
            query_pos = query_pos.unsqueeze(1)
        if self.has_self_attention:
            q = k = _with_pos(tgt, query_pos)
            tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)))
        attended = self.cross_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory)
        tgt = self.norm2(tgt + self.dropout2(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class Q2LTransformer(nn.Module):
    """Q2L's transformer: ``encode`` (post-norm, so no final encoder norm) and ``decode`` (final ``LayerNorm``).

    Parameters with more than one dimension are xavier-uniform initialised, as in DETR/Q2L (each attention's
    in-projection as one packed (3d, d) matrix, as there).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, enc_layers: int, dec_layers: int, dropout: float,
                 decoder_self_attention: bool) -> None:
        super().__init__()
        if dec_layers < 1:
            raise ValueError("Q2L needs at least one decoder layer")
        self.encoder = nn.ModuleList(EncoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim, dropout, decoder_self_attention)
                                     for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, Attention):
                module.reset_parameters()

    def encode(self, src: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """``src`` (HW, B, d) -> memory (HW, B, d)."""
        for layer in self.encoder:
            src = layer(src, pos)
        return src

    def decode(self, memory: torch.Tensor, pos: torch.Tensor | None, query_pos: torch.Tensor) -> torch.Tensor:
        """memory (HW, B, d), ``query_pos`` (C, d) -> label embeddings (C, B, d); the decoder input is zeros."""
        # tgt = 0 of shape (C, B, d), built from shapes only (dynamic batch in ONNX).
        tgt = torch.zeros_like(memory[:1]).expand(query_pos.shape[0], -1, -1)
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos)
        return self.decoder_norm(tgt)


class GroupWiseLinear(nn.Module):
    """``z_k = Σ_d W_{k,d} h_{k,d} + b_k`` for label embeddings ``h`` (B, C, d); W, b ~ U(±1/√d)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, num_classes, dim))
        self.bias = nn.Parameter(torch.empty(1, num_classes))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return (self.weight * hidden).sum(-1) + self.bias


class BatchFormerV2(nn.Module):
    """BatchFormerV2 (Hou et al. 2022): ``nn.TransformerEncoderLayer(d, heads, dim_feedforward=d, dropout)`` over the
    batch at each spatial position; returns ``cat([X, BF(X)])`` along the batch (2B).

    ``X`` is the encoder memory (HW, B, d). BF runs on ``Xᵀ`` (B, HW, d) with ``batch_first=False``: the *sequence* is
    the batch and the HW positions act as the batch, so at every position the samples attend to each other. No
    positional encoding. Train-time only: the model never calls it in eval and drops it from the exported graph.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=dim, dropout=dropout)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        mixed = self.layer(memory.transpose(0, 1)).transpose(0, 1)
        return torch.cat([memory, mixed], dim=1)
