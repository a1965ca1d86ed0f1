"""Dataset readers on small fixtures in their real formats: VOC XML, COCO instances JSON, CSV."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from mlic_edge.data import default_split, open_dataset, parse_data_spec
from mlic_edge.data.voc import VOC_CLASSES
from mlic_edge.errors import DataError


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((24, 32, 3), 128, np.uint8))


def _voc_xml(filename: str, objects: list[tuple[str, int]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>22</ymax>"
        f"</bndbox></object>" for name, difficult in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{filename}</filename><size><width>32</width>"
            f"<height>24</height><depth>3</depth></size><segmented>0</segmented>{body}</annotation>")


def make_voc(root: Path, images: dict[str, list[tuple[str, int]]], splits: dict[str, list[str]],
             classes: list[str] | None = None) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objects in images.items():
        _jpeg(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(f"{image_id}.jpg", objects))
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        (root / "ImageSets" / "Main" / f"dog_{split}.txt").write_text("".join(f"{i} -1\n" for i in ids))
    if classes:
        (root / "ImageSets" / "Main" / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


@pytest.fixture
def voc(tmp_path) -> Path:
    images = {"000001": [("dog", 0), ("person", 0)], "000002": [("cat", 1)], "000003": [("cat", 1), ("cat", 0)],
              "000004": [("car", 0)], "000005": [("bus", 0), ("person", 1)]}
    return make_voc(tmp_path / "VOCdevkit" / "VOC2007", images,
                    {"trainval": ["000001", "000002", "000003"], "test": ["000004", "000005"]})


def _row(dataset, image_id: str) -> dict[str, int]:
    index = [p.stem for p in dataset.image_paths].index(image_id)
    return {name: int(v) for name, v in zip(dataset.names, dataset.targets[index]) if v != 0}


def test_voc_labels_classes_and_default_splits(voc):
    train = open_dataset(f"voc:{voc}")
    assert train.names == list(VOC_CLASSES) and train.split == "trainval" and len(train) == 3
    assert _row(train, "000001") == {"dog": 1, "person": 1}
    assert _row(train, "000003") == {"cat": 1}  # a non-difficult instance makes it positive
    test = open_dataset(str(voc), role="eval")
    assert test.split == "test" and test.format == "voc" and test.spec == f"voc:{voc.resolve()}"
    assert test.image_ids() == ["JPEGImages/000004.jpg", "JPEGImages/000005.jpg"]


@pytest.mark.parametrize("policy, value", [("ignore", -1), ("positive", 1), ("negative", 0)])
def test_voc_difficult_policies(voc, policy, value):
    train = open_dataset(f"voc:{voc}", difficult=policy)
    assert train.targets[[p.stem for p in train.image_paths].index("000002"), train.names.index("cat")] == value


def test_voc_parent_folders_are_found(voc):
    assert open_dataset(str(voc.parent.parent)).root == voc.resolve()  # the folder holding VOCdevkit/
    assert parse_data_spec(str(voc.parent.parent)) == ("voc", voc.parent.parent.resolve())


def test_voc_eval_falls_back_to_val_and_split_override(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("dog", 0)], "b": [("cat", 0)]}, {"train": ["a"], "val": ["b"]})
    assert default_split(str(root), "train") == "train" and default_split(str(root), "eval") == "val"
    assert len(open_dataset(str(root), role="eval", split="train")) == 1


def test_voc_custom_classes_and_unknown_class(tmp_path):
    root = make_voc(tmp_path / "c", {"a": [("blob", 0)], "b": [("ring", 0)]}, {"trainval": ["a", "b"]},
                    classes=["ring", "blob"])
    assert open_dataset(str(root)).names == ["ring", "blob"]
    bad = make_voc(tmp_path / "u", {"a": [("unicorn", 0)]}, {"trainval": ["a"]})
    with pytest.raises(DataError, match="unknown class 'unicorn'.*a.xml") as error:
        open_dataset(str(bad))
    assert "classes.txt" in str(error.value)


def test_voc_name_outside_classes_file_in_the_test_split_names_the_xml(tmp_path):
    root = make_voc(tmp_path / "c", {"a": [("blob", 0)], "b": [("ring", 0), ("rnig", 0)]},
                    {"trainval": ["a"], "test": ["b"]}, classes=["ring", "blob"])
    assert open_dataset(str(root)).names == ["ring", "blob"]
    with pytest.raises(DataError, match=r"unknown class 'rnig' in .*Annotations/b.xml") as error:
        open_dataset(str(root), role="eval")
    assert str(root / "ImageSets" / "Main" / "classes.txt") in str(error.value)


def test_voc_missing_annotation_and_image_are_skipped_with_notes(voc):
    (voc / "Annotations" / "000002.xml").unlink()
    (voc / "JPEGImages" / "000003.jpg").unlink()
    train = open_dataset(str(voc))
    assert [p.stem for p in train.image_paths] == ["000001"]
    assert any("000002.xml" in note for note in train.notes)
    assert any("000003.jpg" in note for note in train.notes)


def test_missing_and_empty_splits_are_clear_errors(voc):
    with pytest.raises(DataError, match="split 'nope' not found") as error:
        open_dataset(str(voc), split="nope")
    assert "trainval" in str(error.value)
    (voc / "ImageSets" / "Main" / "empty.txt").write_text("")
    with pytest.raises(DataError, match="has no images"):
        open_dataset(str(voc), split="empty")


def test_voc_split_listing_leaves_out_class_files_and_empty_split_file(voc):
    with pytest.raises(DataError) as error:
        open_dataset(str(voc), split="nope")
    assert "test, trainval" in error.value.hint and "dog_" not in error.value.hint and "nope.txt" in error.value.message
    (voc / "ImageSets" / "Main" / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="has no images.*empty.txt is empty"):
        open_dataset(str(voc), split="empty")


def test_voc_filename_comes_from_xml(voc):
    (voc / "Annotations" / "000001.xml").write_text(_voc_xml("renamed.png", [("dog", 0)]))
    cv2.imwrite(str(voc / "JPEGImages" / "renamed.png"), np.zeros((8, 8, 3), np.uint8))
    train = open_dataset(str(voc))
    assert train.image_ids() == ["JPEGImages/renamed.png", "JPEGImages/000002.jpg", "JPEGImages/000003.jpg"]


def test_voc_truncated_or_unreadable_xml_is_refused_naming_file_and_line(voc):
    """A damaged annotation is never a silently dropped image: only a missing one is skipped (with a note)."""
    xml = voc / "Annotations" / "000003.xml"
    xml.write_text(_voc_xml("000003.jpg", [("cat", 0)]).replace("</size>", "</size>\n")[:150])
    with pytest.raises(DataError, match=rf"{re.escape(str(xml))}, line 2: invalid XML \(.*\)") as error:
        open_dataset(str(voc))
    assert f"take '000003' out of {voc / 'ImageSets' / 'Main' / 'trainval.txt'}" in str(error.value)
    xml.unlink()
    xml.mkdir()
    with pytest.raises(DataError, match=rf"cannot read {re.escape(str(xml))}: Is a directory"):
        open_dataset(str(voc))


def test_voc_year_folder_below_root_and_ambiguity(tmp_path):
    root = make_voc(tmp_path / "data" / "VOC2012", {"a": [("dog", 0)]}, {"train": ["a"], "val": ["a"]})
    dataset = open_dataset(str(tmp_path / "data"), role="eval")
    assert dataset.root == root.resolve() and dataset.split == "val" and dataset.spec == f"voc:{root.resolve()}"
    make_voc(tmp_path / "data" / "VOC2007", {"a": [("cat", 0)]}, {"trainval": ["a"]})
    with pytest.raises(DataError, match="several VOC datasets.*VOC2007.*VOC2012"):
        open_dataset(str(tmp_path / "data"))
    assert open_dataset(f"voc:{tmp_path / 'data' / 'VOC2007'}").names == list(VOC_CLASSES)


def test_voc_bad_difficult_policy(voc):
    with pytest.raises(DataError, match="difficult policy 'maybe'"):
        open_dataset(str(voc), difficult="maybe")


def make_coco(root: Path, year: int = 2017) -> Path:
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    for split, ids in (("train", [10, 11, 12]), ("val", [20, 21])):
        images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 32, "height": 24} for i in ids]
        for image in images:
            _jpeg(root / f"{split}{year}" / image["file_name"])
        annotations = [{"id": 1, "image_id": ids[0], "category_id": 90, "iscrowd": 0, "bbox": [0, 0, 4, 4]},
                       {"id": 2, "image_id": ids[0], "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 4, 4]},
                       {"id": 3, "image_id": ids[1], "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 4, 4]}]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}{year}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_coco_category_id_order_and_unannotated_images(tmp_path):
    root = make_coco(tmp_path / "coco")
    train = open_dataset(str(root))
    assert train.format == "coco" and train.split == "train2017"
    assert train.names == ["person", "car", "toothbrush"]  # id order 1, 3, 90 — not alphabetical, not file order
    np.testing.assert_array_equal(train.targets, [[1, 0, 1], [0, 1, 0], [0, 0, 0]])  # crowd counts, empty kept
    from mlic_edge.data.coco import read_coco

    assert len(read_coco(root, "train", drop_unannotated=True)) == 2
    assert open_dataset(f"coco:{root}", role="eval").split == "val2017"


def test_coco_year_choice(tmp_path):
    root = make_coco(tmp_path / "coco", year=2014)
    make_coco(root, year=2017)
    assert open_dataset(str(root)).split == "train2017"
    assert open_dataset(str(root), split="train2014").split == "train2014"
    with pytest.raises(DataError, match="'train2099' not found"):
        open_dataset(str(root), split="train2099")


def test_coco_images_subfolder_drop_option_and_missing_folder(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "images").mkdir()
    (root / "train2017").rename(root / "images" / "train2017")
    train = open_dataset(f"coco:{root}")
    assert train.image_ids()[0] == "images/train2017/000000000010.jpg"
    assert any("1 image(s) of train2017 without annotations kept" in note for note in train.notes)
    dropped = open_dataset(f"coco:{root}", drop_unannotated=True)
    assert len(dropped) == 2 and any("dropped" in note for note in dropped.notes)
    (root / "images" / "train2017" / "000000000011.jpg").unlink()
    assert any("1 image(s) of split 'train2017' missing on disk" in note for note in open_dataset(str(root)).notes)
    import shutil

    shutil.rmtree(root / "val2017")
    with pytest.raises(DataError, match="no image folder for COCO split val2017"):
        open_dataset(str(root), role="eval")


def test_coco_broken_json_is_a_data_error(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "annotations" / "instances_val2017.json").write_text('{"images": [')
    with pytest.raises(DataError, match="instances_val2017.json is not a readable COCO instances file"):
        open_dataset(str(root), role="eval")


def _rewrite_instances(root: Path, change) -> Path:
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_coco_annotation_with_unknown_category_names_file_and_annotation_id(tmp_path):
    root = make_coco(tmp_path / "coco")
    _rewrite_instances(root, lambda data: data["annotations"][2].update(category_id=7))
    with pytest.raises(DataError, match=r"instances_val2017.json: annotation id 3 has category_id 7, which is not "
                                        r"among the file's categories"):
        open_dataset(str(root), role="eval")
    _rewrite_instances(root, lambda data: data["annotations"][0].update(image_id=99))
    with pytest.raises(DataError, match=r"annotation id 1 has image_id 99, which is not among the file's images"):
        open_dataset(str(root), role="eval")


@pytest.mark.parametrize("change, message", [
    (lambda data: data["categories"].append({"id": 1, "name": "bike"}), r"category id 1 appears more than once"),
    (lambda data: data["categories"].append({"id": 2, "name": "car"}), r"category name 'car' appears more than once"),
    (lambda data: data["categories"][0].update(id="90"), r"categories\[0\] needs an integer id, has '90'"),
    (lambda data: data["categories"][1].update(name=None), r"categories\[1\] needs a non-empty name, has None"),
    (lambda data: data["images"].append(dict(data["images"][0])), r"image id 20 appears more than once"),
    (lambda data: data.update(images={"20": {}}), r"'images' is an object, not an array"),
    (lambda data: data.update(annotations=[1]), r"annotations\[0\] is a number, not an object"),
])
def test_coco_inconsistent_files_are_data_errors_naming_the_file(tmp_path, change, message):
    root = make_coco(tmp_path / "coco")
    _rewrite_instances(root, change)
    with pytest.raises(DataError, match=r"instances_val2017.json is not a readable COCO instances file \(.*"
                                        + message):
        open_dataset(str(root), role="eval")


def make_csv(root: Path, rows: dict[str, list[tuple[str, str]]], classes: list[str] | None = None) -> Path:
    root.mkdir(parents=True)
    for split, entries in rows.items():
        lines = ["image,labels,comment"] + [f"{image},{labels},x" for image, labels in entries]
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
        for image, _ in entries:
            _jpeg(root / image)
    if classes:
        (root / "classes.txt").write_text("\n".join(classes))
    return root


def test_csv_names_order_and_val_fallback(tmp_path):
    root = make_csv(tmp_path / "c", {"train": [("img/a.jpg", "dog;zebra"), ("img/b.jpg", ""), ("img/c.jpg", "cat")],
                                     "val": [("img/d.jpg", "zebra")]})
    train = open_dataset(str(root))
    assert train.format == "csv" and train.names == ["cat", "dog", "zebra"]  # the train split's labels, sorted
    np.testing.assert_array_equal(train.targets, [[0, 1, 1], [0, 0, 0], [1, 0, 0]])
    val = open_dataset(f"csv:{root}", role="eval")
    assert val.split == "val" and val.names == train.names  # the order of earlier runs: the sorted union then


def test_csv_eval_label_missing_from_train_split_names_file_and_line(tmp_path):
    root = make_csv(tmp_path / "c", {"train": [("a.jpg", "dog;cat"), ("b.jpg", "cat")],
                                     "test": [("c.jpg", "cat"), ("d.jpg", "dog;dgo")]})
    assert open_dataset(str(root)).names == ["cat", "dog"]  # the typo adds no class to the train split either
    with pytest.raises(DataError, match=r"test.csv, line 3: label 'dgo' is not a label of the train split "
                                        r"train.csv") as error:
        open_dataset(str(root), role="eval")
    assert f"declare every class in {root.resolve() / 'classes.txt'}" in str(error.value)
    assert "\n" not in str(error.value)


def test_csv_eval_only_class_declared_in_classes_file_loads(tmp_path):
    root = make_csv(tmp_path / "c", {"train": [("a.jpg", "dog;cat")], "test": [("c.jpg", "cat"), ("d.jpg", "dgo")]},
                    classes=["dog", "cat", "dgo"])
    test = open_dataset(str(root), role="eval")
    assert test.names == open_dataset(str(root)).names == ["dog", "cat", "dgo"]
    np.testing.assert_array_equal(test.targets, [[0, 1, 0], [0, 0, 1]])


def test_csv_without_train_csv_takes_the_union_of_its_splits(tmp_path):
    root = make_csv(tmp_path / "c", {"fold1": [("a.jpg", "dog")], "fold2": [("b.jpg", "cat")]})
    (root / "results.csv").write_text("epoch,map\n1,0.5\n")  # no image,labels header: not a split, no classes
    assert open_dataset(str(root), split="fold1").names == open_dataset(str(root), split="fold2").names == [
        "cat", "dog"]


def test_csv_label_with_a_line_break_names_the_row_start(tmp_path):
    root = make_csv(tmp_path / "c", {"train": [("a.jpg", "dog")]})
    (root / "train.csv").write_text('image,labels\na.jpg,dog\nb.jpg,"dog\ncat"\n')
    with pytest.raises(DataError, match=r"train.csv, line 3: the labels cell runs on to line 4"):
        open_dataset(str(root))
    (root / "train.csv").write_text('image,labels\na.jpg,dog\nb.jpg,"dog\tcat"\n')
    with pytest.raises(DataError, match=r"train.csv, line 3: label 'dog\\tcat' holds the control character or "
                                        r"line break '\\t'"):
        open_dataset(str(root))


def _csv_of_30(root: Path, line: int, text: str) -> Path:
    """A CSV split of 30 images whose given line (the header is line 1) is replaced by ``text``."""
    rows = [(f"{i}.jpg", "dog" if i % 2 else "cat") for i in range(30)]
    make_csv(root, {"train": rows})
    lines = (root / "train.csv").read_text().splitlines()
    lines[line - 1] = text
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv"


@pytest.mark.parametrize("text", ['"2.jpg,dog,x', '2.jpg,"dog,x', '2.jpg,dog,"x'])
def test_csv_unterminated_quote_names_file_and_line_instead_of_reading_part(tmp_path, text):
    path = _csv_of_30(tmp_path / "c", 4, text)
    with pytest.raises(DataError, match=re.escape(f"{path}, line 4: the row starting here opens a quote that is "
                                                  "never closed")) as error:
        open_dataset(str(tmp_path / "c"))
    assert '""' in error.value.hint and "\n" not in str(error.value)


@pytest.mark.parametrize("opened, closed, column", [('"2.jpg,dog,x', '6.jpg",cat,x', "image"),
                                                    ('2.jpg,"dog,x', '6.jpg,cat",x', "labels")])
def test_csv_quote_closed_rows_later_names_the_row_it_swallowed_lines_from(tmp_path, opened, closed, column):
    path = _csv_of_30(tmp_path / "c", 4, opened)
    lines = path.read_text().splitlines()
    lines[7] = closed
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}, line 4: the {column} cell runs on to line 8"):
        open_dataset(str(tmp_path / "c"))


def test_csv_unknown_label_names_file_and_line(tmp_path):
    root = make_csv(tmp_path / "c", {"train": [("a.jpg", "dog"), ("b.jpg", "dog;emu")], "test": [("c.jpg", "")]},
                    classes=["dog", "cat"])
    with pytest.raises(DataError, match=r"train.csv, line 3: unknown label 'emu'"):
        open_dataset(str(root))


def test_csv_classes_file_order_test_before_val_and_other_splits(tmp_path):
    root = make_csv(tmp_path / "c", {"train": [("img/a.jpg", "dog;cat"), ("img/b.jpg", "")],
                                     "test": [("img/c.jpg", "cat")], "val": [("img/d.jpg", "dog")],
                                     "holdout": [("img/e.jpg", "dog")]}, classes=["dog", "cat"])
    train = open_dataset(str(root))
    assert train.names == ["dog", "cat"] and train.image_ids() == ["img/a.jpg", "img/b.jpg"]
    np.testing.assert_array_equal(train.targets, [[1, 1], [0, 0]])
    assert train.targets.dtype == np.int8
    assert default_split(str(root), "eval") == "test"
    assert open_dataset(str(root), split="holdout").image_ids() == ["img/e.jpg"]


def test_csv_stray_files_header_and_empty_split(tmp_path):
    root = make_csv(tmp_path / "c", {"train": [("a.jpg", "dog;cat")], "test": [("b.jpg", "cat")]})
    (root / "results.csv").write_text("epoch,map\n1,0.5\n")  # no image,labels header: not a split
    (root / "empty.csv").write_text("\ufeffimage,labels\n")  # BOM and header only
    assert open_dataset(str(root)).names == ["cat", "dog"]
    with pytest.raises(DataError, match="split 'empty' of csv:.* has no images") as error:
        open_dataset(str(root), split="empty")
    assert "empty, test, train" in error.value.hint
    with pytest.raises(DataError, match="results.csv needs a header line with columns image,labels"):
        open_dataset(str(root), split="results")
    with pytest.raises(DataError, match="split 'nope' not found"):
        open_dataset(str(root), split="nope")


def test_data_spec_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        parse_data_spec(str(tmp_path / "missing"))
    (tmp_path / "random").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset format") as error:
        parse_data_spec(str(tmp_path / "random"))
    assert "voc:PATH" in str(error.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        parse_data_spec(str(tmp_path / "file.txt"))
    with pytest.raises(DataError, match="'yolo' is not a dataset format"):
        parse_data_spec(f"yolo:{tmp_path / 'random'}")


def test_data_spec_detection_and_prefix(tmp_path, voc):
    coco = make_coco(tmp_path / "coco")
    csv_root = make_csv(tmp_path / "csvdata", {"train": [("a.jpg", "dog")]})
    assert parse_data_spec(str(voc)) == ("voc", voc.resolve())
    assert parse_data_spec(str(coco)) == ("coco", coco.resolve())
    assert parse_data_spec(str(csv_root)) == ("csv", csv_root.resolve())
    assert parse_data_spec(f"csv:{coco}") == ("csv", coco.resolve())  # a prefix wins over detection
    assert open_dataset(str(csv_root)).spec == f"csv:{csv_root.resolve()}"
