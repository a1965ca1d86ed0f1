"""Issue 26, families 5 and 8: a damaged file of the run is refused in one line naming the file (and the field) with
a fix that works, never as an internal error; and every option is refused before any work or file."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, invoke

MISSING = object()  # the field is left out of run.json


def assert_named(result, *fragments: str) -> None:
    """One line naming ``fragments``; neither an internal error nor advice that cannot fix it."""
    assert_one_line_error(result, *fragments)
    error = result.err[result.err.index("error:"):].replace("\n", " ")
    assert all(fragment in error for fragment in fragments), result.err
    assert "internal error" not in result.err and "export again" not in result.err, result.err


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def shared_run(trained_run, tmp_path_factory) -> Path:
    """One copy for the run.json cases: each is refused before anything is written, and run.json is restored."""
    target = tmp_path_factory.mktemp("named-errors") / "run"
    shutil.copytree(trained_run, target)
    return target


@pytest.fixture
def damage_run_json(shared_run):
    original = (shared_run / "run.json").read_bytes()

    def damage(name: str, value: object) -> Path:
        data = json.loads(original)
        if value is MISSING:
            data.pop(name, None)
        else:
            data[name] = value
        (shared_run / "run.json").write_text(json.dumps(data))
        return shared_run

    yield damage
    (shared_run / "run.json").write_bytes(original)


@pytest.mark.parametrize("name, value", [
    ("labels", MISSING), ("labels", "circle"), ("labels", [1, 2, 3, 4]), ("labels", []),
    ("labels", ["a", "a", "b", "c"]),
    ("img_size", MISSING), ("img_size", "abc"), ("img_size", 0), ("img_size", 64.5), ("img_size", True),
    ("mean", MISSING), ("mean", "0.5"), ("mean", [0.5]), ("mean", [0.5, "x", 0.5]),
    ("std", MISSING), ("std", None), ("std", [0.2, 0.0, 0.2]),
    ("resize", "sideways"), ("resize", 3), ("input_format", "jpeg"),
    ("model", 5), ("backbone", ["resnet10t"]),
    ("dataset", "voc:data"), ("dataset", {"spec": 5}), ("recipe", "fast"), ("qat", 7),
])
def test_a_damaged_run_json_field_is_named_with_a_fix(capsys, damage_run_json, synth_data, name, value):
    run = damage_run_json(name, value)
    before = files_of(run)
    for command in (["parity"], ["run", str(synth_data / "JPEGImages")], ["build", "-p", "fp16", "-b", "onnxruntime"]):
        result = invoke(capsys, *command, "--run", run)
        assert_named(result, f"{run / 'run.json'}", f"'{name}'", f"correct '{name}'", "mlic-edge train")
        assert files_of(run) == before, command


def test_a_spec_from_a_damaged_mapping_names_run_json_and_the_field():
    from mlic_edge.errors import RunDirError
    from mlic_edge.spec import ModelSpec

    with pytest.raises(RunDirError, match=r"run.json field 'img_size' is \"abc\", not a positive whole number"):
        ModelSpec.from_run({"labels": ["a"], "img_size": "abc", "mean": [0.5] * 3, "std": [0.2] * 3})


def _rewrite_checkpoint(path: Path, change) -> None:
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_a_checkpoint_without_its_config_is_named(capsys, run_copy):
    _rewrite_checkpoint(run_copy / "checkpoint.pt", lambda payload: payload.pop("config"))
    for command in ("eval", "export"):
        result = invoke(capsys, command, "--run", run_copy)
        assert_named(result, f"{run_copy / 'checkpoint.pt'}", "config", "mlic-edge train")


def test_a_checkpoint_with_a_wrong_shape_tensor_names_the_tensor(capsys, run_copy):
    def widen(payload):
        name = next(key for key, tensor in payload["state_dict"].items() if tensor.ndim == 2)
        payload["state_dict"][name] = payload["state_dict"][name][:, :3].clone()
        widen.name = name

    _rewrite_checkpoint(run_copy / "checkpoint.pt", widen)
    result = invoke(capsys, "eval", "--run", run_copy)
    assert_named(result, f"{run_copy / 'checkpoint.pt'}", widen.name, "mlic-edge train")


def test_a_corrupt_checkpoint_is_not_answered_with_export_again(capsys, run_copy):
    checkpoint = run_copy / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:4096])
    for command in (["parity"], ["build", "-p", "fp16", "-b", "onnxruntime"], ["export"]):
        result = invoke(capsys, *command, "--run", run_copy)
        assert_named(result, str(checkpoint), "mlic-edge train")


def test_resume_from_a_last_pt_without_training_state_is_named(capsys, run_copy, synth_data):
    shutil.copyfile(run_copy / "checkpoint.pt", run_copy / "last.pt")  # weights and config, no optimizer or epoch
    before = files_of(run_copy)
    result = invoke(capsys, "train", "--data", f"voc:{synth_data}", "--out", run_copy, "--epochs", "7", "--resume",
                    "--workers", "0")
    assert_named(result, f"{run_copy / 'last.pt'}", "training state", "without --resume")
    assert files_of(run_copy) == before


def test_an_empty_model_onnx_is_blamed_on_itself_not_on_the_graphs_made_from_it(capsys, run_copy, synth_data):
    assert invoke(capsys, "build", "--run", run_copy, "-p", "fp16", "-b", "onnxruntime", "--no-evaluate").code == 0
    (run_copy / "model.onnx").write_bytes(b"")
    images = str(synth_data / "JPEGImages")
    result = invoke(capsys, "run", images, "--run", run_copy, "-p", "fp16", "--max-frames", "2")
    assert_named(result, "model.onnx", f"mlic-edge export --run {run_copy}")
    assert "model.fp16.onnx" not in result.err
    run_json = json.loads((run_copy / "run.json").read_text())
    run_json.pop("onnx_sha256")  # a run from before the graph hashes were recorded
    (run_copy / "run.json").write_text(json.dumps(run_json))
    for command in (["run", images, "-p", "fp16", "--max-frames", "2"], ["build", "-p", "fp16", "-b", "onnxruntime"]):
        result = invoke(capsys, *command, "--run", run_copy)
        assert_named(result, f"{run_copy / 'model.onnx'} is empty", f"mlic-edge export --run {run_copy}")
        assert "model.fp16.onnx" not in result.err and "inputs" not in result.err


# ------------------------------------------------------------------------------------- options, before any work
@pytest.mark.parametrize("option, value", [("--warmup-epochs", "-1"), ("--weight-decay", "nan"),
                                           ("--weight-decay", "-0.1"), ("--grad-clip", "inf")])
def test_train_options_are_refused_before_any_file(capsys, tmp_path, synth_data, option, value):
    out = tmp_path / "run"
    result = invoke(capsys, "train", "--data", f"voc:{synth_data}", "--backbone", "resnet10t", "--epochs", "1",
                    "--img-size", "32", "--workers", "0", "--out", out, option, value)
    assert_named(result, option)
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--max-reconnects", "-1"), ("--width", "0"), ("--height", "-5"),
                                           ("--fps", "0"), ("--fps", "nan")])
def test_run_options_are_refused_before_any_work(capsys, run_copy, tmp_path, option, value):
    out = tmp_path / "preds.jsonl"
    result = invoke(capsys, "run", str(run_copy / "missing-source.mp4"), "--run", run_copy, "--out", out, option,
                    value)
    assert_named(result, option)
    assert not out.exists()


@pytest.fixture
def null_device(tmp_path) -> Path:
    """A character device like /dev/null. As root, a refusal that came too late would replace the real one with a
    regular file (seen: --stats-json renamed its JSON onto it), so root gets a private node."""
    import os
    import stat

    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        return Path("/dev/null")  # not root: /dev cannot be written
    return node


@pytest.mark.parametrize("option", ["--out", "--csv", "--stats-json"])
def test_run_refuses_an_output_that_is_no_regular_file_before_any_work(capsys, trained_run, synth_data,
                                                                        null_device, option):
    result = invoke(capsys, "run", str(synth_data / "JPEGImages"), "--run", trained_run, option, null_device)
    assert_named(result, str(null_device), "not a regular file")
    assert "record(s) already in it" not in result.err and "frames in" not in result.err
    assert null_device.is_char_device()


@pytest.mark.parametrize("value", ["0", "-2"])
def test_parity_batch_size_is_refused_before_any_work(capsys, run_copy, value):
    before = files_of(run_copy)
    result = invoke(capsys, "parity", "--run", run_copy, "--batch-size", value)
    assert_named(result, f"--batch-size {value}")
    assert files_of(run_copy) == before


@pytest.fixture
def no_evaluation(monkeypatch):
    import mlic_edge.train.evaluate as evaluation

    def evaluated(*args, **kwargs):
        raise AssertionError("the evaluation ran before the options were checked")

    monkeypatch.setattr(evaluation, "predict_scores", evaluated)


@pytest.mark.parametrize("args, fragments", [
    (["--ap", "nope"], ["'nope'", "standard, voc07"]),
    (["--batch-size", "0"], ["--batch-size 0"]),
])
def test_eval_options_are_refused_before_the_evaluation(capsys, trained_run, no_evaluation, args, fragments):
    assert_named(invoke(capsys, "eval", "--run", trained_run, *args), *fragments)


def test_eval_save_scores_onto_a_folder_is_refused_before_the_evaluation(capsys, trained_run, no_evaluation,
                                                                         tmp_path):
    result = invoke(capsys, "eval", "--run", trained_run, "--save-scores", tmp_path)
    assert_named(result, str(tmp_path), "folder")


def test_export_triton_on_a_full_disk_is_one_line_and_leaves_nothing(capsys, run_copy, tmp_path, monkeypatch):
    import mlic_edge.runtime.deployment.serving_configs as serving

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serving.shutil, "copyfile", full)
    repository = tmp_path / "repository"
    repository.mkdir()
    result = invoke(capsys, "export", "triton", repository, "--run", run_copy)
    assert_named(result, str(repository), "No space left on device")
    assert list(repository.iterdir()) == []


@pytest.mark.parametrize("command", [
    ["export", "triton", "{out}", "--batch-timeout", "-5"],
    ["export", "deepstream", "{out}", "--streams", "0"],
    ["build", "-p", "fp16", "-b", "onnxruntime", "--workspace", "0"],
    ["build", "-p", "fp16", "-b", "onnxruntime", "--dla-core", "-1"],
])
def test_serving_and_build_options_are_refused_before_any_file(capsys, run_copy, tmp_path, command):
    out = tmp_path / "out"
    before = files_of(run_copy)
    result = invoke(capsys, *[part.format(out=out) for part in command], "--run", run_copy)
    assert_named(result, next(part for part in command if part.startswith("--")))
    assert files_of(run_copy) == before and not out.exists()


def test_demo_options_are_refused_before_the_data_is_made(capsys, tmp_path):
    result = invoke(capsys, "demo", "--epochs", "0", "--out", tmp_path / "demo")
    assert_named(result, "--epochs")
    assert not (tmp_path / "demo").exists()
