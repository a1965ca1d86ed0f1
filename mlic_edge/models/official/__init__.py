"""The papers' released checkpoints, loaded into the zoo's models (``mlic-edge import``): one module per format, each
with ``convert(state, options, source) -> Imported`` and its key mapping documented in its docstring.

Shared here: reading the file safely (``weights_only`` unless the user trusts the pickle), the state dict inside it
(``state_dict`` / ``model`` / bare, one DataParallel ``module.`` prefix stripped), the label lists, and the strict
load that refuses a checkpoint with missing or unexpected tensors, naming the first few, before anything is written.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from mlic_edge.errors import MlicError
from mlic_edge.models.base import MultiLabelModel
from mlic_edge.pickles import TRUST_PICKLE_HINT
from mlic_edge.spec import OFFICIAL_RESIZE

FORMATS = {"ml-gcn": "mlgcn", "q2l": "q2l", "msrn": "msrn"}  # FORMAT -> the module here (and the zoo's model name)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SHOWN_KEYS = 4  # how many tensor names a refusal lists


class ImportRefused(MlicError):
    """The checkpoint is not what FORMAT and the options say; nothing was written."""


@dataclass(frozen=True)
class ImportOptions:
    labels: str | None = None  # "voc" | "coco" | a file with one class name per line, in the checkpoint's order
    word_vectors: Path | None = None  # label vectors (the official pickle, or any format mlic_edge.label_vectors reads)
    adjacency: Path | None = None  # the official co-occurrence pickle ({'nums', 'adj'}), where the model has a graph
    img_size: int | None = None  # default: the paper's test size for the format
    config: Path | None = None  # Query2Label's config_new.json
    trust_pickle: bool = False  # --trust-pickle: unpickle the checkpoint and the label pickles fully (can run code)


@dataclass
class Imported:
    """The official weights in our model, and what the run must record about them."""

    model: MultiLabelModel
    labels: list[str]  # the model's output order (the checkpoint's)
    img_size: int
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    resize: str = OFFICIAL_RESIZE  # the three papers' test transforms squash the image with PIL's bilinear resize
    # training arguments the tensors do not hold: {option: {"value": ..., "from": "config FILE" | "the ... default"}}
    taken_on_trust: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # told to the user and kept in run.json (label order, deviations)
    ignored: list[str] = field(default_factory=list)  # official tensors the official forward never uses
    label_graph: Any = None  # a LabelGraph to save as label_graph.npz, where the model has a label branch


def import_checkpoint(fmt: str, path: Path, options: ImportOptions = ImportOptions(), *,
                      trust_pickle: bool = False) -> Imported:
    """Read ``path`` as an official checkpoint of ``fmt`` and return our model holding its weights. ``trust_pickle``
    (or ``options.trust_pickle``) unpickles every file of the import fully."""
    from mlic_edge.spec import require_choice

    require_choice("format", fmt, tuple(FORMATS), ImportRefused)
    if trust_pickle:
        options = replace(options, trust_pickle=True)
    state = state_dict_of(read_official(path, trust_pickle=options.trust_pickle), path)
    module = importlib.import_module(f"{__name__}.{FORMATS[fmt]}")
    converter: Callable[[dict[str, torch.Tensor], ImportOptions, Path], Imported] = module.convert
    return converter(state, options, path)


# ------------------------------------------------------------------------------------------------------ the file
def read_official(path: Path, *, trust_pickle: bool = False) -> Any:
    """The unpickled checkpoint: PyTorch's weights-only loader (numpy scalars allowed, which the official trainers
    saved as metrics); a file that needs full unpickling is refused unless ``trust_pickle``."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"checkpoint {path} does not exist", hint="give the file downloaded from the paper's page")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            needs = str(error).split("Unsupported global:")[-1].strip().splitlines()[0][:100]
            raise ImportRefused(f"{path} needs full unpickling ({needs}), which can run code from the file",
                                hint=TRUST_PICKLE_HINT) from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise ImportRefused(f"{path} cannot be read as a PyTorch checkpoint ({type(error).__name__}: "
                            f"{str(error).strip().splitlines()[0][:120] if str(error).strip() else 'truncated'})",
                            hint="download it again; the file may be truncated") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # an arbitrary pickle can fail in arbitrary ways
        raise ImportRefused(f"{path} cannot be unpickled ({type(error).__name__}: {error})"[:300],
                            hint="download it again") from None


def _numpy_globals() -> list:
    """The numpy objects a metric saved with the weights pickles to (numpy 2 names, and numpy 1's for old files)."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
    scalar = core.multiarray.scalar
    dtypes = [getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType")
              if hasattr(np, "dtypes")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def state_dict_of(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: its ``state_dict`` or ``model`` entry, or the payload itself; one leading
    ``module.`` (DataParallel / DDP) stripped from every key."""
    state = payload
    if isinstance(payload, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), Mapping):
                state = payload[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ImportRefused(f"{path} holds no state dict of tensors (top-level keys: "
                            f"{_first(list(payload)) if isinstance(payload, Mapping) else type(payload).__name__})",
                            hint="give the checkpoint file the paper released (e.g. checkpoint.pth.tar)")
    return {(key[len("module."):] if key.startswith("module.") else key): value for key, value in state.items()}


# --------------------------------------------------------------------------------------------------- the mapping
def load_mapped(model: MultiLabelModel, mapped: dict[str, torch.Tensor], path: Path, fmt: str,
                file_name: Callable[[str], str] = str) -> None:
    """Load ``mapped`` (our key names) into ``model`` strictly: a missing or unexpected tensor, or one of another
    shape, is refused naming the first few as the file names them (``file_name``: our name -> the file's).
    BatchNorm counters the old files lack are filled with 0."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = torch.zeros_like(value)
    missing = [file_name(key) for key in expected if key not in mapped]
    unexpected = [file_name(key) for key in mapped if key not in expected]
    if missing or unexpected:
        parts = ([f"missing {_first(missing)}"] if missing else []) + (
            [f"unexpected {_first(unexpected)}"] if unexpected else [])
        raise ImportRefused(f"{path} is not a {fmt} checkpoint this importer knows: {'; '.join(parts)}",
                            hint=f"check FORMAT ({fmt}) and --labels; the mapping is in mlic_edge/models/official/")
    wrong = [f"{file_name(key)} {tuple(mapped[key].shape)} (expected {tuple(value.shape)})"
             for key, value in expected.items() if mapped[key].shape != value.shape]
    if wrong:
        raise ImportRefused(f"{path}: tensors of other shapes than the {fmt} model: {_first(wrong)}",
                            hint="check --labels (the class count) and --config")
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in mapped.items()}, strict=True)
    model.eval()


def rename(state: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Keys renamed by the first matching (official prefix, our prefix) rule; keys no rule matches are kept."""
    return {renamed_key(key, rules): value for key, value in state.items()}


def renamed_key(key: str, rules: list[tuple[str, str]]) -> str:
    """``key`` renamed by the first (official prefix, our prefix) rule that matches, or unchanged."""
    for official, ours in rules:
        if key.startswith(official):
            return ours + key[len(official):]
    return key


def official_key(key: str, rules: list[tuple[str, str]]) -> str:
    """``renamed_key`` in reverse: the official name of one of our keys (our prefixes must be distinct)."""
    return renamed_key(key, [(ours, official) for official, ours in rules])


# The torchvision ResNets the three official codes build on (timm's ``resnetN`` has the same names and shapes):
# (bottleneck blocks?, blocks per stage) -> timm name.
TORCHVISION_RESNETS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}


def resnet_layout(state: Mapping[str, torch.Tensor], stages: list[str]) -> tuple[bool, tuple[int, ...]]:
    """(bottleneck blocks?, blocks per stage) of a ResNet whose four stages' tensors start with ``stages``: a
    bottleneck block has a third convolution (torchvision's ``conv3.weight``, TResNet's ``conv3.0.weight``)."""
    blocks = tuple(len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})
                   for prefix in stages)
    return any(key.startswith(f"{stages[0]}0.conv3.") for key in state), blocks


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


# ------------------------------------------------------------------------------------------------------- labels
def official_labels(option: str | None, count: int, fmt: str, *, coco_order: str) -> tuple[list[str], str | None]:
    """(class names in the checkpoint's output order, the note to tell the user). ``option``: voc | coco | a file;
    ``None`` guesses from the class count (20 VOC, 80 COCO). ``coco_order``: "alphabetical" (ML-GCN and MSRN
    number COCO classes by sorted name) or "category-id" (Query2Label)."""
    from mlic_edge.data.coco import COCO_CATEGORY_NAMES
    from mlic_edge.data.voc import VOC_CLASSES

    if option is None:
        option = {20: "voc", 80: "coco"}.get(count)
        if option is None:
            raise ImportRefused(f"the checkpoint has {count} classes, neither VOC's 20 nor COCO's 80",
                                hint="pass --labels FILE with its class names, one per line, in its order")
    if option == "voc":
        names, note = list(VOC_CLASSES), None
    elif option == "coco":
        if coco_order == "alphabetical":
            names = sorted(COCO_CATEGORY_NAMES)
            note = (f"labels: {fmt}'s COCO loader numbers classes alphabetically by name, so the run's labels are in "
                    "that order; eval and parity on a COCO folder match the dataset's categories by name")
        else:
            names, note = list(COCO_CATEGORY_NAMES), None
    else:
        from mlic_edge.data.dataset import read_class_file

        names, note = read_class_file(Path(option)), f"labels: from {option}, in its order"
    if len(names) != count:
        raise ImportRefused(f"the checkpoint has {count} classes but --labels {option} names {len(names)}",
                            hint="give the label list the checkpoint was trained with")
    return names, note
