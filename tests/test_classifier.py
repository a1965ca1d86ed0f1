"""``mlic_edge.load()``: a classifier an application holds (runtime/inference/classifier.py).

It opens its backend once, takes the frames an application has (numpy BGR/RGB, batches, PIL images, paths), returns
typed results, streams any source ``run`` takes, and gives the same records as the CLI."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

import mlic_edge
from mlic_edge.errors import MlicError
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.classifier import Classifier
from mlic_edge.runtime.inference.postprocess import Result
from mlic_edge.spec import ModelSpec

from cli_helpers import invoke

LABELS = ["a", "b", "c"]


class ScoringBackend(Backend):
    """Scores from the mean pixel value of each image (so different images get different scores); records the batch
    sizes it was given and refuses to be entered by two threads at once, as a TensorRT context would misbehave."""

    def __init__(self, batch_range: tuple[int, int | None] = (1, None), delay_s: float = 0.0) -> None:
        self.info = BackendInfo("fake", "cpu", "fp32", "0")
        self.batch_range = batch_range
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.closed = 0
        self._inside = threading.Lock()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self._inside.acquire(blocking=False):
            raise RuntimeError("entered by two threads at once")
        try:
            low, high = self.batch_range
            assert low <= len(batch) <= (high or len(batch)), f"batch {len(batch)} outside {self.batch_range}"
            self.calls.append(len(batch))
            time.sleep(self.delay_s)
            level = batch.reshape(len(batch), -1).mean(axis=1, keepdims=True)
            return 1.0 / (1.0 + np.exp(-(level + np.array([[-0.5, 0.0, 0.5]]))))
        finally:
            self._inside.release()

    def close(self) -> None:
        self.closed += 1


def fake_classifier(**backend_options) -> Classifier:
    return Classifier(ScoringBackend(**backend_options), ModelSpec(LABELS, 16, [0.5] * 3, [0.25] * 3))


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24 + index, 32, 3), dtype=np.uint8) for index in range(count)]


# ------------------------------------------------------------------------------------------------- inputs
def test_every_input_form_gives_the_same_scores(tmp_path):
    from PIL import Image

    frame = frames(1)[0]
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    clf = fake_classifier()
    reference = clf(frame)
    assert isinstance(reference, Result) and reference.scores.dtype == np.float32
    assert reference.scores.shape == (3,) and reference.names == tuple(LABELS)
    same = [clf(np.ascontiguousarray(frame[:, :, ::-1]), rgb=True), clf(Image.fromarray(frame[:, :, ::-1])),
            clf(tmp_path / "frame.png"), clf(str(tmp_path / "frame.png")),
            clf(cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA))]
    for result in same:
        np.testing.assert_array_equal(result.scores, reference.scores)
    assert same[2].source == str(tmp_path / "frame.png") and reference.source is None


def test_batches_and_lists_give_one_result_each_in_order():
    clf = fake_classifier()
    images = [cv2.resize(image, (32, 24)) for image in frames(5)]
    one_by_one = [clf(image).scores for image in images]
    for batch in (np.stack(images), images, tuple(images)):
        results = clf.predict(batch)
        assert [result.index for result in results] == [0, 1, 2, 3, 4]
        np.testing.assert_allclose([result.scores for result in results], one_by_one, rtol=1e-6)
    assert clf.predict([]) == []


@pytest.mark.parametrize("bad, fragment", [
    (np.zeros((20, 20, 3), np.float32), "dtype float32"),
    (np.zeros((20, 20, 5), np.uint8), "shape (20, 20, 5)"),
    (np.zeros((2, 3, 20, 20, 3), np.uint8), "shape (2, 3, 20, 20, 3)"),
    ({"not": "an image"}, "cannot classify a dict"),
])
def test_what_is_not_an_image_is_refused_in_one_short_line(bad, fragment):
    with pytest.raises(MlicError) as error:
        fake_classifier()(bad)
    assert fragment in error.value.message and len(error.value.message) < 200 and error.value.hint
    assert "\n" not in error.value.message and "[[" not in error.value.message  # never the array itself


def test_paths_that_are_not_images_are_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    clf = fake_classifier()
    for path, fragment in ((tmp_path / "broken.jpg", "cannot read an image"), (tmp_path / "missing.png",
                                                                               "cannot read an image"),
                           (tmp_path, "not an image file"), ("rtsp://camera.local/stream", "not an image file")):
        with pytest.raises(MlicError, match=fragment) as error:
            clf(path)
        assert str(path) in error.value.message


# ------------------------------------------------------------------------------------------- backend range
def test_batches_are_split_and_padded_to_the_backends_range():
    clf = fake_classifier(batch_range=(2, 4))
    images = [cv2.resize(image, (32, 24)) for image in frames(7)]
    results = clf.predict(images)
    assert clf.backend.calls == [4, 3] and len(results) == 7
    single = clf(images[0])  # below the profile's minimum: padded with itself, the extra score dropped
    assert clf.backend.calls[-1] == 2
    np.testing.assert_allclose(single.scores, results[0].scores, rtol=1e-6)


def test_scores_of_the_wrong_shape_are_refused():
    class WrongWidth(ScoringBackend):
        def infer(self, batch):
            return np.zeros((len(batch), 5), np.float32)

    clf = Classifier(WrongWidth(), ModelSpec(LABELS, 16, [0.5] * 3, [0.25] * 3))
    with pytest.raises(MlicError, match=r"shape \(1, 5\) for 1 image\(s\) of a model with 3 labels"):
        clf(frames(1)[0])


# ---------------------------------------------------------------------------------------- results, timing
def test_result_fields_top_k_record_and_plot():
    clf = Classifier(ScoringBackend(), ModelSpec(LABELS, 16, [0.5] * 3, [0.25] * 3), threshold=0.0, top_k=2)
    frame = np.full((40, 60, 3), 200, np.uint8)
    result = clf(frame)
    ordered = sorted(LABELS, key=lambda label: -result.scores[LABELS.index(label)])
    assert [item["label"] for item in result.labels] == ordered  # threshold 0: every label, highest first
    assert [item["label"] for item in result.top_k()] == ordered[:2]
    assert [item["label"] for item in result.top_k(1)] == ordered[:1]
    assert set(result.timing) == {"preprocess", "inference", "postprocess"}
    assert all(value >= 0 for value in result.timing.values())
    record = result.to_dict(scores=True)
    assert set(record) == {"index", "labels", "top_k", "scores", "timing"} and len(record["scores"]) == 3
    json.dumps(record)
    drawn = result.plot(frame)
    assert drawn.shape == frame.shape and not np.array_equal(drawn, frame) and (frame == 200).all()


# ------------------------------------------------------------------------------------ resources, threads
def test_close_releases_once_and_refuses_later_calls():
    with fake_classifier() as clf:
        clf(frames(1)[0])
    assert clf.backend.closed == 1
    clf.close()
    assert clf.backend.closed == 1
    with pytest.raises(MlicError, match="closed"):
        clf(frames(1)[0])


def test_threads_may_share_a_classifier():
    """The docstring's promise: calls from several threads are safe (they take turns on the backend)."""
    clf = fake_classifier(delay_s=0.001)
    images = [cv2.resize(image, (32, 24)) for image in frames(8)]
    expected = [clf(image).scores for image in images]
    failures, outcomes = [], {}

    def worker(number: int) -> None:
        try:
            outcomes[number] = [clf(images[(number + step) % 8]).scores for step in range(16)]
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    for number, scores in outcomes.items():
        np.testing.assert_allclose(scores, [expected[(number + step) % 8] for step in range(16)], rtol=1e-6)


# ------------------------------------------------------------------------------------- a real trained run
def test_load_opens_once_and_a_second_call_reopens_nothing(trained_run, synth_data, monkeypatch):
    from mlic_edge.runtime.inference import backends

    opened = []
    real = backends.create_backend
    monkeypatch.setattr(backends, "create_backend", lambda *a, **k: opened.append(a) or real(*a, **k))
    image = cv2.imread(str(next((synth_data / "JPEGImages").glob("*.jpg"))))
    with mlic_edge.load(trained_run, backend="onnxruntime", device="cpu") as clf:
        session = clf.backend.session
        first, second = clf(image), clf(image)
        assert clf.backend.session is session and len(opened) == 1
        np.testing.assert_array_equal(first.scores, second.scores)
        assert clf.info.backend == "onnxruntime" and clf.names == tuple(json.loads(
            (trained_run / "run.json").read_text())["labels"])
    assert clf.backend.session is None  # released on leaving the with


def test_load_refuses_unknown_options_listing_the_valid_ones(trained_run):
    with pytest.raises(MlicError, match=r"unknown option batch for load \(how a source is read goes to clf.stream") \
            as error:
        mlic_edge.load(trained_run, batch=8)
    assert "threshold" in error.value.hint and "top_k" in error.value.hint
    with mlic_edge.load(trained_run, backend="onnxruntime") as clf:
        with pytest.raises(MlicError, match="unknown option epochs for StreamOptions"):
            clf.stream("x.mp4", epochs=2)


def test_load_takes_a_model_name_and_a_bundle(run_copy, tmp_path, monkeypatch):
    from mlic_edge.commands.pack import pack

    bundle = pack(mlic_edge.Run(run_copy).dir, tmp_path / "baseline.mlic.tar.gz", images=False)["bundle"]
    monkeypatch.chdir(tmp_path)
    with mlic_edge.load(bundle, backend="onnxruntime") as clf:  # unpacked into runs/<name>, every member checked
        assert (tmp_path / "runs").is_dir() and len(clf.names) == 4
    with mlic_edge.load(sorted((tmp_path / "runs").iterdir())[0].name, backend="onnxruntime") as clf:
        assert len(clf.names) == 4


def test_the_api_and_the_cli_write_identical_records(trained_run, synth_data, capsys):
    """``clf.stream(folder)``, ``clf.predict(paths)`` and ``mlic-edge run folder --scores --json`` agree record for
    record (timing aside: it is measured anew each time)."""
    folder = synth_data / "JPEGImages"
    cli = invoke(capsys, "run", folder, "--run", trained_run, "--backend", "onnxruntime", "--device", "cpu",
                 "--batch", "4", "--max-frames", "12", "--scores", "--json")
    assert cli.code == 0, cli.err
    lines = [json.loads(line) for line in cli.out.splitlines()]  # stdout holds nothing but JSON
    records, summary = lines[:-1], lines[-1]
    assert "labels" not in summary and summary["records"] == len(records) == 12
    assert all(len(record["scores"]) == 4 and set(record["timing"]) >= {"inference_ms", "preprocess_ms"}
               for record in records)

    def untimed(record: dict) -> dict:
        return {key: value for key, value in record.items() if key != "timing"}

    with mlic_edge.load(trained_run, backend="onnxruntime", device="cpu") as clf:
        stream = clf.stream(str(folder), batch=4, max_frames=12)
        streamed = [result.to_dict(scores=True) for result in stream]
        assert stream.summary["records"] == 12 and stream.summary["backend"]["backend"] == "onnxruntime"
        assert [untimed(record) for record in streamed] == [untimed(record) for record in records]
        direct = clf.predict([record["source"] for record in records])
    for result, record in zip(direct, records):
        assert result.source == record["source"] and result.labels == record["labels"]
        np.testing.assert_allclose(result.scores, record["scores"], atol=1e-5)


def test_run_json_without_out_keeps_stdout_to_json_lines(trained_run, synth_data, capsys):
    cli = invoke(capsys, "run", synth_data / "video.mp4", "--run", trained_run, "--backend", "onnxruntime",
                 "--max-frames", "3")
    assert cli.code == 0, cli.err
    records = [json.loads(line) for line in cli.out.splitlines()]
    assert len(records) == 3 and all("scores" not in record and "timing" in record for record in records)
    assert "latency per frame" in cli.err  # the table is for people: stderr


def test_stream_stops_when_the_loop_is_left(trained_run, synth_data):
    with mlic_edge.load(trained_run, backend="onnxruntime") as clf:
        stream = clf.stream(str(synth_data / "video.mp4"))
        for result in stream:
            assert result.source.endswith("video.mp4") and result.index == 0 and "decode" in result.timing
            break
        assert not [thread for thread in threading.enumerate() if thread.name == "mlic-edge-stream"]


def test_predict_requests_stream_fields_take_their_defaults_from_stream_options():
    """``StreamOptions`` holds the defaults of how a source is read; ``PredictRequest`` (the CLI's) takes them from it
    and has a field for each."""
    from dataclasses import fields

    from mlic_edge.commands.predict import LOAD_FIELDS, PredictRequest
    from mlic_edge.runtime.inference.streams import StreamOptions

    request = PredictRequest()
    for item in fields(StreamOptions):
        assert getattr(request, item.name) == item.default, item.name
    assert set(LOAD_FIELDS) | {item.name for item in fields(StreamOptions)} | {"all_scores"} == \
        {item.name for item in fields(PredictRequest)}


def test_predict_to_files_is_run_with_outputs(trained_run, synth_data, tmp_path, capsys):
    """``Run.predict_to_files`` (the API's ``run --out --csv --stats-json``) writes what the CLI writes, and refuses
    an output onto its input like the CLI (the hint in keyword form)."""
    folder = synth_data / "JPEGImages"
    summary = mlic_edge.Run(trained_run).predict_to_files(
        str(folder), out=tmp_path / "api.jsonl", csv=tmp_path / "api.csv", stats_json=tmp_path / "api.stats.json",
        backend="onnxruntime", max_frames=5, batch=2)
    cli = invoke(capsys, "run", folder, "--run", trained_run, "--backend", "onnxruntime", "--max-frames", "5",
                 "--batch", "2", "--out", tmp_path / "cli.jsonl", "--csv", tmp_path / "cli.csv")
    assert cli.code == 0, cli.err
    assert summary["records"] == 5 and json.loads((tmp_path / "api.stats.json").read_text())["records"] == 5

    def untimed(path):
        return [{k: v for k, v in json.loads(line).items() if k != "timing"} for line in path.read_text().splitlines()]

    assert untimed(tmp_path / "api.jsonl") == untimed(tmp_path / "cli.jsonl")
    assert (tmp_path / "api.csv").read_text() == (tmp_path / "cli.csv").read_text()
    victim = sorted(folder.glob("*.jpg"))[0]
    with pytest.raises(MlicError, match="--out|out") as error:
        mlic_edge.Run(trained_run).predict_to_files(str(folder), out=victim, backend="onnxruntime")
    assert victim.stat().st_size > 100 and "--" not in (error.value.hint or "")
