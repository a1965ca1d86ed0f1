"""ML-GCN's released checkpoints (Chen et al., CVPR 2019, "Multi-Label Image Recognition with Graph Convolutional
Networks"; megvii-research/ML-GCN ``voc_checkpoint.pth.tar`` / ``coco_checkpoint.pth.tar``) → our ``mlgcn``.

The file is ``{'epoch', 'arch', 'state_dict', 'best_score'}`` with the official ``GCNResnet``'s state dict (torch
0.3.1: no BatchNorm ``num_batches_tracked``, no ``module.`` prefix; both handled by the shared loader):

============================================  =====================================  ===============================
official                                       ours                                   transform
============================================  =====================================  ===============================
``features.0.<x>``                             ``backbone.conv1.<x>``                 —
``features.1.<x>``                             ``backbone.bn1.<x>``                   —
``features.4/5/6/7.<block>.<x>``               ``backbone.layer1/2/3/4.<block>.<x>``  — (torchvision ResNet names)
(absent in torch-0.3 files)                    ``backbone.*.num_batches_tracked``     0
``gc1.weight`` (label_dim, hidden)             ``gc1.weight``                         — (same (in, out) layout)
``gc2.weight`` (hidden, 2048)                  ``gc2.weight``                         —
``A`` (C, C): gen_A of the training counts     ``adjacency`` (C, C) = Â               gen_adj: D^-1/2 Aᵀ D^-1/2,
                                                                                      D = diag(rowsum A), float32
(not in the file: the loader fed them)         ``label_vectors`` (C, label_dim)       --word-vectors, else the shipped
                                                                                      GloVe rows matched by name
============================================  =====================================  ===============================

Choices:

* The backbone is read from the tensors (blocks per stage, BasicBlock or Bottleneck, groups and width of the 3×3),
  so any torchvision-ResNet ML-GCN loads into the timm model of the same name (the release is ``resnet101``).
  ``features.2`` / ``.3`` (ReLU, max-pool) hold no tensors; any other key is left unmapped and refused as unexpected.
* C comes from ``A``, label_dim and hidden from ``gc1.weight``; τ = 0.4 and p = 0.25 (the official ``t`` and its
  hard-coded 0.25) are recorded as the model's hyperparameters.
* Labels stay in the checkpoint's order (COCO: alphabetical by name, the official loader's order); the model is
  not permuted.
* ``A`` is checked against ML-GCN's gen_A recomputed with our ``mlgcn_adjacency`` from the co-occurrence counts
  (``--adjacency`` pickle, else the shipped VOC 2007 / COCO 2014 counts when the labels are exactly those classes);
  a difference over 1e-5 is refused. The ``adjacency`` buffer is then gen_adj of the file's ``A``: the tensor the
  official forward used, so the logits are the official ones bit for bit at 448 px.
* The official pickles (``*_glove_word2vec.pkl``, ``*_adj.pkl``) are read with an unpickler that only rebuilds numpy
  arrays: nothing in them can run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlic_edge.label_graph import LabelGraph, mlgcn_adjacency
from mlic_edge.models.official import (TORCHVISION_RESNETS, resnet_layout, Imported, ImportOptions, ImportRefused,
                                        load_mapped, official_labels, rename)
from mlic_edge.models.official.label_files import cooccurrence, label_vectors
from mlic_edge.models.registry import create_model

FORMAT = "ml-gcn"
PAPER_IMG_SIZE = 448  # README --image-size 448; MaxPool2d(14) is a global max only there
TAU, P = 0.4, 0.25  # the official gen_A's t (both demos) and its hard-coded re-weighting
A_TOLERANCE = 1e-5
STAGES = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}  # features.N → our names
STAGE_INDICES = (4, 5, 6, 7)


def convert(state: dict[str, torch.Tensor], options: ImportOptions, source: Path) -> Imported:
    """Our ``mlgcn`` holding the official ML-GCN weights of ``state`` (see the module docstring for the mapping)."""
    adjacency_a = _required(state, "A", source)
    gc1 = _required(state, "gc1.weight", source)
    if adjacency_a.ndim != 2 or adjacency_a.shape[0] != adjacency_a.shape[1] or gc1.ndim != 2:
        raise ImportRefused(f"{source}: A {tuple(adjacency_a.shape)} / gc1.weight {tuple(gc1.shape)} are not "
                            "ML-GCN's (C, C) adjacency and (label_dim, hidden) weight",
                            hint=f"check FORMAT ({FORMAT})")
    num_classes, (label_dim, hidden) = adjacency_a.shape[0], gc1.shape
    backbone, backbone_note = detect_resnet(state, source)
    labels, labels_note = official_labels(options.labels, num_classes, "ML-GCN", coco_order="alphabetical")

    vectors, vectors_source = label_vectors(options.word_vectors, labels, label_dim,
                                            trust_pickle=options.trust_pickle)
    a_file = adjacency_a.to(torch.float32)
    counts = cooccurrence(options.adjacency, labels, trust_pickle=options.trust_pickle)
    if counts is None:
        _require_usable(a_file, source)
        graph, a_note = None, ("A: not checked (no co-occurrence counts for these labels; pass --adjacency with the "
                               "training pickle to check it), used as stored")
    else:
        pairs, nums, counts_source = counts
        _check_a(a_file, pairs, nums, labels, counts_source, source)
        graph = LabelGraph(list(labels), vectors, pairs, nums, vectors_source)
        a_note = f"A: matches ML-GCN's gen_A (τ={TAU}, p={P}) of {counts_source} within {A_TOLERANCE:g}"

    mapped = rename({key: value for key, value in state.items() if key != "A"},
                    [(f"features.{index}.", f"backbone.{name}.") for index, name in STAGES.items()])
    mapped["adjacency"] = normalised_adjacency(a_file)
    mapped["label_vectors"] = torch.from_numpy(vectors)
    model = create_model("mlgcn", num_classes, backbone=backbone, pretrained=False, label_dim=int(label_dim),
                         hidden=int(hidden), tau=TAU, p=P)
    load_mapped(model, mapped, source, FORMAT)

    img_size = options.img_size or PAPER_IMG_SIZE
    notes = [note for note in (labels_note, backbone_note, f"label vectors: {vectors_source}", a_note) if note]
    elsewhere = "" if img_size == PAPER_IMG_SIZE else f", so at img_size {img_size} the scores are not the paper's"
    notes.append(f"pooling: the official MaxPool2d(14) is a global max only at {PAPER_IMG_SIZE} px, where it equals "
                 f"ours; at other sizes it fails or keeps one 14×14 window while ours stays global{elsewhere}")
    return Imported(model=model, labels=list(labels), img_size=img_size, notes=notes, label_graph=graph)


# --------------------------------------------------------------------------------------------------- the model
def normalised_adjacency(a: torch.Tensor) -> torch.Tensor:
    """Â = D^-1/2 Aᵀ D^-1/2 with D = diag(rowsum A) (the official ``gen_adj``), float32 as in its forward."""
    inverse_root = torch.diag(a.sum(1).pow(-0.5))
    return torch.matmul(torch.matmul(a, inverse_root).t(), inverse_root)


def detect_resnet(state: dict[str, torch.Tensor], source: Path) -> tuple[str, str | None]:
    """(timm name, note) of the torchvision ResNet under ``features.*``: depth from the blocks per stage and the
    block type; ResNeXt / wide variants from the groups and width of layer1's 3×3 convolution."""
    bottleneck, per_stage = resnet_layout(state, [f"features.{index}." for index in STAGE_INDICES])
    resnet = TORCHVISION_RESNETS.get((bottleneck, per_stage))
    if resnet is None or "features.4.0.conv2.weight" not in state:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise ImportRefused(f"{source}: features.4-7 hold {'-'.join(map(str, per_stage))} {kind} blocks, not a "
                            "torchvision ResNet (18/34/50/101/152)",
                            hint=f"check FORMAT ({FORMAT}): ML-GCN's backbone is features.0-7 of a ResNet")
    depth = int(resnet.removeprefix("resnet"))
    width, per_group = state["features.4.0.conv2.weight"].shape[:2]
    groups = max(int(width) // int(per_group), 1)
    if groups > 1:
        name = f"resnext{depth}_{groups}x{int(width) // groups}d"
    elif bottleneck and width == 128:
        name = f"wide_resnet{depth}_2"
    else:
        name = f"resnet{depth}"
    import timm

    if not timm.is_model(name):
        raise ImportRefused(f"{source}: the backbone looks like {name}, which timm does not provide",
                            hint="ML-GCN's release uses resnet101")
    note = f"backbone: {name} (read from the tensors: {'-'.join(map(str, per_stage))} blocks per stage)"
    return name, (None if name == "resnet101" else note)


def _required(state: dict[str, torch.Tensor], key: str, source: Path) -> torch.Tensor:
    if key not in state:
        raise ImportRefused(f"{source} is not an {FORMAT} checkpoint: it has no {key!r} tensor",
                            hint=f"check FORMAT ({FORMAT}); ML-GCN files hold A, features.*, gc1.weight, gc2.weight")
    return state[key]


def _check_a(a_file: torch.Tensor, cooccurrence: np.ndarray, counts: np.ndarray, labels: list[str],
             counts_source: str, source: Path) -> None:
    expected, _ = mlgcn_adjacency(cooccurrence, counts, tau=TAU, p=P)
    difference = np.abs(a_file.numpy().astype(np.float64) - expected.astype(np.float64))
    difference[~np.isfinite(difference)] = np.inf
    if difference.max() >= A_TOLERANCE:
        row, column = np.unravel_index(int(np.argmax(difference)), difference.shape)
        raise ImportRefused(f"{source}: its A differs from ML-GCN's gen_A (τ={TAU}, p={P}) of {counts_source} by up "
                            f"to {difference.max():.3g} (A[{labels[row]!r}, {labels[column]!r}])",
                            hint="it was trained on another dataset, τ or class order: pass --labels in its order "
                            "and --adjacency with its training *_adj.pkl")


def _require_usable(a_file: torch.Tensor, source: Path) -> None:
    """Without counts to compare with: A must at least give a finite Â (finite, positive row sums)."""
    if not torch.isfinite(a_file).all() or not (a_file.sum(1) > 0).all():
        raise ImportRefused(f"{source}: its A has non-finite values or a row that does not sum to a positive number",
                            hint="the file is damaged or not an ML-GCN checkpoint; download it again")
