"""Label graph inputs: ML-GCN adjacency on the shipped VOC/COCO counts (METHODS.md §1 check values), co-occurrence
from targets, default label vectors (shipped GloVe, name matching, hashed fallback) and the vector file formats."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from mlic_edge import label_vectors as lv
from mlic_edge.data.coco import COCO_CATEGORY_NAMES
from mlic_edge.errors import DataError, PickleRefused
from mlic_edge.label_graph import LabelGraph, conditional_edges, mlgcn_adjacency
from mlic_edge.label_vectors import (default_label_vectors, hashed_label_vectors, label_graph_for,
                                     load_label_vectors, shipped_label_data)

VOC = shipped_label_data("voc2007_labels.npz")
COCO = shipped_label_data("coco2014_labels.npz")

COCO_ID_ORDER = list(COCO_CATEGORY_NAMES)  # category-id order, as mlic-edge's COCO reader gives it


@pytest.fixture
def no_sentence_model(monkeypatch):
    """Keep the tests independent of a sentence-transformers model cached on the machine."""
    monkeypatch.setattr(lv, "_sentence_vectors", lambda names: None)


# ----------------------------------------------------------------------------------------------- adjacency checks

def test_shipped_data_shapes_and_order():
    assert VOC["glove300"].shape == (20, 300) and VOC["cooccurrence"].shape == (20, 20)
    assert COCO["glove300"].shape == (80, 300) and COCO["cooccurrence"].shape == (80, 80)
    assert list(COCO["names"]) == sorted(COCO["names"]) == sorted(COCO_ID_ORDER)
    assert COCO["names"][49] == "person" and COCO["counts"][49] == 45174
    for data in (VOC, COCO):
        assert (data["cooccurrence"] == data["cooccurrence"].T).all() and not np.diag(data["cooccurrence"]).any()


def test_mlgcn_adjacency_voc_check_values():
    edges = conditional_edges(VOC["cooccurrence"], VOC["counts"], 0.4)
    assert sorted(map(tuple, np.argwhere(edges).tolist())) == [(1, 14), (4, 14), (10, 8), (10, 14), (12, 14),
                                                                (13, 14)]
    a, a_hat = mlgcn_adjacency(VOC["cooccurrence"], VOC["counts"])
    assert a.dtype == a_hat.dtype == np.float32
    assert a.sum(dtype=np.float64) == pytest.approx(20.5, abs=1e-4)
    assert a_hat.sum(dtype=np.float64) == pytest.approx(20.0371, abs=1e-4)
    assert np.trace(a_hat, dtype=np.float64) == pytest.approx(19.5788, abs=1e-4)


def test_mlgcn_adjacency_coco_check_values():
    edges = conditional_edges(COCO["cooccurrence"], COCO["counts"], 0.4)
    assert int(edges.sum()) == 111
    a, a_hat = mlgcn_adjacency(COCO["cooccurrence"], COCO["counts"])
    assert a.sum(dtype=np.float64) == pytest.approx(85.75, abs=1e-3)
    assert a_hat.sum(dtype=np.float64) == pytest.approx(80.2471, abs=1e-3)
    assert np.trace(a_hat, dtype=np.float64) == pytest.approx(75.4647, abs=1e-3)


def test_from_targets_counts_positives_only():
    targets = np.array([[1, 1, 0],
                        [1, -1, 1],
                        [-1, 1, 1],
                        [1, 1, -1],
                        [0, 0, 0]], dtype=np.int8)
    graph = LabelGraph.from_targets(["a", "b", "c"], targets, np.zeros((3, 4)), "test")
    assert graph.counts.tolist() == [3, 3, 2]
    assert graph.cooccurrence.tolist() == [[0, 2, 1], [2, 0, 1], [1, 1, 0]]
    assert graph.vectors.dtype == np.float32 and graph.vectors_source == "test"


# ----------------------------------------------------------------------------------------------- default vectors

def test_default_vectors_voc_are_the_shipped_glove_rows():
    vectors, source, warning = default_label_vectors(list(VOC["names"]))
    assert warning is None and "GloVe" in source and "voc2007" in source
    assert vectors.dtype == np.float32 and np.array_equal(vectors, VOC["glove300"])


def test_default_vectors_coco_in_category_id_order_are_reordered_by_name():
    vectors, source, warning = default_label_vectors(COCO_ID_ORDER)
    assert warning is None and "coco2014" in source
    alphabetical = list(COCO["names"])
    assert np.array_equal(vectors, COCO["glove300"][[alphabetical.index(n) for n in COCO_ID_ORDER]])
    assert np.array_equal(vectors[0], COCO["glove300"][49])  # person: first by id, 49th alphabetically


def test_default_vectors_match_spelling_variants_and_shuffled_order():
    rng = np.random.default_rng(0)
    order = rng.permutation(20)
    names = [str(VOC["names"][i]).upper() for i in order]
    names[names.index("DININGTABLE")] = "dining_table"
    names[names.index("POTTEDPLANT")] = "Potted-Plant"
    vectors, _, warning = default_label_vectors(names)
    assert warning is None and np.array_equal(vectors, VOC["glove300"][order])


def test_default_vectors_mixed_voc_and_coco_names():
    vectors, source, warning = default_label_vectors(["tvmonitor", "laptop", "person"])
    assert warning is None and "voc2007" in source and "coco2014" in source
    voc, coco = list(VOC["names"]), list(COCO["names"])
    assert np.array_equal(vectors, np.stack([VOC["glove300"][voc.index("tvmonitor")],
                                             COCO["glove300"][coco.index("laptop")],
                                             VOC["glove300"][voc.index("person")]]))


def test_fallback_is_deterministic_and_warns(no_sentence_model):
    names = ["widget", "gear box", "person"]
    vectors, source, warning = default_label_vectors(names)
    again, _, _ = default_label_vectors(names)
    assert vectors.shape == (3, 300) and vectors.dtype == np.float32 and np.array_equal(vectors, again)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 6.5, atol=1e-4)
    assert "no semantics" in source
    assert "no semantics" in warning and "--label-vectors FILE" in warning and "'widget'" in warning
    assert "'person'" not in warning  # only the names without vectors are listed
    # multi-word names: the average of the word vectors (then rescaled); spelling variants agree
    gear, box = hashed_label_vectors(["gear", "box"]).astype(np.float64)
    expected = (gear + box) / np.linalg.norm(gear + box) * 6.5
    assert np.allclose(vectors[1], expected, atol=1e-5)
    assert np.array_equal(hashed_label_vectors(["Gear_Box"]), vectors[1:2])
    # frozen values: the same on every machine and numpy version (legacy RandomState stream, sha256 seed)
    assert hashed_label_vectors(["widget"])[0, :3].tolist() == pytest.approx([-0.7152, -0.1247, 0.5624], abs=1e-4)


def test_fallback_does_not_depend_on_python_hash_seed():
    code = "from mlic_edge.label_vectors import hashed_label_vectors as h; print(h(['gear box'])[0, :4].tolist())"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1


def test_sentence_model_is_used_before_the_fallback(monkeypatch):
    fake = np.ones((2, 384), np.float32)
    monkeypatch.setattr(lv, "_sentence_vectors", lambda names: (fake, "sentence embeddings (fake)"))
    vectors, source, warning = default_label_vectors(["widget", "gizmo"])
    assert vectors is fake and warning is None and source.startswith("sentence")
    vectors, _, _ = default_label_vectors(["person", "dog"])  # the shipped GloVe rows still come first
    assert vectors.shape == (2, 300)


def test_sentence_model_found_in_local_cache_only(tmp_path, monkeypatch, request):
    """A stand-in sentence_transformers package and HF cache: the local snapshot is loaded, nothing downloaded."""
    request.addfinalizer(lambda: sys.modules.pop("sentence_transformers", None))
    package = tmp_path / "site" / "sentence_transformers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import os\nimport numpy as np\nLOADED = []\n"
        "class SentenceTransformer:\n"
        "    def __init__(self, path, device=None):\n"
        "        assert os.environ['HF_HUB_OFFLINE'] == '1'\n"
        "        LOADED.append(path)\n"
        "    def encode(self, texts, convert_to_numpy=True):\n"
        "        return np.array([[len(t), 1.0, 0.0, 2.0] for t in texts])\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "none"))
    assert lv._sentence_vectors(["widget"]) is None  # installed, but no model cached: not used
    snapshot = hub / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    vectors, source, warning = default_label_vectors(["widget", "gear_box"])
    assert warning is None and "sentence embeddings (4-d)" in source and str(snapshot) in source
    assert vectors.shape == (2, 4) and np.allclose(np.linalg.norm(vectors, axis=1), 6.5, atol=1e-5)
    assert "HF_HUB_OFFLINE" not in os.environ  # restored


def test_label_graph_for_uses_defaults_or_file(tmp_path, no_sentence_model):
    names = ["person", "dog", "widget"]
    targets = np.array([[1, 1, 0], [1, 0, -1], [0, 1, 1]], np.int8)
    graph, warning = label_graph_for(names, targets)
    assert isinstance(graph, LabelGraph) and warning and "'widget'" in warning
    assert graph.counts.tolist() == [2, 2, 1] and graph.cooccurrence[0, 1] == 1
    path = tmp_path / "vectors.npz"
    np.savez(path, names=np.array(names), vectors=np.eye(3, 5))
    graph, warning = label_graph_for(names, targets, path)
    assert warning is None and str(path) in graph.vectors_source and graph.vectors.shape == (3, 5)


# ----------------------------------------------------------------------------------------------- file formats

NAMES = ["dog", "traffic light", "diningtable", "Person"]
WORDS = {"person": [1.0, 0.0, 0.0], "dog": [0.0, 1.0, 0.0], "traffic": [2.0, 0.0, 2.0], "light": [0.0, 2.0, 0.0],
         "dining": [4.0, 0.0, 0.0], "table": [0.0, 0.0, 4.0], "cat": [9.0, 9.0, 9.0]}
EXPECTED = np.array([[0, 1, 0], [1, 1, 1], [2, 0, 2], [1, 0, 0]], np.float32)


def test_glove_text_with_multi_word_names(tmp_path):
    path = tmp_path / "glove.txt"
    lines = [f"{word} {' '.join(map(str, vector))}" for word, vector in WORDS.items()]
    lines.insert(1, "Person 7 7 7")  # cased files: the lower-case spelling wins
    path.write_text("\n".join(lines) + "\n")
    vectors = load_label_vectors(path, NAMES)
    assert vectors.dtype == np.float32 and vectors.flags["C_CONTIGUOUS"]
    assert np.array_equal(vectors, EXPECTED)


def test_glove_text_exact_phrase_token_and_word2vec_header(tmp_path):
    path = tmp_path / "phrases.vec"
    path.write_text("3 2\ntraffic_light 5 6\ndog 1 2\ndining table 3 4\n")
    vectors = load_label_vectors(path, ["Traffic Light", "dog", "DiningTable"])
    assert vectors.tolist() == [[5, 6], [1, 2], [3, 4]]


def test_npy_with_names_file(tmp_path):
    words = list(WORDS)
    np.save(tmp_path / "vecs.npy", np.array([WORDS[w] for w in words]))
    (tmp_path / "vecs.names.txt").write_text("\n".join(words) + "\n")
    assert np.array_equal(load_label_vectors(tmp_path / "vecs.npy", NAMES), EXPECTED)
    np.save(tmp_path / "other.npy", np.array([WORDS[w] for w in words]))
    (tmp_path / "other.txt").write_text("\n".join(words) + "\n")
    assert np.array_equal(load_label_vectors(tmp_path / "other.npy", NAMES), EXPECTED)


def test_npz_and_shipped_archive(tmp_path):
    path = tmp_path / "vecs.npz"
    np.savez(path, names=np.array(list(WORDS)), vectors=np.array(list(WORDS.values())))
    assert np.array_equal(load_label_vectors(path, NAMES), EXPECTED)
    shipped = lv.Path(str(lv.__file__)).parent / "data" / "label_data" / "coco2014_labels.npz"
    vectors = load_label_vectors(shipped, COCO_ID_ORDER)  # 'glove300' key, reordered by name
    assert np.array_equal(vectors, default_label_vectors(COCO_ID_ORDER)[0])


def test_pickle_dict(tmp_path):
    path = tmp_path / "vecs.pkl"
    path.write_bytes(pickle.dumps({word: np.array(vector) for word, vector in WORDS.items()}))
    assert np.array_equal(load_label_vectors(path, NAMES), EXPECTED)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("payload", [
    {word: np.array(vector, np.float32) for word, vector in WORDS.items()},
    {word: [np.float64(value) for value in vector] for word, vector in WORDS.items()},
    {word: tuple(vector) for word, vector in WORDS.items()},
    {"names": list(WORDS), "vectors": np.array(list(WORDS.values()))},
], ids=["arrays", "numpy-scalars", "tuples", "names-and-vectors"])
def test_plain_data_pickles_of_every_protocol(tmp_path, protocol, payload):
    path = tmp_path / "vecs.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    assert np.array_equal(load_label_vectors(path, NAMES), EXPECTED)


class _Table(dict):
    """A {name: vector} dict of a class of its own."""


def test_a_pickle_of_anything_but_plain_data_needs_trust(tmp_path):
    path = tmp_path / "vecs.pkl"
    path.write_bytes(pickle.dumps(_Table((word, np.array(vector)) for word, vector in WORDS.items())))
    with pytest.raises(PickleRefused) as refusal:
        load_label_vectors(path, NAMES)
    message = str(refusal.value)
    assert "\n" not in message and str(path) in message and f"{__name__}._Table" in message
    assert "--trust-pickle" in message
    assert np.array_equal(load_label_vectors(path, NAMES, trust_pickle=True), EXPECTED)


# ----------------------------------------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as error:
        load_label_vectors(tmp_path / "nope.txt", NAMES)
    assert "nope.txt" in str(error.value) and "--label-vectors" in str(error.value)


def test_missing_classes_are_named(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("dog 1 2\ncat 3 4\n")
    names = ["dog", "zebra", "yak", "gnu", "emu", "owl", "elk", "cat"]
    with pytest.raises(DataError) as error:
        load_label_vectors(path, names)
    message = str(error.value)
    assert "6 of 8 classes" in message and "'zebra'" in message and "'owl'" in message
    assert "'elk'" not in message and "1 more" in message


def test_inconsistent_dimensions(tmp_path):
    text = tmp_path / "glove.txt"
    text.write_text("dog 1 2 3\ncat 3 4\n")
    with pytest.raises(DataError, match=r"line 2 \('cat'\) has 2 values.*3-d"):
        load_label_vectors(text, ["dog", "cat"])
    text.write_text("dog 1 2\ncat 3 4 5\n")
    with pytest.raises(DataError, match="line 2"):
        load_label_vectors(text, ["dog", "cat"])
    pkl = tmp_path / "vecs.pkl"
    pkl.write_bytes(pickle.dumps({"dog": [1.0, 2.0], "cat": [1.0, 2.0, 3.0]}))
    with pytest.raises(DataError, match="different dimensions"):
        load_label_vectors(pkl, ["dog", "cat"])
    np.save(tmp_path / "v.npy", np.zeros((2, 3)))
    (tmp_path / "v.names.txt").write_text("dog\ncat\nemu\n")
    with pytest.raises(DataError, match="2 vectors but v.names.txt lists 3 names"):
        load_label_vectors(tmp_path / "v.npy", ["dog", "cat"])


def test_unreadable_files(tmp_path):
    np.save(tmp_path / "lonely.npy", np.zeros((2, 3)))
    with pytest.raises(DataError, match="names file"):
        load_label_vectors(tmp_path / "lonely.npy", ["dog", "cat"])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read label vectors"):
        load_label_vectors(bad, ["dog"])
    wrong_keys = tmp_path / "keys.npz"
    np.savez(wrong_keys, weights=np.zeros((1, 2)))
    with pytest.raises(DataError, match="'names' and 'vectors'"):
        load_label_vectors(wrong_keys, ["dog"])
    array_pickle = tmp_path / "array.pkl"
    array_pickle.write_bytes(pickle.dumps(np.zeros((2, 300))))
    with pytest.raises(DataError, match="not a \\{name: vector\\} dict"):
        load_label_vectors(array_pickle, ["dog", "cat"])
    words_only = tmp_path / "words.txt"
    words_only.write_text("dog cat\n")
    with pytest.raises(DataError, match="not 'word v1 v2"):
        load_label_vectors(words_only, ["dog"])


def test_module_imports_no_torch():
    code = "import sys, mlic_edge.label_vectors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
