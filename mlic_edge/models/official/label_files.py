"""The label files the graph models' papers released beside their checkpoints, read for the importers (ML-GCN,
MSRN): the word-vector pickle (a bare (C, D) array in class order), the co-occurrence pickle ({'nums', 'adj'}), and
the copies of both shipped with mlic-edge for VOC 2007 and COCO 2014, matched by class name. Pickles are read by
mlic_edge.pickles, which rebuilds plain data and numpy arrays and nothing else (unless --trust-pickle), so no code in
the file can run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlic_edge.errors import DataError, PickleRefused
from mlic_edge.label_vectors import SHIPPED_FILES, load_label_vectors, normalise_name, shipped_label_data
from mlic_edge.models.official import ImportRefused
from mlic_edge.pickles import read_pickle


# --------------------------------------------------------------------------------------------- label vectors
def label_vectors(path: Path | None, labels: list[str], label_dim: int | None = None, *,
                  trust_pickle: bool = False) -> tuple[np.ndarray, str]:
    """(float32 (C, D) vectors in label order, where they came from): ``path`` (--word-vectors), else the shipped
    GloVe vectors matched by name. ``label_dim``: the D the checkpoint needs (checked)."""
    if path is None:
        found = shipped_match(labels, whole=False)
        if found is None:
            raise ImportRefused("the checkpoint holds no label vectors and these labels are not all VOC 2007 or "
                                "all COCO 2014 classes, whose GloVe vectors are shipped",
                                hint="pass --word-vectors FILE (the *_glove_word2vec.pkl it was trained with)")
        data, rows, filename = found
        vectors = data["glove300"][rows]
        source = f"GloVe 300-d, ML-GCN's published vectors (shipped {filename}), matched by name"
    else:
        path = Path(path).expanduser()
        vectors, source = _vectors_file(path, labels, trust_pickle), f"file {path}"
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    wanted = (len(labels), label_dim if label_dim is not None else vectors.shape[-1])
    if vectors.ndim != 2 or vectors.shape != wanted or not np.isfinite(vectors).all():
        raise ImportRefused(f"label vectors ({source}) have shape {vectors.shape}"
                            f"{'' if np.isfinite(vectors).all() else ' and non-finite values'}; the checkpoint "
                            f"needs ({len(labels)}, {wanted[1]})",
                            hint="pass --word-vectors with the vectors the checkpoint was trained with")
    return vectors, source


def _vectors_file(path: Path, labels: list[str], trust_pickle: bool) -> np.ndarray:
    """A pickle: the official bare (C, D) array in the checkpoint's order, or {name: vector}; other formats by
    mlic_edge.label_vectors (GloVe text, .npy + names, .npz)."""
    if path.suffix.lower() not in (".pkl", ".pickle"):
        try:
            return load_label_vectors(path, labels)
        except DataError as error:
            raise ImportRefused(error.message, hint=error.hint) from None
    data = read_numpy_pickle(path, "--word-vectors", trust_pickle)
    if isinstance(data, np.ndarray):
        if data.ndim != 2 or len(data) != len(labels):
            raise ImportRefused(f"--word-vectors {path} holds an array of shape {data.shape}, not one row per class "
                                f"({len(labels)})", hint="give the *_glove_word2vec.pkl of the checkpoint's dataset")
        return _numeric(data, path)
    if isinstance(data, dict):
        if "names" in data and ("vectors" in data or "glove300" in data):
            data = dict(zip(map(str, data["names"]), data["vectors" if "vectors" in data else "glove300"]))
        table = {_compact(str(name)): vector for name, vector in data.items()}
        missing = [label for label in labels if _compact(label) not in table]
        if missing:
            raise ImportRefused(f"--word-vectors {path} has no vector for {', '.join(map(repr, missing[:4]))}"
                                f"{f' and {len(missing) - 4} more' if len(missing) > 4 else ''}",
                                hint="give a vector for every class of --labels")
        return _numeric(np.stack([np.asarray(table[_compact(label)]).reshape(-1) for label in labels]), path)
    raise ImportRefused(f"--word-vectors {path} holds a {type(data).__name__}, not an array or {{name: vector}}",
                        hint="give the *_glove_word2vec.pkl the checkpoint was trained with")


def shipped_match(labels: list[str], *, whole: bool) -> tuple[dict[str, np.ndarray], list[int], str] | None:
    """(arrays, row of each label, file name) of the first shipped archive (VOC 2007, COCO 2014) that names every
    label (``whole``: exactly its classes, in any order), matched by name; None when none does."""
    for filename in SHIPPED_FILES:
        data = shipped_label_data(filename)
        index = {_compact(str(name)): row for row, name in enumerate(data["names"])}
        rows = [index.get(_compact(label)) for label in labels]
        if None not in rows and (not whole or sorted(rows) == list(range(len(index)))):
            return data, rows, filename
    return None


def _compact(name: str) -> str:
    return normalise_name(name).replace(" ", "")


# ------------------------------------------------------------------------------------------------- adjacency
def cooccurrence(path: Path | None, labels: list[str], *,
                 trust_pickle: bool = False) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(co-occurrence (C, C), counts (C,), where from) in label order: the --adjacency pickle, else the shipped
    counts when the labels are exactly the VOC 2007 or COCO 2014 classes, else None."""
    if path is not None:
        path = Path(path).expanduser()
        data = read_numpy_pickle(path, "--adjacency", trust_pickle)
        if not (isinstance(data, dict) and "nums" in data and "adj" in data):
            raise ImportRefused(f"--adjacency {path} is not ML-GCN's {{'nums', 'adj'}} pickle",
                                hint="give the *_adj.pkl the checkpoint was trained with")
        nums, adj = _numeric(data["nums"], path).reshape(-1), _numeric(data["adj"], path)
        if nums.shape != (len(labels),) or adj.shape != (len(labels), len(labels)):
            raise ImportRefused(f"--adjacency {path} has nums {nums.shape} and adj {adj.shape}, the checkpoint "
                                f"{len(labels)} classes", hint="give the *_adj.pkl of the checkpoint's dataset")
        return adj.astype(np.int64), nums.astype(np.int64), f"--adjacency {path}"
    found = shipped_match(labels, whole=True)
    if found is None:
        return None
    data, rows, filename = found
    return (data["cooccurrence"][np.ix_(rows, rows)].astype(np.int64), data["counts"][rows].astype(np.int64),
            f"the shipped {filename} training counts")



# ----------------------------------------------------------------------------------------- official pickles
def read_numpy_pickle(path: Path, option: str, trust_pickle: bool = False) -> Any:
    """An official data pickle (numpy arrays in dicts), read by mlic_edge.pickles (plain data only unless
    ``trust_pickle``)."""
    if not path.is_file():
        raise ImportRefused(f"{option} {path} does not exist", hint="give the pickle from the paper's repository")
    try:
        return read_pickle(path, trust=trust_pickle)
    except PickleRefused as error:
        raise ImportRefused(f"{option} {error.message}", hint=error.hint) from None
    except Exception as error:  # noqa: BLE001 - a damaged pickle fails in many ways; one line for all
        raise ImportRefused(f"{option} {path} cannot be read ({type(error).__name__}: {str(error)[:120]})",
                            hint="download it again") from None


def _numeric(array: Any, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ImportRefused(f"{path} holds {array.dtype} data, not numbers", hint="give the paper's pickle")
    return array
