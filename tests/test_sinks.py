"""Postprocessing (thresholds, smoothing, only-changes), sinks and latency statistics — no model needed."""

import csv
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from mlic_edge.errors import MlicError
from mlic_edge.runtime.inference import sinks
from mlic_edge.runtime.inference.latency import WINDOW, LatencyRecorder, PeriodicStats, latency_table, stats_line
from mlic_edge.runtime.inference.postprocess import Postprocessor, decide_labels, read_thresholds
from mlic_edge.runtime.inference.sinks import CsvSink, JsonlSink, Sink, VideoSink, WindowSink, check_writable

LABELS = ["cat", "dog", "car", "tree"]


def frame(index, source="camera0"):
    return SimpleNamespace(image=np.zeros((24, 32, 3), np.uint8), source=source, index=index, timestamp=index / 10)


def meta(index, source="camera0"):
    return {"source": source, "index": index, "timestamp": index / 10}


# ------------------------------------------------------------------------------------------------ thresholds
def test_thresholds_from_json_and_csv_with_defaults(tmp_path):
    (tmp_path / "t.json").write_text('{\n  "dog": 0.2,\n  "tree": 0.9\n}\n')
    (tmp_path / "t.csv").write_text("label,threshold\n# tuned on val\ndog, 0.2\n\ntree,0.9\n")
    expected = np.array([0.4, 0.2, 0.4, 0.9], np.float32)
    np.testing.assert_allclose(read_thresholds(tmp_path / "t.json", LABELS, default=0.4), expected)
    np.testing.assert_allclose(read_thresholds(tmp_path / "t.csv", LABELS, default=0.4), expected)


@pytest.mark.parametrize("name, text, fragment", [
    ("t.csv", "dog,0.2\nhorse,0.5\n", r"t.csv:2: unknown label 'horse'"),
    ("t.txt", "dog,1.5\n", r"t.txt:1: threshold '1.5' is not a number in \[0, 1\]"),
    ("t.csv", "dog,high\n", r"t.csv:1: threshold 'high'"),
    ("t.csv", "dog,0.2\ndog,0.3\n", r"t.csv:2: label 'dog' is already set on line 1"),
    ("t.json", '{\n  "dog": 0.2,\n  "horse": 0.5\n}', r"t.json:3: unknown label 'horse'"),
    ("t.json", '{\n  "dog": -0.1\n}', r"t.json:2: threshold -0.1"),
    ("t.json", '{"dog": 0.2,,}', r"t.json:1: not valid JSON"),
])
def test_bad_thresholds_file_names_file_and_line(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    with pytest.raises(MlicError, match=fragment) as error:
        read_thresholds(tmp_path / name, LABELS)
    assert error.value.hint


def test_per_class_thresholds_decide_labels():
    scores = np.array([0.45, 0.3, 0.6, 0.95])
    over, best = decide_labels(scores, LABELS, np.array([0.4, 0.5, 0.7, 0.9]), top_k=2)
    assert [item["label"] for item in over] == ["tree", "cat"]  # car 0.6 < its 0.7, cat 0.45 >= its 0.4
    assert [item["label"] for item in best] == ["tree", "car"]
    result = Postprocessor(LABELS, threshold=np.array([0.4, 0.5, 0.7, 0.9]))(scores, meta(0))
    assert [item["label"] for item in result.labels] == ["tree", "cat"]


def test_postprocessor_record_fields():
    record = Postprocessor(LABELS, threshold=0.5, top_k=1)(np.array([0.1, 0.7, 0.2, 0.6]), meta(3)).to_dict(scores=True)
    assert set(record.pop("timing")) == {"postprocess_ms"}
    assert record == {"source": "camera0", "index": 3, "timestamp": 0.3,
                      "labels": [{"label": "dog", "score": 0.7}, {"label": "tree", "score": 0.6}],
                      "top_k": [{"label": "dog", "score": 0.7}], "scores": [0.1, 0.7, 0.2, 0.6]}


@pytest.mark.parametrize("options", [{"smoothing": 1.0}, {"smoothing": -0.1}, {"top_k": -1}, {"threshold": 1.2},
                                     {"threshold": np.array([0.5, 0.5])}])
def test_postprocessor_refuses_bad_options(options):
    with pytest.raises(MlicError):
        Postprocessor(LABELS, **options)


# ------------------------------------------------------------------------------------- smoothing, only changes
def label_sets(postprocessor, cat_scores, source="camera0"):
    records = [postprocessor(np.array([value, 0.0, 0.0, 0.0]), meta(i, source)) for i, value in enumerate(cat_scores)]
    return [tuple(item["label"] for item in result.labels) for result in records]


def test_smoothing_steadies_a_flickering_label():
    flicker = [0.9, 0.1] * 4
    assert label_sets(Postprocessor(LABELS), flicker) == [("cat",), ()] * 4
    assert label_sets(Postprocessor(LABELS, smoothing=0.8), flicker) == [("cat",)] * 8
    # A label missing one frame in three stays on for good (a 50/50 flicker would settle at 0.5 ± 0.044).
    assert set(label_sets(Postprocessor(LABELS, smoothing=0.8), [0.9, 0.9, 0.1] * 30)) == {("cat",)}


def test_smoothing_is_per_source_so_folder_images_stay_independent():
    postprocessor = Postprocessor(LABELS, smoothing=0.8)
    assert postprocessor(np.array([0.9, 0, 0, 0]), meta(0, "a.jpg")).labels[0]["label"] == "cat"
    record = postprocessor(np.array([0.1, 0, 0, 0]), meta(1, "b.jpg")).to_dict()
    assert record["labels"] == [] and record["smoothed"] is True and record["top_k"][0]["score"] == 0.1


def test_only_changes_emits_the_first_frame_then_changes():
    postprocessor = Postprocessor(LABELS, only_changes=True)
    sequence = [[0.9, 0, 0, 0], [0.8, 0, 0, 0], [0.9, 0.7, 0, 0], [0.9, 0.6, 0, 0], [0.1, 0, 0, 0], [0.2, 0, 0, 0]]
    emitted = [postprocessor(np.array(scores), meta(i)) for i, scores in enumerate(sequence)]
    assert [result.index for result in emitted if result] == [0, 2, 4]
    assert postprocessor(np.array([0.1, 0, 0, 0]), meta(0, "camera1")) is not None  # another stream starts afresh


# ------------------------------------------------------------------------------------------------------ sinks
RECORDS = [Postprocessor(LABELS, top_k=2)(np.array([0.9, 0.1, 0.6, i / 10]), meta(i)).to_dict(scores=True)
           for i in range(5)]


def write_records(sink, count, ok):
    for record in RECORDS[:count]:
        sink.write(frame(record["index"]), record)
    sink.close(ok=ok)


@pytest.mark.parametrize("ok", [True, False])
def test_jsonl_file_is_complete_after_normal_and_interrupted_close(tmp_path, ok):
    path = tmp_path / "out" / "preds.jsonl"
    sink = JsonlSink(path)
    assert isinstance(sink, Sink)
    write_records(sink, 3, ok)
    assert [json.loads(line) for line in path.read_text().splitlines()] == RECORDS[:3]
    assert path.read_text().endswith("\n")


def test_jsonl_lines_are_visible_while_running(tmp_path):
    path = tmp_path / "live.jsonl"
    sink = JsonlSink(path)
    sink.write(frame(0), RECORDS[0])
    assert json.loads(path.read_text()) == RECORDS[0]  # flushed per line, at the final path, for a tailing reader
    sink.write(frame(1), RECORDS[1])
    sink.close()
    assert len(path.read_text().splitlines()) == 2


def test_jsonl_to_stdout(capsys):
    sink = JsonlSink(None)
    write_records(sink, 2, ok=True)
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == RECORDS[:2]


def test_failed_run_before_any_record_leaves_old_output_alone(tmp_path):
    (tmp_path / "preds.jsonl").write_text("previous\n")
    (tmp_path / "preds.csv").write_text("previous\n")
    JsonlSink(tmp_path / "preds.jsonl").close(ok=False)
    CsvSink(tmp_path / "preds.csv", LABELS).close(ok=False)
    assert (tmp_path / "preds.jsonl").read_text() == (tmp_path / "preds.csv").read_text() == "previous\n"
    JsonlSink(tmp_path / "empty.jsonl").close()
    assert (tmp_path / "empty.jsonl").read_text() == ""


@pytest.mark.parametrize("ok", [True, False])
def test_csv_header_columns_and_rows(tmp_path, ok):
    path = tmp_path / "preds.csv"
    write_records(CsvSink(path, LABELS), 3, ok)
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["source", "index", "timestamp", "labels", *LABELS]
    assert len(rows) == 4 and all(len(row) == 8 for row in rows)
    assert rows[1] == ["camera0", "0", "0.0", "cat;car", "0.9", "0.1", "0.6", "0.0"]
    assert rows[3][3] == "cat;car" and float(rows[3][7]) == 0.2


def test_csv_without_all_scores_fills_the_scores_it_knows(tmp_path):
    path = tmp_path / "preds.csv"
    record = Postprocessor(LABELS, top_k=1)(np.array([0.2, 0.7, 0.6, 0.1]), meta(0, "a, b.jpg")).to_dict()
    sink = CsvSink(path, LABELS)
    sink.write(frame(0), record)
    sink.close()
    assert list(csv.reader(path.open()))[1] == ["a, b.jpg", "0", "0.0", "dog;car", "", "0.7", "0.6", ""]
    CsvSink(tmp_path / "empty.csv", LABELS).close()
    assert (tmp_path / "empty.csv").read_text() == "source,index,timestamp,labels,cat,dog,car,tree\n"


class FillingDisk:
    """A real output file on a disk that fills up part-way through the next write (what ENOSPC looks like)."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        self.handle.write(data[: len(data) // 2])  # half a record reaches the disk ...
        raise OSError(28, "No space left on device")  # ... then the disk is full

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.mark.parametrize("sink_type", ["jsonl", "csv"])
def test_write_error_is_one_clear_line_and_the_file_ends_on_a_whole_record(tmp_path, sink_type):
    path = tmp_path / f"preds.{sink_type}"
    sink = JsonlSink(path) if sink_type == "jsonl" else CsvSink(path, LABELS)
    sink.write(frame(0), RECORDS[0])
    valid = path.read_bytes()
    sink._file._handle = FillingDisk(sink._file._handle)
    with pytest.raises(MlicError, match=f"cannot write .*preds.{sink_type}: No space left on device") as error:
        sink.write(frame(1), RECORDS[1])
    assert "1 record(s) already in it stay valid" in error.value.hint
    sink.close(ok=False)
    assert path.read_bytes() == valid  # the half-written record was cut back
    if sink_type == "jsonl":
        assert json.loads(path.read_text()) == RECORDS[0]


def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    first, second = JsonlSink(tmp_path / "preds.jsonl"), JsonlSink(tmp_path / "preds.jsonl")
    first.write(frame(0), RECORDS[0])
    with pytest.raises(MlicError, match="is being written by another process"):
        second.write(frame(0), RECORDS[1])
    first.write(frame(1), RECORDS[1])
    first.close()
    assert [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()] == RECORDS[:2]


@pytest.mark.parametrize("ok", [True, False])
def test_video_sink_keeps_the_written_frames(tmp_path, ok):
    path = tmp_path / "out.mp4"
    write_records(VideoSink(path, fps=5), 4, ok)
    assert int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    VideoSink(tmp_path / "never.mp4", fps=5).close(ok)  # no frame: nothing created, not even a temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_window_refuses_cleanly_without_a_display(monkeypatch):
    monkeypatch.setattr(sinks.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(MlicError, match="needs a display") as error:
        WindowSink("test")
    assert "--save-video" in error.value.hint


def test_window_stops_on_q_and_explains_a_gui_less_opencv(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":99")
    shown = []
    monkeypatch.setattr(cv2, "imshow", lambda title, image: shown.append(image.shape))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda title, prop: 1.0)
    monkeypatch.setattr(cv2, "destroyWindow", lambda title: None)
    keys = iter([-1, ord("q")])
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    window = WindowSink("test")
    window.write(frame(0), RECORDS[0])
    assert not window.stop_requested
    window.write(frame(1), RECORDS[1])
    assert window.stop_requested and shown == [(24, 32, 3)] * 2
    window.close()

    def no_gui(title, image):
        raise cv2.error("OpenCV(5.0) error: (-2:Unspecified error) The function is not implemented.")

    monkeypatch.setattr(cv2, "imshow", no_gui)
    with pytest.raises(MlicError, match="cannot open a window: .*not implemented"):
        WindowSink("test").write(frame(0), RECORDS[0])


def test_check_writable(tmp_path, monkeypatch):
    check_writable(tmp_path / "new" / "deeper" / "preds.jsonl")  # creatable folders are fine
    (tmp_path / "a_file").write_text("")
    with pytest.raises(MlicError, match=r"cannot write .*preds.jsonl: .*a_file is a file"):
        check_writable(tmp_path / "a_file" / "preds.jsonl")
    with pytest.raises(MlicError, match="it is a folder"):
        check_writable(tmp_path)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    (read_only / "old.jsonl").write_text("")
    real_access = os.access

    def access(path, mode):  # root may write anywhere: pretend this folder is read-only
        return real_access(path, mode) and read_only not in (Path(path), Path(path).parent)

    monkeypatch.setattr(sinks.os, "access", access)
    with pytest.raises(MlicError, match="no permission to write in .*read_only"):
        check_writable(read_only / "preds.jsonl")
    with pytest.raises(MlicError, match="old.jsonl: permission denied"):
        check_writable(read_only / "old.jsonl")


# ---------------------------------------------------------------------------------------------------- latency
def test_percentiles_match_numpy_and_the_summary_has_every_field():
    samples = np.random.default_rng(0).gamma(2.0, 5.0, size=1000)
    recorder = LatencyRecorder()
    for value in samples:
        recorder.add("inference", value)
        recorder.add("end_to_end", value * 2)
    recorder.add("preprocess", 9.0, frames=3)
    summary = recorder.summary()
    row = summary["stages_ms"]["inference"]
    for key, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
        assert row[key] == pytest.approx(np.percentile(samples, q))
        assert summary["end_to_end_ms"][key] == pytest.approx(np.percentile(samples * 2, q))
    assert row["mean_ms"] == pytest.approx(samples.mean()) and row["count"] == 1000
    assert summary["stages_ms"]["preprocess"] == {"count": 3, "mean_ms": 3.0, "p50_ms": 3.0, "p90_ms": 3.0,
                                                  "p99_ms": 3.0}
    assert list(summary["stages_ms"]) == ["preprocess", "inference"]  # pipeline order, measured stages only
    assert set(summary) == {"frames", "dropped", "wall_s", "fps", "latency", "stages_ms", "queue_wait_ms",
                            "end_to_end_ms"}
    with pytest.raises(MlicError, match="unknown latency stage"):
        recorder.add("nap", 1.0)


@pytest.mark.parametrize("live", [True, False])
def test_a_frames_time_in_the_pipeline_splits_into_service_and_queue_wait(live):
    now = [10.0]
    recorder = LatencyRecorder(clock=lambda: now[0])
    recorder.live = live
    now[0] = 10.050  # a frame captured at 10.000 is written 50 ms later, after 12 ms of work on it
    recorder.add_end_to_end(captured=10.0, service_ms=12.0)
    summary = recorder.summary()
    assert summary["queue_wait_ms"]["p50_ms"] == pytest.approx(38.0)
    if live:  # what a viewer waits: capture to output
        assert summary["latency"] == "capture_to_output" and summary["end_to_end_ms"]["p50_ms"] == pytest.approx(50)
    else:  # files are read ahead on purpose: their wait is no latency a camera would see
        assert summary["latency"] == "service_time" and summary["end_to_end_ms"] is None
    title = latency_table(summary, "latency").title
    assert ("capture-to-output" in title) == live and ("queue wait is time frames spent queued" in title) != live


def test_recorder_is_thread_safe():
    recorder = LatencyRecorder()

    def work():
        for _ in range(2000):
            recorder.add("sink", 1.0)
            recorder.count_frames()
            recorder.count_dropped()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = recorder.summary()
    assert summary["frames"] == summary["dropped"] == summary["stages_ms"]["sink"]["count"] == 8000


def test_memory_is_bounded_and_means_stay_exact():
    recorder = LatencyRecorder()
    values = np.arange(50_000, dtype=float)
    for value in values:
        recorder.add("decode", value)
    recorder.add("decode", 7.0 * 3 * WINDOW, frames=3 * WINDOW)  # a batch wider than the window, 7 ms a frame
    series = recorder._series["decode"]
    assert series.recent.size == WINDOW
    total = values.sum() + 7.0 * 3 * WINDOW
    row = recorder.summary()["stages_ms"]["decode"]
    assert row["count"] == 50_000 + 3 * WINDOW and row["mean_ms"] == pytest.approx(total / row["count"])
    assert row["p99_ms"] == 7.0  # percentiles describe the latest samples


def test_stats_line_and_table():
    clock = iter([0.0, 4.0]).__next__
    recorder = LatencyRecorder(clock=clock)
    recorder.live = True
    recorder.start()
    recorder.stop()
    for value in (30.0, 33.0, 41.0):
        recorder.add("end_to_end", value)
        recorder.add("inference", value / 2)
    recorder.frames = 120
    recorder.dropped = 4
    summary = recorder.summary()
    line = stats_line(summary)
    assert line.startswith("120 frames, 30.0 fps, e2e p50 33.0 ms p99 40.8 ms, dropped 4"), line
    assert stats_line({**summary, "fps": None, "end_to_end_ms": None}) == "120 frames, dropped 4"
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(latency_table(summary, "latency"))
    text = console.export_text()
    assert all(word in text for word in ("p90 ms", "p99 ms", "inference", "capture to output", "4 dropped",
                                         "30.0 fps"))


def test_periodic_stats_cadence_with_a_fake_clock():
    now = [100.0]
    emitted = []
    recorder = LatencyRecorder()
    periodic = PeriodicStats(recorder, every_s=5, emit=emitted.append, clock=lambda: now[0])
    for moment, count in ((101, 0), (104.9, 0), (105, 1), (107, 1), (110.5, 2), (123, 3), (124.9, 3), (125, 4)):
        now[0] = moment
        recorder.count_frames()
        periodic.maybe_emit()
        assert len(emitted) == count, moment
    assert emitted[0].startswith("3 frames")
    with pytest.raises(MlicError, match="--stats-every"):
        PeriodicStats(recorder, 0, print)


def test_append_keeps_earlier_records_and_survives_copytruncate(tmp_path):
    """A restarted service must not wipe its predictions, and logrotate's copytruncate must not leave NUL bytes."""
    from mlic_edge.runtime.inference.sinks import JsonlSink

    path = tmp_path / "predictions.jsonl"
    first = JsonlSink(path, append=True)
    first.write(None, {"index": 0})
    first.close()
    second = JsonlSink(path, append=True)  # the service restarted
    second.write(None, {"index": 1})
    path.write_text("")  # logrotate copytruncate while the file is open
    second.write(None, {"index": 2})
    second.close()
    assert path.read_text() == '{"index": 2}\n'
    third = JsonlSink(path, append=True)
    third.write(None, {"index": 3})
    third.close()
    assert [json.loads(line)["index"] for line in path.read_text().splitlines()] == [2, 3]


@pytest.mark.parametrize("sink_type, whole, partial", [
    ("jsonl", '{"index": 0}\n{"index": 1}\n', '{"index": 2, "lab'),  # a run killed mid-record
    ("jsonl", "", '{"ind'),
    ("csv", "source,index,timestamp,labels,cat,dog,car,tree\ncamera0,0,0.0,cat,0.9,0.1,0.6,0.0\n", "camera0,1,0."),
    ("csv", "", "source,ind"),  # cut back to nothing: the header is written again
])
def test_append_onto_a_partial_last_line_cuts_it_back_first_and_says_so(tmp_path, capsys, sink_type, whole, partial):
    path = tmp_path / f"preds.{sink_type}"
    path.write_text(whole + partial)
    sink = JsonlSink(path, append=True) if sink_type == "jsonl" else CsvSink(path, LABELS, append=True)
    write_records(sink, 1, ok=True)
    fresh = tmp_path / f"fresh.{sink_type}"
    write_records(JsonlSink(fresh) if sink_type == "jsonl" else CsvSink(fresh, LABELS), 1, ok=True)
    appended = fresh.read_text()
    if sink_type == "csv" and whole:
        appended = appended.split("\n", 1)[1]  # the header is there already
    assert path.read_text() == whole + appended
    warning = " ".join(capsys.readouterr().err.split())
    assert f"{path}" in warning and f"{len(partial)} byte(s)" in warning
    write_records(JsonlSink(path, append=True) if sink_type == "jsonl" else CsvSink(path, LABELS, append=True), 1,
                  ok=True)
    assert "warning" not in capsys.readouterr().err  # a file ending on a whole line is appended to as it is
