"""Query2Label (S. Liu, L. Zhang, X. Yang, H. Su, J. Zhu, "Query2Label: A Simple Transformer Way to Multi-Label
Classification", arXiv:2107.10834, 2021; official code SlongLiu/query2labels): a released ``checkpoint.pkl`` and its
``config_new.json`` loaded into the zoo's ``q2l`` model (built with ``batchformer=False``: no train-only tensors).

The file: a dict whose ``state_dict`` (or ``model``) holds the official model's tensors, with a DDP ``module.``
prefix or without (the EMA copy); a training checkpoint also holds ``epoch``, ``arch``, ``best_mAP`` (a numpy
float64, which the framework's weights-only allowlist accepts) and ``optimizer``, none of them used here.

Key mapping, official -> ours (N: a layer index). Every official attention is an ``nn.MultiheadAttention``
(``in_proj_weight`` (3d, d), ``in_proj_bias`` (3d), ``out_proj.{weight,bias}``); ours is its computation with four
``nn.Linear`` (``mlic_edge/models/layers/transformer.py`` ``Attention``): the packed in-projection is split in three,
query rows first, into ``{q,k,v}_proj.{weight,bias}`` [7]; ``out_proj`` keeps its names.

=================================================  ===========================================  ==========
official                                           ours                                         transform
=================================================  ===========================================  ==========
``backbone.0.body.{conv1,bn1,layer1..4}.*``        ``backbone.{conv1,bn1,layer1..4}.*``         none [1]
(ResNet)
``backbone.0.body.body.*`` (TResNet)               ``backbone.body.*``                          [2]
``backbone.1.pe`` (1, d, S/32, S/32)               (none: computed from the feature map)        checked [3]
``input_proj.{weight,bias}`` (keep_input_proj)     ``input_proj.{weight,bias}``                 none [4]
``transformer.encoder.layers.N.{self_attn,         ``transformer.encoder.N.{same}.*``           split [7]
linear1,linear2,norm1,norm2}.*``
``transformer.decoder.layers.N.multihead_attn.*``  ``transformer.decoder.N.cross_attn.*``       split [7]
``transformer.decoder.layers.N.{linear1,linear2,   ``transformer.decoder.N.{same}.*``           none
norm2,norm3}.*``
``transformer.decoder.layers.N.{self_attn,         ``transformer.decoder.N.{same}.*``           [5], split [7]
norm1}.*``
``transformer.decoder.norm.{weight,bias}``         ``transformer.decoder_norm.{weight,bias}``   none
``query_embed.weight`` (C, d)                      ``query_embed.weight`` (C, d)                none
``fc.W`` (1, C, d), GroupWiseLinear [6]            ``head.weight`` (1, C, d)                    none
``fc.b`` (1, C)                                    ``head.bias`` (1, C)                         none
=================================================  ===========================================  ==========

[1] torchvision ``resnet{18,34,50,101}`` behind ``IntermediateLayerGetter`` (layer4 only): the same tensor names as
    timm's ResNet of that depth, which is read from the tensors (bottleneck blocks or not; blocks per stage 2-2-2-2,
    3-4-6-3, 3-4-6-3, 3-4-23-3). Its norms are ``FrozenBatchNorm2d``: the buffers ``weight, bias, running_mean,
    running_var`` (no ``num_batches_tracked``: ``load_mapped`` fills 0) and ``y = x·s + (b − rm·s)`` with
    ``s = w / sqrt(rv + 1e-5)``, i.e. BatchNorm in eval mode with eps 1e-5, the eps of our timm BatchNorm (checked
    at import). The imported model is used in eval mode, where BatchNorm only reads its running statistics, so
    there is no drift. Training the imported run would treat them as ordinary BatchNorm (batch statistics, running
    statistics updated, affine parameters learned) where the official trainer kept them frozen: freezing is the
    trainer's policy, not the model's.
[2] The official TResNet (``tresnet_sync.py``, from Alibaba-MIIL/TResNet) is timm's ``tresnet_l`` (``tresnet_xl``
    for ``tresnetxl``) with other module names: ``convK.0.0`` / ``convK.0.1`` (the stride-2 convolutions followed by
    anti-aliasing: layer2.0.conv1, layer3.0.conv2, layer4.0.conv2) and ``convK.0`` / ``convK.1`` elsewhere become
    ``convK.conv`` / ``convK.bn``; ``downsample.1.0`` / ``downsample.1.1`` become ``downsample.1.conv`` /
    ``downsample.1.bn``; ``se.*`` keeps its names. Its norms are InPlaceABN, whose affine scale is ``|w| + eps``
    (mapillary/inplace_abn, CPU and CUDA kernels; eps 1e-5, the default TResNet keeps): every ``*.bn.weight``
    becomes ``|w| + 1e-5`` for our BatchNorm (eps 1e-5 as well); bias and running statistics are copied. This is
    also timm's own rule for the original TResNet weights (``timm.models.tresnet.checkpoint_filter_fn``).
    ``tresnetl_v2`` (Q2L-TResL_22k, bottleneck blocks from layer1: ``layer1.0.conv3.0.weight``) is not supported.
[3] The official sine encoding is a persistent buffer of the training size S (its model runs only at S). Ours
    computes the same encoding from the feature map (so it runs at any size); the buffer is compared with ours and
    the file refused if they differ beyond float tolerance. Its size gives the training size.
[4] Ours has ``input_proj`` exactly when the backbone width differs from ``hidden_dim``, the official model exactly
    when ``keep_input_proj``: a 1×1 projection between equal widths is refused.
[5] Only where every decoder layer kept its self-attention (``keep_first_self_attn_dec`` and
    ``keep_other_self_attn_dec``; ``decoder_self_attention=True`` in ours); the released models keep none.
[6] ``z_c = sum_d W[0, c, d] · h[c, d] + b[0, c]`` on both sides: no transpose.
[7] ``in_proj_weight[0:d]`` is the query's projection, ``[d:2d]`` the key's, ``[2d:3d]`` the value's, as
    ``F.multi_head_attention_forward`` slices it (``split_in_projection``); the biases likewise.

Hyperparameters come from ``--config config_new.json`` where it gives them, and are checked against the tensors:
``hidden_dim`` (``query_embed`` width), ``dim_feedforward`` (``linear1`` rows), ``enc_layers`` / ``dec_layers``
(layer indices), ``num_class``, ``keep_input_proj``, the two self-attention flags, ``backbone``, ``img_size`` (the
encoding buffer). ``nheads`` is not in the tensors (another count has the same shapes, and scores differently): the
config's is taken on trust; without one in it, 4 (every released model's) only for the released sizes, otherwise
refused. ``orid_norm`` selects mean 0 / std 1 instead of ImageNet's; without it, ImageNet's, the official scripts'
default for every backbone. Both are said at import and recorded in run.json (``imported.taken_on_trust``: the value
and where it came from). ``pre_norm``, a partial decoder self-attention, another positional
encoding and other backbones (Swin, CvT, TResNet-v2) are refused, naming the option. Labels: category-id order for
COCO, as our COCO reader. Input size: ``--img-size``, else the training size the encoding buffer gives (448; 576 for
Q2L-R101-576), which a config's ``img_size`` must agree with. The official evaluation ran under fp16 autocast where
``amp`` was set; ours runs fp32.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mlic_edge.models.official import (
    TORCHVISION_RESNETS,
    resnet_layout,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Imported,
    ImportOptions,
    ImportRefused,
    load_mapped,
    official_key,
    official_labels,
    renamed_key,
)
from mlic_edge.models.layers.transformer import split_in_projection

PAPER = "Query2Label"
NORM_EPS = 1e-5  # FrozenBatchNorm2d's hard-coded eps and InPlaceABN's default; also timm BatchNorm's
FEATURE_STRIDE = 32
ENCODING_TOLERANCE = 1e-4
RELEASED_HEADS = 4
RELEASED_DEFAULT, OFFICIAL_DEFAULT = "the released default", "the official default"
RELEASED_SIZES = {(2048, 8192, 1, 2), (2432, 2432, 1, 2)}  # (hidden_dim, dim_feedforward, enc, dec): R101, TResL
HINT = "give the checkpoint.pkl and config_new.json released together (mapping: mlic_edge/models/official/q2l.py)"

RESNET_BODY, TRESNET_BODY = "backbone.0.body.", "backbone.0.body.body."
ENCODING_KEY = "backbone.1.pe"
TRESNETS = {(4, 5, 18, 3): "tresnet_l", (4, 5, 24, 3): "tresnet_xl"}  # basic blocks in layer1-2 (TResNet v1)
UNSUPPORTED_TRESNETS = {(3, 4, 23, 3): "the official tresnetl_v2, Q2L-TResL_22k"}  # bottleneck blocks throughout
OFFICIAL_BACKBONES = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                      "resnet101": "resnet101", "tresnetl": "tresnet_l", "tresnetxl": "tresnet_xl"}

KEY_RULES = [
    ("backbone.0.body.", "backbone."),
    ("transformer.encoder.layers.", "transformer.encoder."),
    ("transformer.decoder.layers.", "transformer.decoder."),
    ("transformer.decoder.norm.", "transformer.decoder_norm."),
    ("fc.W", "head.weight"),
    ("fc.b", "head.bias"),
]
CROSS_ATTENTION = re.compile(r"^(transformer\.decoder\.\d+\.)multihead_attn\.")
TRESNET_CONV = re.compile(r"\.(conv\d+)\.(?:0\.)?([01])\.")  # convK.0.0 / convK.0.1 (anti-aliased) or convK.0 / .1
TRESNET_DOWNSAMPLE = re.compile(r"\.downsample\.1\.([01])\.")  # downsample.0 is the AvgPool
TRESNET_PART = {"0": "conv", "1": "bn"}
OUR_TRESNET_PART = re.compile(r"^(backbone\..*\.(?:conv\d+|downsample\.1))\.(conv|bn)\.")
OUR_CROSS_ATTENTION = re.compile(r"^(transformer\.decoder\.\d+\.)cross_attn\.")
OUR_IN_PROJECTION = re.compile(r"\.[qkv]_proj\.(weight|bias)$")


@dataclass(frozen=True)
class Architecture:
    """What the tensors say about the official model."""

    backbone: str  # timm name
    num_classes: int
    hidden_dim: int
    ffn_dim: int
    enc_layers: int
    dec_layers: int
    decoder_self_attention: bool
    input_proj: bool
    trained_size: int  # pixels, from the positional-encoding buffer

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        return self.hidden_dim, self.ffn_dim, self.enc_layers, self.dec_layers


@dataclass(frozen=True)
class TrainingArgument:
    """A training argument the tensors do not hold: its value, where it came from ("config FILE" or a default) and
    what to tell the user, if anything."""

    value: Any
    origin: str
    note: str | None = None

    def record(self) -> dict[str, Any]:
        """As run.json keeps it."""
        return {"value": self.value, "from": self.origin}


def convert(state: dict[str, torch.Tensor], options: ImportOptions, source: Path) -> Imported:
    """The official Query2Label tensors in our ``q2l`` (eval mode), refused in one line where they do not fit."""
    from mlic_edge.models.registry import create_model

    config = read_config(options.config)
    refuse_unsupported_options(config)
    architecture = infer_architecture(state, source)
    check_config(config, architecture)
    labels, label_note = official_labels(options.labels, architecture.num_classes, PAPER, coco_order="category-id")
    heads = attention_heads(config, architecture, options.config)
    mean, std, orid_norm = normalisation(config, architecture.backbone, options.config)

    model = create_model(
        "q2l", architecture.num_classes, backbone=architecture.backbone, pretrained=False,
        hidden_dim=architecture.hidden_dim, num_heads=heads.value, ffn_dim=architecture.ffn_dim,
        enc_layers=architecture.enc_layers, dec_layers=architecture.dec_layers,
        dropout=_number(config, "dropout", float, 0.1), batchformer=False,
        decoder_self_attention=architecture.decoder_self_attention)
    refuse_other_projection(model, architecture)
    require_norm_eps(model.backbone)
    tresnet = architecture.backbone.startswith("tresnet")
    mapped, file_names = map_keys(state, tresnet=tresnet)
    load_mapped(model, mapped, source, "q2l", file_name=file_namer(file_names, model, tresnet=tresnet))

    img_size = options.img_size or architecture.trained_size
    notes = [note for note in (label_note, heads.note, orid_norm.note) if note]
    notes.append(_backbone_note(architecture.backbone))
    if img_size != architecture.trained_size:
        notes.append(f"img_size: {img_size} px as asked; the official model runs only at its training size "
                     f"{architecture.trained_size} px (a fixed positional-encoding grid), ours recomputes the "
                     "encoding for the feature map")
    if config.get("amp"):
        notes.append("the official evaluation ran under fp16 autocast (amp): the paper's mAP may differ from this "
                     "fp32 model's in the last digits")
    return Imported(model=model, labels=labels, img_size=img_size, mean=mean, std=std, notes=notes,
                    taken_on_trust={"nheads": heads.record(), "orid_norm": orid_norm.record()})


# ------------------------------------------------------------------------------------------------- config_new.json
def read_config(path: Path | None) -> dict[str, Any]:
    """The released ``config_new.json`` (the training arguments), or ``{}`` without ``--config``."""
    if path is None:
        return {}
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ImportRefused(f"--config {path} cannot be read as JSON ({type(error).__name__})", hint=HINT) from None
    if not isinstance(config, dict):
        raise ImportRefused(f"--config {path} holds no JSON object of training arguments", hint=HINT)
    return config


def refuse_unsupported_options(config: Mapping[str, Any]) -> None:
    """Options of the official model that our ``q2l`` cannot represent, each refused by name."""
    if _flag(config, "pre_norm", False):
        raise ImportRefused("config_new.json sets pre_norm (pre-LayerNorm transformer layers): our q2l is post-norm",
                            hint="only post-norm Query2Label checkpoints (the released ones) can be imported")
    if str(config.get("position_embedding", "sine")) not in ("sine", "v2"):
        raise ImportRefused(f"config_new.json sets position_embedding {config['position_embedding']!r}: our q2l has "
                            "the sine encoding only", hint="only sine-encoding checkpoints can be imported")
    backbone = config.get("backbone")
    if backbone is not None and backbone not in OFFICIAL_BACKBONES:
        raise ImportRefused(f"config_new.json sets backbone {backbone!r}, which this importer does not support",
                            hint=f"supported: {', '.join(OFFICIAL_BACKBONES)}")
    if (config.get("dec_layers", 2) != 1 and _flag(config, "keep_first_self_attn_dec", False)
            != _flag(config, "keep_other_self_attn_dec", False)):
        raise ImportRefused("config_new.json sets keep_first_self_attn_dec and keep_other_self_attn_dec differently: "
                            "our q2l keeps the decoder self-attention in all layers or none",
                            hint="only checkpoints with both flags equal can be imported")


def check_config(config: Mapping[str, Any], architecture: Architecture) -> None:
    """Refuse a config whose values the tensors contradict (another file's config, or another file)."""
    from_tensors: dict[str, Any] = {
        "hidden_dim": architecture.hidden_dim, "dim_feedforward": architecture.ffn_dim,
        "enc_layers": architecture.enc_layers, "dec_layers": architecture.dec_layers,
        "num_class": architecture.num_classes, "keep_input_proj": architecture.input_proj,
        "keep_first_self_attn_dec": architecture.decoder_self_attention,
    }
    if architecture.dec_layers > 1:
        from_tensors["keep_other_self_attn_dec"] = architecture.decoder_self_attention
    for option, found in from_tensors.items():
        if option in config:
            given = _flag(config, option, False) if isinstance(found, bool) else _number(config, option, int, 0)
            if given != found:
                raise ImportRefused(f"config_new.json sets {option} {config[option]!r} but the checkpoint's tensors "
                                    f"have {found}", hint=HINT)
    if "img_size" in config and _number(config, "img_size", int, 0) // FEATURE_STRIDE != (
            architecture.trained_size // FEATURE_STRIDE):
        raise ImportRefused(f"config_new.json sets img_size {config['img_size']!r} but the checkpoint's positional "
                            f"encoding is for {architecture.trained_size} px", hint=HINT)
    backbone = config.get("backbone")
    if backbone is not None and OFFICIAL_BACKBONES[backbone] != architecture.backbone:
        raise ImportRefused(f"config_new.json sets backbone {backbone!r} but the checkpoint's tensors are a "
                            f"{architecture.backbone}", hint=HINT)


def attention_heads(config: Mapping[str, Any], architecture: Architecture,
                    config_file: Path | None) -> TrainingArgument:
    """``nheads``, which the tensors do not hold (the heads split the attention's width): the config's, taken on
    trust, else the released models' 4 heads where the sizes are a released model's."""
    if "nheads" in config:
        heads, origin = _number(config, "nheads", int, 0), config_origin(config_file)
        note = (f"nheads: {heads}, from --config {Path(config_file).resolve()}: attention heads are not in the "
                "tensors, so the checkpoint's are taken on trust from the config (another count imports as well, "
                "and scores wrongly)")
    elif architecture.sizes in RELEASED_SIZES:
        heads, origin = RELEASED_HEADS, RELEASED_DEFAULT
        note = (f"nheads: {heads}, {RELEASED_DEFAULT} ({_not_given('nheads', config_file)}): attention heads are not "
                f"in the tensors; every released Query2Label model has {heads} (pass the config_new.json released "
                "with the checkpoint as --config to read the trained model's)")
    else:
        raise ImportRefused("the checkpoint does not store nheads and its sizes (hidden_dim, dim_feedforward, "
                            f"enc_layers, dec_layers = {architecture.sizes}) are no released model's",
                            hint="pass --config config_new.json (the training arguments saved with it)")
    if heads < 1 or architecture.hidden_dim % heads:
        raise ImportRefused(f"config_new.json sets nheads {heads}, which does not divide hidden_dim "
                            f"{architecture.hidden_dim}", hint=HINT)
    return TrainingArgument(heads, origin, note)


def normalisation(config: Mapping[str, Any], backbone: str,
                  config_file: Path | None) -> tuple[list[float], list[float], TrainingArgument]:
    """(mean, std, orid_norm): ``orid_norm`` means inputs in [0, 1] unchanged, otherwise ImageNet's statistics;
    off unless the config sets it, as in the official scripts, whatever the backbone."""
    if "orid_norm" in config:
        orid_norm = TrainingArgument(_flag(config, "orid_norm", False), config_origin(config_file))
    else:
        advice = ("TResNets are often trained with orid_norm (mean 0 / std 1): pass the config_new.json released "
                  "with the checkpoint as --config" if backbone.startswith("tresnet") else
                  "pass the config_new.json released with the checkpoint as --config to read the trained model's")
        orid_norm = TrainingArgument(False, OFFICIAL_DEFAULT, "normalisation: ImageNet mean/std, the official "
                                     f"scripts' default (orid_norm off; {_not_given('orid_norm', config_file)}); "
                                     + advice)
    if orid_norm.value:
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], orid_norm
    return list(IMAGENET_MEAN), list(IMAGENET_STD), orid_norm


def config_origin(config_file: Path) -> str:
    return f"config {Path(config_file).resolve()}"


def _not_given(option: str, config_file: Path | None) -> str:
    return "no --config" if config_file is None else f"--config {config_file} has no {option}"


def _flag(config: Mapping[str, Any], option: str, default: bool) -> bool:
    value = config.get(option, default)
    if not isinstance(value, bool):
        raise ImportRefused(f"config_new.json sets {option} {value!r}, not true/false", hint=HINT)
    return value


def _number(config: Mapping[str, Any], option: str, kind: type, default: Any) -> Any:
    value = config.get(option, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ImportRefused(f"config_new.json sets {option} {value!r}, not a number", hint=HINT)
    return kind(value)


# ------------------------------------------------------------------------------------------------------ the tensors
def infer_architecture(state: Mapping[str, torch.Tensor], source: Path) -> Architecture:
    """Backbone, sizes, layer counts and options read from the tensor names and shapes."""
    for key in ("query_embed.weight", "transformer.decoder.layers.0.linear1.weight", ENCODING_KEY):
        if key not in state:
            raise ImportRefused(f"{source} is not a Query2Label checkpoint: it has no {key}", hint=HINT)
    if "transformer.encoder.norm.weight" in state:
        raise ImportRefused(f"{source} has transformer.encoder.norm (pre_norm, pre-LayerNorm transformer layers): "
                            "our q2l is post-norm",
                            hint="only post-norm checkpoints (the released ones) can be imported")
    num_classes, hidden_dim = state["query_embed.weight"].shape
    dec_layers = _count_indices(state, "transformer.decoder.layers.")
    with_self_attention = [f"transformer.decoder.layers.{n}.self_attn.in_proj_weight" in state
                           for n in range(dec_layers)]
    if any(with_self_attention) and not all(with_self_attention):
        kept = [n for n, kept in enumerate(with_self_attention) if kept]
        raise ImportRefused(f"{source} keeps the decoder self-attention in layers {kept} only "
                            "(keep_first_self_attn_dec != keep_other_self_attn_dec): our q2l keeps it in all decoder "
                            "layers or none", hint="only checkpoints with both flags equal can be imported")
    return Architecture(
        backbone=detect_backbone(state, source), num_classes=int(num_classes), hidden_dim=int(hidden_dim),
        ffn_dim=int(state["transformer.decoder.layers.0.linear1.weight"].shape[0]),
        enc_layers=_count_indices(state, "transformer.encoder.layers."), dec_layers=dec_layers,
        decoder_self_attention=all(with_self_attention), input_proj="input_proj.weight" in state,
        trained_size=check_position_encoding(state[ENCODING_KEY], int(hidden_dim), source))


def detect_backbone(state: Mapping[str, torch.Tensor], source: Path) -> str:
    """The timm name of the official backbone: ResNet or TResNet by the module path, the depth by the blocks."""
    if any(key.startswith(TRESNET_BODY) for key in state):
        body, family = TRESNET_BODY, "TResNet"
    elif any(key.startswith(RESNET_BODY + "layer1.") for key in state):
        body, family = RESNET_BODY, "ResNet"
    else:
        raise ImportRefused(f"{source} has no ResNet or TResNet backbone tensors (backbone.0.body.*): Swin and CvT "
                            "backbones are not supported", hint=HINT)
    bottleneck, blocks = resnet_layout(state, [f"{body}layer{stage}." for stage in (1, 2, 3, 4)])
    name = TORCHVISION_RESNETS.get((bottleneck, blocks)) if family == "ResNet" else (
        None if bottleneck else TRESNETS.get(blocks))
    if name not in OFFICIAL_BACKBONES.values():  # the depths the official Backbone builds (no resnet152)
        name = None
    if name is None:
        known = UNSUPPORTED_TRESNETS.get(blocks) if family == "TResNet" and bottleneck else None
        raise ImportRefused(f"{source}: a {family} with {'bottleneck' if bottleneck else 'basic'} blocks "
                            f"{'-'.join(map(str, blocks))} per stage{f' ({known})' if known else ''}, which this "
                            "importer does not support",
                            hint=f"supported: {', '.join(OFFICIAL_BACKBONES)} (tresnetl_v2 is not)")
    return name


def check_position_encoding(encoding: torch.Tensor, hidden_dim: int, source: Path) -> int:
    """Compare the official encoding buffer (1, d, S/32, S/32) with the one our model computes; the size S."""
    from mlic_edge.models.layers.transformer import sine_position_encoding

    if encoding.dim() != 4 or encoding.shape[0] != 1 or encoding.shape[1] != hidden_dim or (
            encoding.shape[2] != encoding.shape[3]):
        raise ImportRefused(f"{source}: {ENCODING_KEY} has shape {tuple(encoding.shape)}, not (1, {hidden_dim}, "
                            "S/32, S/32)", hint=HINT)
    side = encoding.shape[-1]
    ours = sine_position_encoding(torch.zeros(1, 1, side, side), hidden_dim)  # (side², 1, d)
    ours = ours.reshape(side, side, hidden_dim).permute(2, 0, 1)
    difference = (encoding[0].float() - ours).abs().max().item()
    if not difference <= ENCODING_TOLERANCE:  # NaN included
        raise ImportRefused(f"{source}: {ENCODING_KEY} differs from the sine encoding our q2l computes by "
                            f"{difference:.3g} (tolerance {ENCODING_TOLERANCE:g})",
                            hint="the checkpoint was trained with another positional encoding; it cannot be imported")
    return side * FEATURE_STRIDE


def map_keys(state: Mapping[str, torch.Tensor], *,
             tresnet: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The official tensors under our names (the encoding buffer left out: ours computes it), and our name -> the
    file's."""
    mapped, file_names = {}, {}
    for file_key, value in state.items():
        if file_key == ENCODING_KEY:
            continue
        key = CROSS_ATTENTION.sub(r"\1cross_attn.", renamed_key(file_key, KEY_RULES))
        if tresnet and key.startswith("backbone."):
            key = TRESNET_CONV.sub(lambda match: f".{match[1]}.{TRESNET_PART[match[2]]}.", key)
            key = TRESNET_DOWNSAMPLE.sub(lambda match: f".downsample.1.{TRESNET_PART[match[1]]}.", key)
            if key.endswith(".bn.weight"):
                value = value.abs() + NORM_EPS  # InPlaceABN's scale, as a BatchNorm weight
        parts = {key: value}
        split_in_projection(parts, key.rpartition(".")[0] + ".")
        for part_key, part in parts.items():
            mapped[part_key], file_names[part_key] = part, file_key
    return mapped, file_names


def file_namer(file_names: Mapping[str, str], model: nn.Module, *, tresnet: bool) -> Callable[[str], str]:
    """Our tensor name -> the file's: as ``map_keys`` renamed it, or, for a tensor the file lacks, ``map_keys`` in
    reverse (a TResNet convolution followed by anti-aliasing is wrapped once more: ``convK.0.0``)."""
    anti_aliased = {name for name, module in model.named_modules() if getattr(module, "aa", None) is not None}
    parts = {ours: official for official, ours in TRESNET_PART.items()}

    def file_name(key: str) -> str:
        if key in file_names:
            return file_names[key]
        if tresnet:
            key = OUR_TRESNET_PART.sub(
                lambda match: f"{match[1]}.{'0.' if match[1] in anti_aliased else ''}{parts[match[2]]}.", key)
        key = OUR_IN_PROJECTION.sub(r".in_proj_\1", OUR_CROSS_ATTENTION.sub(r"\1multihead_attn.", key))
        return official_key(key, KEY_RULES)

    return file_name


def _count_indices(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)})


# -------------------------------------------------------------------------------------------------------- our model
def refuse_other_projection(model: nn.Module, architecture: Architecture) -> None:
    """Ours projects exactly when the widths differ; the official model exactly when keep_input_proj."""
    projects = not isinstance(model.input_proj, nn.Identity)
    if projects == architecture.input_proj:
        return
    width = int(model.backbone.num_features)
    if architecture.input_proj:
        raise ImportRefused(f"the checkpoint has input_proj (keep_input_proj) between equal widths ({width} -> "
                            f"{architecture.hidden_dim}): our q2l projects only when they differ",
                            hint="only checkpoints without keep_input_proj at hidden_dim = backbone width import")
    raise ImportRefused(f"the checkpoint has no input_proj but its hidden_dim {architecture.hidden_dim} differs from "
                        f"its {architecture.backbone}'s width {width}: the official model could not run it", hint=HINT)


def require_norm_eps(backbone: nn.Module) -> None:
    """Our BatchNorm must use the official norms' eps for the loaded statistics to mean the same."""
    other = [name for name, module in backbone.named_modules()
             if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.eps != NORM_EPS]
    if other:
        raise ImportRefused(f"the backbone's BatchNorm eps is not {NORM_EPS:g} (e.g. {other[0]}), unlike the "
                            "official norms", hint="a timm version with other defaults: report it")


def _backbone_note(backbone: str) -> str:
    if backbone.startswith("tresnet"):
        return (f"backbone: {backbone}; InPlaceABN weights w loaded as BatchNorm weights |w| + {NORM_EPS:g} "
                "(what InPlaceABN computes)")
    return (f"backbone: {backbone}; FrozenBatchNorm2d loaded as BatchNorm2d (eps {NORM_EPS:g}): identical in eval; "
            "training this run would update them, which the official trainer never did")
