"""``mlic-edge import ml-gcn``: checkpoints written in the official layout (megvii-research/ML-GCN ``GCNResnet``:
``features.N``, ``A``, ``gc1``/``gc2``) with random weights, imported, and checked against an independent
computation of the official forward (torchvision ResNet, global max pooling, the GCN from the paper's formulas)."""

from __future__ import annotations

import argparse
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from mlic_edge.models.official import ImportOptions, ImportRefused, import_checkpoint

RESNET_PARTS = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}  # official features.N
CUSTOM_LABELS = ["kayak", "paddle", "lake", "tent"]
CUSTOM_NUMS = np.array([10, 8, 6, 4])
CUSTOM_ADJ = np.array([[0, 5, 1, 3], [5, 0, 4, 0], [1, 4, 0, 2], [3, 0, 2, 0]])  # symmetric, zero diagonal
HIDDEN = 48


def official_gen_a(adj: np.ndarray, nums: np.ndarray, t: float = 0.4) -> np.ndarray:
    """ML-GCN's gen_A, written out: P(j | i) thresholded at t, columns re-weighted to 0.25, plus the identity."""
    conditional = adj / nums[:, None]
    edges = (conditional >= t).astype(np.float64)
    return edges * 0.25 / (edges.sum(0, keepdims=True) + 1e-6) + np.identity(len(nums))


def official_state(a: np.ndarray, label_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A ``GCNResnet`` state dict on ResNet-18 with random weights and BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    resnet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, nn.BatchNorm2d):
                width = module.num_features
                module.weight.copy_(0.5 + torch.rand(width, generator=generator))
                module.bias.copy_(0.1 * torch.randn(width, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(width, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(width, generator=generator))
    by_part = {part: index for index, part in RESNET_PARTS.items()}
    state = {"A": torch.from_numpy(a).float()}
    for key, value in resnet.state_dict().items():
        part, rest = key.split(".", 1)
        if part != "fc":
            state[f"features.{by_part[part]}.{rest}"] = value.clone()
    state["gc1.weight"] = (torch.rand(label_dim, HIDDEN, generator=generator) * 2 - 1) / HIDDEN ** 0.5
    state["gc2.weight"] = (torch.rand(HIDDEN, 512, generator=generator) * 2 - 1) / 512 ** 0.5
    return state


def save_official(path: Path, state: dict[str, torch.Tensor], *, module_prefix: bool = False,
                  batch_counters: bool = True, **extra) -> Path:
    state = {("module." if module_prefix else "") + key: value for key, value in state.items()
             if batch_counters or not key.endswith("num_batches_tracked")}
    torch.save({"epoch": 5, "arch": None, "state_dict": state, "best_score": 93.9, **extra}, path)
    return path


def reference_model(state: dict[str, torch.Tensor], vectors: np.ndarray):
    """The official forward, computed independently: torchvision ResNet-18 → global max → x Wᵀ with
    W = Â LeakyReLU_0.2(Â E W1) W2 and Â = D^-1/2 Aᵀ D^-1/2 (float64 for the label path)."""
    resnet = torchvision.models.resnet18(weights=None)
    renamed = {}
    for key, value in state.items():
        if key.startswith("features."):
            _, index, rest = key.split(".", 2)
            renamed[f"{RESNET_PARTS[int(index)]}.{rest}"] = value
    missing, unexpected = resnet.load_state_dict(renamed, strict=False)
    assert not unexpected and all(key.startswith("fc.") or key.endswith("num_batches_tracked") for key in missing)
    stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                         resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4).eval()
    a = state["A"].double().numpy()
    inverse_root = a.sum(1) ** -0.5
    a_hat = inverse_root[:, None] * a.T * inverse_root[None, :]
    hidden = a_hat @ vectors.astype(np.float64) @ state["gc1.weight"].double().numpy()
    hidden = np.where(hidden > 0, hidden, 0.2 * hidden)
    classifiers = a_hat @ hidden @ state["gc2.weight"].double().numpy()

    def logits(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return stem(images).amax(dim=(2, 3)).double().numpy() @ classifiers.T
    return logits


def assert_official_logits(imported, state, vectors, sizes=(448, 224)) -> None:
    generator = torch.Generator().manual_seed(7)
    reference = reference_model(state, vectors)
    for size in sizes:
        images = torch.randn(1, 3, size, size, generator=generator)
        with torch.no_grad():
            ours = imported.model(images).double().numpy()
        expected = reference(images)
        scale = np.abs(expected).max()
        assert scale > 1e-3
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4 * scale, err_msg=f"{size} px")


def write_pickle(path: Path, payload) -> Path:
    path.write_bytes(pickle.dumps(payload, protocol=3))
    return path


@pytest.fixture
def custom(tmp_path):
    """The 4-class checkpoint's files: classes list, word-vector pickle (bare array) and {'nums', 'adj'} pickle."""
    vectors = np.random.default_rng(3).standard_normal((len(CUSTOM_LABELS), 16)).astype(np.float32)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CUSTOM_LABELS) + "\n")
    options = ImportOptions(labels=str(classes), word_vectors=write_pickle(tmp_path / "glove.pkl", vectors),
                            adjacency=write_pickle(tmp_path / "adj.pkl", {"nums": CUSTOM_NUMS, "adj": CUSTOM_ADJ}))
    state = official_state(official_gen_a(CUSTOM_ADJ, CUSTOM_NUMS), label_dim=16)
    return state, vectors, options


@pytest.mark.parametrize("module_prefix, batch_counters", [(True, True), (False, False)])
def test_custom_checkpoint_gives_the_official_logits(tmp_path, custom, module_prefix, batch_counters):
    state, vectors, options = custom
    path = save_official(tmp_path / "checkpoint.pth.tar", state, module_prefix=module_prefix,
                         batch_counters=batch_counters)
    imported = import_checkpoint("ml-gcn", path, options)
    assert imported.labels == CUSTOM_LABELS and imported.img_size == 448
    assert imported.model.config()["backbone"] == "resnet18"
    assert imported.model.config()["hyperparameters"] == {"tau": 0.4, "p": 0.25, "hidden": HIDDEN, "label_dim": 16}
    graph = imported.label_graph
    assert graph.names == CUSTOM_LABELS and np.array_equal(graph.vectors, vectors)
    assert np.array_equal(graph.cooccurrence, CUSTOM_ADJ) and np.array_equal(graph.counts, CUSTOM_NUMS)
    assert any("A: matches" in note for note in imported.notes)
    assert_official_logits(imported, state, vectors, sizes=(448, 224) if module_prefix else (224,))


def test_voc_checkpoint_is_checked_against_the_shipped_graph(tmp_path):
    from mlic_edge.data.voc import VOC_CLASSES
    from mlic_edge.label_vectors import shipped_label_data

    voc = shipped_label_data("voc2007_labels.npz")
    state = official_state(official_gen_a(voc["cooccurrence"], voc["counts"]), label_dim=300, seed=1)
    imported = import_checkpoint("ml-gcn", save_official(tmp_path / "voc.pth.tar", state), ImportOptions())
    assert imported.labels == list(VOC_CLASSES)
    assert np.array_equal(imported.label_graph.vectors, voc["glove300"])
    assert np.array_equal(imported.label_graph.counts, voc["counts"])
    assert_official_logits(imported, state, voc["glove300"], sizes=(224,))

    other_tau = official_state(official_gen_a(voc["cooccurrence"], voc["counts"], t=0.3), label_dim=300, seed=1)
    with pytest.raises(ImportRefused, match="differs from ML-GCN's gen_A"):
        import_checkpoint("ml-gcn", save_official(tmp_path / "other.pth.tar", other_tau), ImportOptions())


def test_custom_checkpoint_without_counts_is_taken_as_stored(tmp_path, custom):
    state, _, options = custom
    path = save_official(tmp_path / "checkpoint.pth.tar", state)
    imported = import_checkpoint("ml-gcn", path, ImportOptions(labels=options.labels,
                                                               word_vectors=options.word_vectors))
    assert imported.label_graph is None and any("A: not checked" in note for note in imported.notes)
    with pytest.raises(ImportRefused, match="--word-vectors"):
        import_checkpoint("ml-gcn", path, ImportOptions(labels=options.labels))


def refusal(tmp_path, state, options, **saved) -> str:
    path = save_official(tmp_path / "refused.pth.tar", state, **saved)
    with pytest.raises(ImportRefused) as error:
        import_checkpoint("ml-gcn", path, options)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_refusals(tmp_path, custom):
    state, _, options = custom
    three = tmp_path / "three.txt"
    three.write_text("kayak\npaddle\nlake\n")
    assert "names 3" in refusal(tmp_path, state, ImportOptions(labels=str(three), word_vectors=options.word_vectors))

    without = {key: value for key, value in state.items() if key != "features.7.1.bn2.running_var"}
    assert "missing backbone.layer4.1.bn2.running_var" in refusal(tmp_path, without, options)
    assert "unexpected features.8.weight" in refusal(tmp_path, {**state, "features.8.weight": torch.ones(2)}, options)

    other_a = {**state, "A": torch.from_numpy(official_gen_a(CUSTOM_ADJ, CUSTOM_NUMS, t=0.55)).float()}
    assert "differs from ML-GCN's gen_A" in refusal(tmp_path, other_a, options)

    code = tmp_path / "code.pkl"
    code.write_bytes(pickle.dumps(argparse.Namespace(vectors=1)))
    assert "not a plain data pickle" in refusal(tmp_path, state, ImportOptions(labels=options.labels,
                                                                                 word_vectors=code))

    whole = save_official(tmp_path / "whole.pth.tar", state)
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImportRefused, match="cannot be read"):
        import_checkpoint("ml-gcn", truncated, options)


def test_a_pickle_that_needs_full_unpickling_loads_only_when_trusted(tmp_path, custom):
    state, _, options = custom
    path = save_official(tmp_path / "namespace.pth.tar", state, args=argparse.Namespace(lr=0.1))
    with pytest.raises(ImportRefused, match="trust-pickle"):
        import_checkpoint("ml-gcn", path, options)
    assert import_checkpoint("ml-gcn", path, options, trust_pickle=True).labels == CUSTOM_LABELS


def test_label_pickles_of_other_classes_load_only_when_trusted(tmp_path, custom):
    state, vectors, options = custom
    table = write_pickle(tmp_path / "table.pkl", OrderedDict(zip(CUSTOM_LABELS, vectors)))
    with_table = ImportOptions(labels=options.labels, word_vectors=table, adjacency=options.adjacency)
    message = refusal(tmp_path, state, with_table)
    assert "--word-vectors" in message and "collections.OrderedDict" in message and "--trust-pickle" in message
    path = save_official(tmp_path / "checkpoint.pth.tar", state)
    imported = import_checkpoint("ml-gcn", path, with_table, trust_pickle=True)
    np.testing.assert_array_equal(imported.model.state_dict()["label_vectors"].numpy(), vectors)


@pytest.mark.parametrize("builder, expected", [(torchvision.models.resnet50, "resnet50"),
                                               (torchvision.models.resnext50_32x4d, "resnext50_32x4d"),
                                               (torchvision.models.wide_resnet50_2, "wide_resnet50_2"),
                                               (torchvision.models.resnet34, "resnet34")])
def test_the_backbone_is_read_from_the_tensors(builder, expected):
    from mlic_edge.models.official.mlgcn import detect_resnet

    with torch.device("meta"):
        resnet = builder(weights=None)
    by_part = {part: index for index, part in RESNET_PARTS.items()}
    state = {f"features.{by_part[key.split('.', 1)[0]]}.{key.split('.', 1)[1]}": value
             for key, value in resnet.state_dict().items() if not key.startswith("fc.")}
    assert detect_resnet(state, Path("x"))[0] == expected
