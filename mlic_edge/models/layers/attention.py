"""Per-label spatial attention and squeeze-and-excitation, as used by Xue et al. 2019 (``semdep``) and SRN.

Everything here exports to ONNX (opset 17, dynamic batch) with plain ops: ``Softmax`` on a flattened last axis,
``ReduceMean``, ``Gemm``/``MatMul``, ``Sigmoid`` and ``Mul``; no adaptive pooling, no in-place tricks.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def spatial_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the H·W positions of each channel: (B, C, H, W) -> (B, C, H, W), each map sums to 1.

    Xue et al. eq. (4): a^l_ij = exp(z^l_ij) / Σ_ij exp(z^l_ij).
    """
    return torch.softmax(logits.flatten(2), dim=-1).view_as(logits)


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al.): x · σ(W2 ReLU(W1 GAP(x))), one gate per channel.

    Xue et al. eqs. (5)–(7): squeeze z_l = mean_ij a^l(i, j) (5), excitation s = σ(W2 δ(W1 z)) (6) and reweight
    ã_l = a^l · s_l (7). Eq. (6) prints σ for the inner activation too; we read it, as in the SE paper the authors
    cite, as ReLU (δ). Both FC layers have a bias (SE reference code). Hidden width = max(1, channels // reduction).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"SEBlock needs channels >= 1 and reduction >= 1, got {channels}, {reduction}")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def excite(self, squeeze: torch.Tensor) -> torch.Tensor:
        """The per-channel weights s of a squeeze z, (B, C) -> (B, C): eq. (6)."""
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(squeeze))))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel weights s of ``x``, (B, C)."""
        return self.excite(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]


class LabelAttention(nn.Module):
    """SRN's f_att / Xue et al.'s conv_att: 1×1 ``hidden`` → 3×3 ``hidden`` → 1×1 C convs, ReLU between them.

    ``forward`` returns ``(Z, A)``: the label score maps Z (B, C, H, W) of eq. (3) and the attention maps
    A = spatial_softmax(Z) of eq. (4).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(hidden, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(features)))))
        return z, spatial_softmax(z)
