"""MSRN (seed paper 004): shapes, SGA, group loss, folding, ONNX export, checkpoint rebuild, overfitting."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from model_checks import assert_onnxruntime_matches, fit_steps, to_onnx
import torch.nn as nn

from mlic_edge.label_graph import LabelGraph, mlgcn_adjacency
from mlic_edge.models.checkpoint import load_model, save_checkpoint
from mlic_edge.models.zoo.msrn import MSRN, num_groups_for, semantic_guided_attention

TINY = dict(backbone="resnet10t", embed_dim=16, label_hidden=8, gat_hidden=12, fc_hidden=32)
LABEL_PARTS = ("label_fc", "label_gat", "group_pool")


def make_graph(num_classes: int, dim: int = 10, seed: int = 0) -> LabelGraph:
    rng = np.random.default_rng(seed)
    targets = (rng.random((6 * num_classes + 10, num_classes)) < 0.35).astype(np.int8)
    vectors = rng.standard_normal((num_classes, dim)).astype(np.float32)
    return LabelGraph.from_targets([f"c{i}" for i in range(num_classes)], targets, vectors, "test")


def make_model(num_classes: int = 7, seed: int = 0, **overrides) -> MSRN:
    torch.manual_seed(seed)
    return MSRN(num_classes, label_graph=make_graph(num_classes), **{**TINY, **overrides}).eval()


@pytest.mark.parametrize("num_classes", [1, 7, 80])
def test_shapes_for_any_label_count(num_classes):
    model = make_model(num_classes)
    groups = num_groups_for(num_classes, 0.2)
    assert groups >= 1 and model.num_groups == groups
    labels, group_emb, assignment = model.embeddings()
    assert labels.shape == (num_classes, 16) and group_emb.shape == (groups, 16)
    assert assignment.shape == (num_classes, groups)
    torch.testing.assert_close(assignment.sum(1), torch.ones(num_classes))
    assert model.image_side.fc1.in_features == 3 * 16 * (num_classes + groups)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, num_classes)
        scores = model.for_export()(torch.randn(2, 3, 64, 64))
    assert scores.shape == (2, num_classes) and torch.all((scores >= 0) & (scores <= 1))


def test_mask_is_mlgcn_adjacency_and_defaults_follow_the_paper():
    graph = make_graph(7)
    model = MSRN(7, label_graph=graph, **TINY)
    _, a_hat = mlgcn_adjacency(graph.cooccurrence, graph.counts, tau=0.4)
    assert torch.equal(model.adjacency_mask, torch.from_numpy(a_hat > 0))
    hp = model.hyperparameters
    assert hp["tau"] == 0.4 and hp["group_loss_weight"] == 1e-4 and hp["label_dim"] == 10
    assert num_groups_for(20, hp["pool_ratio"]) == 4  # VOC: 4 groups, as in the paper


def test_sga_softmax_over_positions_per_channel():
    torch.manual_seed(1)
    features, embeddings = torch.randn(2, 6, 5), torch.randn(3, 5)
    out, weights = semantic_guided_attention(features, embeddings, return_weights=True)
    assert out.shape == (2, 3, 5) and weights.shape == (2, 3, 6, 5)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(2, 3, 5))  # sums to 1 over HW, per channel
    scores = torch.einsum("bpc,nc->bnpc", features, embeddings)
    expected = torch.einsum("bnpc,bpc->bnc", torch.softmax(scores, dim=2), features)
    torch.testing.assert_close(out, expected)
    # one entry by hand: o[b, n, c] = Σ_p exp(P_pc E_nc) P_pc / Σ_p exp(P_pc E_nc)
    p, e = features[1, :, 4], embeddings[2, 4]
    torch.testing.assert_close(out[1, 2, 4], (torch.exp(p * e) * p).sum() / torch.exp(p * e).sum())


def test_group_loss_is_the_hard_assignment_distance_sum():
    model = make_model(7)
    labels, groups, assignment = model.embeddings()
    # G = Sᵀ z with z = GAT(ReLU(L))
    z = model.group_pool.embed(torch.relu(labels), model.adjacency_mask)
    torch.testing.assert_close(groups, assignment.T @ z)
    by_hand = sum(torch.sqrt(((labels[i] - groups[int(assignment[i].argmax())]) ** 2).sum()) for i in range(7))
    torch.testing.assert_close(model.group_loss(), by_hand)
    images, targets = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 7)).float()
    criterion = nn.BCEWithLogitsLoss()
    expected = criterion(model(images), targets) + 1e-4 * by_hand
    torch.testing.assert_close(model.training_loss(images, targets, criterion), expected)


def test_folded_equals_unfolded_and_drops_the_label_branch():
    model = make_model(7)
    folded = model.fold_static()
    names = [name for name, _ in folded.named_parameters()]
    assert not any(part in name for name in names for part in LABEL_PARTS)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), atol=1e-5, rtol=0)


def test_onnx_export_matches_onnxruntime_without_gat_weights(tmp_path):
    from onnx import numpy_helper

    model = make_model(7)
    graph = model.for_export()
    path = tmp_path / "msrn.onnx"
    proto = to_onnx(graph, path)
    initializers = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    assert not any(part in t.name for t in proto.graph.initializer for part in LABEL_PARTS)
    op_types = {node.op_type for node in proto.graph.node}
    assert "Elu" not in op_types  # no GAT layer in the graph
    for name, param in model.named_parameters():
        if name.startswith(LABEL_PARTS):
            value = param.detach().numpy()
            assert not any(a.shape == value.shape and np.allclose(a, value) for a in initializers), name
    assert_onnxruntime_matches(graph, path)


def test_checkpoint_rebuild_without_label_graph(tmp_path):
    model = make_model(7)
    save_checkpoint(tmp_path / "checkpoint.pt", model)
    rebuilt = load_model(tmp_path / "checkpoint.pt")
    assert isinstance(rebuilt, MSRN) and rebuilt.hyperparameters == model.hyperparameters
    assert torch.equal(rebuilt.adjacency_mask, model.adjacency_mask)
    assert torch.equal(rebuilt.label_vectors, model.label_vectors)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))
        assert torch.equal(rebuilt.fold_static()(images), model.fold_static()(images))


def test_rebuild_needs_label_dim():
    with pytest.raises(ValueError, match="label_dim"):
        MSRN(7, label_graph=None, **TINY)


def test_overfits_a_small_batch():
    model = make_model(5, seed=3).train()
    torch.manual_seed(3)
    images = torch.randn(8, 3, 64, 64)
    targets = (torch.rand(8, 5) < 0.4).float()

    def label_branch_has_gradients():  # the label branch trains through SGA and the group loss
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.label_gat.parameters())
        assert all(p.grad is not None for p in model.group_pool.parameters())

    losses = fit_steps(model, images, targets, nn.BCEWithLogitsLoss(), after_first_backward=label_branch_has_gradients)
    assert losses[-1] < 0.2 * losses[0], losses


def test_gat_layer_is_residual_elu_of_masked_row_softmax():
    from mlic_edge.models.layers.diffpool import ResidualGATLayer

    torch.manual_seed(2)
    layer = ResidualGATLayer(4, 3)
    x = torch.randn(5, 4)
    mask = torch.rand(5, 5) < 0.4
    mask[3] = False  # a node without neighbours attends only itself
    h = x @ layer.gat.lin.weight.T
    a = torch.cat([layer.gat.att_dst.flatten(), layer.gat.att_src.flatten()])  # P = [p_dst; p_src] of eq. 2
    expected = torch.empty(5, 3)
    for i in range(5):
        neighbours = [j for j in range(5) if mask[i, j] or j == i]
        e = torch.stack([nn.functional.leaky_relu(a @ torch.cat([h[i], h[j]]), 0.2) for j in neighbours])
        alpha = torch.softmax(e, dim=0)
        expected[i] = nn.functional.elu(sum(alpha[k] * h[j] for k, j in enumerate(neighbours)) + h[i])
    torch.testing.assert_close(layer(x, mask), expected)
    torch.testing.assert_close(layer(x, mask)[3], nn.functional.elu(2 * h[3]))


def test_pool_rounding_matters_only_for_odd_branch_maps():
    """floor (the official MaxPool2d(2, 2)) drops an odd map's last row and column, ceil pools them alone: resnet10t
    at 224 px has a 7×7 layer4 (3×3 vs 4×4 pooled), at 448 px all three branch maps are even."""
    floor = make_model(7, pool_rounding="floor")
    ceil = make_model(7, pool_rounding="ceil")
    ceil.load_state_dict(floor.state_dict())
    assert floor.config()["hyperparameters"]["pool_rounding"] == "floor"
    torch.manual_seed(4)
    with torch.no_grad():
        odd, even = torch.randn(1, 3, 224, 224), torch.randn(1, 3, 448, 448)
        assert [f.shape[1] for f in floor.image_side.branch_features(odd)] == [14 * 14, 7 * 7, 3 * 3]
        assert [f.shape[1] for f in ceil.image_side.branch_features(odd)] == [14 * 14, 7 * 7, 4 * 4]
        assert (floor(odd) - ceil(odd)).abs().max() > 1e-4
        torch.testing.assert_close(floor(even), ceil(even), atol=0, rtol=0)
    with pytest.raises(ValueError, match="pool_rounding"):
        make_model(7, pool_rounding="round")
