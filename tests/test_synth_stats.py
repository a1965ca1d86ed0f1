"""The synthetic VOC-layout generator and the dataset statistics (counts, groups, co-occurrence, heatmap)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlic_edge.data.dataset import MultiLabelDataset
from mlic_edge.data.stats import (
    conditional_probability,
    dataset_stats,
    format_stats_table,
    save_cooccurrence_heatmap,
    stats_rows,
)
from mlic_edge.data.synth import KINDS, MAX_CLASSES, SynthConfig, generate, occlusion
from mlic_edge.errors import DataError

SMALL = dict(classes=5, images=40, size=64)


def _label_files(root: Path) -> dict[str, bytes]:
    files = {}
    for sub in ("Annotations", "ImageSets/Main"):
        for path in sorted((root / sub).iterdir()):
            files[f"{sub}/{path.name}"] = path.read_bytes()
    files["synth.json"] = (root / "synth.json").read_bytes()
    return files


def _presence(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    """(names, bool images x classes) from the VOC per-class files: 1 and 0 (difficult) both mean present."""
    main = root / "ImageSets" / "Main"
    names = (main / "classes.txt").read_text().split()
    ids = (main / f"{split}.txt").read_text().split()
    present = np.zeros((len(ids), len(names)), dtype=bool)
    for k, name in enumerate(names):
        lines = (main / f"{name}_{split}.txt").read_text().splitlines()
        assert [line.split()[0] for line in lines] == ids
        present[:, k] = [int(line.split()[1]) >= 0 for line in lines]
    return names, present


@pytest.fixture(scope="module")
def rules_data(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rules") / "synth"
    summary = generate(out, SynthConfig(classes=8, images=240, size=32, seed=3))
    return out, summary


@pytest.fixture(scope="module")
def long_tail_data(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lt") / "synth"
    summary = generate(out, SynthConfig(classes=8, images=400, size=32, seed=5, long_tail=True))
    return out, summary


# ------------------------------------------------------------------------------------------------------ generator
def test_layout_and_summary(tmp_path):
    calls = []
    out = tmp_path / "s"
    summary = generate(out, SynthConfig(**SMALL, seed=0), progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (40, 40) and len(calls) == 40
    names = list(KINDS[:5])
    main = out / "ImageSets" / "Main"
    assert (main / "classes.txt").read_text().split() == names
    trainval, test = (main / "trainval.txt").read_text().split(), (main / "test.txt").read_text().split()
    assert len(trainval) == 30 and len(test) == 10 and not set(trainval) & set(test)
    for image_id in trainval + test:
        image = cv2.imread(str(out / "JPEGImages" / f"{image_id}.jpg"))
        assert image is not None and image.shape == (64, 64, 3)
        xml = (out / "Annotations" / f"{image_id}.xml").read_text()
        assert f"<filename>{image_id}.jpg</filename>" in xml and "<width>64</width>" in xml
        objects = re.findall(r"<name>(\w+)</name>", xml)
        assert 1 <= len(set(objects)) <= 4 and set(objects) <= set(names)
        for box in re.findall(r"<bndbox>(.*?)</bndbox>", xml, re.S):
            x0, y0, x1, y1 = (int(v) for v in re.findall(r">(\d+)<", box))
            assert 1 <= x0 <= x1 <= 64 and 1 <= y0 <= y1 <= 64
    line = (main / f"{names[0]}_trainval.txt").read_text().splitlines()[0]
    assert re.fullmatch(r"\d{6} (-1| 0| 1)", line)
    on_disk = json.loads((out / "synth.json").read_text())
    assert on_disk["generator"] == "mlic-edge synth" and on_disk["classes"] == names
    assert summary["root"] == str(out) and summary["splits"]["test"]["images"] == 10
    assert set(on_disk["rules"]) == {"together", "never"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build folder left behind


def test_deterministic(tmp_path):
    a = generate(tmp_path / "a", SynthConfig(**SMALL, seed=7))
    b = generate(tmp_path / "b", SynthConfig(**SMALL, seed=7))
    c = generate(tmp_path / "c", SynthConfig(**SMALL, seed=8))
    files_a, files_b, files_c = (_label_files(tmp_path / n) for n in "abc")
    assert files_a == files_b
    assert files_a != files_c
    assert a["rules"] == b["rules"]
    for image in sorted((tmp_path / "a" / "JPEGImages").iterdir()):
        assert image.read_bytes() == (tmp_path / "b" / "JPEGImages" / image.name).read_bytes()
    annotations_c = [files_c[k] for k in files_a if k.startswith("Annotations/")]
    assert annotations_c != [files_a[k] for k in files_a if k.startswith("Annotations/")]
    assert c["splits"] is not None


def test_rerun_overwrites_previous_output(tmp_path):
    out = tmp_path / "s"
    generate(out, SynthConfig(**{**SMALL, "images": 48}, seed=1))
    (out / "notes.txt").write_text("mine")  # a user's file beside the dataset survives
    generate(out, SynthConfig(**SMALL, seed=1))
    assert len(list((out / "JPEGImages").iterdir())) == 40
    assert len(list((out / "Annotations").iterdir())) == 40
    assert (out / "notes.txt").read_text() == "mine"
    reference = tmp_path / "ref"
    generate(reference, SynthConfig(**SMALL, seed=1))
    assert _label_files(out) == _label_files(reference)


def test_empty_existing_folder_is_fine(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    generate(out, SynthConfig(**SMALL))
    assert (out / "synth.json").is_file()


def test_readable_by_voc_reader(tmp_path):
    try:
        from mlic_edge.data import open_dataset
    except ImportError:
        pytest.skip("mlic_edge.data.open_dataset (the VOC reader) is not available yet")
    out = tmp_path / "s"
    generate(out, SynthConfig(**SMALL, seed=2))
    train = open_dataset(f"voc:{out}", role="train")  # default splits: trainval / test
    test = open_dataset(f"voc:{out}", role="eval")
    assert train.split == "trainval" and test.split == "test"
    names = list(KINDS[:5])
    assert list(train.names) == names and list(test.names) == names
    assert len(train) == 30 and len(test) == 10
    assert train.targets.shape == (30, 5) and set(np.unique(train.targets)) <= {-1, 0, 1}
    _, present = _presence(out, "trainval")
    ids = (out / "ImageSets/Main/trainval.txt").read_text().split()
    assert [Path(p).stem for p in train.image_paths] == ids
    # Every positive the reader sees is present in the label files; difficult-only classes may be ignored (-1).
    assert not ((train.targets == 1) & ~present).any()
    assert ((train.targets != 0) == present).all()
    # The statistics of the read split agree with what the generator reported.
    summary = json.loads((out / "synth.json").read_text())
    stats = dataset_stats(train)
    assert stats["class_counts"] == summary["splits"]["trainval"]["class_counts_non_difficult"]
    assert stats["ignored_entries"] == int((train.targets == -1).sum())
    try:
        with_difficult = open_dataset(f"voc:{out}", role="train", difficult="positive")
    except TypeError:  # a reader without the difficult policy
        return
    assert dataset_stats(with_difficult)["class_counts"] == summary["splits"]["trainval"]["class_counts"]


def test_cooccurrence_rules_hold(rules_data):
    out, summary = rules_data
    rules = summary["rules"]
    assert rules["together"] and rules["never"]
    for split in ("trainval", "test"):
        names, present = _presence(out, split)
        for rule in rules["together"]:
            a, b = names.index(rule["if"]), names.index(rule["then"])
            assert present[:, a].sum() > 0
            # Stratified in the generator: P(B | A) reaches the rule's probability in every split.
            assert present[present[:, a], b].mean() >= rule["probability"] - 1e-9, rule
        for rule in rules["never"]:
            a, b = names.index(rule["if"]), names.index(rule["then_not"])
            assert present[:, a].sum() > 0 and present[:, b].sum() > 0
            assert not (present[:, a] & present[:, b]).any(), rule
        per_image = present.sum(axis=1)
        assert per_image.min() >= 1 and per_image.max() <= 4


def test_long_tail_in_trainval_only(long_tail_data, rules_data):
    out, summary = long_tail_data
    _, train = _presence(out, "trainval")
    _, test = _presence(out, "test")
    train_counts, test_counts = train.sum(axis=0), test.sum(axis=0)
    assert train_counts.min() >= 1
    assert train_counts.max() / train_counts.min() >= 15
    assert train_counts.max() >= 0.5 * len(train)  # the head class is in most training images
    assert test_counts.max() / test_counts.min() <= 2.0
    assert summary["long_tail"]["frequency_order"][0] == summary["classes"][int(np.argmax(train_counts))]
    _, balanced = _presence(rules_data[0], "trainval")
    assert balanced.sum(axis=0).max() / balanced.sum(axis=0).min() <= 2.0


def test_difficult_flags_from_masks():
    size, pad = 20, 10
    lower = np.zeros((size + 2 * pad, size + 2 * pad), np.uint8)
    lower[pad + 2:pad + 12, pad + 2:pad + 12] = 255  # 10x10, drawn first
    upper = np.zeros_like(lower)
    upper[pad + 2:pad + 12, pad + 5:pad + 18] = 255  # covers 7 of its 10 columns, drawn on top
    edge = np.zeros_like(lower)
    edge[pad + 14:pad + 18, pad - 6:pad + 4] = 255  # 60 % outside the image: truncated, and hidden by the border
    lower_info, upper_info, edge_info = occlusion([lower, upper, edge], pad, (size, size), 0.6)
    assert lower_info["hidden"] == pytest.approx(0.7) and lower_info["difficult"] == 1
    assert lower_info["bbox"] == (3, 3, 5, 12)  # the visible part only, 1-based
    assert upper_info["hidden"] == 0 and upper_info["difficult"] == 0 and upper_info["truncated"] == 0
    assert edge_info["truncated"] == 1 and edge_info["hidden"] == pytest.approx(0.6) and edge_info["difficult"] == 0


def test_difficult_objects_in_generated_data(rules_data):
    out, summary = rules_data
    difficult = sum(s["difficult_objects"] for s in summary["splits"].values())
    objects = sum(s["objects"] for s in summary["splits"].values())
    assert 0 < difficult < 0.3 * objects
    zeros = sum(line.endswith(" 0") for p in (out / "ImageSets/Main").glob("*_*.txt")
                for line in p.read_text().splitlines())
    xml_difficult = sum(p.read_text().count("<difficult>1</difficult>") for p in (out / "Annotations").iterdir())
    assert xml_difficult == difficult and 0 < zeros <= difficult


def test_video(tmp_path):
    out = tmp_path / "v"
    summary = generate(out, SynthConfig(classes=6, images=8, size=48, video=True, video_frames=45))
    capture = cv2.VideoCapture(str(out / "video.mp4"))
    assert capture.isOpened()
    frames = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (48, 96, 3)
        frames += 1
    capture.release()
    assert frames == 45
    labels = json.loads((out / "video_labels.json").read_text())
    assert len(labels["frames"]) == 45 and labels["fps"] == 10
    names = set(KINDS[:6])
    assert all(set(f) <= names for f in labels["frames"])
    assert sum(bool(f) for f in labels["frames"]) >= 40  # objects are on screen nearly all the time
    assert len({tuple(f) for f in labels["frames"]}) >= 2  # the set changes every ~2 s
    assert summary["video"]["frames"] == 45


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (dict(classes=0), "at least 1"),
        (dict(classes=MAX_CLASSES + 1), "distinct shape kinds"),
        (dict(images=7), "at least 8"),
        (dict(size=31), "at least 32"),
        (dict(test_fraction=1.0), "test_fraction"),
    ],
)
def test_bad_config(tmp_path, config, fragment):
    with pytest.raises(DataError) as error:
        generate(tmp_path / "s", SynthConfig(**{**SMALL, **config}))
    assert fragment in error.value.message and error.value.hint
    assert not (tmp_path / "s").exists()


def test_refuses_foreign_folder(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DataError) as error:
        generate(foreign, SynthConfig(**SMALL))
    assert "not empty" in error.value.message and error.value.hint
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError):
        generate(a_file, SynthConfig(**SMALL))


# ---------------------------------------------------------------------------------------------------------- stats
def _tiny_dataset(tmp_path: Path) -> MultiLabelDataset:
    targets = np.array(
        [
            [1, 1, 0],
            [1, 0, 0],
            [1, 1, -1],
            [0, 0, 0],
            [1, 0, 1],
        ],
        dtype=np.int8,
    )
    return MultiLabelDataset(
        names=["cat", "dog", "bird"],
        image_paths=[tmp_path / f"{i}.jpg" for i in range(5)],
        targets=targets,
        root=tmp_path,
        format="csv",
        split="train",
        spec=f"csv:{tmp_path}/labels.csv",
    )


def test_stats_values(tmp_path):
    stats = dataset_stats(_tiny_dataset(tmp_path), head_threshold=3, tail_threshold=2)
    assert stats["images"] == 5
    assert stats["labels"] == ["cat", "dog", "bird"]
    assert stats["class_counts"] == {"cat": 4, "dog": 2, "bird": 1}
    assert stats["labels_per_image"] == {"mean": pytest.approx(7 / 5), "min": 0, "max": 2,
                                         "histogram": {"0": 1, "1": 1, "2": 3}}
    assert stats["images_without_labels"] == 1
    assert stats["ignored_entries"] == 1
    assert stats["groups"] == {"head": ["cat"], "middle": ["dog"], "tail": ["bird"]}
    assert stats["imbalance_ratio"] == pytest.approx(4.0)
    assert stats["cooccurrence"] == [[4, 2, 1], [2, 2, 0], [1, 0, 1]]
    assert stats["split"] == "train" and stats["spec"].startswith("csv:")
    assert json.loads(json.dumps(stats)) == stats  # plain JSON types only
    default = dataset_stats(_tiny_dataset(tmp_path))
    assert default["groups"] == {"head": [], "middle": [], "tail": ["cat", "dog", "bird"]}
    prob = conditional_probability(np.array(stats["cooccurrence"]))
    assert prob[0].tolist() == pytest.approx([1.0, 0.5, 0.25])


def test_stats_edge_cases(tmp_path):
    data = _tiny_dataset(tmp_path)
    data.targets[:] = 0
    stats = dataset_stats(data)
    assert stats["imbalance_ratio"] is None and stats["images_without_labels"] == 5
    assert stats["classes_without_images"] == ["cat", "dog", "bird"]
    empty = data.subset([])
    stats = dataset_stats(empty)
    assert stats["images"] == 0 and stats["labels_per_image"]["mean"] == 0.0
    assert stats["labels_per_image"]["histogram"] == {}


def test_stats_table(tmp_path):
    stats = dataset_stats(_tiny_dataset(tmp_path), head_threshold=3, tail_threshold=2)
    table = format_stats_table(stats)
    assert table.row_count == 3
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    assert "cat" in text and "80.0%" in text and "head" in text
    assert stats_rows(stats)[2] == ("bird", 1, pytest.approx(0.2), "tail")


def test_heatmap(tmp_path):
    path = save_cooccurrence_heatmap(_tiny_dataset(tmp_path), tmp_path / "reports" / "cooc.png")
    image = cv2.imread(str(path))
    assert image is not None and image.ndim == 3
    assert image.shape[0] >= 3 * 48 and image.shape[1] >= 3 * 48
    assert [p.name for p in path.parent.iterdir()] == ["cooc.png"]  # written atomically, no temp file left
    many = MultiLabelDataset(
        names=[f"class_{i}" for i in range(80)], image_paths=[tmp_path / "x.jpg"] * 50,
        targets=(np.random.default_rng(0).random((50, 80)) < 0.1).astype(np.int8), root=tmp_path, format="coco",
        split="val", spec="coco:x")
    big = cv2.imread(str(save_cooccurrence_heatmap(many, tmp_path / "many.png")))
    assert big.shape[0] >= 80 * 16 and big.shape[1] >= 80 * 16  # cells stay at least 16 px for readable names
