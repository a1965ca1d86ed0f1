"""MSRN's released checkpoints (``mlic-edge import msrn``): Multi-layered Semantic Representation Network, Qu et al.
2021 (official code chehao2628/MSRN, model ``MSGDN``), loaded into the zoo's ``msrn``.

The file: ``{'epoch', 'arch', 'state_dict', 'best_score'}`` written with ``torch.save`` (``best_score`` a 0-d
tensor), ``state_dict`` without a ``module.`` prefix (one is stripped if present). Word vectors and the label graph
are not in it: the official loader fed them from ``<dataset>_glove_word2vec.pkl`` (a bare float32 (C, 300) array)
and ``<dataset>_adj.pkl`` (``{'nums': (C,), 'adj': (C, C)}`` co-occurrence counts), byte-identical to ML-GCN's,
which the project ships for VOC 2007 and COCO 2014. ``--word-vectors`` / ``--adjacency`` give other ones; those
pickles are read by an unpickler that builds numpy arrays and nothing else.

Key mapping (official → ours; b = 0, 1, 2 the branch of layer2, layer3, layer4):

=====================================================  =====================================================
official                                               ours
=====================================================  =====================================================
``resnet_101.{conv1,bn1,layer1..layer4}.<rest>``       ``image_side.backbone.<same>`` (timm ResNet, same names;
                                                       BatchNorm counters a file lacks are filled with 0)
``resnet_101.conv_buffer1.{weight,bias}``              ``image_side.buffer_convs.0.{weight,bias}`` (layer2)
``resnet_101.conv_buffer2.{weight,bias}``              ``image_side.buffer_convs.1.{weight,bias}`` (layer3)
``ProjectM.{b}.{weight,bias}``                         ``image_side.projections.{b}.{weight,bias}``
``fc1.{weight,bias}``, ``fc2.{weight,bias}``           ``image_side.fc1.*``, ``image_side.fc2.*``
``fc_label.{weight,bias}``                             ``label_fc.{weight,bias}``
``label_embed.layers.{i}.W`` (in, out)                 ``label_gat.{i}.gat.lin.weight`` (out, in): transposed
``label_embed.layers.{i}.a`` (2·out, 1)                ``label_gat.{i}.gat.att_dst`` = a[:out], ``att_src`` =
                                                       a[out:], each (1, 1, out)
``group_embed.layers.0.embed.{W,a}``                   ``group_pool.embed.gat.{lin.weight,att_dst,att_src}``
``group_embed.layers.0.assign_mat.{W,a}``              ``group_pool.assign.gat.{lin.weight,att_dst,att_src}``
(not in the file)                                      ``label_vectors`` (C, 300): --word-vectors, else the
                                                       shipped GloVe rows matched by name
(not in the file)                                      ``adjacency_mask`` (C, C): ML-GCN's Â > 0 at τ = 0.4
                                                       from --adjacency, else the shipped co-occurrence
=====================================================  =====================================================

Ignored (present in the file, never used by the official forward; listed in ``Imported.ignored``):
``resnet_101.conv_buffer0.{weight,bias}`` (a buffer conv for layer1 that no branch reads) and ``W`` (C, 3072),
``B`` (C,) (the parameters of an element-wise head that is commented out).

The GAT split: the official layer scores e_ij = LeakyReLU_0.2(aᵀ[h_i ‖ h_j]) and softmaxes over j, so the first
half of ``a`` multiplies the row (target) node i and the second half the neighbour j. Our ``DenseGATLayer`` (PyG's
parameterisation) scores ``att_dst·h_i + att_src·h_j`` with the softmax over j: first half → ``att_dst``, second
half → ``att_src``. Its ``α h + h`` residual and the ELU around it are the official layer's.

Hyperparameters come from the tensors: the backbone depth from the block layout (``_BACKBONES``), C from ``fc2``,
the group count K from ``assign_mat.W`` (passed as ``pool_ratio = K / C``, which our ``max(1, round(·))`` turns back
into K exactly; the official ``int(pool_ratio·C)`` gave 4 for both VOC (0.2) and COCO (0.05)), the widths from
``fc_label``, ``label_embed`` and ``fc1``; τ = 0.4 and λ = 1e-4 are the official code's constants. The branch
pooling rounds down (``pool_rounding="floor"``, the official ``MaxPool2d(2, 2)``), so the logits are the official
ones at any input size, odd branch maps included.

Labels: VOC in the standard order; COCO in MSRN's alphabetical order (its loader sorts the category names) — the
run keeps that order, nothing is permuted. The paper's test size is 448 px (ImageNet mean/std, a squash resize).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlic_edge.label_graph import LabelGraph
from mlic_edge.models.official.label_files import cooccurrence, label_vectors
from mlic_edge.models.official import (TORCHVISION_RESNETS, resnet_layout, Imported, ImportOptions, ImportRefused,
                                        load_mapped, official_labels, rename)
from mlic_edge.models.registry import create_model
from mlic_edge.models.zoo.msrn import num_groups_for

FORMAT = "msrn"
PAPER_IMG_SIZE = 448
TAU = 0.4  # the official forward's gen_A threshold
GROUP_LOSS_WEIGHT = 1e-4  # the official group loss factor (train-only; recorded for a fine-tune)
IGNORED = ("resnet_101.conv_buffer0.weight", "resnet_101.conv_buffer0.bias", "W", "B")
RULES = [
    ("resnet_101.conv_buffer1.", "image_side.buffer_convs.0."),
    ("resnet_101.conv_buffer2.", "image_side.buffer_convs.1."),
    ("resnet_101.", "image_side.backbone."),
    ("ProjectM.", "image_side.projections."),
    ("fc1.", "image_side.fc1."),
    ("fc2.", "image_side.fc2."),
    ("fc_label.", "label_fc."),
]
GAT_LAYERS = {  # official GAT module → ours
    "label_embed.layers.0": "label_gat.0.gat",
    "label_embed.layers.1": "label_gat.1.gat",
    "group_embed.layers.0.embed": "group_pool.embed.gat",
    "group_embed.layers.0.assign_mat": "group_pool.assign.gat",
}


def convert(state: dict[str, torch.Tensor], options: ImportOptions, source: Path) -> Imported:
    """MSRN's ``state_dict`` (``module.`` already stripped) → our ``msrn`` with its weights, label vectors and graph."""
    num_classes = _tensor(state, "fc2.weight", source).shape[0]
    num_groups = _tensor(state, "group_embed.layers.0.assign_mat.W", source).shape[1]
    fc_label = _tensor(state, "fc_label.weight", source)
    names, label_note = official_labels(options.labels, num_classes, "MSRN", coco_order="alphabetical")
    vectors, vectors_source = label_vectors(options.word_vectors, names, fc_label.shape[1],
                                            trust_pickle=options.trust_pickle)
    counts = cooccurrence(options.adjacency, names, trust_pickle=options.trust_pickle)
    if counts is None:
        raise ImportRefused("MSRN's label graph is its training set's co-occurrence, and the shipped one is VOC "
                            "2007's or COCO 2014's, whose classes these are not",
                            hint="pass --adjacency (the official *_adj.pkl)")
    pairs, nums, graph_source = counts
    graph = LabelGraph(names, vectors, pairs, nums, vectors_source)

    backbone = _backbone_of(state, source)
    pool_ratio = num_groups / num_classes
    if num_groups_for(num_classes, pool_ratio) != num_groups:  # cannot happen for K ≥ 1; guards the round-trip
        raise ImportRefused(f"{source}: {num_groups} groups cannot be expressed for {num_classes} classes")
    model = create_model(
        "msrn", num_classes, backbone=backbone, pretrained=False, label_graph=graph, tau=TAU, pool_ratio=pool_ratio,
        embed_dim=_tensor(state, "label_embed.layers.1.W", source).shape[1], label_hidden=fc_label.shape[0],
        gat_hidden=_tensor(state, "label_embed.layers.0.W", source).shape[1], group_loss_weight=GROUP_LOSS_WEIGHT,
        fc_hidden=_tensor(state, "fc1.weight", source).shape[0], label_dim=fc_label.shape[1], pool_rounding="floor")

    ignored = [key for key in IGNORED if key in state]
    mapped = rename({key: value for key, value in state.items()
                     if key not in ignored and not key.startswith(tuple(GAT_LAYERS))}, RULES)
    for official, ours in GAT_LAYERS.items():
        mapped.update(_gat_tensors(state, official, ours, source))
    mapped["label_vectors"] = model.label_vectors.clone()
    mapped["adjacency_mask"] = model.adjacency_mask.clone()
    load_mapped(model, mapped, source, FORMAT)

    img_size = options.img_size or PAPER_IMG_SIZE
    notes = [note for note in (label_note,) if note] + [
        f"backbone: {backbone} (from the checkpoint's block layout); {num_groups} label groups (from its tensors)",
        f"label vectors: {vectors_source}; label graph: {graph_source}, ML-GCN's Â > 0 at τ = {TAU} as the "
        "official forward builds it",
        "branch pooling rounds down (pool_rounding floor) like the official MaxPool2d(2, 2): the logits are the "
        "official ones at any input size",
        "the official evaluation ran under CUDA fp16 autocast; the imported model runs in fp32",
    ]
    if img_size != PAPER_IMG_SIZE:
        notes.append(f"img_size {img_size}: the paper tested at {PAPER_IMG_SIZE} px")
    return Imported(model=model, labels=names, img_size=img_size, notes=notes, ignored=ignored, label_graph=graph)


# ---------------------------------------------------------------------------------------------------- the tensors
def _tensor(state: dict[str, torch.Tensor], key: str, source: Path) -> torch.Tensor:
    if key not in state:
        raise ImportRefused(f"{source} is not an MSRN checkpoint: it has no {key}",
                            hint="check FORMAT; the mapping is in mlic_edge/models/official/msrn.py")
    return state[key]


def _gat_tensors(state: dict[str, torch.Tensor], official: str, ours: str, source: Path) -> dict[str, torch.Tensor]:
    """One official GAT layer (``W`` (in, out), ``a`` (2·out, 1)) as our ``lin.weight``, ``att_dst``, ``att_src``."""
    weight, attention = _tensor(state, f"{official}.W", source), _tensor(state, f"{official}.a", source)
    out = weight.shape[-1]
    if weight.ndim != 2 or tuple(attention.shape) != (2 * out, 1):
        raise ImportRefused(f"{source}: {official}.W {tuple(weight.shape)} and {official}.a "
                            f"{tuple(attention.shape)} are not a GAT layer's (in, out) and (2·out, 1)",
                            hint="check FORMAT; the mapping is in mlic_edge/models/official/msrn.py")
    return {f"{ours}.lin.weight": weight.t().contiguous(),
            f"{ours}.att_dst": attention[:out, 0].reshape(1, 1, out).clone(),  # multiplies the target node i
            f"{ours}.att_src": attention[out:, 0].reshape(1, 1, out).clone()}  # multiplies the neighbour j


def _backbone_of(state: dict[str, torch.Tensor], source: Path) -> str:
    """The timm ResNet with the checkpoint's layout: bottleneck or basic blocks, and the block count of each stage."""
    bottleneck, blocks = resnet_layout(state, [f"resnet_101.layer{stage}." for stage in (1, 2, 3, 4)])
    name = TORCHVISION_RESNETS.get((bottleneck, blocks))
    if name is None:
        raise ImportRefused(f"{source}: its ResNet has {'bottleneck' if bottleneck else 'basic'} blocks {blocks}, "
                            f"none of {', '.join(TORCHVISION_RESNETS.values())}",
                            hint="check FORMAT; the backbone is read from the resnet_101.layer* tensors")
    return name
