"""``mlic-edge import msrn``: checkpoints written by hand in the official MSGDN layout (random weights) load into our
``msrn`` and give the logits of an independent re-computation of the official forward; wrong files are refused."""

from __future__ import annotations

import argparse
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from mlic_edge.label_graph import mlgcn_adjacency
from mlic_edge.label_vectors import shipped_label_data
from mlic_edge.models.checkpoint import load_model, save_checkpoint
from mlic_edge.models.official import ImportOptions, ImportRefused, import_checkpoint
from mlic_edge.models.official.msrn import _backbone_of
from mlic_edge.models.zoo.msrn import MSRN
from mlic_edge.spec import OFFICIAL_RESIZE

CLASSES, GROUPS = 5, 2
DIMS = dict(embed=16, label_hidden=8, gat_hidden=12, fc_hidden=32, label_dim=10)
UNUSED = ["resnet_101.conv_buffer0.weight", "resnet_101.conv_buffer0.bias", "W", "B"]


def official_state(num_classes: int = CLASSES, groups: int = GROUPS, label_dim: int = DIMS["label_dim"],
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """MSGDN's state_dict on a ResNet-18 (the official ResNet's names are torchvision's), unused tensors included."""
    torch.manual_seed(seed)
    resnet = torchvision.models.resnet18()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, activations of a sane scale
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(0.5)
    state = {f"resnet_101.{key}": value for key, value in resnet.state_dict().items() if not key.startswith("fc.")}
    d, hidden, gat_hidden = DIMS["embed"], DIMS["label_hidden"], DIMS["gat_hidden"]

    def conv(name: str, out: int, inp: int) -> None:
        state[f"{name}.weight"] = 0.1 * torch.randn(out, inp, 1, 1)
        state[f"{name}.bias"] = 0.1 * torch.randn(out)

    def linear(name: str, out: int, inp: int) -> None:
        state[f"{name}.weight"] = torch.randn(out, inp) / inp ** 0.5
        state[f"{name}.bias"] = 0.1 * torch.randn(out)

    def gat(name: str, inp: int, out: int) -> None:
        state[f"{name}.W"] = torch.randn(inp, out) / inp ** 0.5
        state[f"{name}.a"] = torch.randn(2 * out, 1) / out ** 0.5

    conv("resnet_101.conv_buffer0", 64, 64)
    conv("resnet_101.conv_buffer1", 128, 128)
    conv("resnet_101.conv_buffer2", 256, 256)
    for branch, width in enumerate((128, 256, 512)):
        conv(f"ProjectM.{branch}", d, width)
    linear("fc_label", hidden, label_dim)
    gat("label_embed.layers.0", hidden, gat_hidden)
    gat("label_embed.layers.1", gat_hidden, d)
    gat("group_embed.layers.0.embed", d, d)
    gat("group_embed.layers.0.assign_mat", d, groups)
    linear("fc1", DIMS["fc_hidden"], 3 * d * (num_classes + groups))
    linear("fc2", num_classes, DIMS["fc_hidden"])
    state["W"], state["B"] = torch.randn(num_classes, 3 * d * 2), torch.randn(num_classes)
    return state


def write_checkpoint(path, state, prefix: str = "", **extra):
    torch.save({"epoch": 20, "arch": None, "state_dict": {prefix + key: value for key, value in state.items()},
                "best_score": torch.tensor(93.8), **extra}, path)
    return path


def label_files(folder, num_classes: int = CLASSES, seed: int = 0):
    """(labels file, the official bare-array word-vector pickle, the official {'nums', 'adj'} pickle)."""
    rng = np.random.default_rng(seed)
    positive = (rng.random((60, num_classes)) < 0.4).astype(np.int64)
    adjacency = positive.T @ positive
    counts = np.diag(adjacency).copy()
    np.fill_diagonal(adjacency, 0)
    labels = folder / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(num_classes)))
    vectors = folder / "glove_word2vec.pkl"
    vectors.write_bytes(pickle.dumps(rng.standard_normal((num_classes, DIMS["label_dim"])).astype(np.float32)))
    graph = folder / "adj.pkl"
    # protocol 3 with numpy 1's module names, as the official pickles were written
    graph.write_bytes(pickle.dumps({"nums": counts, "adj": adjacency}, protocol=3)
                      .replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return labels, vectors, graph


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    folder = tmp_path_factory.mktemp("msrn")
    state = official_state()
    labels, vectors, graph = label_files(folder)
    options = ImportOptions(labels=str(labels), word_vectors=vectors, adjacency=graph)
    return dict(folder=folder, state=state, options=options, path=write_checkpoint(folder / "ckpt.pth.tar", state),
                vectors=pickle.loads(vectors.read_bytes()), graph=pickle.loads(graph.read_bytes()))


# ------------------------------------------------------------------------- the official forward, re-computed
def official_mask(graph: dict[str, np.ndarray], tau: float = 0.4) -> torch.Tensor:
    """gen_adj(gen_A(...)) > 0: B = [P(j | i) >= τ], A = 0.25·B / colsum(B) + I, Â = D^-½ Aᵀ D^-½."""
    conditional = graph["adj"] / graph["nums"][:, None]
    edges = (conditional >= tau).astype(np.float64)
    a = edges * 0.25 / (edges.sum(0, keepdims=True) + 1e-6) + np.eye(len(edges))
    d = np.diag(a.sum(1) ** -0.5)
    return torch.from_numpy((a @ d).T @ d > 0)


def official_gat(x: torch.Tensor, weight: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """e_ij = LeakyReLU(a·[h_i ‖ h_j]) over all (i, j) pairs, masked softmax over j, ELU(α h + h)."""
    h = x @ weight
    n = h.shape[0]
    pairs = torch.cat([h.repeat_interleave(n, dim=0), h.repeat(n, 1)], dim=1)  # row i·n + j = [h_i ‖ h_j]
    scores = F.leaky_relu(pairs @ attention, 0.2).view(n, n)
    alpha = torch.softmax(torch.where(mask, scores, torch.full_like(scores, -1e12)), dim=1)
    return F.elu(alpha @ h + h)


def official_logits(state: dict[str, torch.Tensor], vectors: np.ndarray, graph: dict, images: torch.Tensor):
    resnet = torchvision.models.resnet18()
    resnet.load_state_dict({key[len("resnet_101."):]: value for key, value in state.items()
                            if key.startswith("resnet_101.") and "conv_buffer" not in key}, strict=False)
    resnet.eval()
    stem = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
    layer2 = resnet.layer2(resnet.layer1(stem))
    layer3 = resnet.layer3(layer2)
    layer4 = resnet.layer4(layer3)

    def buffer(x, index):
        return F.conv2d(x, state[f"resnet_101.conv_buffer{index}.weight"], state[f"resnet_101.conv_buffer{index}.bias"])

    branches = [F.max_pool2d(buffer(layer2, 1), 2, 2), F.max_pool2d(buffer(layer3, 2), 2, 2),
                F.max_pool2d(layer4, 2, 2)]  # MaxPool2d(2, 2): floor

    mask = official_mask(graph)
    inp = F.linear(torch.from_numpy(vectors), state["fc_label.weight"], state["fc_label.bias"])
    for layer in (0, 1):
        inp = official_gat(inp, state[f"label_embed.layers.{layer}.W"], state[f"label_embed.layers.{layer}.a"], mask)
    label_embed = inp
    z = official_gat(F.relu(label_embed), state["group_embed.layers.0.embed.W"],
                     state["group_embed.layers.0.embed.a"], mask)
    s = torch.softmax(official_gat(F.relu(label_embed), state["group_embed.layers.0.assign_mat.W"],
                                   state["group_embed.layers.0.assign_mat.a"], mask), dim=-1)
    group_embed = s.t() @ z

    label_parts, group_parts = [], []
    for index, feature in enumerate(branches):
        feature = F.conv2d(feature, state[f"ProjectM.{index}.weight"], state[f"ProjectM.{index}.bias"])
        positions = feature.flatten(2).transpose(1, 2)[:, :, None, :]  # (B, HW, 1, d)
        for embedding, parts in ((label_embed, label_parts), (group_embed, group_parts)):
            weights = torch.softmax(positions * embedding, dim=1)  # over positions, per channel
            parts.append((weights * positions).sum(dim=1))  # (B, N, d)
    connected = torch.tanh(torch.cat([torch.cat(label_parts, -1), torch.cat(group_parts, -1)], dim=1))
    hidden = F.leaky_relu(F.linear(connected.flatten(1), state["fc1.weight"], state["fc1.bias"]))
    return F.linear(hidden, state["fc2.weight"], state["fc2.bias"])


# ------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("size", [448, 224])
def test_logits_are_the_official_forward(official, size):
    imported = import_checkpoint("msrn", official["path"], official["options"])
    model = imported.model
    assert model.backbone_name == "resnet18" and model.num_groups == GROUPS
    assert model.hyperparameters["pool_rounding"] == "floor"
    torch.manual_seed(size)
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = official_logits(official["state"], official["vectors"], official["graph"], images)
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=1e-4)
        if size == 224:  # layer4 is 7×7 there: ceil pooling would keep a fourth row and column
            ceil = MSRN(CLASSES, backbone="resnet18", **{**model.hyperparameters, "pool_rounding": "ceil"}).eval()
            ceil.load_state_dict(model.state_dict())
            assert (ceil(images) - expected).abs().max() > 1e-4


def test_the_run_records_what_it_needs(official, tmp_path):
    imported = import_checkpoint("msrn", official["path"], official["options"])
    assert imported.labels == [f"class {i}" for i in range(CLASSES)] and imported.img_size == 448
    assert sorted(imported.ignored) == sorted(UNUSED)
    assert imported.resize == OFFICIAL_RESIZE and not any("PIL" in note for note in imported.notes)
    assert any("fp16" in note for note in imported.notes)
    graph = imported.label_graph
    assert np.array_equal(graph.vectors, official["vectors"])
    assert np.array_equal(graph.counts, official["graph"]["nums"])
    assert torch.equal(imported.model.adjacency_mask, official_mask(official["graph"]))
    hp = imported.model.hyperparameters
    assert hp["pool_ratio"] == GROUPS / CLASSES and hp["tau"] == 0.4 and hp["label_dim"] == DIMS["label_dim"]
    # checkpoint.pt rebuilds the same model (floor pooling included) without the label graph
    save_checkpoint(tmp_path / "checkpoint.pt", imported.model)
    rebuilt = load_model(tmp_path / "checkpoint.pt")
    images = torch.randn(1, 3, 96, 96)  # layer4 3×3: floor and ceil differ
    with torch.no_grad():
        assert torch.equal(rebuilt(images), imported.model(images))


def test_gat_layers_are_pyg_dense_gat_with_the_official_residual(official):
    from torch_geometric.nn import DenseGATConv

    imported = import_checkpoint("msrn", official["path"], official["options"])
    model, state = imported.model, official["state"]
    mask = model.adjacency_mask
    assert not mask.all() and mask.diagonal().all()  # a graph with missing edges, every node attends itself
    layers = {"label_embed.layers.0": model.label_gat[0], "label_embed.layers.1": model.label_gat[1],
              "group_embed.layers.0.embed": model.group_pool.embed,
              "group_embed.layers.0.assign_mat": model.group_pool.assign}
    for name, ours in layers.items():
        weight, attention = state[f"{name}.W"], state[f"{name}.a"]
        inp, out = weight.shape
        pyg = DenseGATConv(inp, out, heads=1, negative_slope=0.2, bias=False)
        with torch.no_grad():  # PyG: e_ij = LeakyReLU(att_dst·h_i + att_src·h_j), softmax over j (row i)
            pyg.lin.weight.copy_(weight.t())
            pyg.att_dst.copy_(attention[:out].view(1, 1, 1, out))
            pyg.att_src.copy_(attention[out:].view(1, 1, 1, out))
            x = torch.randn(CLASSES, inp)
            expected = F.elu(pyg(x, mask.float(), add_loop=True)[0] + pyg.lin(x))  # official: ELU(α h + h)
            torch.testing.assert_close(ours(x, mask), expected)
            torch.testing.assert_close(ours(x, mask), official_gat(x, weight, attention, mask))


def test_module_prefix_is_stripped(official):
    path = write_checkpoint(official["folder"] / "prefixed.pth.tar", official["state"], prefix="module.")
    prefixed = import_checkpoint("msrn", path, official["options"]).model.state_dict()
    plain = import_checkpoint("msrn", official["path"], official["options"]).model.state_dict()
    assert prefixed.keys() == plain.keys() and all(torch.equal(prefixed[key], plain[key]) for key in plain)


def test_voc_and_coco_take_the_shipped_vectors_and_graph(tmp_path):
    for count, filename in ((20, "voc2007_labels.npz"), (80, "coco2014_labels.npz")):
        path = write_checkpoint(tmp_path / f"{count}.pth.tar", official_state(count, label_dim=300))
        imported = import_checkpoint("msrn", path)  # the labels come from the class count
        shipped = shipped_label_data(filename)
        assert imported.labels == [str(name) for name in shipped["names"]]  # COCO: MSRN's alphabetical order
        assert np.array_equal(imported.model.label_vectors.numpy(), shipped["glove300"])
        _, a_hat = mlgcn_adjacency(shipped["cooccurrence"], shipped["counts"], tau=0.4)
        assert torch.equal(imported.model.adjacency_mask, torch.from_numpy(a_hat > 0))
    assert any("alphabetical" in note for note in imported.notes)


def test_backbone_depth_from_the_block_layout():
    with torch.device("meta"):
        for depth in ("resnet18", "resnet34", "resnet50", "resnet101"):
            keys = getattr(torchvision.models, depth)().state_dict()
            assert _backbone_of({f"resnet_101.{key}": None for key in keys}, "x") == depth
    with pytest.raises(ImportRefused, match="basic blocks"):
        _backbone_of({"resnet_101.layer1.0.conv1.weight": None}, "x")


def refused(path, options, **kwargs) -> str:
    with pytest.raises(ImportRefused) as error:
        import_checkpoint("msrn", path, options, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_refusals(official, tmp_path):
    state, options = official["state"], official["options"]
    short_labels = tmp_path / "four.txt"
    short_labels.write_text("a\nb\nc\nd\n")
    assert "5 classes" in refused(official["path"], ImportOptions(labels=str(short_labels), **_graph_files(options)))
    assert "5 classes" in refused(official["path"], ImportOptions(labels="voc"))

    no_attention = {key: value for key, value in state.items() if key != "label_embed.layers.0.a"}
    assert "label_embed.layers.0.a" in refused(write_checkpoint(tmp_path / "a.pth.tar", no_attention), options)
    no_bias = {key: value for key, value in state.items() if key != "ProjectM.1.bias"}
    assert "missing image_side.projections.1.bias" in refused(write_checkpoint(tmp_path / "b.pth.tar", no_bias),
                                                              options)

    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(official["path"].read_bytes()[:1_000_000])
    assert "truncated" in refused(truncated, options)

    with_args = write_checkpoint(tmp_path / "args.pth.tar", state, args=argparse.Namespace(lr=0.1))
    assert "--trust-pickle" in refused(with_args, options)
    assert import_checkpoint("msrn", with_args, options, trust_pickle=True).model.num_classes == CLASSES


def test_label_pickles_are_unpickled_as_arrays_only(official, tmp_path):
    options = official["options"]
    counter = tmp_path / "counter.pkl"
    counter.write_bytes(pickle.dumps({"nums": Counter(a=1), "adj": np.zeros((CLASSES, CLASSES))}))
    message = refused(official["path"], ImportOptions(labels=options.labels, word_vectors=options.word_vectors,
                                                      adjacency=counter))
    assert "collections.Counter" in message
    wrong_shape = tmp_path / "vectors.pkl"
    wrong_shape.write_bytes(pickle.dumps(np.zeros((CLASSES + 1, DIMS["label_dim"]), np.float32), protocol=5))
    assert "shape" in refused(official["path"], ImportOptions(labels=options.labels, word_vectors=wrong_shape,
                                                              adjacency=options.adjacency))
    assert "--adjacency" in refused(official["path"], ImportOptions(labels=options.labels,
                                                                    word_vectors=options.word_vectors))


def _graph_files(options: ImportOptions) -> dict:
    return dict(word_vectors=options.word_vectors, adjacency=options.adjacency)
