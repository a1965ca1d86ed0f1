"""The threaded pipeline: preprocessing equal to training's, order and completeness on files, latest-frame-wins on
live sources, clean stops (the stop event; signals sent to the CLI: tests/test_stops.py) and errors that surface
instead of hanging."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.classifier import Classifier
from mlic_edge.runtime.inference.pipeline import run_pipeline
from mlic_edge.spec import ModelSpec
from mlic_edge.runtime.inference.sources import Frame, Source, open_source

LABELS = ["a", "b"]


class RecordingBackend(Backend):
    """Keeps every batch it is given; scores = mean of the first channel, so they depend on the image."""

    def __init__(self, delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.info = BackendInfo("recording", "cpu", "fp32", "0")
        self.batches: list[np.ndarray] = []
        self.delay_s, self.fail_after = delay_s, fail_after

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise RuntimeError("engine exploded")
        self.batches.append(batch.copy())
        time.sleep(self.delay_s)
        value = batch[:, 0].mean(axis=(1, 2))
        return np.stack([value, -value], axis=1)


class FakeLiveSource(Source):
    """A camera that delivers a new frame every ``period`` seconds until stopped."""

    kind = "camera"
    live = True

    def __init__(self, period: float = 0.002, frames: int | None = None) -> None:
        super().__init__("fake-camera")
        self.period, self.frames = period, frames
        self.stats = {"decode_failures": 0, "reconnects": 0}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def __iter__(self):
        index = 0
        while not self._stop.is_set() and (self.frames is None or index < self.frames):
            image = np.full((24, 32, 3), index % 256, np.uint8)
            yield Frame(image, self.spec, index, index * self.period, 0.1, time.perf_counter())
            index += 1
            time.sleep(self.period)


def identity(scores, meta):
    return {**meta, "scores": [float(s) for s in scores]}


@pytest.mark.parametrize("resize", ["warp", "center-crop", "letterbox"])
def test_runtime_tensor_equals_the_training_evaluation_tensor(synth_data, tmp_path, resize):
    """What the backend receives at run time is, byte for byte, what training evaluated (and parity compared)."""
    pytest.importorskip("torch")
    from mlic_edge.data import open_dataset
    from mlic_edge.data.torch_data import ImageDataset

    dataset = open_dataset(f"voc:{synth_data}", role="eval")
    wide = tmp_path / "wide.png"  # a non-square image, so crop and letterbox differ from warp
    cv2.imwrite(str(wide), cv2.resize(cv2.imread(str(dataset.image_paths[0])), (96, 48)))
    spec = ModelSpec(LABELS, 40, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], resize)
    backend = RecordingBackend()
    with open_source(str(wide)) as source:
        run_pipeline(source, Classifier(backend, spec), postprocess=identity)
    training = ImageDataset(dataset.subset([0]), 40, spec.mean, spec.std, resize=resize)
    training.dataset.image_paths[0] = wide
    expected = training[0][0].numpy()
    np.testing.assert_array_equal(backend.batches[0][0], expected)


def test_resize_modes_keep_the_geometry_they_promise():
    from mlic_edge.data.images import LETTERBOX_FILL, resize_image

    image = np.zeros((50, 100, 3), np.uint8)
    image[:, :25] = 255  # left quarter white
    letterboxed = resize_image(image, 40, 40, "letterbox")
    assert letterboxed.shape == (40, 40, 3) and tuple(letterboxed[0, 20]) == LETTERBOX_FILL  # padded top row
    assert letterboxed[20, 2].min() == 255  # the white quarter is kept at the left edge
    cropped = resize_image(image, 40, 40, "center-crop")
    assert cropped.shape == (40, 40, 3) and cropped[20, 2].max() == 0  # the white quarter is cut away
    assert resize_image(image, 40, 40, "warp")[20, 2].min() == 255


def test_files_keep_order_and_lose_nothing_across_batches(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(11):
        cv2.imwrite(str(folder / f"{index:02d}.png"), np.full((20, 30, 3), index * 20, np.uint8))
    (folder / "05b_broken.png").write_bytes(b"not an image")
    backend = RecordingBackend(delay_s=0.002)
    records = []
    with open_source(str(folder)) as source:
        stats = run_pipeline(source, Classifier(backend, ModelSpec(LABELS, 16, [0.5] * 3, [0.25] * 3)), postprocess=identity,
                             on_result=lambda frame, record: records.append(record), batch_size=4)
    assert [r["index"] for r in records] == [i for i in range(12) if i != 6]  # the broken file is index 6
    assert stats.frames == 11 and stats.unreadable == 1 and stats.dropped == 0
    assert [len(batch) for batch in backend.batches] == [4, 4, 3]
    assert [r["scores"][0] for r in records] == sorted(r["scores"][0] for r in records)  # brighter files later


def test_live_source_keeps_the_newest_frame_and_counts_the_dropped():
    source = FakeLiveSource(period=0.001, frames=300)
    backend = RecordingBackend(delay_s=0.02)  # far slower than the camera
    records = []
    stats = run_pipeline(source, Classifier(backend, ModelSpec(LABELS, 16, [0.5] * 3, [0.25] * 3)), postprocess=identity,
                         on_result=lambda frame, record: records.append(record), batch_size=8)
    indices = [r["index"] for r in records]
    assert indices == sorted(indices) and len(indices) < 300 and stats.dropped > 0
    assert len(indices) + stats.dropped == 300  # every frame is either processed or counted as dropped
    assert indices[-1] == 299  # the end of the stream does not replace the newest frame
    assert all(len(batch) == 1 for batch in backend.batches)  # live: one newest frame at a time


def test_a_live_slot_keeps_the_newest_frame_and_a_file_slot_keeps_order_up_to_its_capacity():
    from mlic_edge.runtime.inference.pipeline import _Slot

    arrivals, drops = threading.Condition(), []
    live = _Slot(True, 2, arrivals, lambda: drops.append(1))
    never = threading.Event()
    for frame in ("a", "b", "c"):
        live.put(frame, never)
    live.end()  # replaces nothing: the newest frame is still handed out
    assert (list(live.frames), live.dropped, len(drops), live.finished) == (["c"], 2, 2, False)
    live.frames.popleft()
    assert live.finished

    files, aborted = _Slot(False, 2, arrivals, lambda: drops.append(1)), threading.Event()
    files.put("a", aborted)
    files.put("b", aborted)
    third = threading.Thread(target=files.put, args=("c", aborted))
    third.start()
    third.join(0.2)
    assert third.is_alive() and list(files.frames) == ["a", "b"]  # full: the reader waits, nothing is dropped
    with arrivals:
        files.frames.popleft()
        arrivals.notify_all()
    third.join(2)
    assert list(files.frames) == ["b", "c"] and files.dropped == 0


def test_stop_event_ends_a_live_run_with_everything_in_flight_written():
    source = FakeLiveSource(period=0.005)
    stop = threading.Event()
    records = []
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    stats = run_pipeline(source, Classifier(RecordingBackend(), ModelSpec(LABELS, 16, [0.5] * 3, [0.25] * 3)),
                         postprocess=identity, on_result=lambda frame, record: records.append(record), stop=stop)
    assert time.monotonic() - started < 3 and stats.stopped and records
    assert stats.frames == len(records)


def test_a_failing_backend_surfaces_its_error_instead_of_hanging(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(20):
        cv2.imwrite(str(folder / f"{index:02d}.png"), np.zeros((8, 8, 3), np.uint8))
    with open_source(str(folder)) as source, pytest.raises(RuntimeError, match="engine exploded"):
        run_pipeline(source, Classifier(RecordingBackend(fail_after=2), ModelSpec(LABELS, 8, [0.5] * 3, [0.25] * 3)),
                     postprocess=identity, batch_size=2)


def test_run_cli_writes_csv_only_changes_and_stats_json(capsys, trained_run, synth_data, tmp_path):
    from cli_helpers import invoke

    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"circle": 0.3}))
    result = invoke(capsys, "run", str(synth_data / "video.mp4"), "--run", str(trained_run), "--backend",
                    "onnxruntime", "--out", tmp_path / "o.jsonl", "--csv", tmp_path / "o.csv", "--smoothing", "0.5",
                    "--only-changes", "--thresholds", thresholds, "--stats-json", tmp_path / "stats.json")
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    sets = [tuple(sorted(item["label"] for item in r["labels"])) for r in records]
    assert records[0]["index"] == 0 and all(a != b for a, b in zip(sets, sets[1:]))  # a line only on change
    assert all(r["smoothed"] for r in records)
    rows = (tmp_path / "o.csv").read_text().splitlines()
    assert rows[0].startswith("source,index,timestamp,labels") and len(rows) == len(records) + 1
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames"] == 12 and stats["records"] == len(records)
    assert {"p50_ms", "p90_ms", "p99_ms"} <= set(stats["stages_ms"]["inference"])
    assert stats["latency"] == "service_time" and stats["end_to_end_ms"] is None  # a file: no "latency" to claim
    assert stats["queue_wait_ms"]["count"] == 12
    assert stats["threads"]["chosen_by"] == "policy" and stats["threads"]["cores"] >= 1
    assert "threads:" in result.err


@pytest.mark.parametrize("args, fragments", [
    (["nowhere://x"], ["nowhere://x"]),
    (["{video}", "--backend", "onnxruntime", "--cuda-graph"], ["--cuda-graph is for TensorRT engines"]),
    (["{video}", "--out", "{file}/sub/o.jsonl"], ["cannot write"]),
    (["{video}", "--smoothing", "1.5"], ["--smoothing"]),
])
def test_run_cli_bad_input_is_one_line(capsys, trained_run, synth_data, tmp_path, args, fragments):
    from cli_helpers import assert_one_line_error, invoke

    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    args = [a.format(video=synth_data / "video.mp4", file=blocker) for a in args]
    assert_one_line_error(invoke(capsys, "run", *args, "--run", str(trained_run)), *fragments)


def test_bench_cli_reports_alone_pipeline_and_naive_loop_in_interleaved_rounds(capsys, run_copy):
    from cli_helpers import invoke

    result = invoke(capsys, "bench", "--run", run_copy, "--batch", "1,2", "--iterations", "6", "--warmup", "1",
                    "--frames", "12", "--rounds", "3", "--threads", "1", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert [row["batch"] for row in report["results"]] == [1, 2]
    assert report["rounds"] == 3 and report["iterations_per_round"] == 2
    for row in report["results"]:
        assert len(row["rounds"]) == 3  # every round is kept
        for name in ("backend_alone", "pipeline", "naive_loop"):
            rates = sorted(entry[name]["images_per_s"] for entry in row["rounds"])
            summary = row[name]["images_per_s_spread"]
            assert row[name]["images_per_s"] == summary["median"] == rates[1]
            assert (summary["min"], summary["max"]) == (rates[0], rates[-1])
        assert all(entry["pipeline"]["frames"] == entry["naive_loop"]["frames"] == 12 for entry in row["rounds"])
        assert row["ratio"] == row["pipeline"]["images_per_s"] / row["backend_alone"]["images_per_s"]
        assert row["pipeline_over_naive"] == row["pipeline"]["images_per_s"] / row["naive_loop"]["images_per_s"]
    assert report["threads"]["inference"] == 1 and report["threads"]["chosen_by"] == "--threads"
    assert report["naive_threads"]["chosen_by"] == "library defaults"  # the loop a user writes
    assert report["backend"]["backend"] == "onnxruntime" and (run_copy / "reports" / "bench.json").is_file()
    table = invoke(capsys, "bench", "--run", run_copy, "--batch", "1", "--iterations", "2", "--warmup", "0",
                   "--frames", "4", "--rounds", "2")
    assert table.code == 0 and "vs naive" in table.out and "naive loop (decode, preprocess" in table.out


def test_a_cpu_run_loads_nothing_from_the_tensorrt_side(trained_run, synth_data):
    """`run` on ONNX Runtime's CPU provider never imports the engine builder, TensorRT or a CUDA binding."""
    import subprocess
    import sys

    probe = ("import sys, runpy\n"
             f"sys.argv = ['mlic-edge', 'run', {str(synth_data / 'video.mp4')!r}, '--run', {str(trained_run)!r}, "
             "'--backend', 'auto', '--max-frames', '2', '--json']\n"
             "try:\n    runpy.run_module('mlic_edge', run_name='__main__')\nexcept SystemExit as stop:\n"
             "    assert not stop.code, stop.code\n"
             "loaded = [m for m in sys.modules if m.startswith(('mlic_edge.runtime.engines', 'tensorrt', 'pycuda',"
             " 'cuda'))]\n"
             "print('LOADED', loaded, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stderr, result.stderr
