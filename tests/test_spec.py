"""The run contract: one definition of each shared fact, run.json and the ONNX metadata read and written by one pair
of functions each, the defaults of older runs applied in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mlic_edge.errors import BuildError, MlicError
from mlic_edge.runtime.inference.backends.registry import BACKENDS
from mlic_edge.spec import (DEFAULT_RESIZE, FLOAT_INPUT, OFFICIAL_RESIZE, PRECISIONS, UINT8_INPUT, DatasetSection,
                            ModelSpec, RunSpec, rebuild_command, require_choice)

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = {"model": "baseline", "backbone": "resnet10t", "labels": ["cat", "dog"], "img_size": 64,
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "dataset": {"spec": "data/synth"},
           "history": [{"epoch": 1}]}


def test_an_old_run_json_gets_the_defaults_and_keeps_everything_else():
    spec = RunSpec.from_run_json(OLD_RUN)
    assert (spec.resize, spec.input_format) == (DEFAULT_RESIZE, FLOAT_INPUT)
    assert spec.dataset == DatasetSection(spec="data/synth") and spec.extra == {"history": [{"epoch": 1}]}
    again = RunSpec.from_run_json(spec.to_run_json())
    assert again == spec and again.extra == spec.extra
    assert ModelSpec.from_run(OLD_RUN) == ModelSpec(["cat", "dog"], 64, [0.5] * 3, [0.25] * 3)


def test_onnx_metadata_round_trip_carries_the_contract():
    spec = RunSpec.from_run_json({**OLD_RUN, "resize": "letterbox", "input_format": UINT8_INPUT})
    metadata = spec.onnx_metadata("int8", "0.1.0")
    assert metadata["precision"] == "int8" and "letterbox" in metadata["input_layout"]
    assert all(isinstance(value, str) for value in metadata.values())
    back = RunSpec.from_onnx_metadata(metadata)
    assert ModelSpec.from_run(back) == ModelSpec.from_run(spec) and back.model == "baseline"


def test_choices_and_rebuild_hint_are_one_line_each():
    assert require_choice("precision", "int8", PRECISIONS) == "int8"
    with pytest.raises(BuildError) as caught:
        require_choice("precision", "int4", PRECISIONS, BuildError)
    assert str(caught.value) == "unknown precision 'int4' (choose one of fp32, fp16, int8)"
    with pytest.raises(MlicError):
        require_choice("resize", "stretch", ("warp",))
    assert rebuild_command("runs/x", "fp16", "tensorrt") == "mlic-edge build --run runs/x --precision fp16 --backend tensorrt"


def test_a_missing_run_offers_the_quick_recipe_and_importing_a_released_checkpoint():
    from mlic_edge.spec import train_first_hint

    assert train_first_hint("runs/msrn") == (
        "train first: mlic-edge train --model msrn --data DATA (add --recipe quick for a fast start), or import a "
        "released checkpoint of a paper: mlic-edge import ml-gcn|msrn|q2l FILE --out runs/msrn")
    assert "mlic-edge train --model MODEL --data DATA --out elsewhere/run (" in train_first_hint("elsewhere/run")


STAGE_FOLDERS = ("mlic_edge", "train", "export", "calibration", "runtime")
DEFAULTED = {"threshold": (0.5,), "backend": ("auto",), "device": ("auto",), "precision": ("fp32",)}
"""Defaults declared once in mlic_edge/spec.py (DEFAULT_THRESHOLD, DEFAULT_BACKEND, DEFAULT_DEVICE, DEFAULT_PRECISION)."""


def _declared_defaults(node: ast.AST) -> list[tuple[str, object]]:
    """(name, literal) of each default declared at ``node``: a field (``threshold: float = 0.5``), a parameter's
    default, or a Typer option's first argument (named after the option, e.g. "backend" for --backend)."""
    def literal(value: ast.AST | None) -> object:
        return value.value if isinstance(value, ast.Constant) else None

    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [(node.target.id, literal(node.value))]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        arguments = node.args
        positional = arguments.posonlyargs + arguments.args
        pairs = list(zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults))
        pairs += [(arg, default) for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults)
                  if default is not None]
        return [(arg.arg, literal(default)) for arg, default in pairs]
    if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("typer.Option") and len(node.args) > 1:
        flag = literal(node.args[1])
        return [(flag.lstrip("-"), literal(node.args[0]))] if isinstance(flag, str) else []
    return []


def _redeclares_a_default(node: ast.AST) -> bool:
    return any(value in values and (name == key or name.endswith(f"_{key}"))
               for name, value in _declared_defaults(node) for key, values in DEFAULTED.items())


REPEATED_FACTS = {
    "a default of spec.py's DEFAULT_*": _redeclares_a_default,
    "a precision list": lambda node: isinstance(node, ast.Tuple) and [getattr(e, "value", None) for e in node.elts]
    == ["fp32", "fp16", "int8"],
    "a resize default or list": lambda node: isinstance(node, ast.Constant) and node.value in ("warp",
                                                                                               OFFICIAL_RESIZE),
    "an input format": lambda node: isinstance(node, ast.Constant) and node.value in ("float-nchw-rgb",
                                                                                      "uint8-nhwc-bgr"),
    "a rebuild hint": lambda node: isinstance(node, ast.Constant) and isinstance(node.value, str)
    and "mlic-edge build --run" in node.value,
    "a train-first hint": lambda node: isinstance(node, ast.Constant) and isinstance(node.value, str)
    and "train first" in node.value,
    # the backend registry (runtime/inference/backends/registry.py) makes every list of backend names
    "a backend name list": lambda node: isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1
    and all(getattr(element, "value", None) in BACKENDS for element in node.elts),
}


def test_a_redeclared_default_is_found_in_each_form():
    for source in ("threshold: float = 0.5", "def f(run, precision='fp32', *, device='auto'): pass",
                   "BackendOpt = typer.Option('auto', '--backend')", "min_threshold: float = 0.5"):
        assert any(_redeclares_a_default(node) for node in ast.walk(ast.parse(source))), source
    for source in ("threshold: float = DEFAULT_THRESHOLD", "def f(device='cpu'): pass", "top_k: int = 5",
                   "info = BackendInfo(precision='fp32')"):
        assert not any(_redeclares_a_default(node) for node in ast.walk(ast.parse(source))), source


def test_each_shared_fact_is_written_once():
    """Precisions, resize modes, input formats, the rebuild and train-first hints, the default threshold, backend,
    device and precision live in mlic_edge/spec.py only; lists of backend names come from the backend registry,
    never written out."""
    found = []
    for folder in STAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "mlic_edge" / "spec.py":
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                          and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                for fact, matches in REPEATED_FACTS.items():
                    if id(node) not in docstrings and matches(node):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {fact}")
    allowed = {"mlic_edge/data/images.py"}  # resize_image dispatches on the mode's name
    assert [entry for entry in found if entry.split(":")[0] not in allowed] == []


# run.json read by key outside mlic_edge/spec.py: a subscript or .get/.pop with a text key on run.json's raw content
# (RunDir.read(), read_json/json.loads of a run.json, RunChange.written, a section's extra or a RunSpec section
# attribute read as a dict), directly or through a name bound to it in the same file.
SECTION_ATTRIBUTES = {"dataset", "recipe", "train", "export", "reference", "qat", "imported", "label_graph", "extra"}


def _raw_run_json(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.BoolOp):
        return any(_raw_run_json(value, names) for value in node.values)
    if isinstance(node, ast.Attribute):
        owner = ast.unparse(node.value)
        return node.attr == "written" or (node.attr in SECTION_ATTRIBUTES and "spec" in owner.lower()
                                          or node.attr == "extra" and "section" in owner.lower())
    if isinstance(node, ast.Call):
        function, text = ast.unparse(node.func), ast.unparse(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "read" and not node.args:
            return "run" in ast.unparse(node.func.value).lower()
        return function.split(".")[-1] in ("read_json", "loads") and ("run_json" in text or "run.json" in text)
    return False


def string_key_reads(source: str) -> list[int]:
    """The lines of ``source`` that read run.json's raw content by a text key."""
    tree = ast.parse(source)
    names: set[str] = set()
    for _ in range(2):  # a name bound to another such name
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _raw_run_json(node.value, names):
                names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            read = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop") \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            read = node.func.value
        else:
            continue
        if _raw_run_json(read, names):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_string_key_check_finds_each_kind_of_read():
    assert string_key_reads("meta = run.read()\nx = meta['train']\ny = meta.get('recipe')") == [2, 3]
    assert string_key_reads("a = (run.spec().dataset or {}).get('spec')\nb = read_json(run.run_json)['labels']\n"
                            "c = RunDir(out).read()['train']\nd = change.written['qat']\ne = spec.extra['x']") \
        == [1, 2, 3, 4, 5]
    assert string_key_reads("frame = capture.read()\nx = meta.get('source')\ny = spec.dataset.spec\n"
                            "z = report['reference']") == []


def test_run_json_is_read_through_runspec_only():
    """Every stage reads run.json typed (RunSpec and its sections, mlic_edge/spec.py), never by a text key."""
    found = [f"{path.relative_to(ROOT)}:{line}" for folder in STAGE_FOLDERS
             for path in sorted((ROOT / folder).rglob("*.py")) if path != ROOT / "mlic_edge" / "spec.py"
             for line in string_key_reads(path.read_text())]
    assert found == []
