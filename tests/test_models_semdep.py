"""semdep (seed paper 001, Xue et al. 2019): shapes, α, spatial softmax, SE, stages, ONNX, checkpoint, overfitting."""

from __future__ import annotations

import math

import pytest
import torch
from model_checks import assert_onnxruntime_matches, fit_steps, to_onnx
import torch.nn as nn

from mlic_edge.models.checkpoint import load_model, save_checkpoint
from mlic_edge.models.layers.attention import SEBlock, spatial_softmax
from mlic_edge.models.zoo.semdep import (
    PARAMETER_GROUPS,
    STAGES,
    SemDep,
    apply_stage,
    set_trainable,
    training_stages,
)

TINY = dict(backbone="resnet10t", attention_hidden=32, dependency_channels=(16, 16, 32, 64))


def make_model(num_classes: int = 7, seed: int = 0, **overrides) -> SemDep:
    torch.manual_seed(seed)
    return SemDep(num_classes, **{**TINY, **overrides}).eval()


@pytest.mark.parametrize("num_classes", [1, 7, 80])
def test_shapes_for_any_label_count(num_classes):
    model = make_model(num_classes)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.outputs(images)
        assert model(images).shape == (2, num_classes)
        scores = model.for_export()(images)
    for key in ("cls", "att", "dep", "logits"):
        assert out[key].shape == (2, num_classes), key
    assert out["attention"].shape == out["scores"].shape == (2, num_classes, 2, 2)
    assert scores.shape == (2, num_classes) and torch.all((scores >= 0) & (scores <= 1))


def test_paper_defaults_and_densenet_features():
    model = SemDep(20)  # the paper's configuration: DenseNet-121, 512-wide attention, 256/256/512/1024 convs
    hp = model.hyperparameters
    assert model.backbone_name == "densenet121"
    assert hp == {"attention_hidden": 512, "dependency_channels": (256, 256, 512, 1024), "se_reduction": 16,
                  "alpha_init": 0.48}
    att = model.attention
    assert (att.conv1.in_channels, att.conv1.out_channels, att.conv1.kernel_size) == (1024, 512, (1, 1))
    assert (att.conv2.out_channels, att.conv2.kernel_size, att.conv2.padding) == (512, (3, 3), (1, 1))
    assert (att.conv3.out_channels, att.conv3.kernel_size) == (20, (1, 1))
    dep = model.dependency
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in dep.convs] == [
        (20, 256, (1, 1)), (256, 256, (1, 1)), (256, 512, (1, 1)), (512, 1024, (1, 1))]
    assert [se.fc1.in_features for se in dep.se] == [20, 256, 256, 512]
    assert [se.fc1.out_features for se in dep.se] == [1, 16, 16, 32]  # reduction 16
    assert dep.fc.in_features == 1024 and model.cls_head.in_features == 1024
    with torch.no_grad():
        assert model.eval().outputs(torch.randn(1, 3, 64, 64))["features"].shape == (1, 1024, 2, 2)


def test_alpha_starts_at_048_and_is_learnable():
    model = make_model(5)
    assert model.alpha.item() == pytest.approx(0.48, abs=1e-6)
    assert model.alpha_logit.requires_grad
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.outputs(images)
        torch.testing.assert_close(out["logits"], 0.48 * out["cls"] + 0.52 * out["dep"], atol=1e-5, rtol=0)
        torch.testing.assert_close(model(images), out["logits"])
    loss = model(images).sum()
    loss.backward()
    assert model.alpha_logit.grad is not None and model.alpha_logit.grad.abs() > 0
    optimizer = torch.optim.SGD([model.alpha_logit], lr=1.0)
    optimizer.step()
    assert model.alpha.item() != pytest.approx(0.48, abs=1e-4)
    assert 0.0 < model.alpha.item() < 1.0
    assert SemDep(3, **{**TINY, "alpha_init": 0.3}).alpha.item() == pytest.approx(0.3, abs=1e-6)


def test_attention_maps_sum_to_one_per_channel():
    model = make_model(6)
    images = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        maps = model.attention_maps(images)
        scores = model.outputs(images)["scores"]
    assert maps.shape == (3, 6, 3, 3) and torch.all(maps > 0)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(3, 6))
    # eq. (4) by hand for one channel: exp(z_ij) / Σ_ij exp(z_ij)
    z = scores[1, 4]
    torch.testing.assert_close(maps[1, 4], torch.exp(z) / torch.exp(z).sum())
    logits = torch.randn(2, 4, 5, 3)
    torch.testing.assert_close(spatial_softmax(logits).sum(dim=(2, 3)), torch.ones(2, 4))


def test_se_block_scales_each_channel_by_its_gate():
    torch.manual_seed(4)
    se = SEBlock(32, reduction=16)
    x = torch.randn(3, 32, 5, 4)
    gap = x.mean(dim=(2, 3))  # (5) squeeze
    hidden = torch.relu(gap @ se.fc1.weight.T + se.fc1.bias)
    s = torch.sigmoid(hidden @ se.fc2.weight.T + se.fc2.bias)  # (6) excitation
    assert se.fc1.out_features == 2 and s.shape == (3, 32)
    expected = x * s[:, :, None, None]  # (7) reweight
    torch.testing.assert_close(se(x), expected)
    torch.testing.assert_close(se(x)[2, 7], x[2, 7] * s[2, 7])
    assert SEBlock(1).fc1.out_features == 1  # a single label still gets a gate


def _trainable_groups(model: SemDep) -> set[str]:
    groups = set()
    for group, params in model.parameter_groups().items():
        flags = {p.requires_grad for p in params}
        assert len(flags) == 1, group  # a group is trained or frozen as a whole
        if flags == {True}:
            groups.add(group)
    return groups


def test_stages_freeze_the_right_parameters():
    model = make_model(4)
    groups = model.parameter_groups()
    assert tuple(groups) == PARAMETER_GROUPS
    grouped = [id(p) for params in groups.values() for p in params]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))  # a partition
    assert STAGES == ("backbone", "attention", "dependency", "joint")
    assert [s.name for s in training_stages(model)] == list(STAGES)
    expected = {
        "backbone": {"backbone", "cls_head"},
        "attention": {"attention"},
        "dependency": {"dependency", "alpha"},
        "joint": set(PARAMETER_GROUPS),
    }
    assert model.stage == "joint" and _trainable_groups(model) == expected["joint"]
    images, targets = torch.randn(4, 3, 64, 64), torch.randint(0, 2, (4, 4)).float()
    criterion = nn.BCEWithLogitsLoss()
    for index, name in enumerate(STAGES):
        model.train()
        stage = set_trainable(model, name)
        assert stage.name == name and model.stage == name
        assert _trainable_groups(model) == expected[name]
        assert model.training
        # frozen parts stay in eval mode (BatchNorm statistics of a frozen backbone do not move)
        assert model.backbone.training == ("backbone" in expected[name])
        model.zero_grad(set_to_none=True)
        model.training_loss(images, targets, criterion).backward()
        for group, params in model.parameter_groups().items():
            got_grad = [p.grad is not None and p.grad.abs().sum() > 0 for p in params]
            if group in expected[name]:
                assert any(got_grad), (name, group)
            else:
                assert not any(got_grad), (name, group)
        apply_stage(model, index)  # by index too
        assert model.stage == name and _trainable_groups(model) == expected[name]
    model.eval()
    assert not any(m.training for m in model.modules())
    with pytest.raises(ValueError, match="unknown semdep stage"):
        set_trainable(model, "everything")
    with pytest.raises(ValueError, match="stage index"):
        apply_stage(model, 4)


def test_frozen_backbone_keeps_batchnorm_statistics():
    model = make_model(3)
    set_trainable(model, "dependency")
    model.train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.training_loss(torch.randn(4, 3, 64, 64), torch.ones(4, 3), nn.BCEWithLogitsLoss())
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_onnx_export_matches_onnxruntime(tmp_path):

    model = make_model(7)
    graph = model.for_export()
    path = tmp_path / "semdep.onnx"
    op_types = {node.op_type for node in to_onnx(graph, path).graph.node}
    assert "Softmax" in op_types and "Sigmoid" in op_types
    assert_onnxruntime_matches(graph, path)


def test_first_se_gate_is_the_constant_squeezes_and_exports_as_a_constant(tmp_path):
    """SE1 squeezes maps that each sum to 1 (eq. 5 of eq. 4's A): its gate is computed from 1/(H·W), as averaging A
    gives, and the simplified export holds it as a constant. Computed from the image, its input is the same over
    every image up to rounding, which ONNX Runtime's percentile calibrator (the build's default) cannot histogram:
    `build -p int8` failed on the zoo's trained semdep ("Too many bins for data range")."""
    import onnx
    import onnxsim

    model = make_model(7, seed=3)
    attention = spatial_softmax(torch.randn(4, 7, 3, 3))
    branch = model.dependency
    averaged = attention
    for se, conv in zip(branch.se, branch.convs):
        averaged = torch.relu(conv(se(averaged)))
    torch.testing.assert_close(branch.features(attention), averaged)

    path = tmp_path / "semdep.onnx"
    onnx.save(onnxsim.simplify(to_onnx(model.for_export(), path, img_size=96))[0], str(path))  # as export does
    assert_onnxruntime_matches(model.for_export(), path, img_size=96)
    graph = onnx.load(str(path)).graph
    image_dependent, dependent_gemms = {graph.input[0].name}, 0
    for node in graph.node:  # topological order
        if any(name in image_dependent for name in node.input):
            image_dependent.update(node.output)
            dependent_gemms += node.op_type == "Gemm" and "/dependency/" in node.name
    assert dependent_gemms == 2 * (len(branch.se) - 1) + 1  # SE2-SE4's two FCs each, and the branch's FC


def test_checkpoint_rebuild_gives_identical_outputs(tmp_path):
    model = make_model(7, seed=5)
    with torch.no_grad():
        model.alpha_logit.fill_(math.log(0.3 / 0.7))  # a trained α survives the round trip
    save_checkpoint(tmp_path / "checkpoint.pt", model)
    rebuilt = load_model(tmp_path / "checkpoint.pt")
    assert isinstance(rebuilt, SemDep) and rebuilt.hyperparameters == model.hyperparameters
    assert rebuilt.alpha.item() == pytest.approx(0.3, abs=1e-6)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))
        assert torch.equal(rebuilt.for_export()(images), model.for_export()(images))


def test_overfits_a_small_batch():
    model = make_model(5, seed=3).train()
    torch.manual_seed(3)
    images = torch.randn(8, 3, 64, 64)
    targets = (torch.rand(8, 5) < 0.4).float()

    def every_branch_has_gradients():  # every branch trains end to end in the joint stage
        for group, params in model.parameter_groups().items():
            assert all(p.grad is not None for p in params), group

    losses = fit_steps(model, images, targets, nn.BCEWithLogitsLoss(), after_first_backward=every_branch_has_gradients)
    assert losses[-1] < 0.2 * losses[0], losses


def test_the_concurrent_stage_trains_each_part_by_its_own_stage_loss_alone():
    """Stages 1-3 at once: the backbone learns from y' only, the attention from ŷ_att only (X held fixed), the
    dependency branch and α from ŷ only (A and y' held fixed), as the paper's stages hold them fixed in turn."""
    torch.manual_seed(0)
    model = make_model(4)
    images, targets = torch.randn(4, 3, 64, 64), torch.randint(0, 2, (4, 4)).float()
    criterion = nn.BCEWithLogitsLoss()
    model.train()
    set_trainable(model, "concurrent")
    assert _trainable_groups(model) == set(PARAMETER_GROUPS) and model.backbone.training

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm statistics move on every pass
    together = grads(model.training_loss(images, targets, criterion))
    model.load_state_dict(state)
    out = model.outputs(images)
    alone = grads(criterion(out["cls"], targets))
    model.load_state_dict(state)
    features = model.spatial_features(images).detach()
    z, a = model.attention(features)
    alone |= grads(criterion((a * z).sum(dim=(2, 3)), targets))
    model.load_state_dict(state)
    out = model.outputs(images)
    fused = model.alpha * out["cls"].detach() + (1 - model.alpha) * model.dependency(out["attention"].detach())
    alone |= grads(criterion(fused, targets))
    assert together.keys() == alone.keys() == {name for name, _ in model.named_parameters()}
    for name in together:
        torch.testing.assert_close(together[name], alone[name], msg=name)


def test_the_trainers_stage_plan_for_each_mode():
    from mlic_edge.errors import MlicError
    from mlic_edge.train.trainer import stage_plan

    model = make_model(3)
    assert stage_plan(model, 3, "none") == [None] * 3
    assert stage_plan(model, 3, "concurrent") == ["concurrent"] * 3
    assert stage_plan(model, 6, "sequential") == ["backbone"] * 2 + ["attention"] * 2 + ["dependency", "joint"]
    with pytest.raises(MlicError, match="at least 4 epochs"):
        stage_plan(model, 3, "sequential")
