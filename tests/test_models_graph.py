"""Graph layers (GraphConvolution, DenseGATLayer) and the two label-graph models built on them: ML-GCN and ML-GAT
(seed paper 000). Reference checks against PyG's DenseGATConv and a direct numpy ML-GCN branch; folding,
ONNX export, checkpoint rebuild and overfitting for both models."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn as nn

from mlic_edge.label_graph import LabelGraph, conditional_edges, mlgcn_adjacency
from mlic_edge.metrics import mean_average_precision
from mlic_edge.models.checkpoint import load_model, save_checkpoint
from mlic_edge.models.layers.graph import DenseGATLayer, GraphConvolution, cooccurrence_mask
from mlic_edge.models.zoo.mlgat import MLGAT
from mlic_edge.models.zoo.mlgcn import MLGCN
from model_checks import fit_steps, to_onnx

TINY = {
    "mlgcn": (MLGCN, dict(backbone="resnet10t", hidden=24)),
    "mlgat": (MLGAT, dict(backbone="resnet10t", d_reduced=16, conv1_kernel=1)),
}
LABEL_PARTS = {"mlgcn": ("gc1", "gc2"), "mlgat": ("label_reduce", "gat", "gat_residual")}


def make_graph(num_classes: int, dim: int = 32, seed: int = 0) -> LabelGraph:
    rng = np.random.default_rng(seed)
    targets = (rng.random((6 * num_classes + 10, num_classes)) < 0.35).astype(np.int8)
    vectors = rng.standard_normal((num_classes, dim)).astype(np.float32)
    return LabelGraph.from_targets([f"c{i}" for i in range(num_classes)], targets, vectors, "test")


def make_model(name: str, num_classes: int = 7, seed: int = 0, **overrides):
    cls, tiny = TINY[name]
    torch.manual_seed(seed)
    return cls(num_classes, label_graph=make_graph(num_classes), **{**tiny, **overrides}).eval()


# --------------------------------------------------------------------------- layers


def asymmetric_adjacency(n: int, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, n) if batch is None else (batch, n, n)
    adj = (torch.rand(shape, generator=g) < 0.4).float()
    adj[..., 0, 1], adj[..., 1, 0] = 1.0, 0.0  # surely asymmetric
    return adj


@pytest.mark.parametrize("heads,concat,batched", [(1, True, False), (3, True, True), (3, False, False)])
def test_dense_gat_matches_pyg(heads, concat, batched):
    try:
        from torch_geometric.nn import DenseGATConv
    except ImportError as error:  # the dev extra should install it
        pytest.skip(f"torch_geometric is not installed ({error}); it is the reference for DenseGATLayer")
    torch.manual_seed(0)
    n, f_in, f_out = 9, 5, 4
    ours = DenseGATLayer(f_in, f_out, heads=heads, concat=concat, dropout=0.0, bias=True)
    nn.init.normal_(ours.bias)  # non-zero, so the bias placement is checked too
    ref = DenseGATConv(f_in, f_out, heads=heads, concat=concat, dropout=0.0, bias=True)
    with torch.no_grad():  # METHODS.md §2: lin.weight = Wᵀ, att_dst = a[:C], att_src = a[C:]
        ref.lin.weight.copy_(ours.lin.weight)
        ref.att_src.copy_(ours.att_src.view_as(ref.att_src))
        ref.att_dst.copy_(ours.att_dst.view_as(ref.att_dst))
        ref.bias.copy_(ours.bias)
    x = torch.randn((2, n, f_in) if batched else (n, f_in))
    adj = asymmetric_adjacency(n, batch=2 if batched else None)
    with torch.no_grad():
        expected = ref(x, adj)
        torch.testing.assert_close(ours(x, adj), expected if batched else expected[0], atol=1e-6, rtol=0)
        # The transposed graph gives a different answer: the direction is really exercised.
        assert not torch.allclose(ours(x, adj.transpose(-1, -2)), expected if batched else expected[0])


def test_dense_gat_without_self_loops_matches_pyg_and_survives_empty_rows():
    pytest.importorskip("torch_geometric", reason="torch_geometric is the reference for DenseGATLayer")
    from torch_geometric.nn import DenseGATConv

    torch.manual_seed(1)
    n = 6
    ours = DenseGATLayer(4, 3, heads=2, add_self_loops=False)
    ref = DenseGATConv(4, 3, heads=2)
    with torch.no_grad():
        ref.lin.weight.copy_(ours.lin.weight)
        ref.att_src.copy_(ours.att_src.view_as(ref.att_src))
        ref.att_dst.copy_(ours.att_dst.view_as(ref.att_dst))
    x = torch.randn(n, 4)
    adj = asymmetric_adjacency(n, seed=3)
    adj[torch.arange(n), (torch.arange(n) + 1) % n] = 1.0  # every row has a neighbour
    with torch.no_grad():
        torch.testing.assert_close(ours(x, adj), ref(x, adj, add_loop=False)[0], atol=1e-6, rtol=0)
    adj[2] = 0.0  # node 2 receives nothing: zero output, finite gradients
    x.requires_grad_(True)
    out = ours(x, adj)
    assert torch.equal(out[2], torch.zeros(6))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_dense_gat_row_attends_its_columns_only():
    torch.manual_seed(0)
    layer = DenseGATLayer(3, 2)
    adj = torch.zeros(4, 4)
    adj[0, 1] = 1.0  # node 0 attends node 1 (and itself); nobody attends node 0 but itself
    x = torch.randn(4, 3)
    alpha, _ = layer.attention(x, adj)
    assert alpha.shape == (1, 4, 4)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(1, 4))
    assert alpha[0, 0, 2:].abs().sum() == 0 and alpha[0, 0, :2].min() > 0
    assert torch.equal(alpha[0, 1:], torch.eye(4)[1:])
    changed = x.clone()
    changed[2:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(layer(x, adj)[:2], layer(changed, adj)[:2])


def test_dense_gat_residual_modes():
    torch.manual_seed(0)
    x, adj = torch.randn(5, 6), asymmetric_adjacency(5)
    plain = DenseGATLayer(6, 6, bias=False)
    with torch.no_grad():
        base = plain(x, adj)
        for mode, expected_res in (("input", None), ("linear", "linear"), ("projected", None)):
            layer = DenseGATLayer(6, 6, residual=mode, bias=False)
            layer.load_state_dict(plain.state_dict(), strict=False)
            extra = {"input": x, "projected": plain.lin(x)}.get(mode)
            if expected_res:
                assert isinstance(layer.res, nn.Linear) and layer.res.bias is None
                extra = layer.res(x)
            torch.testing.assert_close(layer(x, adj), base + extra)
    assert isinstance(DenseGATLayer(6, 4, residual=True).res, nn.Linear)  # widths differ: projection
    assert DenseGATLayer(6, 2, heads=3, residual=True).res is None  # 3 heads × 2 = 6: identity
    assert DenseGATLayer(6, 4, heads=3, concat=False)(x, adj).shape == (5, 4)
    with pytest.raises(ValueError):
        DenseGATLayer(6, 4, residual="gated")
    # Attention dropout acts in training only.
    drop = DenseGATLayer(6, 4, dropout=0.9).train()
    torch.manual_seed(0)
    assert not torch.allclose(drop(x, adj), drop.eval()(x, adj))


def test_graph_convolution():
    torch.manual_seed(0)
    layer = GraphConvolution(10, 400, bias=True)
    assert layer.weight.shape == (10, 400) and layer.weight.abs().max() <= 1 / 20 and layer.bias.abs().max() <= 1 / 20
    assert layer.weight.abs().max() > 0.04  # U(±1/√out), not a much narrower init
    assert GraphConvolution(3, 4).bias is None
    x, adj = torch.randn(6, 10), torch.rand(6, 6)
    torch.testing.assert_close(layer(x, adj), adj @ x @ layer.weight + layer.bias)


def test_cooccurrence_mask_direction():
    # 10 images hold "airplane" (0), all of them "sky" (1); 40 more images hold sky alone.
    cooc = np.array([[0, 10], [10, 0]])
    counts = np.array([10, 50])
    mask = cooccurrence_mask(cooc, counts, tau=0.4)
    # P(sky | airplane) = 1 ≥ τ: airplane attends sky; P(airplane | sky) = 0.2 < τ: not the reverse.
    assert mask.tolist() == [[True, True], [False, True]]
    assert mask.dtype == torch.bool


# --------------------------------------------------------------------------- ML-GCN


def test_mlgcn_branch_matches_numpy():
    graph = make_graph(7)
    model = make_model("mlgcn", 7)
    _, a_hat = mlgcn_adjacency(graph.cooccurrence, graph.counts, tau=0.4, p=0.25)
    assert torch.equal(model.adjacency, torch.from_numpy(a_hat))
    assert torch.equal(model.label_vectors, torch.from_numpy(graph.vectors))
    a = a_hat.astype(np.float64)
    e = graph.vectors.astype(np.float64)
    w1, w2 = (p.detach().double().numpy() for p in (model.gc1.weight, model.gc2.weight))
    pre = a @ e @ w1
    h = np.where(pre > 0, pre, 0.2 * pre)
    expected = a @ h @ w2
    assert expected.shape == (7, 512)  # resnet10t features
    with torch.no_grad():
        np.testing.assert_allclose(model.classifiers().double().numpy(), expected, atol=1e-5, rtol=1e-5)
        x = torch.randn(2, 3, 64, 64)
        features = model.backbone(x).double().numpy()
        np.testing.assert_allclose(model(x).double().numpy(), features @ expected.T, atol=1e-4, rtol=1e-4)
    assert model.gc1.bias is None and model.gc2.bias is None
    hp = model.hyperparameters
    assert hp == {"tau": 0.4, "p": 0.25, "hidden": 24, "label_dim": 32}


def test_mlgcn_uses_global_max_pooling():
    model = make_model("mlgcn", 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.backbone.forward_features(x).amax(dim=(2, 3))
        torch.testing.assert_close(model.backbone(x), expected)


# --------------------------------------------------------------------------- ML-GAT


def test_mlgat_paper_defaults_and_shapes():
    graph = make_graph(20, dim=1024)
    voc = MLGAT(20, backbone="resnet10t", label_graph=graph)
    hp = voc.hyperparameters
    assert hp["d_reduced"] == 512 and hp["hidden"] == 512 and hp["reduce_factor"] == 4 and hp["heads"] == 1
    assert hp["conv1_kernel"] == 1 and hp["conv1_padding"] == 0 and hp["tau"] == 0.4 and hp["label_dim"] == 1024
    assert voc.label_reduce.weight.shape == (1, 1, 4) and voc.label_reduce.stride == (4,)
    assert voc.gat[0].in_features == 256 and voc.gat[1].out_features == 512  # BERT 1024 → d′ 256 → d″
    assert isinstance(voc.gat_residual[0], nn.Linear) and isinstance(voc.gat_residual[1], nn.Identity)
    assert voc.image.conv1.out_channels == voc.image.conv1.in_channels == 512  # conv1 keeps D
    assert voc.label_embeddings().shape == (20, 512)
    assert torch.equal(voc.adjacency_mask, cooccurrence_mask(graph.cooccurrence, graph.counts, 0.4))
    assert voc.adjacency_mask.diagonal().all()
    edges = conditional_edges(graph.cooccurrence, graph.counts, 0.4)
    assert not np.array_equal(edges, edges.T)  # the asymmetric graph is kept as it is (row i attends j)

    coco = MLGAT(80, backbone="resnet10t", label_graph=make_graph(80, dim=40), d_reduced=24, hidden=8).eval()
    assert coco.hyperparameters["conv1_kernel"] == 5 and coco.hyperparameters["conv1_padding"] == 0
    assert MLGAT(80, label_dim=8, backbone="resnet10t").hyperparameters["d_reduced"] == 1280
    assert coco.gat[0].in_features == 10 and coco.gat[0].out_features == 8 and coco.gat[1].out_features == 24
    with torch.no_grad():  # COCO conv1: 5×5 without padding (160 px → 5×5 map → 1×1)
        features = coco.image.backbone.forward_features(torch.zeros(1, 3, 160, 160))
        assert features.shape[-2:] == (5, 5) and coco.image.conv1(features).shape[-2:] == (1, 1)
        assert coco(torch.randn(2, 3, 160, 160)).shape == (2, 80)


def test_mlgat_label_branch_follows_the_equations():
    model = make_model("mlgat", 5)
    with torch.no_grad():
        z0 = model.label_vectors
        k = model.label_reduce.weight.view(-1)
        zl = z0.view(5, -1, 4) @ k + model.label_reduce.bias  # §1.3: kernel 1×4, stride 4
        z1 = torch.nn.functional.elu(model.gat[0](zl, model.adjacency_mask)) + model.gat_residual[0](zl)
        z2 = torch.nn.functional.elu(model.gat[1](z1, model.adjacency_mask)) + z1  # eq. 6: identity residual
        torch.testing.assert_close(model.label_embeddings(), z2)
        x = torch.randn(2, 3, 64, 64)
        image = model.image
        pooled = image.conv2(image.conv1(image.backbone.forward_features(x))).flatten(2).max(-1).values
        torch.testing.assert_close(model(x), pooled @ z2.t())  # eq. 7


# --------------------------------------------------------------------------- both models


@pytest.mark.parametrize("name", ["mlgcn", "mlgat"])
@pytest.mark.parametrize("num_classes", [1, 7, 80])
def test_folded_matches_unfolded(name, num_classes):
    model = make_model(name, num_classes)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        folded = model.fold_static()
        assert logits.shape == (3, num_classes)
        torch.testing.assert_close(folded(x), logits, atol=1e-6, rtol=0)
        scores = model.for_export()(x)
    torch.testing.assert_close(scores, torch.sigmoid(logits), atol=1e-6, rtol=0)
    names = [n for n, _ in folded.named_parameters()]
    assert names and not any(part in n for n in names for part in LABEL_PARTS[name])
    assert not any("adjacency" in n or "label_vectors" in n for n, _ in folded.named_buffers())


@pytest.mark.parametrize("name", ["mlgcn", "mlgat"])
def test_rebuild_from_checkpoint_without_label_graph(name, tmp_path):
    model = make_model(name, 7)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model)
    rebuilt = load_model(path)
    assert type(rebuilt) is type(model) and rebuilt.hyperparameters == model.hyperparameters
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)
    cls, _ = TINY[name]
    with pytest.raises(ValueError, match="label_dim"):
        cls(7, label_graph=None, backbone="resnet10t")


@pytest.mark.parametrize("name", ["mlgcn", "mlgat"])
def test_overfits_a_small_batch(name):
    model = make_model(name, 5, seed=1).train()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=g)
    targets = (torch.rand(8, 5, generator=g) < 0.4).float()
    targets[0], targets[1] = 1.0, 0.0  # every class has a positive and a negative
    losses = fit_steps(model, images, targets, nn.MultiLabelSoftMarginLoss(), steps=30)
    model.eval()
    with torch.no_grad():
        result = mean_average_precision(model(images).numpy(), targets.numpy().astype(np.int64))
    assert losses[-1] < 0.2 * losses[0] or result.map == pytest.approx(1.0), (losses[0], losses[-1], result.map)


@pytest.mark.parametrize("name", ["mlgcn", "mlgat"])
def test_onnx_export_holds_only_the_folded_classifiers(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = make_model(name, 7)
    graph = model.for_export()
    path = tmp_path / f"{name}.onnx"
    proto = to_onnx(graph, path)
    onnx.checker.check_model(proto)
    arrays = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]

    def present(value: torch.Tensor) -> bool:
        v = value.detach().numpy()
        return any(np.allclose(a, w) for a in arrays for w in (v, v.T) if a.shape == w.shape)

    label_tensors = [model.adjacency if name == "mlgcn" else model.adjacency_mask.float(), model.label_vectors]
    label_tensors += [p for part in LABEL_PARTS[name] for p in getattr(model, part).parameters() if p.ndim > 1]
    assert not any(present(t) for t in label_tensors)
    with torch.no_grad():
        classifiers = model.classifiers() if name == "mlgcn" else model.label_embeddings()
    assert present(classifiers)
    exported = sum(t.numel() for t in list(graph.parameters()) + list(graph.buffers()))
    assert sum(a.size for a in arrays) <= exported + 1000
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"Softmax", "Elu", "LeakyRelu"}  # no GAT/GCN maths left

    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = graph(x).numpy()
    np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], expected, atol=1e-5)
