"""Clean stops (mlic_edge/stops.py): SIGINT and SIGTERM, sent for real to the ``mlic-edge`` process while it is at
work, end every long command with one line and exit 130 / 143, remove its temporary files, and leave the run as
it was before the command (or complete, when the signal came during the final renames)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from test_lineage import snapshot

ENTRY = "import sys; from mlic_edge.cli.app import main; sys.argv[0] = 'mlic-edge'; main()"
WAIT_SECONDS = 300  # for the moment to signal at; generous for a busy 2-core CI machine


class Stopped(NamedTuple):
    code: int
    err: str
    out: str


def send_signals(args: list[str], cwd: Path, signals: list[tuple[str, signal.Signals]],
                 hold_stdout: bool = False, to_group: bool = False) -> Stopped:
    """Run ``mlic-edge ARGS`` and send each signal in turn, once stderr has a line matching its pattern (after the
    signal before it). With ``hold_stdout`` the first line of stdout is read before the first signal and the rest
    only after the last one: the run blocks writing records meanwhile, so it is still at work when they land.
    ``to_group``: to every process of the command (its worker processes too), as Ctrl-C in a terminal and
    ``systemctl stop`` send them."""
    env = {**os.environ, "MLIC_EDGE_PROGRESS_SECONDS": "0", "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-c", ENTRY, *map(str, args)], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=to_group)
    lines: list[str] = []
    out: list[str] = []
    arrived = threading.Condition()

    def read_stderr() -> None:
        for line in process.stderr:
            with arrived:
                lines.append(line)
                arrived.notify_all()
        with arrived:
            lines.append("")  # the end: nothing more will match
            arrived.notify_all()

    readers = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=lambda: out.extend(process.stdout), daemon=True)]
    readers[0].start()
    try:
        if hold_stdout:
            out.append(process.stdout.readline())
        else:
            readers[1].start()
        seen = 0
        for when, sig in signals:
            with arrived:
                def reached() -> bool:
                    return any(re.search(when, line) for line in lines[seen:])

                arrived.wait_for(lambda: reached() or "" in lines, WAIT_SECONDS)
                assert reached(), f"never reached {when!r}: {''.join(lines)}"
                seen = len(lines)
            if to_group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        if hold_stdout:
            readers[1].start()
        code = process.wait(WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    for reader in readers:
        reader.join(10)
    return Stopped(code, "".join(lines), "".join(out))


def interrupt(args: list[str], when: str, sig: signal.Signals, cwd: Path) -> tuple[int, str]:
    """Run ``mlic-edge ARGS``, send ``sig`` once stderr has a line matching ``when``; (exit code, stderr)."""
    stopped = send_signals(args, cwd, [(when, sig)])
    return stopped.code, stopped.err


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
               "--img-size", "32", "--batch-size", "32", "--workers", "0", "--epochs", "30", "--no-pretrained"]
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
               "--img-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "30", "--no-pretrained"]
    code, err = interrupt(["train", *options], r"^training baseline", signal.SIGINT, tmp_path)
    assert_stopped(code, err, signal.SIGINT, "before its first epoch ended", "no checkpoint was written")
    assert not (out / "last.pt").exists() and not (out / "checkpoint.pt").exists()
    assert hidden_files(out) == []


@pytest.mark.parametrize("phase, when, to_group", [
    ("worker start-up", r"first batch…", True),
    ("iteration", r"^epoch 1/30: [1-9]", True),
    ("iteration, the main process alone signalled", r"^epoch 1/30: [1-9]", False),
    ("validation", r"^  validate: ", True),
])
def test_train_with_worker_processes_stopped_in_its_first_epoch_ends_with_one_line(tmp_path, synth_data, phase, when,
                                                                                   to_group):
    """Worker processes ignore stop signals (a signal to the process group reaches them too): the main process
    alone stops, shuts them down, and ends with its one line, never a DataLoader traceback; run.json says that no
    epoch ended."""
    out = tmp_path / "run"
    options = ["--model", "baseline", "--data", f"voc:{synth_data}", "--out", out, "--backbone", "resnet10t",
               "--img-size", "32", "--batch-size", "8", "--workers", "2", "--epochs", "30", "--no-pretrained"]
    stopped = send_signals(["train", *options], tmp_path, [(when, signal.SIGTERM)], to_group=to_group)
    assert "RuntimeError" not in stopped.err and "DataLoader worker" not in stopped.err, stopped.err
    assert_stopped(stopped.code, stopped.err, signal.SIGTERM, "before its first epoch ended")
    assert not (out / "last.pt").exists() and hidden_files(out) == []
    train = json.loads((out / "run.json").read_text())["train"]
    assert train["epochs_done"] == 0 and train["stopped"].startswith("by SIGTERM before its first epoch ended")


def test_a_stop_while_worker_processes_shut_down_lands_once_they_have(synth_data, monkeypatch):
    from mlic_edge.data import open_dataset
    from mlic_edge.data.torch_data import ImageDataset, make_loader
    from mlic_edge.errors import Interrupted
    from mlic_edge.stops import stop_on_signals

    loader = make_loader(ImageDataset(open_dataset(f"voc:{synth_data}", "eval"), 32, [0.5] * 3, [0.25] * 3), 8,
                         shuffle=False, workers=2)
    workers_alive = []
    with stop_on_signals(), pytest.raises(Interrupted):
        with loader:
            next(iter(loader))
            iterator = loader._iterator
            shut_down = iterator._shutdown_workers

            def signalled_while_shutting_down() -> None:
                signal.raise_signal(signal.SIGTERM)
                shut_down()
                workers_alive.append([worker.is_alive() for worker in iterator._workers])

            monkeypatch.setattr(iterator, "_shutdown_workers", signalled_while_shutting_down)
    assert workers_alive == [[False, False]]


def test_a_process_forked_while_stops_are_handled_leaves_them_to_its_parent():
    """A DataLoader worker, before its start-up ignores stop signals, has its parent's handler: there it does nothing."""
    from mlic_edge.stops import stop_on_signals

    with stop_on_signals():
        child = os.fork()
        if child == 0:
            code = 1  # stays so where the handler raises Interrupted
            try:
                signal.raise_signal(signal.SIGTERM)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


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


def long_image_list(folder: Path, synth_data: Path, repeats: int = 200) -> Path:
    """A list file naming the synthetic images ``repeats`` times over: a run over it lasts long enough to stop."""
    images = sorted((synth_data / "JPEGImages").glob("*.jpg"))
    listed = folder / "long.txt"
    listed.write_text("".join(f"{image}\n" for image in images * repeats))
    return listed


def whole_records(text: str) -> list[dict]:
    """The JSON lines of ``text``, which must end with a whole one."""
    assert text.endswith("\n"), text[-200:]
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stopped_finishes_in_flight_writes_whole_outputs_and_exits_with_the_signal(tmp_path, trained_run,
                                                                                        synth_data, sig):
    """A partial output is told from a complete one by the exit status: 130 / 143, never 0."""
    out = tmp_path / "out.jsonl"
    code, err = interrupt(["run", long_image_list(tmp_path, synth_data), "--run", trained_run, "--backend",
                           "onnxruntime", "--out", out, "--stats-every", "0.1"], r"^\d+ frames, ", sig, tmp_path)
    assert_stopped(code, err, sig, "stopped early after", "every output was flushed and closed")
    records = whole_records(out.read_text())
    assert 0 < len(records) < 32000 and [record["index"] for record in records] == list(range(len(records)))
    assert f"after {len(records)} frame(s)" in err  # every frame processed was written
    assert "latency per frame" in err and hidden_files(tmp_path) == []


def test_several_streams_stopped_each_end_with_whole_records_and_the_signals_status(tmp_path, trained_run, synth_data):
    """SIGTERM during a run of three streams: every stream's file ends with a whole record, its frames in order, no
    temporary file is left, and the exit status is 143."""
    listed = long_image_list(tmp_path, synth_data)
    (tmp_path / "again").mkdir()
    again = long_image_list(tmp_path / "again", synth_data)  # one source is read by one stream
    out = tmp_path / "out"
    code, err = interrupt(["run", f"a={listed}", f"b={synth_data / 'video.mp4'}", f"c={again}", "--run", trained_run,
                           "--backend", "onnxruntime", "--batch", "3", "--out", f"{out}/{{stream}}.jsonl",
                           "--stats-every", "0.1"], r"^\d+ frames, ", signal.SIGTERM, tmp_path)
    assert_stopped(code, err, signal.SIGTERM, "stopped early after", "every output was flushed and closed")
    for name in ("a", "c"):
        records = whole_records((out / f"{name}.jsonl").read_text())
        assert 0 < len(records) < 32000 and [record["index"] for record in records] == list(range(len(records)))
        assert {record["stream"] for record in records} == {name}
    assert hidden_files(out) == []


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT)],
                         ids=["SIGINT-SIGINT", "SIGTERM-SIGINT"])
def test_run_signalled_again_while_finishing_stops_at_once_with_one_line(tmp_path, trained_run, synth_data, first,
                                                                         second):
    """Records go to stdout, which the test stops reading after the first: the run blocks writing a batch of 512
    (far more than a pipe holds), so the first signal cannot be finished before the second lands. The first
    signal decides the exit status."""
    stopped = send_signals(["run", long_image_list(tmp_path, synth_data), "--run", trained_run, "--backend",
                            "onnxruntime", "--batch", "512"], tmp_path,
                           [(r" → ", first), (r"again stops at once", second)], hold_stdout=True)
    assert_stopped(stopped.code, stopped.err, first, "a second signal", "at once")
    assert "stopped early after" not in stopped.err
    assert 0 < len(whole_records(stopped.out)) < 32000


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_interpreter_shuts_down_changes_neither_line_nor_status(tmp_path, sig):
    """A second Ctrl-C that lands after the line, while the interpreter frees ONNX Runtime and the modules, killed
    the process by the signal instead (status -2 / -15). Sent here from an exit handler, deterministically."""
    kill_at_exit = f"import atexit, os; atexit.register(os.kill, os.getpid(), {int(sig)}); {ENTRY}"
    process = subprocess.run([sys.executable, "-c", kill_at_exit, "bench", "--run", tmp_path / "nowhere"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert process.returncode == 2, (process.returncode, process.stderr)
    assert [line for line in process.stderr.splitlines() if line.startswith("error:")] == process.stderr.splitlines()
    assert "Traceback" not in process.stderr


def test_bench_stopped_in_its_pipeline_exits_with_the_signal_after_joining_its_threads(tmp_path, run_copy):
    """--threads 1 on two cores or more overlaps the pipeline's stages on four threads; a stop arrives in round 2."""
    code, err = interrupt(["bench", "--run", run_copy, "--backend", "onnxruntime", "--iterations", "1", "--warmup",
                           "0", "--frames", "200", "--rounds", "1000", "--threads", "1"], r"round 2/1000",
                          signal.SIGTERM, tmp_path)
    assert_stopped(code, err, signal.SIGTERM)
    assert "terminate called" not in err


@pytest.mark.parametrize("in_turn", [False, True], ids=["overlapped", "in-turn"])
def test_a_stop_waits_for_the_inference_in_flight_before_it_propagates(tmp_path, in_turn):
    """The stage threads run native code (ONNX Runtime, OpenCV): a stop that propagated while one still ran would
    let the backend be closed and the process exit under it ("terminate called without an active exception").
    The inference outlasts the 5 s the pipeline used to wait for each thread; in turn (a file on a CPU backend
    holding every core) its one thread is the one whose join the signal handler interrupts."""
    import cv2
    import numpy as np

    from mlic_edge.errors import Interrupted
    from mlic_edge.runtime.inference.classifier import Classifier
    from mlic_edge.runtime.inference.pipeline import run_pipeline
    from mlic_edge.runtime.inference.sources import open_source
    from mlic_edge.runtime.inference.threads import plan_threads
    from mlic_edge.spec import ModelSpec
    from mlic_edge.stops import stop_on_signals
    from test_pipeline import FakeLiveSource, RecordingBackend, identity

    finished = threading.Event()

    class SignalledWhileInferring(RecordingBackend):
        thread_budget = plan_threads(2, "cpu") if in_turn else None

        def infer(self, batch):
            if not self.batches:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(6)
                finished.set()
            return super().infer(batch)

    for index in range(4):
        cv2.imwrite(str(tmp_path / f"{index}.png"), np.zeros((8, 8, 3), np.uint8))
    assert SignalledWhileInferring.thread_budget is None or not SignalledWhileInferring.thread_budget.overlap
    with open_source(str(tmp_path)) if in_turn else FakeLiveSource() as source, stop_on_signals(), \
            pytest.raises(Interrupted):
        run_pipeline(source, Classifier(SignalledWhileInferring(), ModelSpec(["a", "b"], 16, [0.5] * 3, [0.25] * 3)),
                     postprocess=identity)
    assert finished.is_set()
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("mlic-edge-")]


@pytest.mark.parametrize("writes_before_stop", [0, 1], ids=["calibrator", "quantizer"])
def test_int8_quantizer_stopped_leaves_none_of_onnx_runtimes_files_in_the_run(run_copy, synth_data, monkeypatch,
                                                                              writes_before_stop):
    """ONNX Runtime's calibrator and quantizer each write a shape-inferred copy of their input beside it
    (model-inferred.onnx) and remove it only when they return: a stop right after one was written (the
    calibrator's, or the quantizer's after a finished calibration) must leave nothing in the run folder."""
    import onnx

    from mlic_edge.calibration import quantize_int8, select_calibration_set
    from mlic_edge.data import open_dataset
    from mlic_edge.errors import Interrupted
    from mlic_edge.rundir import RunDir

    infer_shapes_path, written = onnx.shape_inference.infer_shapes_path, []

    def infer_shapes_then_stop(model_path, output_path="", *args, **kwargs):
        infer_shapes_path(model_path, output_path, *args, **kwargs)
        written.append(Path(output_path or model_path))
        if len(written) > writes_before_stop:
            raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", infer_shapes_then_stop)
    meta = RunDir(run_copy).read()
    calibration = select_calibration_set(open_dataset(f"voc:{synth_data}", "train"), 8)
    before = snapshot(run_copy)
    with pytest.raises(Interrupted):
        quantize_int8(run_copy / "model.onnx", run_copy / "model.int8.onnx", run_copy / "calibration",
                      method="minmax", calibration=calibration, img_size=int(meta["img_size"]), mean=meta["mean"],
                      std=meta["std"])
    assert len(written) == writes_before_stop + 1
    assert snapshot(run_copy) == before and not [path for path in written if path.exists()]


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


RANDOM_POINTS = 5  # per command; seeded, so a failure names the delay that found it


@pytest.mark.parametrize("command", [("build", "--precision", "fp16", "--backend", "onnxruntime"), ("pack",)],
                         ids=["build-fp16", "pack"])
def test_a_signal_at_any_point_leaves_a_consistent_run(tmp_path, trained_run, command):
    """SIGINT or SIGTERM at seeded random points of a command's life (from its first line of output to past its
    end): whatever it was doing, it ends with its signal's status and one line, or, when the signal came too late,
    with 0; no temporary file stays behind, and every graph in the run is one its records vouch for. (Before its
    first line, Python may still be importing: there a signal acts as its default does.)"""
    import random
    import shutil

    from mlic_edge.export.lineage import check_onnx
    from mlic_edge.rundir import RunDir

    def fresh(name: str) -> Path:
        run = tmp_path / name / "run"
        shutil.copytree(trained_run, run)
        return run

    def start(run: Path) -> subprocess.Popen:
        env = {**os.environ, "MLIC_EDGE_PROGRESS_SECONDS": "0"}
        return subprocess.Popen([sys.executable, "-c", ENTRY, *command, "--run", str(run)], cwd=run.parent, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    started = time.monotonic()
    whole = start(fresh("whole"))
    whole_err = whole.communicate(timeout=WAIT_SECONDS)[1]
    assert whole.returncode == 0, whole_err
    duration = time.monotonic() - started  # only to spread the random points over the command's life
    chooser = random.Random(f"{command[0]}-stops")
    for point in range(RANDOM_POINTS):
        delay, sig = chooser.uniform(0.0, duration), chooser.choice([signal.SIGINT, signal.SIGTERM])
        run = fresh(f"point{point}")
        process = start(run)
        lines: list[str] = []
        first_line = threading.Event()

        def read_stderr(process: subprocess.Popen = process, lines: list[str] = lines,
                        first_line: threading.Event = first_line) -> None:
            for line in process.stderr:
                lines.append(line)
                first_line.set()
            first_line.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        first_line.wait(WAIT_SECONDS)
        time.sleep(delay)
        process.send_signal(sig)
        code = process.wait(WAIT_SECONDS)
        reader.join(10)
        err = "".join(lines)
        where = f"{sig.name} after {delay:.2f} s of {duration:.2f} s: exit {code}\n{err}"
        assert code in (0, 128 + sig), where
        assert "Traceback" not in err, where
        if code:
            assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, where
        assert hidden_files(run) == [] and hidden_files(run.parent) == [], where
        for precision, variant, path in RunDir(run).onnx_graphs():
            check_onnx(RunDir(run), precision, path=path)  # its bytes are the ones run.json recorded


@pytest.mark.parametrize("several", [False, True], ids=["atomic_path", "atomic_files"])
def test_a_stop_at_any_line_of_an_atomic_write_leaves_no_temporary_file(tmp_path, several):
    """A stop (Interrupted, as stop_on_signals raises it) landing at any line of the atomic-write helpers, the
    temporary file's making included, leaves no hidden file behind and never a half-written one under the final
    name. Seen in a fresh-clone CI run: SIGTERM during `train` left `.last.pt.<random>.pt` beside last.pt."""
    import sys

    from mlic_edge import io
    from mlic_edge.errors import Interrupted

    content = b"x" * 1000

    def write(folder: Path) -> None:
        if several:
            with io.atomic_files() as staged:
                staged.path(folder / "model.onnx").write_bytes(content)
                staged.path(folder / "run.json").write_bytes(content)
        else:
            with io.atomic_path(folder / "last.pt") as tmp:
                tmp.write_bytes(content)

    def stop_at(line: int):
        seen = 0

        def local(frame, event, arg):
            nonlocal seen
            if event == "line":
                seen += 1
                if seen == line:
                    raise Interrupted(signal.SIGTERM)
            return local

        return lambda frame, event, arg: local if frame.f_code.co_filename == io.__file__ else None

    stops = 0
    for line in range(1, 200):
        folder = tmp_path / str(line)
        folder.mkdir()
        sys.settrace(stop_at(line))
        try:
            write(folder)
        except Interrupted:
            stops += 1
        finally:
            sys.settrace(None)
        assert hidden_files(folder) == [], line
        assert all(path.read_bytes() == content for path in folder.iterdir()), line
    assert stops > 10  # the stops landed inside the helpers, and the later lines ran to the end
