"""Property-based tests (hypothesis) of the dataset readers and of the option checks made before any work.

Whatever a dataset folder holds (a BOM, blank lines, odd unicode, missing columns, duplicate ids, broken XML or JSON,
wrong JSON types, label typos in the eval split), opening a split and reading its targets either gives exactly the
classes and labels the format's rules define (never a silent extra class) or raises an MlicError whose single line
names the offending file; never another exception, and the dataset is never written to. Whatever number an option
gets, it is accepted inside its documented range or refused in one line naming the option.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import escape

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mlic_edge.data import MultiLabelDataset, open_dataset
from mlic_edge.data.voc import VOC_CLASSES
from mlic_edge.errors import MlicError
from mlic_edge.rundir import RunDir
from test_data_readers import _jpeg, _voc_xml, make_coco, make_csv, make_voc

SETTINGS = settings(max_examples=40, deadline=None)
ROLES = ("train", "eval")

LABELS = st.sampled_from(["dog", "cat", "bird", "hot dog", "Ünïcode", "狗", "😀", "a,b", 'say "hi"', " pad ",
                          "\ufeffdog", "x;y"])
ODD_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=5)  # control characters, line breaks, ';' ...
XML_SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc",), exclude_characters="\ufffe\uffff"),
                        min_size=1, max_size=5)
INVALID_UTF8 = b"\xff\xfe\xc3("


# ----------------------------------------------------------------------------------------------------- the property
@contextmanager
def _dataset_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp).resolve() / "data"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) below ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def _open(spec: str, role: str) -> MultiLabelDataset | MlicError:
    """The split ``role`` reads, or the MlicError refusing it; any other exception fails the test."""
    try:
        dataset = open_dataset(spec, role=role)
    except MlicError as error:
        return error
    return dataset


Row = tuple[Path, frozenset[str], frozenset[str]]  # image, positive classes, ignored classes


def _rows(dataset: MultiLabelDataset) -> list[Row]:
    assert set(dataset.targets.flatten().tolist()) <= {-1, 0, 1}
    return [(path, frozenset(n for n, v in zip(dataset.names, row) if v == 1),
             frozenset(n for n, v in zip(dataset.names, row) if v == -1))
            for path, row in zip(dataset.image_paths, dataset.targets)]


def _assert_outcome(outcome: MultiLabelDataset | MlicError, blamed: list[str], names: list[str] | None,
                    rows: list[Row]) -> None:
    """``blamed``: what an error may name (files, or the ``format:root`` spec for a split left without images), empty
    where the folder is valid; then the reader must give exactly ``names`` and ``rows``."""
    if isinstance(outcome, MlicError):
        message = str(outcome)
        assert message.splitlines() == [message], f"not one line: {message!r}"
        assert blamed, f"a valid split was refused: {message}"
        assert any(place in message for place in blamed), f"{message!r} names none of {blamed}"
    else:
        assert not blamed, f"read although it should be refused naming one of {blamed}: classes {outcome.names}"
        assert outcome.names == names
        assert _rows(outcome) == rows


def _check_every_role(root: Path, spec: str, expect) -> None:
    """Opens each role's split and checks it against ``expect(role) -> (blamed, names, rows)``; nothing is written."""
    before = _snapshot(root)
    for role in ROLES:
        _assert_outcome(_open(spec, role), *expect(role))
    assert _snapshot(root) == before, "the reader changed the dataset folder"


def _unprintable(name: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name)


def _declared_classes(text: str) -> list[str] | None:
    """The names a classes.txt declares, or None where it must be refused (empty, repeated, unprintable)."""
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(set(names)) < len(names) or any(map(_unprintable, names)):
        return None
    return names


def _write_classes(path: Path, names: list[str], bom: bool) -> list[str] | None:
    text = "\n".join(names) + "\n"
    path.write_bytes((("\ufeff" if bom else "") + text).encode())
    return _declared_classes(text if bom else text.removeprefix("\ufeff"))  # one leading U+FEFF is a BOM


# --------------------------------------------------------------------------------------------------------------- CSV
CSV_IMAGES = st.sampled_from(["a.jpg", "img/b.jpg", "c d.jpg", "ü.jpg", "missing.jpg", " ", ""])
CSV_PRESENT_IMAGES = ("a.jpg", "img/b.jpg", "c d.jpg", "ü.jpg")


@st.composite
def csv_folders(draw: st.DrawFn) -> dict:
    vocabulary = draw(st.lists(LABELS | ODD_TEXT, min_size=1, max_size=4, unique=True))
    typos = draw(st.lists(LABELS | ODD_TEXT, max_size=2))

    def rows(names: list[str]) -> list[tuple[str, list[str]]]:
        return draw(st.lists(st.tuples(CSV_IMAGES, st.lists(st.sampled_from(names), max_size=3)), max_size=4))

    return {
        "splits": {"train": rows(vocabulary), "test": rows(vocabulary + typos)},
        "classes": draw(st.none() | st.lists(st.sampled_from(vocabulary + typos) | ODD_TEXT, max_size=5)),
        "columns": draw(st.permutations(["image", "labels", "note"])),
        "no_labels_column": draw(st.sampled_from([None, None, None, "train", "test"])),
        "short_rows": draw(st.booleans()), "crlf": draw(st.booleans()), "bom": draw(st.booleans()),
        "blank_lines": draw(st.booleans()),
    }


def _write_csv_split(path: Path, rows: list[tuple[str, list[str]]], folder: dict,
                     columns: list[str]) -> list[list[str]]:
    """Writes the split as a spreadsheet would (quoting what needs it); returns the records as written."""
    text = io.StringIO()
    terminator = "\r\n" if folder["crlf"] else "\n"
    # a lone \r in a cell is quoted only where it is part of the line terminator, so LF files quote every cell
    writer = csv.writer(text, lineterminator=terminator, quoting=csv.QUOTE_MINIMAL if folder["crlf"] else csv.QUOTE_ALL)
    writer.writerow(columns)
    records = []
    for image, labels in rows:
        cells = {"image": image, "labels": ";".join(labels), "note": "x"}
        record = [cells[column] for column in columns][:len(columns) - 1 if folder["short_rows"] else None]
        writer.writerow(record)
        records.append(record)
        if folder["blank_lines"]:
            text.write(terminator)
    path.write_bytes((("\ufeff" if folder["bom"] else "") + text.getvalue()).encode())
    return records


def _csv_rows(columns: list[str], records: list[list[str]]) -> list[tuple[str, list[str]]] | None:
    """(image, labels) per row as the CSV rules read the records; None where the file must be refused."""
    if not {"image", "labels"} <= set(columns):
        return None
    rows = []
    for record in records:
        def cell(column: str) -> str:
            return record[columns.index(column)] if columns.index(column) < len(record) else ""

        if not any(value.strip() for value in record):
            continue
        image, labels = cell("image").strip(), [n.strip() for n in cell("labels").split(";") if n.strip()]
        run_on = any(char in cell(column) for char in "\r\n" for column in ("image", "labels"))  # a quote left open
        if not image or run_on or any(map(_unprintable, labels)):
            return None
        rows.append((image, labels))
    return rows


@SETTINGS
@given(folder=csv_folders())
def test_csv_folder_reads_exactly_its_classes_or_is_refused_naming_the_file(folder):
    with _dataset_folder() as root:
        root.mkdir()
        for image in CSV_PRESENT_IMAGES:
            _jpeg(root / image)
        read = {}
        for split, rows in folder["splits"].items():
            columns = [c for c in folder["columns"] if not (c == "labels" and folder["no_labels_column"] == split)]
            read[split] = _csv_rows(columns, _write_csv_split(root / f"{split}.csv", rows, folder, columns))
        classes_file = root / "classes.txt"
        declared = None if folder["classes"] is None else _write_classes(classes_file, folder["classes"], folder["bom"])

        def expect(role: str) -> tuple[list[str], list[str] | None, list[Row]]:
            split = "train" if role == "train" else "test"
            path, own, blamed = root / f"{split}.csv", read[split], []
            if folder["classes"] is not None:
                names = declared
                blamed += [] if declared else [str(classes_file)]
            else:  # the train split's labels are the classes, whichever split is read
                train_labels = {label for _, labels in read["train"] or [] for label in labels}
                names = sorted(train_labels) or None
                blamed += [] if names else [str(root / "train.csv")]
            if own is None or (names and any(label not in names for _, labels in own for label in labels)):
                blamed.append(str(path))
            rows = [(root / image, frozenset(labels), frozenset()) for image, labels in own or []
                    if image in CSV_PRESENT_IMAGES]
            return blamed or ([] if rows else [f"csv:{root}"]), names, rows

        _check_every_role(root, f"csv:{root}", expect)


def _cell_labels(cell: str) -> list[str]:
    return [name.strip() for name in cell.split(";") if name.strip()]


def _quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


@SETTINGS
@given(train=st.lists(st.lists(LABELS, min_size=1, max_size=2), min_size=1, max_size=4),
       test=st.lists(st.lists(st.integers(0, 7), max_size=2), max_size=4), typo=LABELS | XML_SAFE_TEXT,
       position=st.integers(0, 4), blank_lines=st.lists(st.booleans(), min_size=5, max_size=5))
def test_csv_eval_label_absent_from_the_train_split_is_named_with_file_and_line(train, test, typo, position,
                                                                                 blank_lines):
    train_cells = [";".join(labels) for labels in train]
    vocabulary = sorted({name for cell in train_cells for name in _cell_labels(cell)})
    typo = typo.strip()
    if _cell_labels(typo) != [typo] or typo in vocabulary or _unprintable(typo):
        return  # not one label, or not a typo
    test_cells = [";".join(vocabulary[i % len(vocabulary)] for i in picks) for picks in test]
    test_cells.insert(min(position, len(test_cells)), typo)
    with _dataset_folder() as root:
        make_csv(root, {"train": [("a.jpg", _quoted(cell)) for cell in train_cells]})
        lines, typo_line = ["image,labels"], None
        for index, cell in enumerate(test_cells):
            lines += [""] if blank_lines[index % 5] else []
            lines.append(f"a.jpg,{_quoted(cell)}")
            typo_line = typo_line or (len(lines) if cell == typo else None)
        (root / "test.csv").write_bytes(("\n".join(lines) + "\n").encode())
        before = _snapshot(root)
        outcome = _open(f"csv:{root}", "eval")
        assert isinstance(outcome, MlicError), f"typo {typo!r} read as a class: {getattr(outcome, 'names', None)}"
        message = str(outcome)
        assert message.splitlines() == [message]
        assert f"{root / 'test.csv'}, line {typo_line}: label {typo!r} is not a label of the train split" in message
        assert f"declare every class in {root / 'classes.txt'}" in message
        assert _open(f"csv:{root}", "train").names == vocabulary
        assert _snapshot(root) == before


@SETTINGS
@given(rows=st.lists(st.tuples(st.sampled_from(CSV_PRESENT_IMAGES),
                               st.lists(st.sampled_from(["dog", "cat", "hot dog", "狗"]), max_size=2)),
                     min_size=1, max_size=6),
       opened=st.tuples(st.integers(0, 5), st.sampled_from(["image", "labels"])),
       closed=st.none() | st.tuples(st.integers(1, 5), st.integers(0, 40)))
def test_csv_quote_left_open_is_refused_naming_the_row_it_opened_on(rows, opened, closed):
    """A quote opening a cell that is never closed, or closed rows later, swallows the rows after it: the file is
    refused naming the line the quote opened on, never read in part."""
    lines = [f"{image},{';'.join(labels)}" for image, labels in rows]
    row = opened[0] % len(lines)
    cell_start = 0 if opened[1] == "image" else lines[row].index(",") + 1
    lines[row] = lines[row][:cell_start] + '"' + lines[row][cell_start:]
    if closed is not None and row + closed[0] < len(lines):
        later = row + closed[0]
        position = min(closed[1], len(lines[later]))
        lines[later] = lines[later][:position] + '"' + lines[later][position:]
    with _dataset_folder() as root:
        root.mkdir()
        for image in CSV_PRESENT_IMAGES:
            _jpeg(root / image)
        (root / "train.csv").write_text("\n".join(["image,labels", *lines]) + "\n")
        outcome = _open(f"csv:{root}", "train")
        assert isinstance(outcome, MlicError), f"read {len(outcome)} of {len(lines)} rows"
        message = str(outcome)
        assert message.splitlines() == [message]
        assert f"{root / 'train.csv'}, line {row + 2}: " in message, message


# --------------------------------------------------------------------------------------------------------------- VOC
VOC_XML_STATES = st.sampled_from(["ok", "ok", "ok", "missing", "truncated", "invalid utf-8"])


@st.composite
def voc_folders(draw: st.DrawFn) -> dict:
    custom = draw(st.booleans())
    names = draw(st.lists(LABELS | XML_SAFE_TEXT, min_size=1, max_size=4)) if custom else list(VOC_CLASSES)
    typos = draw(st.lists(XML_SAFE_TEXT | st.sampled_from(["", "  ", "unicorn", "Dog"]), max_size=2))
    objects = st.lists(st.tuples(st.sampled_from(names + typos) if typos else st.sampled_from(names),
                                 st.sampled_from([0, 0, 1])), max_size=3)
    ids = [f"{i:06d}" for i in range(1, draw(st.integers(1, 5)) + 1)]
    return {
        "classes": names if custom else None,
        "images": {i: {"objects": draw(objects), "xml": draw(VOC_XML_STATES),
                       "jpeg": draw(st.sampled_from([True, True, False]))} for i in ids},
        "splits": {split: draw(st.lists(st.sampled_from(ids + ["ghost"]), max_size=5))  # ghost: an id without XML
                   for split in ("trainval", "test")},
        "split_file": draw(st.sampled_from(["plain", "bom", "blank lines", "class column", "crlf", "invalid utf-8"])),
        "bom": draw(st.booleans()),
    }


def _write_voc_split(path: Path, ids: list[str], style: str) -> bool:
    """Writes ImageSets/Main/<split>.txt in ``style``; False where the file must be refused."""
    line_end = "\r\n" if style == "crlf" else "\n"
    lines = [f"{i} -1" if style == "class column" else i for i in ids]
    text = ("\ufeff" if style == "bom" else "") + "".join(
        line + line_end + ("   \n" if style == "blank lines" else "") for line in lines)
    path.write_bytes(text.encode() + (INVALID_UTF8 if style == "invalid utf-8" else b""))
    return style != "invalid utf-8" and bool(ids)


@SETTINGS
@given(folder=voc_folders())
def test_voc_folder_reads_exactly_its_classes_or_is_refused_naming_the_file(folder):
    with _dataset_folder() as root:
        make_voc(root, {}, {})
        main = root / "ImageSets" / "Main"
        declared = folder["classes"] and _write_classes(main / "classes.txt", folder["classes"], folder["bom"])
        names = list(VOC_CLASSES) if folder["classes"] is None else declared
        for image_id, image in folder["images"].items():
            xml = _voc_xml(f"{image_id}.jpg", [(escape(name), hard) for name, hard in image["objects"]]).encode()
            if image["xml"] != "missing":
                (root / "Annotations" / f"{image_id}.xml").write_bytes(
                    xml[:len(xml) // 2] if image["xml"] == "truncated" else
                    xml.replace(b"<folder>", b"<folder>" + INVALID_UTF8) if image["xml"] == "invalid utf-8" else xml)
            if image["jpeg"]:
                _jpeg(root / "JPEGImages" / f"{image_id}.jpg")
        readable = {split: _write_voc_split(main / f"{split}.txt", ids, folder["split_file"])
                    for split, ids in folder["splits"].items()}

        def expect(role: str) -> tuple[list[str], list[str] | None, list[Row]]:
            split = "trainval" if role == "train" else "test"
            blamed = [] if readable[split] else [str(main / f"{split}.txt")]
            blamed += [] if names else [str(main / "classes.txt")]
            rows = []
            for image_id in folder["splits"][split] if readable[split] and names else []:
                image = folder["images"].get(image_id, {"xml": "missing"})
                if image["xml"] == "missing":
                    continue  # skipped and counted in the notes
                if image["xml"] != "ok":
                    blamed.append(str(root / "Annotations" / f"{image_id}.xml"))  # damaged: refused, never dropped
                    continue
                found = [(name.strip(), hard) for name, hard in image["objects"]]
                if any(name not in names for name, _ in found):
                    blamed.append(str(root / "Annotations" / f"{image_id}.xml"))
                positive = frozenset(name for name, hard in found if not hard)
                if image["jpeg"]:
                    rows.append((root / "JPEGImages" / f"{image_id}.jpg", positive,
                                 frozenset(name for name, hard in found if hard) - positive))
            return blamed or ([] if rows else [f"voc:{root}"]), names, rows

        _check_every_role(root, f"voc:{root}", expect)


# -------------------------------------------------------------------------------------------------------------- COCO
COCO_FAULTS = {  # each makes the file inconsistent: the reader must refuse it, naming it
    "category id as text": lambda d: d["categories"][0].update(id=str(d["categories"][0]["id"])),
    "category id as float": lambda d: d["categories"][0].update(id=d["categories"][0]["id"] + 0.5),
    "category id as boolean": lambda d: d["categories"][0].update(id=True),
    "category without name": lambda d: d["categories"][0].pop("name"),
    "category name as number": lambda d: d["categories"][0].update(name=7),
    "category name blank": lambda d: d["categories"][0].update(name=" "),
    "category name with line break": lambda d: d["categories"][0].update(name="dog\ncat"),
    "repeated category id": lambda d: d["categories"].append({"id": d["categories"][0]["id"], "name": "extra"}),
    "repeated category name": lambda d: d["categories"].append({"id": 1000, "name": d["categories"][0]["name"]}),
    "no categories": lambda d: d.update(categories=[]),
    "categories as object": lambda d: d.update(categories={"1": "dog"}),
    "no images key": lambda d: d.pop("images"),
    "images as object": lambda d: d.update(images={str(i["id"]): i for i in d["images"]}),
    "image as text": lambda d: d["images"].append("000000000001.jpg"),
    "repeated image id": lambda d: d["images"].append(dict(d["images"][0])),
    "image without file_name": lambda d: d["images"][0].pop("file_name"),
    "image id as list": lambda d: d["images"][0].update(id=[1]),
    "annotation as number": lambda d: d["annotations"].append(5),
    "annotation of unknown category": lambda d: d["annotations"].append(
        {"id": 999, "image_id": d["images"][0]["id"], "category_id": 12345}),
    "annotation of unknown image": lambda d: d["annotations"].append(
        {"id": 999, "image_id": 12345, "category_id": d["categories"][0]["id"]}),
    "annotation category as text": lambda d: d["annotations"].append(
        {"image_id": d["images"][0]["id"], "category_id": str(d["categories"][0]["id"])}),
    "annotation category as list": lambda d: d["annotations"].append(
        {"id": 3, "image_id": d["images"][0]["id"], "category_id": [1]}),
    "top level as list": lambda d: d.update(wrapped=True),
}
COCO_HARMLESS = {  # the file stays consistent
    "annotations null": lambda d: d.update(annotations=None),
    "no annotations key": lambda d: d.pop("annotations"),
    "extra keys": lambda d: d.update(info={"year": 2017}, licenses=[]),
}


@st.composite
def coco_files(draw: st.DrawFn) -> dict:
    category_ids = draw(st.lists(st.integers(1, 200), min_size=1, max_size=4, unique=True))
    names = draw(st.lists(LABELS, min_size=len(category_ids), max_size=len(category_ids), unique=True))
    image_ids = draw(st.lists(st.integers(1, 10**12), min_size=1, max_size=4, unique=True))
    annotations = draw(st.lists(st.tuples(st.sampled_from(image_ids), st.sampled_from(category_ids)), max_size=6))
    return {
        "data": {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 32, "height": 24} for i in image_ids],
                 "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "iscrowd": 0, "bbox": [0, 0, 4, 4]}
                                 for n, (i, c) in enumerate(annotations)],
                 "categories": [{"id": i, "name": name, "supercategory": "x"} for i, name in zip(category_ids, names)]},
        "fault": draw(st.none() | st.sampled_from(sorted(COCO_FAULTS))),
        "harmless": draw(st.lists(st.sampled_from(sorted(COCO_HARMLESS)), max_size=2, unique=True)),
        "encoding": draw(st.sampled_from(["utf-8", "bom", "ascii escapes", "truncated", "invalid utf-8"])),
        "missing_images": draw(st.sets(st.sampled_from(image_ids))),
    }


@SETTINGS
@given(file=coco_files())
@example(file={"data": {"images": [{"id": 1, "file_name": "000000000001.jpg"}], "annotations": [],
                        "categories": [{"id": 1, "name": "dog"}]},
               "fault": None, "harmless": [], "encoding": "utf-8", "missing_images": set()})
def test_coco_file_reads_exactly_its_categories_or_is_refused_naming_the_file(file):
    data, fault = file["data"], file["fault"]
    consistent = fault is None and file["encoding"] in ("utf-8", "bom", "ascii escapes")
    for harmless in [] if fault else file["harmless"]:  # the faults need the annotations list
        COCO_HARMLESS[harmless](data)
    expected_names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    name_of = {c["id"]: c["name"] for c in data["categories"]}
    annotations = data.get("annotations") or []
    labels_of = {i["id"]: frozenset(name_of[a["category_id"]] for a in annotations if a["image_id"] == i["id"])
                 for i in data["images"]}
    if fault:
        COCO_FAULTS[fault](data)
    if data.pop("wrapped", False):
        data = [data]
    text = json.dumps(data, ensure_ascii=file["encoding"] == "ascii escapes").encode()
    text = {"bom": b"\xef\xbb\xbf" + text, "truncated": text[:len(text) // 2],
            "invalid utf-8": text[:1] + INVALID_UTF8 + text[1:]}.get(file["encoding"], text)
    with _dataset_folder() as root:
        path = make_coco(root) / "annotations" / "instances_train2017.json"
        path.write_bytes(text)
        for image_id in labels_of:
            image = root / "train2017" / f"{image_id:012d}.jpg"
            image.unlink(missing_ok=True)  # make_coco's own images have ids too
            if image_id not in file["missing_images"]:
                _jpeg(image)
        rows = [(root / "train2017" / f"{i:012d}.jpg", labels, frozenset()) for i, labels in labels_of.items()
                if i not in file["missing_images"]]
        blamed = [] if consistent else [str(path)]
        val = root / "val2017"  # make_coco's own, untouched
        val_rows = [(val / "000000000020.jpg", frozenset({"person", "toothbrush"}), frozenset()),
                    (val / "000000000021.jpg", frozenset({"car"}), frozenset())]

        def expect(role: str) -> tuple[list[str], list[str] | None, list[Row]]:
            if role == "eval":
                return [], ["person", "car", "toothbrush"], val_rows
            return blamed or ([] if rows else [f"coco:{root}"]), expected_names, rows

        _check_every_role(root, f"coco:{root}", expect)


# ------------------------------------------------------------------------------------------- any bytes, any format
def _csv_base(root: Path) -> Path:
    return make_csv(root, {"train": [("a.jpg", "dog;cat"), ("b.jpg", "cat")], "test": [("c.jpg", "dog")]},
                    classes=["dog", "cat"])


def _voc_base(root: Path) -> Path:
    return make_voc(root, {"a": [("dog", 0)], "b": [("cat", 1)]}, {"trainval": ["a"], "test": ["b"]},
                    classes=["dog", "cat"])


BASES = {  # a valid folder and the files whose bytes get replaced
    "csv": (_csv_base, ["train.csv", "test.csv", "classes.txt"]),
    "voc": (_voc_base, ["ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt", "ImageSets/Main/classes.txt",
                        "Annotations/a.xml", "Annotations/b.xml"]),
    "coco": (make_coco, ["annotations/instances_train2017.json", "annotations/instances_val2017.json"]),
}


def _names_a_file_may_declare(path: Path) -> set[str]:
    """Every class name the file could define: its lines, the cells of its lines, the strings of its JSON."""
    text = path.read_bytes().decode("utf-8-sig", "replace")
    found = {line.strip() for line in text.splitlines()} | {
        name.strip() for row in csv.reader(io.StringIO(text, newline="")) for cell in row for name in cell.split(";")}
    try:
        found |= {c.get("name") for c in json.loads(text)["categories"] if isinstance(c, dict)}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        pass
    return found


@SETTINGS
@given(fmt=st.sampled_from(sorted(BASES)), which=st.integers(0, 4),
       content=st.binary(max_size=200) | st.text(max_size=120).map(str.encode)
       | st.sampled_from([b"", b"\xef\xbb\xbf", b"image,labels\n", b"image,labels\n\xef\xbb\xbfa.jpg,dog\n",
                          b"<annotation><object><name>dog</name></object></annotation>", b"[]", b"{}", b"null",
                          b'{"images": [], "categories": [{"id": 1, "name": "dog"}]}', b"[" * 5000]))
def test_any_bytes_in_any_dataset_file_give_its_own_classes_or_a_one_line_error(fmt, which, content):
    make, files = BASES[fmt]
    with _dataset_folder() as root:
        make(root)
        target = root / files[which % len(files)]
        target.write_bytes(content)
        before = _snapshot(root)
        for role in ROLES:
            outcome = _open(f"{fmt}:{root}", role)
            if isinstance(outcome, MlicError):
                message = str(outcome)
                assert message.splitlines() == [message] and str(root) in message, message
                continue
            _rows(outcome)
            declaring = {"csv": ["classes.txt"], "voc": ["ImageSets/Main/classes.txt"],
                         "coco": [f"annotations/instances_{outcome.split}.json"]}[fmt]
            assert set(outcome.names) <= set().union(*(_names_a_file_may_declare(root / f) for f in declaring))
        assert _snapshot(root) == before


# ----------------------------------------------------------------------------------- options, checked before work
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e-300, -1e-300])


def _assert_refused_naming(error: MlicError, option: str) -> None:
    message = str(error)
    assert message.splitlines() == [message] and option in message, message


@SETTINGS
@given(threshold=FLOATS, smoothing=FLOATS, max_frames=st.none() | st.integers(-10**6, 10**6))
def test_run_options_are_accepted_in_range_or_refused_naming_the_option(threshold, smoothing, max_frames):
    from mlic_edge.commands.predict import PredictRequest

    for field, value, valid in (("threshold", threshold, 0 <= threshold <= 1),
                                ("smoothing", smoothing, 0 <= smoothing < 1),
                                ("max_frames", max_frames, max_frames is None or max_frames >= 1)):
        try:
            PredictRequest(**{field: value}).check()
        except MlicError as error:
            _assert_refused_naming(error, "--" + field.replace("_", "-"))
            assert not valid, f"--{field} {value} refused: {error}"
        else:
            assert valid, f"--{field} {value} accepted"


def _periodic_stats(every: float) -> None:
    from mlic_edge.runtime.inference.latency import LatencyRecorder, PeriodicStats

    PeriodicStats(LatencyRecorder(), every, print)


def _service(every: float) -> None:
    from mlic_edge.runtime.deployment.systemd import ServiceSpec

    ServiceSpec(run_dir=Path("/srv/run"), out_dir=Path("/srv/out"), executable=Path("/usr/bin/mlic-edge"),
                stats_every=every)


@SETTINGS
@given(every=FLOATS, build=st.sampled_from([_periodic_stats, _service]))
@example(every=math.nan, build=_service)
def test_stats_every_is_a_positive_number_of_seconds_or_refused_naming_the_option(every, build):
    """`run --stats-every` (the pipeline's PeriodicStats) and `service install --stats-every` alike."""
    try:
        build(every)
    except MlicError as error:
        _assert_refused_naming(error, "--stats-every")
        assert not (math.isfinite(every) and every > 0)
    else:
        assert math.isfinite(every) and every > 0


@SETTINGS
@given(value=FLOATS.map(repr) | st.text(max_size=8), precision=st.sampled_from(["fp32", "fp16", "int8", "fp64", ""]),
       option=st.sampled_from([("--tolerance", None), ("--min-same", 1.0), ("--max-diff", None)]))
def test_parity_limits_are_accepted_in_range_or_refused_naming_the_option(value, precision, option):
    from mlic_edge.spec import parse_per_precision

    name, upper = option
    try:
        parsed = parse_per_precision([f"{precision}={value}"], name, "int8=1", upper=upper)
    except MlicError as error:
        _assert_refused_naming(error, name)
    else:
        limit = parsed[precision]
        assert math.isfinite(limit) and 0 <= limit <= (upper if upper is not None else math.inf)


@SETTINGS
@given(threshold=FLOATS, command=st.sampled_from(["evaluate", "parity", "service"]))
def test_threshold_is_checked_before_any_work_by_every_command_that_takes_it(threshold, command):
    """A valid --threshold gets as far as the (absent) run; an invalid one is refused first, naming the option."""
    from mlic_edge.commands.evaluate import EvalRequest, evaluate
    from mlic_edge.commands.parity import ParityRequest, parity
    from mlic_edge.runtime.deployment.systemd import ServiceSpec

    absent = RunDir(Path("/nonexistent/mlic-edge-run"))
    valid = math.isfinite(threshold) and 0 <= threshold <= 1
    try:
        if command == "evaluate":
            evaluate(absent, EvalRequest(threshold=threshold))
        elif command == "parity":
            parity(absent, ParityRequest(threshold=threshold))
        else:
            ServiceSpec(run_dir=absent.path, out_dir=Path("/srv/out"), threshold=threshold,
                        executable=Path("/usr/bin/mlic-edge"))
    except MlicError as error:
        if valid:
            assert "--threshold" not in str(error) and "does not exist" in str(error), error
        else:
            _assert_refused_naming(error, "--threshold")
    else:
        assert valid and command == "service"
