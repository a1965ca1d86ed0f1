"""Clean stops (mlic_edge/stops.py): SIGINT and SIGTERM, sent for real to the ``mlic-edge`` process while it is at
work, end every long command with one line and exit 130 / 143, remove its temporary files, and leave the run as
it was before the command (or complete, when the signal came during the final renames)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from test_lineage import snapshot

ENTRY = "import sys; from mlic_edge.cli.app import main; sys.argv[0] = 'mlic-edge'; main()"
WAIT_SECONDS = 300  # for the moment to signal at; generous for a busy 2-core CI machine


def interrupt(args: list[str], when: str, sig: signal.Signals, cwd: Path) -> tuple[int, str]:
    """Run ``mlic-edge ARGS``, send ``sig`` once stderr has a line matching ``when``; (exit code, stderr)."""
    env = {**os.environ, "MLIC_EDGE_PROGRESS_SECONDS": "0", "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-c", ENTRY, *map(str, args)], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if re.search(when, line):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(WAIT_SECONDS), f"never reached {when!r}: {''.join(lines)}"
        process.send_signal(sig)
        code = process.wait(WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(10)
    return code, "".join(lines)


def assert_stopped(code: int, err: str, sig: signal.Signals, *fragments: str) -> None:
    assert code == 128 + sig, (code, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"stopped by {sig.name}" in errors[0], err
    for fragment in fragments:
        assert fragment in err.replace("\n", " "), err


def hidden_files(folder: Path) -> list[str]:
    """Temporary files and folders (every one of them starts with a dot) left anywhere under ``folder``."""
    return [str(path) for path in folder.rglob(".*")]


def test_train_stopped_keeps_the_last_complete_epoch_resumable(tmp_path, synth_data):
    import torch

    from mlic_edge.rundir import RunDir
    from mlic_edge.train.trainer import TrainConfig, train

    out = tmp_path / "run"
    options = ["--model", "baseline", "--data", f"voc:{synth_data}", "--out", out, "--backbone", "resnet10t",
               "--img-size", "32", "--batch-size", "32", "--workers", "0", "--epochs", "30"]
    code, err = interrupt(["train", *options], r"^epoch 2/30: .*val mAP", signal.SIGTERM, tmp_path)
    assert_stopped(code, err, signal.SIGTERM, "complete epoch(s) of 30", "last.pt is resumable", "--resume")
    assert hidden_files(out) == []
    run = RunDir(out)
    saved = torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)
    assert saved["epoch"] == run.read()["train"]["epochs_done"] >= 1  # the record and last.pt agree
    section = train(TrainConfig(model="baseline", data=f"voc:{synth_data}", out=out, epochs=saved["epoch"] + 1,
                                workers=0, resume=True))
    assert section["epochs_done"] == saved["epoch"] + 1


def test_train_stopped_in_its_first_epoch_says_nothing_was_kept(tmp_path, synth_data):
    out = tmp_path / "run"
    options = ["--model", "baseline", "--data", f"voc:{synth_data}", "--out", out, "--backbone", "resnet10t",
               "--img-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "30"]
    code, err = interrupt(["train", *options], r"^training baseline", signal.SIGINT, tmp_path)
    assert_stopped(code, err, signal.SIGINT, "before its first epoch ended", "no checkpoint was written")
    assert not (out / "last.pt").exists() and not (out / "checkpoint.pt").exists()
    assert hidden_files(out) == []


def test_export_stopped_leaves_the_run_as_it_was(tmp_path, run_copy):
    before = snapshot(run_copy)
    code, err = interrupt(["export", "--run", run_copy], r"export check|reference scores", signal.SIGINT, tmp_path)
    assert_stopped(code, err, signal.SIGINT)
    assert hidden_files(run_copy) == []
    after = snapshot(run_copy)
    if after != before:  # the signal came after model.onnx was committed: then it is complete and current
        from mlic_edge.export.lineage import check_onnx
        from mlic_edge.rundir import RunDir

        check_onnx(RunDir(run_copy), "fp32")
        assert after["reference.npz"] == before["reference.npz"]


def test_int8_build_stopped_while_calibrating_changes_nothing(tmp_path, run_copy):
    before = snapshot(run_copy)
    code, err = interrupt(["build", "--run", run_copy, "--precision", "int8", "--backend", "onnxruntime",
                           "--calib-images", "64", "--qat-epochs", "0"], r"int8: calibrating", signal.SIGTERM, tmp_path)
    assert_stopped(code, err, signal.SIGTERM)
    assert hidden_files(run_copy) == []
    assert not (run_copy / "model.int8.onnx").exists()
    after = snapshot(run_copy)
    assert {name: data for name, data in after.items() if not name.startswith("calibration/")} == before


def test_bench_and_parity_stopped_keep_their_reports(tmp_path, run_copy):
    (run_copy / "reports" / "bench.json").write_text('{"earlier": true}\n')
    before = snapshot(run_copy)
    code, err = interrupt(["bench", "--run", run_copy, "--backend", "onnxruntime", "--iterations", "1000000"],
                          r"bench|onnxruntime", signal.SIGINT, tmp_path)
    assert_stopped(code, err, signal.SIGINT)
    code, err = interrupt(["parity", "--run", run_copy, "--batch-size", "1"], r"parity onnxruntime fp32", signal.SIGTERM,
                          tmp_path)
    assert code in (0, 143), err  # a tiny run's parity may finish before the signal lands
    if code == 143:
        assert_stopped(code, err, signal.SIGTERM)
        assert snapshot(run_copy) == before
    assert hidden_files(run_copy) == []


def test_data_synth_stopped_leaves_no_half_dataset(tmp_path):
    out = tmp_path / "synth"
    code, err = interrupt(["data", "synth", out, "--images", "4000", "--size", "96"], r"^synth: \d+/4000",
                          signal.SIGTERM, tmp_path)
    assert_stopped(code, err, signal.SIGTERM)
    assert not out.exists() and hidden_files(tmp_path) == []


def test_build_from_a_bundle_stopped_while_unpacking_leaves_nothing(tmp_path, trained_run, capsys, monkeypatch):
    """A stop (raised from inside the unpack loop, as the signal handler does) removes the half-unpacked run."""
    from cli_helpers import invoke
    from mlic_edge.runtime.deployment import bundle as bundle_module

    bundle = tmp_path / "baseline.mlic.tar.gz"
    assert invoke(capsys, "pack", "--run", trained_run, bundle).code == 0
    real_extract, extracted = bundle_module._extract_checked, []

    def extract_then_signal(*args, **kwargs):
        real_extract(*args, **kwargs)
        extracted.append(args)
        if len(extracted) == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(bundle_module, "_extract_checked", extract_then_signal)
    result = invoke(capsys, "build", "--bundle", bundle, "--out", tmp_path / "device-run", "--precision", "fp32",
                    "--backend", "onnxruntime")
    assert_stopped(result.code, result.err, signal.SIGTERM)
    assert len(extracted) == 2 and not (tmp_path / "device-run").exists()
    assert hidden_files(tmp_path) == []


def test_a_stop_that_cpython_wraps_in_a_system_error_is_still_a_stop(monkeypatch, capsys):
    """A signal landing while C code runs a Python callback (os.fspath calling Path.__fspath__, seen once under
    parity) reaches the CLI as "SystemError: ... returned a result with an exception set", caused by Interrupted."""
    from mlic_edge.cli import app as cli
    from mlic_edge.errors import Interrupted

    def app() -> None:
        try:
            raise Interrupted(signal.SIGTERM)
        except Interrupted as stop:
            raise SystemError("<built-in function fspath> returned a result with an exception set") from stop

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["mlic-edge", "parity"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "internal error" not in err
