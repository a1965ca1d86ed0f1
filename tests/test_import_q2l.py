"""``mlic-edge import q2l``: checkpoints written by hand in the official Query2Label layout (random weights, the
mapping documented in mlic_edge/models/official/q2l.py) must give the logits of the official computation, written
out here independently of our model: torchvision ResNet with FrozenBatchNorm semantics (or the TResNet the file was
made from), the post-norm DETR transformer composed from ``F.multi_head_attention_forward``, GroupWiseLinear."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from mlic_edge.models.official import ImportOptions, ImportRefused, import_checkpoint, read_official, state_dict_of
from mlic_edge.models.official.q2l import (Architecture, attention_heads, detect_backbone, file_namer, map_keys,
                                           normalisation)

CLASSES = ["person", "bicycle", "tree", "sky", "boat"]
BODY = "backbone.0.body."
INPLACE_ABN_EPS = 1e-5


# ------------------------------------------------------------------------------------- the official layout, by hand
def sine_encoding(hidden_dim: int, side: int) -> torch.Tensor:
    """The official ``backbone.1.pe`` buffer (1, d, side, side), in float64 numpy: normalised positions 1..side,
    temperature 10000, sin on even / cos on odd features, y features then x features."""
    steps = hidden_dim // 2
    positions = np.arange(1, side + 1) / (side + 1e-6) * 2 * math.pi
    angles = positions[:, None] / 10000 ** (2 * (np.arange(steps) // 2) / steps)  # (side, steps)
    features = np.where(np.arange(steps) % 2 == 0, np.sin(angles), np.cos(angles)).T  # (steps, side)
    along_y = np.broadcast_to(features[:, :, None], (steps, side, side))
    along_x = np.broadcast_to(features[:, None, :], (steps, side, side))
    return torch.tensor(np.concatenate([along_y, along_x])[None], dtype=torch.float32)


def randomize_norms(module: nn.Module) -> None:
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0, 0.1)
                norm.running_mean.normal_(0, 0.1)
                norm.running_var.uniform_(0.5, 1.5)


def resnet_body(depth: int) -> dict[str, torch.Tensor]:
    """torchvision ResNet tensors as Query2Label's FrozenBatchNorm2d body holds them (no num_batches_tracked)."""
    network = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    randomize_norms(network)
    return {BODY + key: value for key, value in network.state_dict().items()
            if not key.startswith("fc.") and not key.endswith("num_batches_tracked")}


def transformer_tensors(generator: torch.Generator, *, num_classes: int, hidden_dim: int, ffn_dim: int,
                        enc_layers: int, dec_layers: int, decoder_self_attention: bool,
                        backbone_width: int | None) -> dict[str, torch.Tensor]:
    """Everything outside the backbone, random; ``backbone_width`` adds input_proj (keep_input_proj)."""
    def normal(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    def attention(prefix: str) -> dict[str, torch.Tensor]:
        return {prefix + "in_proj_weight": normal(3 * hidden_dim, hidden_dim, scale=hidden_dim ** -0.5),
                prefix + "in_proj_bias": normal(3 * hidden_dim, scale=0.1),
                prefix + "out_proj.weight": normal(hidden_dim, hidden_dim, scale=hidden_dim ** -0.5),
                prefix + "out_proj.bias": normal(hidden_dim, scale=0.1)}

    def linear(prefix: str, rows: int, columns: int) -> dict[str, torch.Tensor]:
        return {prefix + "weight": normal(rows, columns, scale=columns ** -0.5),
                prefix + "bias": normal(rows, scale=0.1)}

    def layer_norm(prefix: str) -> dict[str, torch.Tensor]:
        return {prefix + "weight": 1 + normal(hidden_dim, scale=0.1), prefix + "bias": normal(hidden_dim, scale=0.1)}

    def feed_forward(prefix: str) -> dict[str, torch.Tensor]:
        return {**linear(prefix + "linear1.", ffn_dim, hidden_dim), **linear(prefix + "linear2.", hidden_dim, ffn_dim)}

    state: dict[str, torch.Tensor] = {}
    if backbone_width is not None:
        state["input_proj.weight"] = normal(hidden_dim, backbone_width, 1, 1, scale=backbone_width ** -0.5)
        state["input_proj.bias"] = normal(hidden_dim, scale=0.1)
    for n in range(enc_layers):
        prefix = f"transformer.encoder.layers.{n}."
        state |= attention(prefix + "self_attn.") | feed_forward(prefix)
        state |= layer_norm(prefix + "norm1.") | layer_norm(prefix + "norm2.")
    for n in range(dec_layers):
        prefix = f"transformer.decoder.layers.{n}."
        if decoder_self_attention:
            state |= attention(prefix + "self_attn.") | layer_norm(prefix + "norm1.")
        state |= attention(prefix + "multihead_attn.") | feed_forward(prefix)
        state |= layer_norm(prefix + "norm2.") | layer_norm(prefix + "norm3.")
    state |= layer_norm("transformer.decoder.norm.")
    state["query_embed.weight"] = normal(num_classes, hidden_dim, scale=1.0)
    state["fc.W"] = normal(1, num_classes, hidden_dim, scale=hidden_dim ** -0.5)
    state["fc.b"] = normal(1, num_classes, scale=0.1)
    return state


def official_resnet_checkpoint(*, depth: int = 18, hidden_dim: int, nheads: int, ffn_dim: int, enc_layers: int,
                               dec_layers: int, keep_input_proj: bool, self_attention: bool, img_size: int,
                               seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, config_new.json) of a Query2Label model on a torchvision ResNet."""
    torch.manual_seed(seed)
    width = 512 if depth < 50 else 2048
    state = resnet_body(depth)
    state["backbone.1.pe"] = sine_encoding(hidden_dim, img_size // 32)
    state |= transformer_tensors(torch.Generator().manual_seed(seed), num_classes=len(CLASSES), hidden_dim=hidden_dim,
                                 ffn_dim=ffn_dim, enc_layers=enc_layers, dec_layers=dec_layers,
                                 decoder_self_attention=self_attention,
                                 backbone_width=width if keep_input_proj else None)
    config = {"dataname": "coco14", "backbone": f"resnet{depth}", "num_class": len(CLASSES), "img_size": img_size,
              "hidden_dim": hidden_dim, "dim_feedforward": ffn_dim, "enc_layers": enc_layers,
              "dec_layers": dec_layers, "nheads": nheads, "dropout": 0.1, "pre_norm": False,
              "position_embedding": "sine", "keep_input_proj": keep_input_proj,
              "keep_first_self_attn_dec": self_attention, "keep_other_self_attn_dec": self_attention,
              "orid_norm": False, "amp": True, "pretrained": True}
    return state, config


def write_checkpoint(directory: Path, state: dict[str, torch.Tensor], config: dict | None, *,
                     prefix: str = "", extra: dict | None = None) -> tuple[Path, ImportOptions]:
    """checkpoint.pkl as main_mlc.py saves it (with a numpy best_mAP), config_new.json and a labels file."""
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = directory / "checkpoint.pkl"
    torch.save({"epoch": 40, "arch": "Q2L", "state_dict": {prefix + key: value for key, value in state.items()},
                "best_mAP": np.float64(84.9), **(extra or {})}, checkpoint)
    labels = directory / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    config_path = None
    if config is not None:
        config_path = directory / "config_new.json"
        config_path.write_text(json.dumps(config))
    return checkpoint, ImportOptions(labels=str(labels), config=config_path)


# ------------------------------------------------------------------------------ the official forward, written out
class FrozenBatchNorm(nn.Module):
    """Query2Label's norm: fixed buffers, ``x · w / sqrt(rv + 1e-5) + (b − rm · w / sqrt(rv + 1e-5))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((channels,), fill))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight / torch.sqrt(self.running_var + 1e-5)
        return x * scale[:, None, None] + (self.bias - self.running_mean * scale)[:, None, None]


def frozen_resnet(state: dict[str, torch.Tensor], depth: int) -> nn.Module:
    network = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=FrozenBatchNorm)
    body = {key[len(BODY):]: value for key, value in state.items() if key.startswith(BODY)}
    result = network.load_state_dict(body, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys
    return nn.Sequential(*list(network.children())[:-2]).eval()


def official_logits(state: dict[str, torch.Tensor], features: torch.Tensor, nheads: int) -> torch.Tensor:
    """Query2Label's transformer and GroupWiseLinear on backbone ``features`` (B, C_b, H, W)."""
    def attend(prefix: str, query, key, value):
        return F.multi_head_attention_forward(
            query, key, value, query.shape[-1], nheads, state[prefix + "in_proj_weight"],
            state[prefix + "in_proj_bias"], None, None, False, 0.0, state[prefix + "out_proj.weight"],
            state[prefix + "out_proj.bias"], training=False, need_weights=False)[0]

    def norm(prefix: str, x):
        return F.layer_norm(x, x.shape[-1:], state[prefix + "weight"], state[prefix + "bias"])

    def feed_forward(prefix: str, x):
        hidden = F.relu(F.linear(x, state[prefix + "linear1.weight"], state[prefix + "linear1.bias"]))
        return F.linear(hidden, state[prefix + "linear2.weight"], state[prefix + "linear2.bias"])

    if "input_proj.weight" in state:
        features = F.conv2d(features, state["input_proj.weight"], state["input_proj.bias"])
    batch, hidden_dim, height, width = features.shape
    assert height == width
    pos = sine_encoding(hidden_dim, height).flatten(2).permute(2, 0, 1)  # (HW, 1, d)
    memory = features.flatten(2).permute(2, 0, 1)  # (HW, B, d)
    layer = 0
    while f"transformer.encoder.layers.{layer}.norm1.weight" in state:
        prefix = f"transformer.encoder.layers.{layer}."
        memory = norm(prefix + "norm1.", memory + attend(prefix + "self_attn.", memory + pos, memory + pos, memory))
        memory = norm(prefix + "norm2.", memory + feed_forward(prefix, memory))
        layer += 1
    query_pos = state["query_embed.weight"][:, None, :].expand(-1, batch, -1)  # (C, B, d)
    target = torch.zeros_like(query_pos)
    layer = 0
    while f"transformer.decoder.layers.{layer}.norm2.weight" in state:
        prefix = f"transformer.decoder.layers.{layer}."
        if prefix + "self_attn.in_proj_weight" in state:
            attended = attend(prefix + "self_attn.", target + query_pos, target + query_pos, target)
            target = norm(prefix + "norm1.", target + attended)
        attended = attend(prefix + "multihead_attn.", target + query_pos, memory + pos, memory)
        target = norm(prefix + "norm2.", target + attended)
        target = norm(prefix + "norm3.", target + feed_forward(prefix, target))
        layer += 1
    label_embeddings = norm("transformer.decoder.norm.", target).transpose(0, 1)  # (B, C, d)
    return (state["fc.W"] * label_embeddings).sum(-1) + state["fc.b"]


def assert_file_names_found_again(state: dict[str, torch.Tensor], model: nn.Module, *, tresnet: bool) -> None:
    """A refusal names a tensor the file lacks as the file would: map_keys in reverse gives every file name back."""
    mapped, file_names = map_keys(state, tresnet=tresnet)
    name_in_file = file_namer({}, model, tresnet=tresnet)
    assert {key: name_in_file(key) for key in mapped} == file_names


def assert_same_logits(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = max(1.0, reference.abs().max().item())
    assert (ours - reference).abs().max().item() <= 1e-4 * scale, (ours, reference)


# --------------------------------------------------------------------------------------------------------- ResNet
RESNET_CASES = {
    # the released layout (no input_proj: hidden = backbone width, no decoder self-attention), DDP prefix, 8 heads
    "released-layout": dict(hidden_dim=512, nheads=8, ffn_dim=256, enc_layers=1, dec_layers=2,
                            keep_input_proj=False, self_attention=False, img_size=448, prefix="module.",
                            sizes=(448, 224)),
    # keep_input_proj, decoder self-attention everywhere, two encoder layers, no prefix (an EMA checkpoint)
    "projection-self-attention": dict(hidden_dim=64, nheads=4, ffn_dim=128, enc_layers=2, dec_layers=2,
                                      keep_input_proj=True, self_attention=True, img_size=224, prefix="",
                                      sizes=(224, 96)),
}


@pytest.mark.parametrize("case", list(RESNET_CASES))
def test_resnet_checkpoint_gives_the_official_logits(tmp_path, case):
    settings = dict(RESNET_CASES[case])
    prefix, sizes = settings.pop("prefix"), settings.pop("sizes")
    state, config = official_resnet_checkpoint(**settings)
    checkpoint, options = write_checkpoint(tmp_path, state, config, prefix=prefix)

    imported = import_checkpoint("q2l", checkpoint, options)  # no trust_pickle: the numpy best_mAP is allowlisted

    model = imported.model
    assert not model.training and model.batchformer is None and model.backbone_name == "resnet18"
    assert model.hyperparameters["num_heads"] == settings["nheads"]
    assert model.hyperparameters["decoder_self_attention"] == settings["self_attention"]
    assert imported.labels == CLASSES and imported.img_size == settings["img_size"]
    assert imported.mean == [0.485, 0.456, 0.406] and imported.std == [0.229, 0.224, 0.225]
    assert any("fp16 autocast" in note for note in imported.notes)
    assert imported.ignored == []
    assert_file_names_found_again(state, model, tresnet=False)
    backbone = frozen_resnet(state, 18)
    torch.manual_seed(1)
    for size in sizes:  # the training size (the file's encoding) and another (ours recomputes the encoding)
        images = torch.randn(1, 3, size, size)
        with torch.no_grad():
            reference = official_logits(state, backbone(images), settings["nheads"])
            assert_same_logits(model(images), reference)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnet_depth_is_read_from_the_tensors(depth):
    with torch.device("meta"):
        keys = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    state = {BODY + key: value for key, value in keys.items() if not key.startswith("fc.")}
    assert detect_backbone(state, Path("checkpoint.pkl")) == f"resnet{depth}"


def test_a_resnet_the_official_code_cannot_build_is_refused():
    with torch.device("meta"):
        keys = torchvision.models.resnet152().state_dict()
    with pytest.raises(ImportRefused, match="bottleneck blocks 3-8-36-3"):
        detect_backbone({BODY + key: value for key, value in keys.items()}, Path("checkpoint.pkl"))


# -------------------------------------------------------------------------------------------------------- TResNet
ANTI_ALIASED = ("body.layer2.0.conv1.", "body.layer3.0.conv2.", "body.layer4.0.conv2.")  # stride 2 + AA downsampling


def official_tresnet_key(timm_key: str, anti_aliased: tuple[str, ...] = ANTI_ALIASED) -> str:
    """tresnet_sync.py's name of a timm ``tresnet_l`` tensor: conv2d_ABN = Sequential(conv, InPlaceABN), wrapped
    once more in a Sequential with the anti-aliasing layer where the convolution has stride 2."""
    wrapped = "0." if timm_key.startswith(anti_aliased) else ""
    return timm_key.replace(".conv.", f".{wrapped}0.").replace(".bn.", f".{wrapped}1.")


def test_tresnet_l_checkpoint_gives_the_official_logits(tmp_path):
    import timm
    from timm.models.tresnet import checkpoint_filter_fn

    torch.manual_seed(0)
    tresnet = timm.create_model("tresnet_l", num_classes=0, global_pool="").eval()
    randomize_norms(tresnet)
    signs = torch.Generator().manual_seed(1)
    state = {}
    for key, value in tresnet.state_dict().items():
        if key.endswith(".bn.weight"):  # InPlaceABN scales by |w| + eps: store a w of either sign meaning `value`
            sign = torch.randint(0, 2, value.shape, generator=signs) * 2 - 1
            value = sign * (value - INPLACE_ABN_EPS)
        state[BODY + official_tresnet_key(key)] = value
    assert "backbone.0.body.body.layer2.0.conv1.0.0.weight" in state
    assert "backbone.0.body.body.layer3.0.downsample.1.1.running_var" in state
    hidden_dim, nheads, img_size = 64, 4, 64
    state["backbone.1.pe"] = sine_encoding(hidden_dim, img_size // 32)
    state |= transformer_tensors(torch.Generator().manual_seed(2), num_classes=len(CLASSES), hidden_dim=hidden_dim,
                                 ffn_dim=128, enc_layers=1, dec_layers=2, decoder_self_attention=False,
                                 backbone_width=2432)
    config = {"backbone": "tresnetl", "num_class": len(CLASSES), "img_size": img_size, "hidden_dim": hidden_dim,
              "dim_feedforward": 128, "enc_layers": 1, "dec_layers": 2, "nheads": nheads, "pre_norm": False,
              "keep_input_proj": True, "keep_first_self_attn_dec": False, "keep_other_self_attn_dec": False,
              "orid_norm": True}
    checkpoint, options = write_checkpoint(tmp_path, state, config, prefix="module.")

    imported = import_checkpoint("q2l", checkpoint, options)

    assert imported.model.backbone_name == "tresnet_l"
    assert imported.mean == [0.0, 0.0, 0.0] and imported.std == [1.0, 1.0, 1.0]
    assert_file_names_found_again(state, imported.model, tresnet=True)
    # timm's converter for the original TResNet weights agrees with the import, tensor for tensor
    body = {key[len(BODY):]: value for key, value in state.items() if key.startswith(BODY)}
    loaded = imported.model.backbone.state_dict()
    for key, value in checkpoint_filter_fn(body, tresnet).items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    images = torch.rand(1, 3, img_size, img_size)
    with torch.no_grad():
        reference = official_logits(state, tresnet.forward_features(images), nheads)
        assert_same_logits(imported.model(images), reference)


def test_tresnet_depth_is_read_from_the_tensors():
    import timm

    with torch.device("meta"):
        keys = timm.create_model("tresnet_m", num_classes=0).state_dict()
    state = {BODY + official_tresnet_key(key): value for key, value in keys.items()}
    with pytest.raises(ImportRefused, match="TResNet with basic blocks 3-4-11-3"):
        detect_backbone(state, Path("checkpoint.pkl"))


TRESNET_VARIANTS = {  # timm's TResNet (layers per stage, v2) in the official layout
    "basic-blocks": ([4, 5, 18, 3], False),  # tresnetl: basic blocks in layer1-2
    "bottleneck-blocks": ([3, 4, 23, 3], True),  # tresnetl_v2 (Q2L-TResL_22k): bottleneck blocks from layer1 on
}


@pytest.mark.parametrize("variant", list(TRESNET_VARIANTS))
def test_tresnet_block_kind_is_read_from_the_file(tmp_path, variant):
    """The official Bottleneck's last convolution is ``conv3.0`` (conv2d_ABN), not torchvision's ``conv3``."""
    from timm.models.tresnet import TResNet

    layers, v2 = TRESNET_VARIANTS[variant]
    torch.manual_seed(0)
    tresnet = TResNet(layers=layers, v2=v2, width_factor=0.25, num_classes=0)  # the names of the full width's
    anti_aliased = tuple(f"{name}." for name, module in tresnet.named_modules()
                         if getattr(module, "aa", None) is not None)
    state = {BODY + official_tresnet_key(key, anti_aliased): value for key, value in tresnet.state_dict().items()
             if not key.endswith("num_batches_tracked")}
    assert ("backbone.0.body.body.layer1.0.conv3.0.weight" in state) == v2
    checkpoint, _ = write_checkpoint(tmp_path, state, None)
    written = state_dict_of(read_official(checkpoint), checkpoint)
    if v2:
        with pytest.raises(ImportRefused, match="a TResNet with bottleneck blocks 3-4-23-3 .*tresnetl_v2"):
            detect_backbone(written, checkpoint)
    else:
        assert detect_backbone(written, checkpoint) == "tresnet_l"


# ------------------------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def small_official() -> tuple[dict[str, torch.Tensor], dict]:
    return official_resnet_checkpoint(hidden_dim=64, nheads=4, ffn_dim=64, enc_layers=1, dec_layers=2,
                                      keep_input_proj=True, self_attention=False, img_size=64)


def _drop(key: str):
    def change(state, config):
        del state[key]
    return change


def _set(option: str, value):
    def change(state, config):
        config[option] = value
    return change


def _shift_encoding(state, config):
    state["backbone.1.pe"] = state["backbone.1.pe"] + 1e-2


def _partial_decoder_self_attention(state, config):
    generator = torch.Generator().manual_seed(3)
    state["transformer.decoder.layers.0.self_attn.in_proj_weight"] = torch.randn(192, 64, generator=generator)
    state["transformer.decoder.layers.0.self_attn.in_proj_bias"] = torch.zeros(192)
    state["transformer.decoder.layers.0.self_attn.out_proj.weight"] = torch.randn(64, 64, generator=generator)
    state["transformer.decoder.layers.0.self_attn.out_proj.bias"] = torch.zeros(64)
    state["transformer.decoder.layers.0.norm1.weight"] = torch.ones(64)
    state["transformer.decoder.layers.0.norm1.bias"] = torch.zeros(64)
    del config["keep_first_self_attn_dec"], config["keep_other_self_attn_dec"]


def _pre_norm_tensors(state, config):
    state["transformer.encoder.norm.weight"] = torch.ones(64)
    state["transformer.encoder.norm.bias"] = torch.zeros(64)
    del config["pre_norm"]


def _add_key_bias(state, config):
    state["transformer.decoder.layers.0.multihead_attn.bias_k"] = torch.zeros(1, 1, 64)


def _widen_classifier_bias(state, config):
    state["fc.b"] = torch.zeros(1, 6)


REFUSALS = {  # the refusals name the file's tensors, not ours
    "missing-classifier-bias": (_drop("fc.b"), "missing fc.b$"),
    "missing-decoder-tensor": (_drop("transformer.decoder.layers.1.linear2.bias"),
                               "missing transformer.decoder.layers.1.linear2.bias$"),
    "missing-cross-attention": (_drop("transformer.decoder.layers.1.multihead_attn.out_proj.bias"),
                                "missing transformer.decoder.layers.1.multihead_attn.out_proj.bias$"),
    "missing-backbone-tensor": (_drop("backbone.0.body.layer3.1.bn2.running_var"),
                                "missing backbone.0.body.layer3.1.bn2.running_var$"),
    "unexpected-tensor": (_add_key_bias, "unexpected transformer.decoder.layers.0.multihead_attn.bias_k$"),
    "other-shape": (_widen_classifier_bias, r"fc.b \(1, 6\) \(expected \(1, 5\)\)"),
    "missing-encoding": (_drop("backbone.1.pe"), "no backbone.1.pe"),
    "encoding-differs": (_shift_encoding, "backbone.1.pe differs from the sine encoding"),
    "pre-norm-option": (_set("pre_norm", True), "pre_norm"),
    "pre-norm-tensors": (_pre_norm_tensors, "pre_norm"),
    "partial-self-attention-option": (_set("keep_first_self_attn_dec", True), "keep_first_self_attn_dec"),
    "partial-self-attention-tensors": (_partial_decoder_self_attention, "keep_first_self_attn_dec"),
    "swin-backbone": (_set("backbone", "swin_L_384_22k"), "backbone 'swin_L_384_22k'"),
    "other-encoding": (_set("position_embedding", "learned"), "position_embedding"),
    "config-of-another-model": (_set("hidden_dim", 2048), "hidden_dim 2048 but the checkpoint's tensors have 64"),
    "config-of-another-size": (_set("img_size", 448), "img_size 448"),
    "heads-not-dividing": (_set("nheads", 6), "nheads 6"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_in_one_line(tmp_path, small_official, case):
    change, message = REFUSALS[case]
    state, config = dict(small_official[0]), dict(small_official[1])
    change(state, config)
    checkpoint, options = write_checkpoint(tmp_path, state, config)
    with pytest.raises(ImportRefused) as refusal:
        import_checkpoint("q2l", checkpoint, options)
    assert re.search(message, refusal.value.message), refusal.value.message
    assert "\n" not in str(refusal.value)


def test_wrong_label_count_is_refused(tmp_path, small_official):
    checkpoint, options = write_checkpoint(tmp_path, *small_official)
    Path(options.labels).write_text("\n".join(CLASSES[:4]))
    with pytest.raises(ImportRefused, match="5 classes but --labels .* names 4"):
        import_checkpoint("q2l", checkpoint, options)


def test_nheads_needs_the_config_outside_the_released_sizes(tmp_path, small_official):
    checkpoint, options = write_checkpoint(tmp_path, small_official[0], None)
    with pytest.raises(ImportRefused, match="does not store nheads.*--config"):
        import_checkpoint("q2l", checkpoint, options)


RELEASED = Architecture(backbone="resnet101", num_classes=80, hidden_dim=2048, ffn_dim=8192, enc_layers=1,
                        dec_layers=2, decoder_self_attention=False, input_proj=False, trained_size=448)


def test_released_sizes_default_to_four_heads_and_say_so():
    heads = attention_heads({}, RELEASED, None)
    assert heads.value == 4 and heads.origin == "the released default"
    assert "not in the tensors" in heads.note and "--config" in heads.note
    assert attention_heads({"dataname": "coco14"}, RELEASED, Path("config_new.json")).origin == "the released default"


def test_nheads_of_the_config_is_taken_on_trust_said_and_recorded(tmp_path, small_official):
    """The heads split the attention's width: another count has the same tensors, so only the config says."""
    checkpoint, options = write_checkpoint(tmp_path, small_official[0], dict(small_official[1], nheads=8))
    imported = import_checkpoint("q2l", checkpoint, options)
    assert imported.model.hyperparameters["num_heads"] == 8
    origin = f"config {options.config.resolve()}"
    assert imported.taken_on_trust["nheads"] == {"value": 8, "from": origin}
    note = next(note for note in imported.notes if note.startswith("nheads"))
    assert origin in note and "taken on trust" in note


@pytest.mark.parametrize("backbone", ["resnet101", "tresnet_l"])
def test_without_orid_norm_the_official_default_is_assumed_and_said(backbone):
    """main_mlc.py and q2l_infer.py: --orid_norm is off unless given, for every backbone: ImageNet's mean/std."""
    for config, config_file in (({}, None), ({"nheads": 4}, Path("config_new.json"))):
        mean, std, orid_norm = normalisation(config, backbone, config_file)
        assert (mean, std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        assert orid_norm.value is False and orid_norm.origin == "the official default"
        assert "ImageNet" in orid_norm.note and "--config" in orid_norm.note
    mean, std, orid_norm = normalisation({"orid_norm": True}, backbone, Path("config_new.json"))
    assert (mean, std) == ([0.0] * 3, [1.0] * 3) and orid_norm.origin == f"config {Path('config_new.json').resolve()}"
    assert orid_norm.note is None


def test_keep_input_proj_between_equal_widths_is_refused(tmp_path):
    state, config = official_resnet_checkpoint(hidden_dim=512, nheads=4, ffn_dim=32, enc_layers=0, dec_layers=1,
                                               keep_input_proj=True, self_attention=False, img_size=64)
    checkpoint, options = write_checkpoint(tmp_path, state, config)
    with pytest.raises(ImportRefused, match="keep_input_proj"):
        import_checkpoint("q2l", checkpoint, options)


def test_truncated_file_is_refused(tmp_path, small_official):
    checkpoint, options = write_checkpoint(tmp_path, *small_official)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImportRefused, match="cannot be read as a PyTorch checkpoint") as refusal:
        import_checkpoint("q2l", checkpoint, options)
    assert "\n" not in str(refusal.value)


def test_a_pickle_needing_full_unpickling_needs_trust(tmp_path, small_official):
    checkpoint, options = write_checkpoint(tmp_path, *small_official, extra={"args": argparse.Namespace(lr=1e-4)})
    with pytest.raises(ImportRefused, match="trust-pickle") as refusal:
        import_checkpoint("q2l", checkpoint, options)
    assert "\n" not in str(refusal.value)
    assert import_checkpoint("q2l", checkpoint, options, trust_pickle=True).labels == CLASSES
