"""q2l (seed 003: ResNeSt + Query2Label transformer + BatchFormerV2) on a tiny configuration."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from model_checks import fit_steps, to_onnx
import torch.nn as nn

from mlic_edge.models.checkpoint import load_model, save_checkpoint
from mlic_edge.models.layers.transformer import Attention, sine_position_encoding
from mlic_edge.models.registry import get_model_entry
from mlic_edge.models.zoo.q2l import Q2L

TINY = dict(backbone="resnet10t", hidden_dim=64, ffn_dim=128)


def tiny(num_classes: int = 5, **overrides) -> Q2L:
    torch.manual_seed(0)
    return Q2L(num_classes, **{**TINY, **overrides})


class Recorder(nn.Module):
    """BCE that keeps the logits and targets it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls.append((logits.detach().clone(), targets.clone()))
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)


def test_registered_with_the_paper_defaults():
    import timm

    entry = get_model_entry("q2l")
    assert entry.default_backbone == "resnest101e" and entry.default_img_size == 448
    assert timm.is_model(entry.default_backbone)
    assert "BatchFormerV2" in entry.paper


@pytest.mark.parametrize("num_classes", [1, 7, 80])
def test_one_logit_per_label(num_classes):
    model = tiny(num_classes).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, num_classes)
    scores = model.for_export()(torch.zeros(2, 3, 64, 64))
    assert scores.shape == (2, num_classes) and torch.all((scores >= 0) & (scores <= 1))


def test_flop_count_of_the_inference_graph():
    # What ``mlic-edge models`` runs (FlopCounterMode's module tracker under no_grad).
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        tiny(7).for_export()(torch.zeros(1, 3, 64, 64))
    assert counter.get_total_flops() > 0


def test_paper_structure():
    model = tiny(7)
    # 1x1 projection only when the backbone width differs from hidden_dim; Identity at d = 2048 on ResNeSt.
    assert isinstance(model.input_proj, nn.Conv2d) and model.input_proj.kernel_size == (1, 1)
    assert isinstance(tiny(7, backbone="resnest14d", hidden_dim=2048, ffn_dim=16).input_proj, nn.Identity)
    assert len(model.transformer.encoder) == 1 and len(model.transformer.decoder) == 2
    assert all(not hasattr(layer, "self_attn") for layer in model.transformer.decoder)
    assert all(hasattr(layer, "self_attn") for layer in tiny(7, decoder_self_attention=True).transformer.decoder)
    assert model.query_embed.weight.shape == (7, 64) and model.head.weight.shape == (1, 7, 64)
    assert model.batchformer.layer.linear1.out_features == 64 and model.batchformer.layer.dropout.p == 0.5
    assert tiny(7, batchformer=False).batchformer is None


def test_default_sizes_follow_the_backbone_as_query2labels_configs_do():
    """d = the backbone's width (no projection; 2048 for the paper's ResNeSt/ResNet-101), FFN 4d; run.json and a
    checkpoint record the resolved sizes, so a reloaded model is the one trained."""
    model = Q2L(5, backbone="resnet10t")
    assert model.hyperparameters["hidden_dim"] == 512 and model.hyperparameters["ffn_dim"] == 2048
    assert isinstance(model.input_proj, nn.Identity)
    assert model.transformer.encoder[0].linear1.out_features == 2048
    wide = Q2L(5, backbone="resnest14d", batchformer=False)
    assert (wide.hyperparameters["hidden_dim"], wide.hyperparameters["ffn_dim"]) == (2048, 8192)


def test_sine_encoding_matches_detr():
    h, w, d = 3, 5, 16
    pos = sine_position_encoding(torch.zeros(2, d, h, w), d)
    assert pos.shape == (h * w, 1, d)
    # DETR PositionEmbeddingSine(normalize=True) written out loop by loop.
    expected = torch.zeros(d, h, w)
    nf = d // 2
    for i in range(h):
        for j in range(w):
            y, x = (i + 1) / (h + 1e-6) * 2 * math.pi, (j + 1) / (w + 1e-6) * 2 * math.pi
            for k in range(nf):
                t = 10000 ** (2 * (k // 2) / nf)
                fy, fx = (math.sin, math.sin) if k % 2 == 0 else (math.cos, math.cos)
                expected[k, i, j], expected[nf + k, i, j] = fy(y / t), fx(x / t)
    assert torch.allclose(pos[:, 0, :], expected.flatten(1).T, atol=1e-5)


def test_eval_scores_do_not_depend_on_the_batch():
    model = tiny(7).eval()
    torch.manual_seed(1)
    a, others = torch.randn(1, 3, 64, 64), torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        alone = model(a)
        in_batch = model(torch.cat([others[:2], a, others[2:]]))[2:3]
        in_other_batch = model(torch.cat([a, others[3:]]))[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5) and torch.allclose(alone, in_other_batch, atol=1e-5)


def test_batchformer_mixes_samples_in_training_only():
    # Backbone BN in eval and no dropout, so only BatchFormerV2 can couple the samples of a batch.
    model = tiny(7, dropout=0.0, bf_dropout=0.0).train()
    model.backbone.eval()
    torch.manual_seed(2)
    a, b, c = torch.randn(3, 1, 3, 64, 64)
    targets = (torch.rand(2, 7) > 0.5).float()
    recorder = Recorder()
    with torch.no_grad():
        loss_ab = model.training_loss(torch.cat([a, b]), targets, recorder)
        loss_ac = model.training_loss(torch.cat([a, c]), targets, recorder)
    (logits_ab, targets_ab), (logits_ac, _) = recorder.calls
    assert logits_ab.shape == (4, 7) and torch.equal(targets_ab, torch.cat([targets, targets]))
    # The plain stream of image a is the inference output; its BatchFormer stream depends on its batch-mate.
    with torch.no_grad():
        plain_a = model(a)
    assert torch.allclose(logits_ab[:1], plain_a, atol=1e-5) and torch.allclose(logits_ac[:1], plain_a, atol=1e-5)
    assert not torch.allclose(logits_ab[2:3], logits_ac[2:3], atol=1e-4)
    assert not torch.allclose(loss_ab, loss_ac)
    # In eval the loss is the plain one, whatever batchformer says.
    model.eval()
    with torch.no_grad():
        x = torch.cat([a, b])
        assert torch.equal(model.training_loss(x, targets, recorder), recorder(model(x), targets))


def test_without_batchformer_the_training_loss_is_the_plain_loss():
    model = tiny(7, batchformer=False, dropout=0.0).train()
    torch.manual_seed(3)
    x, y = torch.randn(4, 3, 64, 64), (torch.rand(4, 7) > 0.5).float()
    criterion = nn.BCEWithLogitsLoss()
    assert torch.allclose(model.training_loss(x, y, criterion), criterion(model(x), y), atol=1e-6)
    assert not any("batchformer" in name for name in model.state_dict())


def test_batchformer_is_not_in_the_exported_graph():
    model = tiny(7).eval()
    graph = model.fold_static()
    assert not any("batchformer" in name for name, _ in graph.named_modules())
    bf_ids = {id(p) for p in model.batchformer.parameters()}
    assert bf_ids and not bf_ids & {id(p) for p in graph.parameters()}
    exported = sum(p.numel() for p in graph.parameters())
    bf_count = sum(p.numel() for p in model.batchformer.parameters())
    assert exported == sum(p.numel() for p in model.parameters()) - bf_count


def test_onnx_export_matches_pytorch_without_batchformer_weights(tmp_path):
    import onnxruntime as ort

    model = tiny(7).eval()
    graph = model.for_export()
    path = tmp_path / "q2l.onnx"
    proto = to_onnx(graph, path)
    onnx.checker.check_model(proto)
    arrays = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    assert not any("batchformer" in t.name for t in proto.graph.initializer)
    # No BatchFormer weight under another name (the exporter renames transposed weights) ...
    for name, param in model.batchformer.named_parameters():
        if param.dim() > 1:
            values = np.sort(param.detach().numpy().ravel())
            assert not any(a.size == values.size and np.allclose(np.sort(a.ravel()), values) for a in arrays), name
    # ... and the file holds no more numbers than the inference graph has parameters and buffers.
    exported = sum(t.numel() for t in list(graph.parameters()) + list(graph.buffers()))
    assert sum(a.size for a in arrays) <= exported + 10_000 < exported + sum(
        p.numel() for p in model.batchformer.parameters())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(4)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected = graph(x).numpy()
        got = session.run(["scores"], {"images": x.numpy()})[0]
        assert got.shape == (batch, 7)
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("heads, query_length, key_length, batch", [(1, 5, 9, 1), (4, 7, 3, 2), (8, 1, 16, 3)])
def test_attention_computes_torch_multihead_attention_from_its_state(heads, query_length, key_length, batch):
    """``Attention`` holds nn.MultiheadAttention's state (``in_proj_weight`` split in three on load) and computes what
    it computes, sequence-first, for any query and key lengths; only the projections became ``nn.Linear``."""
    torch.manual_seed(heads)
    reference = nn.MultiheadAttention(32, heads).eval()
    with torch.no_grad():
        reference.in_proj_bias.normal_()  # zero at initialisation: a split that misplaces them would go unseen
        reference.out_proj.bias.normal_()
    attention = Attention(32, heads, dropout=0.0).eval()
    attention.load_state_dict(reference.state_dict())
    query, key, value = (torch.randn(length, batch, 32) for length in (query_length, key_length, key_length))
    expected = reference(query, key, value, need_weights=False)[0]
    assert torch.allclose(attention(query, key, value), expected, atol=1e-5)
    assert all(isinstance(getattr(attention, name), nn.Linear) for name in ("q_proj", "k_proj", "v_proj", "out_proj"))


def test_a_checkpoint_written_with_torch_multihead_attention_loads():
    """Runs trained before ``Attention`` saved each attention as nn.MultiheadAttention's packed ``in_proj_*``: such a
    checkpoint loads and scores as the model it was saved from."""
    model = tiny().eval()
    state = model.state_dict()
    for prefix in {key[:-len("q_proj.weight")] for key in state if key.endswith("q_proj.weight")}:
        for part in ("weight", "bias"):
            state[f"{prefix}in_proj_{part}"] = torch.cat([state.pop(f"{prefix}{name}.{part}")
                                                          for name in ("q_proj", "k_proj", "v_proj")])
    assert not any("q_proj" in key for key in state)
    old = tiny()
    with torch.no_grad():
        for param in old.parameters():
            param.zero_()
    old.load_state_dict(state)
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(old.eval()(images), model(images))


def test_checkpoint_round_trip(tmp_path):
    model = tiny(6, num_heads=2, dec_layers=1, dropout=0.2, bf_dropout=0.3, decoder_self_attention=True).eval()
    save_checkpoint(tmp_path / "checkpoint.pt", model)
    restored = load_model(tmp_path / "checkpoint.pt")
    assert isinstance(restored, Q2L) and restored.hyperparameters == model.hyperparameters
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_overfits_a_small_batch():
    model = tiny(5, dropout=0.0).train()
    torch.manual_seed(5)
    x, y = torch.randn(8, 3, 64, 64), (torch.rand(8, 5) > 0.5).float()
    criterion = nn.BCEWithLogitsLoss()
    losses = fit_steps(model, x, y, criterion)
    model.eval()
    with torch.no_grad():
        final = criterion(model(x), y).item()
    assert losses[-1] < 0.2 * losses[0] and final < 0.2 * losses[0], (losses[0], losses[-1], final)
