"""Lineage (export/lineage.py) and run transactions (RunDir.transaction): no stage uses an input made from another
model, and an artefact and the run.json that describes it change together or not at all."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest

from cli_helpers import assert_one_line_error, invoke
from mlic_edge.errors import Interrupted, MlicError
from mlic_edge.export.lineage import CHECKPOINT_SHA, ONNX_SHA
from mlic_edge.export.metadata import read_metadata, write_metadata
from mlic_edge.io import sha256_file
from mlic_edge.rundir import RunDir
from mlic_edge.spec import GRAPH_HASHES
from mlic_edge.spec import ReferenceSection
from mlic_edge.stops import signals_deferred, stop_on_signals


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def retrained_checkpoint(run: Path) -> None:
    """checkpoint.pt replaced by other weights, as a retraining would (model.onnx and reference.npz now stale)."""
    import torch

    payload = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    payload["state_dict"] = {key: value + 0.01 if value.is_floating_point() else value
                             for key, value in payload["state_dict"].items()}
    torch.save(payload, run / "checkpoint.pt")


def test_exported_files_record_what_they_were_made_from(trained_run):
    run = RunDir(trained_run)
    checkpoint = sha256_file(run.checkpoint)
    assert read_metadata(run.onnx("fp32"))[CHECKPOINT_SHA] == checkpoint
    with np.load(run.reference) as reference:
        assert str(reference[CHECKPOINT_SHA]) == checkpoint
    recorded = run.read()
    assert recorded["export"][CHECKPOINT_SHA] == checkpoint == recorded["reference"][CHECKPOINT_SHA]


@pytest.mark.parametrize("command", [("parity",), ("build", "--precision", "fp32", "--backend", "onnxruntime"),
                                     ("run", "IMAGES", "--backend", "onnxruntime")])
def test_a_model_onnx_from_another_checkpoint_is_refused(capsys, run_copy, synth_data, command):
    retrained_checkpoint(run_copy)
    before = snapshot(run_copy)
    args = [str(synth_data / "JPEGImages") if arg == "IMAGES" else arg for arg in command]
    result = invoke(capsys, *args, "--run", run_copy)
    assert_one_line_error(result, "exported from another checkpoint.pt", f"mlic-edge export --run {run_copy}")
    assert snapshot(run_copy) == before


def test_parity_refuses_the_reference_of_another_model(capsys, run_copy):
    path = run_copy / "reference.npz"
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    arrays[CHECKPOINT_SHA] = np.array("0" * 64)  # scored by another checkpoint
    np.savez_compressed(path, **arrays)
    before = snapshot(run_copy)
    result = invoke(capsys, "parity", "--run", run_copy)
    assert_one_line_error(result, "reference.npz scored another model", f"mlic-edge export --run {run_copy}")
    assert snapshot(run_copy) == before


def test_an_onnx_for_other_labels_than_run_json_is_refused(capsys, run_copy, synth_data):
    run_json = run_copy / "run.json"
    recorded = json.loads(run_json.read_text())
    recorded["labels"] = list(reversed(recorded["labels"]))
    run_json.write_text(json.dumps(recorded))
    result = invoke(capsys, "run", synth_data / "JPEGImages", "--run", run_copy, "--backend", "onnxruntime")
    assert_one_line_error(result, "model.onnx was made for other labels than", "mlic-edge export")


def test_a_precision_onnx_made_from_another_model_onnx_is_refused(capsys, run_copy, synth_data):
    """A model.int8.onnx left from before the model was exported again must not run as this model."""
    stale = onnx.load(str(run_copy / "model.onnx"))
    metadata = read_metadata(stale)
    write_metadata(stale, {**metadata, "precision": "int8", ONNX_SHA: "0" * 64})
    onnx.save(stale, str(run_copy / "model.int8.onnx"))
    result = invoke(capsys, "run", synth_data / "JPEGImages", "--run", run_copy, "--backend", "onnxruntime",
                    "--precision", "int8")
    assert_one_line_error(result, "model.int8.onnx was made from another model.onnx",
                          f"mlic-edge build --run {run_copy} --precision int8")


def test_every_graph_a_transaction_puts_in_place_is_recorded_in_run_json(trained_run):
    run = RunDir(trained_run)
    assert run.read()[GRAPH_HASHES] == {"model.onnx": sha256_file(run.onnx("fp32"))}


@pytest.mark.parametrize("command", [("parity",), ("build", "--precision", "fp16", "--backend", "onnxruntime"),
                                     ("run", "IMAGES", "--backend", "onnxruntime"),
                                     ("bench", "--iterations", "2", "--frames", "2"), ("pack",)])
def test_a_graph_changed_in_place_is_refused_by_every_command_that_loads_it(capsys, run_copy, synth_data, command):
    """One weight of model.onnx changed, its metadata intact (and, below, nothing else to compare it with): the
    bytes are not the ones export wrote, so nothing runs, builds, checks or ships it."""
    from model_checks import change_one_weight

    change_one_weight(run_copy / "model.onnx")
    before = snapshot(run_copy)
    args = [str(synth_data / "JPEGImages") if arg == "IMAGES" else arg for arg in command]
    result = invoke(capsys, *args, "--run", run_copy)
    assert_one_line_error(result, "model.onnx differs from the one mlic-edge wrote into", "recorded in run.json",
                          f"mlic-edge export --run {run_copy}")
    assert snapshot(run_copy) == before


def test_a_changed_graph_is_refused_without_its_checkpoint_or_metadata_stamp(capsys, run_copy, synth_data):
    from model_checks import change_one_weight

    (run_copy / "checkpoint.pt").unlink()
    model = onnx.load(str(run_copy / "model.onnx"))
    write_metadata(model, {k: v for k, v in read_metadata(model).items() if k != CHECKPOINT_SHA})
    onnx.save(model, str(run_copy / "model.onnx"))
    result = invoke(capsys, "run", synth_data / "JPEGImages", "--run", run_copy, "--backend", "onnxruntime")
    assert_one_line_error(result, "model.onnx differs from the one mlic-edge wrote into")
    change_one_weight(run_copy / "model.onnx")  # and the same for a weight
    result = invoke(capsys, "run", synth_data / "JPEGImages", "--run", run_copy, "--backend", "onnxruntime")
    assert_one_line_error(result, "model.onnx differs from the one mlic-edge wrote into")


# ----------------------------------------------------------------------------------------------- transactions
def test_a_transaction_puts_artefact_and_run_json_in_place_together(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update(model="baseline")
    with run.transaction() as change:
        change.path(run.reference).write_bytes(b"new reference")
        change.update(reference=ReferenceSection(file="reference.npz"))
        assert not run.reference.exists() and "reference" not in run.read()  # nothing in place before the end
    assert run.reference.read_bytes() == b"new reference" and run.read()["reference"] == {"file": "reference.npz"}
    assert [path.name for path in run.path.iterdir() if path.name.startswith(".")] == []


def test_a_failed_transaction_leaves_the_run_as_it_was(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update(model="baseline")
    run.reference.write_bytes(b"old")
    before = snapshot(run.path)
    with pytest.raises(RuntimeError):
        with run.transaction() as change:
            change.path(run.reference).write_bytes(b"half")
            change.update(reference=ReferenceSection(file="reference.npz"))
            raise RuntimeError("failed half-way")
    assert snapshot(run.path) == before


def test_a_stop_signal_waits_for_the_renames_then_stops(tmp_path, monkeypatch):
    """SIGTERM between renaming the artefact and run.json: both are put in place, then the stop is delivered."""
    run = RunDir(tmp_path / "run")
    run.update(model="baseline")
    real_replace = os.replace

    def replace_then_signal(source, target):
        real_replace(source, target)
        if Path(target) == run.reference:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace_then_signal)
    with pytest.raises(Interrupted) as stopped, stop_on_signals():
        with run.transaction() as change:
            change.path(run.reference).write_bytes(b"new")
            change.update(reference=ReferenceSection(file="reference.npz"))
    assert stopped.value.exit_code == 143
    assert run.reference.read_bytes() == b"new" and run.read()["reference"] == {"file": "reference.npz"}


def test_signals_deferred_delivers_to_the_handler_in_place(tmp_path):
    with pytest.raises(Interrupted) as stopped:
        with stop_on_signals():
            with signals_deferred():
                signal.raise_signal(signal.SIGINT)
                reached_the_end_of_the_block = True
    assert reached_the_end_of_the_block and stopped.value.exit_code == 130


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    from mlic_edge.io import write_json

    target = tmp_path / "reports" / "parity.json"
    write_json(target, {"old": True})

    def full_disk(self, data, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(MlicError) as failure:
        write_json(target, {"new": True})
    monkeypatch.undo()
    assert str(target) in str(failure.value) and "no space left" in str(failure.value)
    assert json.loads(target.read_text()) == {"old": True}
    assert [path.name for path in target.parent.iterdir()] == ["parity.json"]


def test_pack_refuses_to_ship_a_stale_model(capsys, run_copy, tmp_path):
    retrained_checkpoint(run_copy)
    result = invoke(capsys, "pack", "--run", run_copy, tmp_path / "bundle.mlic.tar.gz")
    assert_one_line_error(result, "exported from another checkpoint.pt", f"mlic-edge export --run {run_copy}")
    assert not (tmp_path / "bundle.mlic.tar.gz").exists()


def test_a_full_disk_during_an_fp16_build_names_the_file_and_changes_nothing(capsys, run_copy, monkeypatch):
    import errno

    before = snapshot(run_copy)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full_disk)
    result = invoke(capsys, "build", "--run", run_copy, "--precision", "fp16", "--backend", "onnxruntime")
    assert_one_line_error(result, f"cannot write {run_copy / 'model.fp16.onnx'}: no space left on the device",
                          "free space")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("damage", ["not a table", ["model.onnx"], {"model.onnx": 3}])
def test_a_damaged_hash_record_is_named_not_an_internal_error(capsys, run_copy, synth_data, damage):
    recorded = json.loads((run_copy / "run.json").read_text())
    recorded[GRAPH_HASHES] = damage
    (run_copy / "run.json").write_text(json.dumps(recorded))
    result = invoke(capsys, "run", synth_data / "JPEGImages", "--run", run_copy, "--backend", "onnxruntime")
    assert_one_line_error(result, "run.json is damaged", "'onnx_sha256' is not a table of files")
