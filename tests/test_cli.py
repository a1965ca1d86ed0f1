"""The command line as a user meets it: outputs, JSON for machines, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest

from cli_helpers import assert_one_line_error, exit_before_torch, invoke


def test_eval_json_has_the_metrics_as_fractions(capsys, trained_run, tmp_path):
    result = invoke(capsys, "eval", "--run", trained_run, "--json", "--save-scores", tmp_path / "s.npz")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["backend"] == "torch" and report["groups"] is not None
    import numpy as np

    with np.load(tmp_path / "s.npz") as saved:
        assert set(saved.files) == {"scores", "targets", "labels"}
        assert saved["scores"].shape == saved["targets"].shape


def test_run_over_a_folder_writes_one_json_line_per_image(capsys, trained_run, synth_data, tmp_path):
    out = tmp_path / "preds.jsonl"
    result = invoke(capsys, "run", str(synth_data / "JPEGImages"), "--run", trained_run, "--out", out,
                    "--max-frames", 7, "--top-k", 2, "--batch-size", 4, "--threshold", 0.3)
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 7
    assert set(lines[0]) == {"source", "index", "timestamp", "labels", "top_k", "timing"} and len(lines[0]["top_k"]) == 2
    assert set(lines[0]["timing"]) == {"decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms"}
    assert all(item["score"] >= 0.3 for line in lines for item in line["labels"])
    assert "inference" in result.err and "onnxruntime" in result.err  # latency table names what ran


def test_run_over_a_video_to_stdout_and_annotated_video(capsys, trained_run, synth_data, tmp_path):
    result = invoke(capsys, "run", str(synth_data / "video.mp4"), "-r", trained_run, "--save-video",
                    tmp_path / "labelled.mp4", "--backend", "onnxruntime")
    assert result.code == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines()]
    assert len(records) == 12 and records[5]["index"] == 5 and records[5]["timestamp"] > 0
    assert (tmp_path / "labelled.mp4").stat().st_size > 0


def test_parity_json_and_report_files(capsys, run_copy):
    result = invoke(capsys, "parity", "--run", run_copy, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert 0.5 < report["reference"]["mAP"] <= 1.0
    (only,) = report["results"]  # only the fp32 ONNX exists in this run
    assert only["backend"] == "onnxruntime" and only["precision"] == "fp32" and only["passed"]
    assert abs(only["delta_mAP"]) < 1e-6 and only["labelset_agreement"] == 1.0 and only["max_abs_diff"] < 1e-4
    assert json.loads((run_copy / "reports" / "parity.json").read_text())["results"][0]["passed"]
    assert "| onnxruntime | fp32 |" in (run_copy / "reports" / "parity.md").read_text()


def test_parity_fails_with_exit_3_past_tolerance(capsys, run_copy):
    # fp32 ONNX Runtime matches PyTorch to ~1e-7: a zero score limit is past it (negative limits are refused now)
    result = invoke(capsys, "parity", "--run", run_copy, "--max-diff", "fp32=0")
    assert result.code == 3
    assert_one_line_error(result, "onnxruntime fp32: max |Δscore|", "exceeds 0e+00")
    assert not json.loads((run_copy / "reports" / "parity.json").read_text())["passed"]


@pytest.mark.parametrize("value", ["int9=1", "fp16", "fp16=lots"])
def test_parity_refuses_a_malformed_tolerance(capsys, run_copy, value):
    assert_one_line_error(invoke(capsys, "parity", "--run", run_copy, "--tolerance", value), "PRECISION=POINTS")


def test_parity_names_a_missing_precision_it_was_asked_for(capsys, run_copy):
    result = invoke(capsys, "parity", "--run", run_copy, "--precision", "int8", "--backend", "onnxruntime")
    assert_one_line_error(result, "model.int8.onnx is missing", "mlic-edge build")


def test_data_stats_json(capsys, synth_data, tmp_path):
    result = invoke(capsys, "data", "stats", str(synth_data), "--json", "--heatmap", tmp_path / "h.png")
    assert result.code == 0, result.err
    stats = json.loads(result.out)
    assert stats["images"] > 0 and len(stats["labels"]) == 4
    assert set(stats["class_counts"]) == set(stats["labels"])
    assert (tmp_path / "h.png").stat().st_size > 0


def test_data_synth_command(capsys, tmp_path):
    result = invoke(capsys, "data", "synth", tmp_path / "d", "--classes", 3, "--images", 16, "--size", 48, "--json")
    assert result.code == 0, result.err
    json.loads(result.out)
    assert len((tmp_path / "d" / "ImageSets" / "Main" / "classes.txt").read_text().split()) == 3


@pytest.mark.parametrize("args, fragments", [
    (["train", "--data", "no/such/path", "--epochs", "1"], ["no/such/path"]),
    (["train", "--model", "nosuchmodel", "--data", "x"], ["unknown model"]),
    (["eval", "--run", "no/such/run"], ["does not exist", "train first"]),
    (["export", "--model", "ghost"], ["runs/ghost"]),
    (["parity", "--run", "no/such/run"], ["does not exist"]),
    (["run", "missing.jpg", "--run", "no/such/run"], ["does not exist"]),
    (["data", "stats", "no/such/dataset"], ["no/such/dataset"]),
])
def test_bad_input_is_one_line_and_non_zero(capsys, args, fragments):
    assert_one_line_error(invoke(capsys, *args), *fragments)


def test_data_synth_options_default_to_synth_configs():
    """The one place the CLI repeats a request's defaults (docs/design.md, "Commands as a library"): kept equal."""
    import typer

    from mlic_edge.cli.app import app
    from mlic_edge.data.synth import SynthConfig

    synth = typer.main.get_command(app).commands["data"].commands["synth"]
    defaults = {param.name: param.default for param in synth.params if param.name in ("classes", "images", "size",
                                                                                     "seed")}
    assert defaults == {name: getattr(SynthConfig, name) for name in defaults} and len(defaults) == 4


def test_empty_folder_and_empty_split(capsys, tmp_path, trained_run, synth_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(invoke(capsys, "run", str(empty), "--run", trained_run), "holds no images")
    assert_one_line_error(invoke(capsys, "data", "stats", str(empty)))
    (synth_data / "ImageSets" / "Main" / "nothing.txt").write_text("")
    try:
        assert_one_line_error(invoke(capsys, "data", "stats", str(synth_data), "--split", "nothing"), "nothing")
    finally:
        (synth_data / "ImageSets" / "Main" / "nothing.txt").unlink()


def test_run_dir_lacking_the_onnx_says_to_export(capsys, run_copy, synth_data):
    (run_copy / "model.onnx").unlink()
    images = str(synth_data / "JPEGImages")
    assert_one_line_error(invoke(capsys, "run", images, "--run", run_copy, "--backend", "onnxruntime"),
                          "model.onnx is missing", "mlic-edge export")


def test_unexpected_errors_are_still_one_line(capsys, monkeypatch, trained_run, synth_data):
    import mlic_edge.runtime.inference.pipeline as pipeline

    def explode(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(pipeline, "run_pipeline", explode)
    result = invoke(capsys, "run", str(synth_data / "JPEGImages"), "--run", trained_run)
    assert_one_line_error(result, "internal error: ZeroDivisionError: boom", "--debug")


@pytest.mark.parametrize("command", [["run", "{images}", "--max-frames", "3"], ["parity"]])
def test_run_and_parity_work_without_torch(run_copy, synth_data, command):
    """The edge promise: an install without PyTorch runs models and checks parity."""
    import subprocess
    import sys

    args = [part.format(images=synth_data / "JPEGImages") for part in command] + ["--run", str(run_copy)]
    code = ("import sys\nfor name in ('torch', 'timm', 'torchvision'):\n    sys.modules[name] = None\n"
            f"sys.argv = ['mlic-edge', *{args!r}]\n"
            "from mlic_edge.cli.app import main\nmain()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime" in result.stdout + result.stderr


def test_torch_backend_without_torch_says_how_to_get_it(trained_run):
    import subprocess
    import sys

    code = ("import sys\nsys.modules['torch'] = None\n"
            f"sys.argv = ['mlic-edge', 'parity', '--run', {str(trained_run)!r}, '--backend', 'torch']\n"
            "from mlic_edge.cli.app import main\nmain()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "pip install '.[train]'" in result.stderr


@pytest.mark.parametrize("extra, fragments", [
    (["--loss", "asl", "--loss-kwargs", "gamma_neg=-1"], ["gamma_neg", "out of range"]),
    (["--loss", "asl", "--loss-kwargs", "foo=1"], ["unknown option foo", "gamma_neg=4"]),
    (["--loss", "nope"], ["unknown loss 'nope'", "dab"]),
    (["--model", "q2l", "--model-kwargs", "nosuch=1"], ["unknown option nosuch for model 'q2l'", "hidden_dim"]),
    (["--model", "mlgcn", "--model-kwargs", "tau=7"], ["tau must be in (0, 1]"]),
    (["--model", "mlgcn", "--backbone", "resnet5O"], ["unknown timm backbone", "resnet50"]),
    (["--model", "semdep", "--stages", "sequential", "--epochs", "2"], ["needs at least 4 epochs"]),
    (["--model", "baseline", "--stages", "concurrent"], ["not trained in stages"]),
    (["--model", "semdep", "--stages", "yes"], ["--stages must be one of none, sequential, concurrent"]),
])
def test_bad_model_and_loss_options_are_one_line(capsys, tmp_path, synth_data, extra, fragments):
    args = ["train", "--data", str(synth_data), "--backbone", "resnet10t", "--epochs", "4", "--img-size", "32",
            "--workers", "0", "--no-pretrained", "--out", str(tmp_path / "run")]
    assert_one_line_error(invoke(capsys, *args, *extra), *fragments)


def test_label_vectors_missing_a_class_names_it(capsys, tmp_path, synth_data):
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("circle 0.1 0.2 0.3\n")
    result = invoke(capsys, "train", "--model", "mlgcn", "--data", str(synth_data), "--label-vectors", vectors,
                    "--epochs", "1", "--no-pretrained", "--out", tmp_path / "run")
    assert_one_line_error(result, "has no vector for 3 of 4 classes")


class ShellOnUnpickle:
    """Unpickled, runs a shell command: what any code in a pickle could do instead."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class VectorTable(dict):
    """A {name: vector} dict of a class of its own: unpickling it imports this module."""


def _train_graph_model(capsys, synth_data, vectors, out, *extra):
    return invoke(capsys, "train", "--model", "mlgcn", "--data", synth_data, "--label-vectors", vectors, "--backbone",
                  "resnet10t", "--epochs", "1", "--img-size", "32", "--workers", "0", "--no-pretrained", "--out", out,
                  *extra)


def test_a_label_vectors_pickle_runs_no_code(capsys, tmp_path, synth_data):
    marker = tmp_path / "marker"
    vectors = tmp_path / "vectors.pkl"
    vectors.write_bytes(pickle.dumps({"circle": ShellOnUnpickle(f"touch {marker}")}))
    result = _train_graph_model(capsys, synth_data, vectors, tmp_path / "run")
    assert not marker.exists(), "unpickling --label-vectors ran the file's code"
    assert_one_line_error(result, str(vectors), f"{os.system.__module__}.system", "--trust-pickle")


def test_trust_pickle_reads_label_vectors_of_a_custom_class(capsys, tmp_path, synth_data):
    from mlic_edge.data.synth import class_names

    vectors = tmp_path / "vectors.pkl"
    vectors.write_bytes(pickle.dumps(VectorTable({name: [float(row), 1.0, 2.0]
                                                  for row, name in enumerate(class_names(4))})))
    refused = _train_graph_model(capsys, synth_data, vectors, tmp_path / "refused")
    assert_one_line_error(refused, str(vectors), f"{VectorTable.__module__}.VectorTable", "--trust-pickle")
    trusted = _train_graph_model(capsys, synth_data, vectors, tmp_path / "run", "--trust-pickle")
    assert trusted.code == 0, trusted.err
    graph = json.loads((tmp_path / "run" / "run.json").read_text())["label_graph"]
    assert graph["vectors_source"] == f"file {vectors} (3-d)"


def test_models_json_lists_the_zoo(capsys):
    result = invoke(capsys, "models", "--json", "--no-flops", "--classes", "20")
    assert result.code == 0, result.err
    rows = {row["name"]: row for row in json.loads(result.out)}
    assert set(rows) == {"baseline", "mlgcn", "mlgat", "semdep", "q2l", "msrn"}
    assert rows["q2l"]["default_backbone"] == "resnest101e" and rows["q2l"]["options"]["batchformer"] is True
    assert rows["semdep"]["options"]["alpha_init"] == 0.48
    assert rows["q2l"]["params_train_M"] > rows["q2l"]["params_inference_M"]  # BatchFormerV2 is train-only


def test_parity_of_a_precision_not_built_says_how_to_build_it(capsys, run_copy):
    result = invoke(capsys, "parity", "--run", run_copy, "--precision", "int8")
    assert_one_line_error(result, "no ONNX or engine for int8", "mlic-edge build", "--precision int8")


def test_one_name_one_meaning_for_batch_options(capsys):
    """--batch is images per inference (run); the engine's range is --batch-range, bench's sweep --batches."""
    for command, option in (("build", "--batch-range"), ("bench", "--batches"), ("run", "--batch")):
        result = invoke(capsys, command, "--help")
        assert option in result.out, (command, option)
    result = invoke(capsys, "build", "--model", "absent", "--batch-range", "8,4,1", "--backend", "onnxruntime")
    assert_one_line_error(result, "MIN,OPT,MAX")


def test_parity_with_a_damaged_model_onnx_fails_naming_it(capsys, run_copy):
    """A model.onnx that cannot be loaded is refused (it is the model to check), never skipped into a pass."""
    (run_copy / "model.onnx").write_bytes(b"not an onnx file")
    reports = {path.name: path.read_bytes() for path in (run_copy / "reports").iterdir()}
    result = invoke(capsys, "parity", "--run", run_copy, "--json")
    assert_one_line_error(result, "model.onnx cannot be read as ONNX", f"mlic-edge export --run {run_copy}")
    assert result.out == "" and {path.name: path.read_bytes() for path in (run_copy / "reports").iterdir()} == reports


def test_parity_with_nothing_to_compare_fails(capsys, run_copy, monkeypatch):
    """No backend can run here (say, only an engine and no TensorRT): parity must not pass."""
    from mlic_edge.errors import BackendError
    from mlic_edge.runtime.inference import backends

    def cannot_run(name, run, precision, *args, **kwargs):
        raise BackendError(f"{name} is not installed", hint="install it")

    monkeypatch.setattr(backends, "create_backend", cannot_run)
    result = invoke(capsys, "parity", "--run", run_copy, "--json")
    assert result.code == 3 and "nothing to compare" in result.err
    assert json.loads(result.out)["passed"] is False


@pytest.mark.parametrize("option, value, unit", [("--tolerance", "int8=-1", "POINTS"),
                                                 ("--tolerance", "int8=nan", "POINTS"),
                                                 ("--min-same", "int8=1.5", "FRACTION"),
                                                 ("--max-diff", "fp64=0.1", "VALUE")])
def test_parity_limits_are_validated_before_any_work(capsys, run_copy, option, value, unit):
    result = invoke(capsys, "parity", "--run", run_copy, option, value)
    assert_one_line_error(result, f"{option} '{value}' is not PRECISION={unit}")


@pytest.mark.parametrize("option, value, says", [("--max-frames", "0", "--max-frames 0"),
                                                 ("--stats-every", "0", "--stats-every 0.0"),
                                                 ("--threshold", "1.5", "--threshold 1.5")])
def test_run_options_are_validated_before_any_work(capsys, run_copy, option, value, says):
    result = invoke(capsys, "run", str(run_copy / "missing-source.mp4"), "--run", run_copy, option, value)
    assert_one_line_error(result, says)


def test_train_argument_errors_come_before_pytorch_is_imported(tmp_path):
    """A missing dataset path is reported at once, not after PyTorch's seconds of import."""
    printed, err = exit_before_torch("train", "--data", tmp_path / "absent")
    assert printed == ["exit", "2", "False"], printed + [err]
    assert "dataset path" in err and "does not exist" in err


def test_the_zoo_files_are_named_as_the_models_they_register():
    from mlic_edge.commands.train import zoo_file_names
    from mlic_edge.models import list_models

    assert zoo_file_names() == {entry.name for entry in list_models()}


def test_results_go_to_stdout_progress_and_diagnostics_to_stderr(capsys, run_copy):
    """`mlic-edge parity … > parity.txt` keeps the table; a log (stderr not a terminal) still shows progress lines."""
    result = invoke(capsys, "parity", "--run", run_copy)
    assert result.code == 0, result.err
    assert "PASS" in result.out and "onnxruntime" in result.out
    assert "PASS" not in result.err
    assert re.search(r"^parity onnxruntime fp32: (\d+)/\1\b", result.err, re.MULTILINE), result.err
