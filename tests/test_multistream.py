"""Several sources in one run (runtime/inference/streams.py, pipeline.py): names, batches formed across streams with
each stream's frames in order, live streams giving their newest frame, a stream that fails or drops ending alone, and
`mlic-edge run A B C` writing per-stream outputs, statistics and an exit status that says whether any stream failed."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

from cli_helpers import assert_one_line_error, invoke
from mlic_edge.errors import MlicError, SourceError
from mlic_edge.runtime.inference.classifier import Classifier
from mlic_edge.runtime.inference.pipeline import Stream, run_pipeline
from mlic_edge.runtime.inference.sources import Frame, Source
from mlic_edge.runtime.inference.streams import StreamSpec, output_paths, parse_streams
from mlic_edge.spec import ModelSpec
from test_pipeline import LABELS, FakeLiveSource, RecordingBackend, identity
from test_sources import MjpegServer

SPEC = ModelSpec(LABELS, 16, [0.5] * 3, [0.25] * 3)


class FileFrames(Source):
    """A file stream of ``count`` frames whose brightness encodes (stream, index), read at decode speed."""

    kind = "video"
    live = False

    def __init__(self, name: str, base: int, count: int) -> None:
        super().__init__(name)
        self.base, self.count = base, count

    def __iter__(self):
        for index in range(self.count):
            if self.stopped:
                return
            yield Frame(np.full((12, 16, 3), self.base + index, np.uint8), self.spec, index, index / 10, 0.1)


class FailingLive(FakeLiveSource):
    """A camera that is lost (after its reconnects) once it has delivered ``frames`` frames."""

    def __init__(self, frames: int) -> None:
        super().__init__(period=0.002)
        self.spec, self.lost_after = "failing-camera", frames

    def __iter__(self):
        for count, frame in enumerate(super().__iter__()):
            if count == self.lost_after:
                raise SourceError(f"stream {self.spec!r} lost after 2 reconnects")
            yield frame


def streams_of(*sources: Source) -> list[Stream]:
    return [Stream(f"s{number}", source) for number, source in enumerate(sources)]


# ------------------------------------------------------------------------------------------------------ names
def test_streams_are_named_by_prefix_or_after_their_source(tmp_path):
    listed = tmp_path / "sources.txt"
    listed.write_text("# the yard\nyard=rtsp://10.0.0.7/live?user=a&pw=b\n\n/data/clip.mp4\n")
    streams = parse_streams(["door=rtsp://cam1.local/main", "camera0", "gst:videotestsrc num-buffers=5 ! appsink",
                             "csi://1", "other/clip.mp4"], listed)
    assert streams == [StreamSpec("door", "rtsp://cam1.local/main"), StreamSpec("camera0", "camera0"),
                       StreamSpec("gstreamer", "gst:videotestsrc num-buffers=5 ! appsink"), StreamSpec("csi1", "csi://1"),
                       StreamSpec("clip", "other/clip.mp4"), StreamSpec("yard", "rtsp://10.0.0.7/live?user=a&pw=b"),
                       StreamSpec("clip-2", "/data/clip.mp4")]  # a URL's query keeps its '=', names stay unique


@pytest.mark.parametrize("sources, fragment", [
    (["a.mp4", "a.mp4"], "source a.mp4 given more than once"),
    (["x=a.mp4", "x=b.mp4"], "stream name x given more than once"),
    ([], "no source given"),
])
def test_repeated_sources_and_names_are_refused(sources, fragment):
    with pytest.raises(MlicError, match=fragment):
        parse_streams(sources)


def test_a_name_of_other_characters_is_refused_rather_than_opened_as_a_source():
    with pytest.raises(MlicError, match="stream name 'front door'"):
        parse_streams(["front door=rtsp://cam1/live"])


def test_an_existing_file_holding_an_equals_sign_is_a_source_not_a_name(tmp_path):
    odd = tmp_path / "a=b.mp4"
    odd.write_bytes(b"")
    assert parse_streams([str(odd)])[0].source == str(odd)


def test_outputs_take_the_stream_name_or_are_shared_and_a_video_is_never_mixed(tmp_path):
    assert output_paths(tmp_path / "{stream}.jsonl", ["a", "b"], "--out") == {
        "a": tmp_path / "a.jsonl", "b": tmp_path / "b.jsonl"}
    assert set(output_paths(tmp_path / "all.jsonl", ["a", "b"], "--out").values()) == {tmp_path / "all.jsonl"}
    with pytest.raises(MlicError, match="would mix 2 streams"):
        output_paths(tmp_path / "out.mp4", ["a", "b"], "--save-video", one_file=False)


# ------------------------------------------------------------------------------------------------- batching
def test_file_streams_are_batched_together_and_each_keeps_its_order():
    backend, records = RecordingBackend(), []
    sources = [FileFrames("a", 0, 9), FileFrames("b", 100, 5), FileFrames("c", 200, 7)]
    stats = run_pipeline(streams_of(*sources), Classifier(backend, SPEC), batch_size=4,
                         on_result=lambda frame, result: records.append(result))
    for number, source in enumerate(sources):
        mine = [result for result in records if result.stream == f"s{number}"]
        assert [result.index for result in mine] == list(range(source.count))  # all of them, in order
        assert stats.streams[number].frames == stats.streams[number].records == source.count
    assert stats.frames == 21 and sum(size * count for size, count in stats.batch_fill.items()) == 21
    assert max(len(batch) for batch in backend.batches) == 4
    streams_in = [{round((value * 0.25 + 0.5) * 255) // 100 for value in batch[:, 0, 0, 0]} for batch in backend.batches]
    mixed = [batch for batch in streams_in if len(batch) > 1]
    assert mixed, "no batch held frames of more than one stream"


def test_live_streams_give_one_newest_frame_per_batch_and_fill_it_within_the_timeout():
    backend, records = RecordingBackend(delay_s=0.01), []
    cameras = [FakeLiveSource(period=0.003, frames=120), FakeLiveSource(period=0.004, frames=90)]
    stats = run_pipeline(streams_of(*cameras), Classifier(backend, SPEC), batch_size=8, batch_timeout_s=0.02,
                         on_result=lambda frame, result: records.append(result))
    assert max(len(batch) for batch in backend.batches) == 2  # at most one frame per live stream in a batch
    assert stats.batch_fill.get(2, 0) > stats.batch_fill.get(1, 0)  # the timeout lets both streams fill it
    for number, camera in enumerate(cameras):
        indices = [result.index for result in records if result.stream == f"s{number}"]
        assert indices == sorted(indices) and indices[-1] == camera.frames - 1
        assert len(indices) + stats.streams[number].dropped == camera.frames  # processed or counted as dropped
    assert stats.dropped == sum(stream.dropped for stream in stats.streams)


def test_a_lost_stream_ends_alone_and_says_why_while_the_others_run_to_their_end():
    records = []
    stats = run_pipeline(streams_of(FileFrames("a", 0, 40), FailingLive(frames=5), FileFrames("b", 100, 30)),
                         Classifier(RecordingBackend(delay_s=0.002), SPEC), batch_size=4,
                         on_result=lambda frame, result: records.append(result))
    assert [stream.error for stream in stats.streams] == [None, "stream 'failing-camera' lost after 2 reconnects", None]
    assert stats.streams[0].frames == 40 and stats.streams[2].frames == 30
    assert stats.streams[1].frames <= 5


def test_with_one_stream_its_error_is_the_runs():
    with pytest.raises(SourceError, match="lost after 2 reconnects"):
        run_pipeline(FailingLive(frames=5), Classifier(RecordingBackend(), SPEC), postprocess=identity)


def test_max_frames_counts_per_stream():
    stats = run_pipeline(streams_of(FileFrames("a", 0, 20), FileFrames("b", 100, 20)),
                         Classifier(RecordingBackend(), SPEC), batch_size=3, max_frames=7)
    assert [stream.frames for stream in stats.streams] == [7, 7]


# -------------------------------------------------------------------------------------- real sources, the CLI
@pytest.fixture
def clips(tmp_path):
    """Three short videos of different lengths."""
    paths = []
    for name, frames in (("north", 12), ("south", 7), ("east", 9)):
        path = tmp_path / "in" / f"{name}.mp4"
        path.parent.mkdir(exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
        for value in range(frames):
            writer.write(np.full((48, 64, 3), value * 20, np.uint8))
        writer.release()
        paths.append((name, path, frames))
    return paths


def test_run_writes_one_file_per_stream_from_a_template(capsys, run_copy, clips, tmp_path):
    out = tmp_path / "out"
    result = invoke(capsys, "run", *[str(path) for _, path, _ in clips], "--run", run_copy, "--backend",
                    "onnxruntime", "--batch", "4", "--out", f"{out}/{{stream}}.jsonl", "--stats-json",
                    tmp_path / "stats.json")
    assert result.code == 0, result.err
    stats = json.loads((tmp_path / "stats.json").read_text())
    for name, _, frames in clips:
        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert [record["index"] for record in records] == list(range(frames))
        assert {record["stream"] for record in records} == {name}
        row = next(stream for stream in stats["streams"] if stream["name"] == name)
        assert row["frames"] == frames and row["fps"] > 0 and row["error"] is None
    assert stats["frames"] == 28 and sum(size * count for size, count in
                                         ((int(size), count) for size, count in stats["batch_fill"].items())) == 28
    assert "per stream" in result.err and "batches by size" in result.err


def test_run_writes_one_shared_file_whose_records_name_their_stream(capsys, run_copy, clips, tmp_path):
    named = [f"{name.upper()}={path}" for name, path, _ in clips]
    result = invoke(capsys, "run", *named, "--run", run_copy, "--backend", "onnxruntime", "--out",
                    tmp_path / "all.jsonl", "--csv", tmp_path / "all.csv")
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert {record["stream"]: 0 for record in records}.keys() == {"NORTH", "SOUTH", "EAST"}
    assert len(records) == 28
    rows = (tmp_path / "all.csv").read_text().splitlines()
    assert rows[0].startswith("stream,source,index") and len(rows) == 29


def test_run_refuses_a_video_that_would_mix_streams_and_outputs_onto_inputs(capsys, run_copy, clips, tmp_path):
    sources = [str(path) for _, path, _ in clips]
    mixed = invoke(capsys, "run", *sources, "--run", run_copy, "--save-video", tmp_path / "all.mp4")
    assert_one_line_error(mixed, "would mix 3 streams", "{stream}")
    onto = invoke(capsys, "run", *sources, "--run", run_copy, "--out", f"{clips[0][1].parent}/{{stream}}.mp4")
    assert_one_line_error(onto, "north.mp4")  # the template expands onto an input
    assert clips[0][1].stat().st_size > 0


def test_a_stream_that_drops_ends_alone_and_the_exit_status_says_so(capsys, run_copy, clips, tmp_path):
    server = MjpegServer(interval=0.01)
    try:
        threading.Timer(0.8, server.stop).start()  # the camera goes away for good mid-run
        listed = tmp_path / "sources.txt"
        listed.write_text(f"cam={server.url}\n{clips[0][1]}\n{clips[1][1]}\n")
        result = invoke(capsys, "run", "--sources", listed, "--run", run_copy, "--backend", "onnxruntime",
                        "--max-reconnects", "1", "--out", tmp_path / "out" / "{stream}.jsonl", "--stats-json",
                        tmp_path / "stats.json")
    finally:
        server.stop()
    assert_one_line_error(result, "1 of 3 streams ended in error", "cam:", "lost after 1 reconnects")
    stats = json.loads((tmp_path / "stats.json").read_text())  # written whole before the exit status
    by_name = {stream["name"]: stream for stream in stats["streams"]}
    assert by_name["north"]["frames"] == 12 and by_name["south"]["frames"] == 7
    assert by_name["cam"]["frames"] > 0 and "lost after" in by_name["cam"]["error"]
    camera_records = (tmp_path / "out" / "cam.jsonl").read_text().splitlines()
    assert len(camera_records) == by_name["cam"]["records"] and json.loads(camera_records[-1])["stream"] == "cam"


def test_a_stream_that_cannot_be_opened_is_left_out_and_reported(capsys, run_copy, clips, tmp_path):
    result = invoke(capsys, "run", str(clips[0][1]), "gone=rtsp://127.0.0.1:9/none", "--run", run_copy,
                    "--backend", "onnxruntime", "--max-reconnects", "0", "--out", tmp_path / "all.jsonl")
    assert_one_line_error(result, "1 of 2 streams ended in error", "gone: not opened")
    assert len((tmp_path / "all.jsonl").read_text().splitlines()) == 12


def test_the_classifier_streams_several_sources(run_copy, clips):
    import mlic_edge

    with mlic_edge.load(run_copy, backend="onnxruntime") as clf:
        stream = clf.stream([f"{name}={path}" for name, path, _ in clips], batch=4)
        results = list(stream)
    for name, _, frames in clips:
        assert [result.index for result in results if result.stream == name] == list(range(frames))
    assert [row["name"] for row in stream.summary["streams"]] == ["north", "south", "east"]
    assert stream.summary["kind"] == "streams" and stream.summary["frames"] == 28
