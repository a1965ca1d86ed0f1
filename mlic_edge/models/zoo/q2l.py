"""Q2L: ResNeSt + Query2Label transformer + BatchFormerV2 (seed paper 003, 王贺 & 张震, 测试技术学报 2024, 38(1): 48-53).

Pipeline (paper §1, Fig. 1 and Fig. 4; details from /work/shared/METHODS.md §3):

1. Backbone (paper §1.1, Fig. 2-3): a timm CNN built with ``num_classes=0, global_pool=""``; ``forward_features``
   gives the last stage's map (B, C_b, H, W) — ResNeSt-101e: 2048 × 14 × 14 at 448. Plain timm BatchNorm
   (not Q2L's FrozenBatchNorm, no frozen stem/layer1: the trainer owns freezing policy).
2. ``input_proj``: 1×1 conv to ``hidden_dim`` when C_b ≠ ``hidden_dim`` (Identity by default: d = C_b).
3. 2-D DETR sine positional encoding, added to the attention queries and keys only (never values).
4. Transformer encoder (``enc_layers=1``), multi-head attention of Eq. (1), ``Z = softmax(QKᵀ/√d) V``.
5. Training only, ``batchformer=True``: BatchFormerV2, Eq. (2) — ``Z_i = softmax(Q_i K_iᵀ/√d) V_i`` with
   ``Q_i, K_i, V_i ∈ R^{B×C}`` at every one of the N = H·W positions, ``Z = concat(Z_1..Z_N) ∈ R^{B×N×C}``. The
   memory X and BF(X) are concatenated along the batch ("两个分支进行融合得到键值对"), and the decoder and classifier are
   shared between the two streams; targets are duplicated. BF is deleted at test time (paper §1), so ``forward`` and
   the exported graph never contain it.
6. Decoder (``dec_layers=2``): label queries (tgt = 0, learnable ``query_pos = nn.Embedding(C, d)``) cross-attend the
   memory ("交叉注意力可以自适应地提取局部特征"), FFN; decoder self-attention removed (Q2L default).
7. ``GroupWiseLinear``: one linear classifier per label embedding -> logits (N, C).

Where the seed is ambiguous, METHODS.md §3 is followed:

- BF placement. The paper says the two branches *share* the Transformer Encoder and that their key/values are fused
  for the decoder, without saying whether BF comes before or after the (single) encoder layer. Following METHODS.md
  (BatchFormerV2's ``--bf 1``: after the whole encoder), BF is applied to the encoder output.
- BF hyperparameters (not in the paper): ``nn.TransformerEncoderLayer(d, num_heads, dim_feedforward=d,
  dropout=bf_dropout=0.5)``, post-norm, no positional encoding, as in BatchFormerV2's DETR code.
- d = the backbone's width (2048 for ResNeSt-101e/ResNet-101, as Q2L's configs set ``--hidden_dim``), FFN 4d
  (8192), 4 heads, dropout 0.1, 1 encoder / 2 decoder layers, no decoder self-attention, xavier init,
  GroupWiseLinear — Q2L's defaults (the paper gives none of them).
- The paper's Eq. (3)-(5) (AP/mAP) are the metrics, implemented elsewhere (mlic_edge.metrics).

Export: the positional encoding is recomputed in ``forward`` from the feature-map shape (``arange`` over H and W,
broadcast over the batch), so the same module serves any image size and exports with a dynamic batch axis; onnxsim
then folds it to a constant for the export size. ``fold_static()`` returns :class:`Q2LInference`, which shares every
submodule except BatchFormerV2, so no BF weight reaches the ONNX file.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mlic_edge.errors import MlicError
from mlic_edge.models.backbone import create_backbone
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.models.layers.transformer import (
    BatchFormerV2,
    GroupWiseLinear,
    Q2LTransformer,
    sine_position_encoding,
)
from mlic_edge.models.recipe import Recipe, quick_at
from mlic_edge.models.registry import register_model


def _encode(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone -> projection -> encoder: memory (HW, B, d) and the positional encoding (HW, 1, d)."""
    features = model.backbone.forward_features(images)
    if features.dim() != 4:
        raise MlicError(f"q2l needs a CNN backbone with (N, C, H, W) features; {model.backbone_name!r} gives "
                        f"shape {tuple(features.shape)}", hint="use a ResNet/ResNeSt-like timm backbone")
    src = model.input_proj(features)
    pos = sine_position_encoding(src, model.query_embed.embedding_dim)
    src = src.flatten(2).permute(2, 0, 1)  # (HW, B, d)
    return model.transformer.encode(src, pos), pos


def _decode(model: nn.Module, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Label queries cross-attend the memory -> GroupWiseLinear logits (B, C)."""
    # query_pos (C, d), broadcast over the batch inside the decoder.
    hidden = model.transformer.decode(memory, pos, model.query_embed.weight)  # (C, B, d)
    return model.head(hidden.transpose(0, 1))


PAPER_RECIPE = Recipe(
    source="paper 003 §2.1 with the Query2Label official code (SlongLiu/query2labels main_mlc.py; METHODS.md §3) "
           "where it is silent: AdamW, weight decay 1e-2, OneCycle (20 % rise), EMA 0.9997 (the better of EMA and "
           "raw weights kept), RandAugment and Cutout, 448 px, ASL γ-=2 γ+=0 clip 0, no gradient clipping, the "
           "backbone's BatchNorm frozen and its stem and first stage not trained (Query2Label's backbone.py). Paper "
           "003 trains 25 epochs and states an initial lr of 1e-6, read as Query2Label's 1e-4 (at 1e-6 nothing "
           "learns in 25 epochs); its cutmix (probability 0.5, chosen: the paper gives none) beside Query2Label's "
           "Cutout; "
           "its normalisation, mean 0 and std 1 (paper 003 §2.1); batch 32 chosen for one GPU",
    optimizer="adamw", lr=1e-4, weight_decay=1e-2, schedule="onecycle", warmup_epochs=0.0, epochs=25,
    batch_size=32, img_size=448, grad_clip=None, ema_decay=0.9997, crop_scale=0.6,
    augment=("randaugment", "cutout", "cutmix"), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    frozen_bn=True, frozen_stem=True, loss="asl", loss_options={"gamma_neg": 2.0, "gamma_pos": 0.0, "clip": 0.0})


QUICK_RECIPE = quick_at(3e-4, (
    "for Q2L lr 3e-4: at the shared 3e-3 its transformer never learnt (the zoo benchmark's set, loss "
    "stuck at the label prior, val mAP 23-28 % over 5 epochs), at 1e-3 it reached 38.8 % by epoch 5; at 3e-4 "
    "with bce it over-fitted (training loss under the baseline's, mAP 55.3 / 49.9 / 52.5 at seeds 0-2), so it "
    "keeps Query2Label's own regularisation: weight decay 1e-2, Cutout and the ASL loss (its defaults), which "
    "gave 55.9 / 55.9 / 57.3 against the baseline's 55.4 / 55.9 / 57.3")).with_changes(
    weight_decay=1e-2, augment=("cutout",), loss="asl")


@register_model(name="q2l", paper="ResNeSt + improved Transformer + BatchFormerV2 (Wang & Zhang 2024; Query2Label)",
                default_backbone="resnest101e", default_img_size=448, recipe=PAPER_RECIPE, quick=QUICK_RECIPE)
class Q2L(MultiLabelModel):
    """Query2Label transformer on ResNeSt features, with a train-only BatchFormerV2 stream (seed 003)."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnest101e",
        pretrained: bool = False,
        pretrained_file: str | None = None,
        hidden_dim: int | None = None,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        enc_layers: int = 1,
        dec_layers: int = 2,
        dropout: float = 0.1,
        batchformer: bool = True,
        bf_dropout: float = 0.5,
        decoder_self_attention: bool = False,
    ) -> None:
        super().__init__("q2l", num_classes, backbone)
        self.backbone = create_backbone(backbone, pretrained, pretrained_file, global_pool="")
        channels = int(self.backbone.num_features)
        hidden_dim = hidden_dim or channels  # Query2Label's --hidden_dim is its backbone's width (2048 for R101)
        ffn_dim = ffn_dim or 4 * hidden_dim
        if hidden_dim % num_heads or hidden_dim % 4:
            raise MlicError(f"q2l hidden_dim={hidden_dim} must be divisible by num_heads={num_heads} and by 4",
                            hint="e.g. hidden_dim 2048 (paper) or 64 with 4 heads")
        self.hyperparameters = dict(hidden_dim=hidden_dim, num_heads=num_heads, ffn_dim=ffn_dim,
                                    enc_layers=enc_layers, dec_layers=dec_layers, dropout=dropout,
                                    batchformer=batchformer, bf_dropout=bf_dropout,
                                    decoder_self_attention=decoder_self_attention)
        self.input_proj = nn.Conv2d(channels, hidden_dim, 1) if channels != hidden_dim else nn.Identity()
        self.transformer = Q2LTransformer(hidden_dim, num_heads, ffn_dim, enc_layers, dec_layers, dropout,
                                          decoder_self_attention)
        self.batchformer = BatchFormerV2(hidden_dim, num_heads, bf_dropout) if batchformer else None
        self.query_embed = nn.Embedding(num_classes, hidden_dim)
        self.head = GroupWiseLinear(num_classes, hidden_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Inference graph (also in training mode): never runs BatchFormerV2."""
        memory, pos = _encode(self, images)
        return _decode(self, memory, pos)

    def training_loss(self, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
        """With BatchFormerV2 (training only): ``criterion(logits_2B, cat([targets, targets]))`` over both streams."""
        if not (self.training and self.batchformer is not None):
            return criterion(self(images), targets)
        memory, pos = _encode(self, images)
        logits = _decode(self, self.batchformer(memory), pos)
        return criterion(logits, torch.cat([targets, targets], dim=0))

    def fold_static(self) -> nn.Module:
        return Q2LInference(self).eval()


class Q2LInference(nn.Module):
    """The exported Q2L: shares the trained submodules, without BatchFormerV2 (deleted at test time, paper §1)."""

    def __init__(self, model: Q2L) -> None:
        super().__init__()
        self.backbone_name = model.backbone_name
        self.backbone = model.backbone
        self.input_proj = model.input_proj
        self.transformer = model.transformer
        self.query_embed = model.query_embed
        self.head = model.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        memory, pos = _encode(self, images)
        return _decode(self, memory, pos)
