"""Sources, the pipeline, sinks, backends and parity — all without torch in the loop except the reference."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from mlic_edge.errors import BackendError, ParityError, SourceError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends import create_backend, resolve_auto
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.latency import LatencyRecorder
from mlic_edge.runtime.checks.parity import Reference, check_parity, compare_scores, compute_parity, parity_report
from mlic_edge.runtime.inference.classifier import Classifier
from mlic_edge.runtime.inference.pipeline import run_pipeline
from mlic_edge.spec import ModelSpec
from mlic_edge.runtime.inference.postprocess import Postprocessor, decide_labels
from mlic_edge.runtime.inference.sinks import VideoSink
from mlic_edge.runtime.inference.sources import open_source


@pytest.fixture
def image_folder(tmp_path, synth_data):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:5]:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


def test_folder_source_ignores_non_images_and_flags_broken_ones(image_folder):
    with open_source(str(image_folder)) as source:
        frames = list(source)
    assert source.kind == "folder" and len(frames) == 6
    assert [f.image is None for f in frames] == [False] * 5 + [True]


def test_glob_image_and_video_sources(image_folder, synth_data):
    assert open_source(str(image_folder / "*.jpg")).kind == "glob"
    single = next(iter(open_source(str(next(image_folder.glob("*.jpg"))))))
    assert single.image is not None and single.image.ndim == 3
    with open_source(str(synth_data / "video.mp4")) as video:
        frames = list(video)
    assert video.kind == "video" and len(frames) == 12 and video.fps == pytest.approx(10)
    assert frames[-1].timestamp > frames[0].timestamp


@pytest.mark.parametrize("spec, fragment", [("missing/folder", "does not exist"), ("camera7", "cannot open camera"),
                                            ("rtsp://127.0.0.1:1/none", "cannot open stream")])
def test_bad_sources_are_clear_errors(spec, fragment):
    with pytest.raises(SourceError, match=fragment):
        open_source(spec)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="holds no images"):
        open_source(str(tmp_path))


def test_decide_labels_threshold_and_top_k():
    over, best = decide_labels(np.array([0.2, 0.9, 0.5, 0.7]), ["a", "b", "c", "d"], threshold=0.5, top_k=2)
    assert [x["label"] for x in over] == ["b", "d", "c"]
    assert [x["label"] for x in best] == ["b", "d"]


class FixedBackend(Backend):
    """Scores known in advance, to check what the pipeline and parity do with them."""

    def __init__(self, scores_for, precision="fp32"):
        self.scores_for = scores_for
        self.calls = []
        self.info = BackendInfo("fixed", "cpu", precision, "0")

    def infer(self, batch):
        self.calls.append(len(batch))
        return self.scores_for(batch)


def test_pipeline_batches_records_and_times_every_stage(image_folder):
    spec = ModelSpec(["a", "b"], 32, [0.5] * 3, [0.25] * 3)
    backend = FixedBackend(lambda batch: np.tile([[0.8, 0.1]], (len(batch), 1)))
    records, latency = [], LatencyRecorder()
    with open_source(str(image_folder)) as source:
        stats = run_pipeline(source, Classifier(backend, spec), batch_size=2, latency=latency,
                             postprocess=Postprocessor(spec.labels, top_k=1),
                             on_result=lambda frame, result: records.append(result.to_dict()))
    assert stats.frames == 5 and stats.unreadable == 1 and "zz_broken.jpg" in stats.unreadable_names[0]
    assert backend.calls == [2, 2, 1]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["labels"] == [{"label": "a", "score": 0.8}] and records[0]["top_k"][0]["label"] == "a"
    summary = latency.summary()
    assert set(summary["stages_ms"]) == {"decode", "preprocess", "inference", "postprocess", "sink"}
    assert summary["frames"] == 5 and summary["fps"] > 0


def test_max_frames_stops_early(synth_data):
    spec = ModelSpec(["a"], 32, [0.5] * 3, [0.25] * 3)
    with open_source(str(synth_data / "video.mp4")) as source:
        stats = run_pipeline(source, Classifier(FixedBackend(lambda b: np.zeros((len(b), 1))), spec), max_frames=4,
                             postprocess=Postprocessor(spec.labels))
    assert stats.frames == 4


def test_video_sink_writes_a_readable_labelled_video(tmp_path):
    sink = VideoSink(tmp_path / "out.mp4", fps=5)
    for value in range(6):
        sink.write(np.full((48, 64, 3), value * 30, np.uint8), [{"label": "circle", "score": 0.9}])
    sink.close()
    capture = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert not list(tmp_path.glob(".out*"))  # no temporary left behind


def test_auto_backend_says_what_it_picks(trained_run):
    backend_name, device = resolve_auto()
    assert backend_name == "onnxruntime" and device in ("cpu", "cuda")
    with create_backend("auto", RunDir(trained_run)) as backend:
        assert backend.info.backend == "onnxruntime"


def test_missing_tensorrt_is_an_error_not_a_fallback(trained_run):
    with pytest.raises(BackendError, match="tensorrt") as error:
        create_backend("tensorrt", RunDir(trained_run))
    assert "onnxruntime" in str(error.value)


def test_missing_precision_file_names_the_command(trained_run):
    with pytest.raises(Exception, match="model.fp16.onnx is missing"):
        create_backend("onnxruntime", RunDir(trained_run), precision="fp16")


@pytest.mark.parametrize("backend_name", ["onnxruntime", "torch"])
def test_parity_passes_for_faithful_backends(trained_run, backend_name):
    run = RunDir(trained_run)
    with create_backend(backend_name, run, device="cpu") as backend:
        report = compute_parity(run, backend)
    assert report["passed"] and report["max_abs_diff"] < 1e-4
    assert report["labelset_agreement"] == 1.0
    assert abs(report["delta_mAP"]) < 1e-6 and report["worst_classes"]
    assert report["backend"] == backend_name and report["latency"]["ms_per_image"] > 0
    json.dumps(report)


def test_parity_fails_past_the_tolerance(trained_run):
    run = RunDir(trained_run)
    with np.load(run.reference) as ref:
        reversed_scores = 1.0 - ref["scores"]  # a broken backend: right shapes, inverted ranking
    queue = list(range(0, len(reversed_scores), 16))

    def broken(batch):
        start = queue.pop(0)
        return reversed_scores[start:start + len(batch)]

    result = compute_parity(run, FixedBackend(broken))
    report = parity_report(run, [result])
    assert report["reference"]["mAP"] > 0.6, "the fixture model should have learned something"
    assert not result["passed"] and result["delta_mAP"] < -0.1 and not report["passed"]
    assert result["worst_classes"][0]["delta_AP"] < -0.1
    with pytest.raises(ParityError, match="below the reference"):
        check_parity(report)


def _reference_and_one_swap():
    """A perfect reference (mAP 1) and scores where 13 negatives of class "a" outrank one of its 20 positives."""
    targets = np.array([[1, 0], [0, 1]] * 20)
    reference = Reference(targets.astype(np.float32), targets, [str(i) for i in range(40)], ["a", "b"], "x", "t")
    scores = reference.scores.copy()
    scores[0, 0] = 0.4
    scores[1:27:2, 0] = 0.6
    return reference, scores


@pytest.mark.parametrize("precision, graph, default_points",
                         [("fp32", None, 0.1), ("fp16", None, 0.5), ("int8", None, 0.2), ("int8", "tensorrt", 0.2),
                          ("int8", "cpu", 0.5)])
def test_tolerance_defaults_and_boundaries(precision, graph, default_points):
    """int8's defaults are its build targets (spec.INT8_TARGETS), the CPU graph's its own."""
    reference, scores = _reference_and_one_swap()
    result = compare_scores(reference, scores, precision=precision, graph=graph)
    drop = -result["delta_mAP_points"]
    assert 0.5 < drop < 1.5  # this swap costs about 1 point of mAP: past every default
    assert result["tolerance_points"] == default_points
    assert result["labelset_floor"] == {"fp32": 0.99, "fp16": 0.97, "tensorrt": 0.985, None: 0.985,
                                        "cpu": 0.97}[graph if precision == "int8" else precision]
    assert any("points below the reference" in failure for failure in result["failures"]) is (drop > default_points)
    lenient = {"labelset_floor": 0.0, "max_score_diff": 1.0}  # it also moves label sets and scores: mAP alone here
    assert compare_scores(reference, scores, precision=precision, tolerance_points=drop + 0.01, **lenient)["passed"]
    assert not compare_scores(reference, scores, precision=precision, tolerance_points=drop - 0.01,
                              **lenient)["passed"]
    assert result["worst_classes"][0]["label"] == "a" and result["labelset_agreement"] == 1 - 14 / 40


def test_parity_decodes_the_reference_images_once_for_every_backend(trained_run, monkeypatch):
    from mlic_edge.runtime.checks import parity

    run = RunDir(trained_run)
    reference = Reference.load(run)
    images = parity.ReferenceImages(run, reference)
    reads = []
    real_read = parity.read_image
    monkeypatch.setattr(parity, "read_image", lambda path: reads.append(path) or real_read(path))
    first = np.concatenate(list(images.batches(16)))
    second = np.concatenate(list(images.batches(7)))  # another backend, another batch size
    assert len(reads) == len(images) and np.array_equal(first, second)


def test_a_gain_past_the_tolerance_is_a_mismatch_too():
    """A backend far better than its reference is not a pass: the reference is of another model or other images."""
    reference, scores = _reference_and_one_swap()
    swapped = Reference(scores, reference.targets, reference.image_ids, reference.labels, "x", "t")
    result = compare_scores(swapped, reference.scores.copy(), precision="int8", labelset_floor=0.0,
                            tolerance_points=1.5)
    assert result["delta_mAP_points"] > 0.5 and result["passed"]  # within the 1.5 points asked
    result = compare_scores(swapped, reference.scores.copy(), precision="fp32", labelset_floor=0.0)
    assert not result["passed"] and "points above the reference" in result["failures"][0]


def test_fp32_scores_far_from_the_reference_fail_even_at_equal_map():
    """Another model's reference can rank alike; its scores do not match (seen: max |Δ| 0.11 passing before)."""
    reference, _ = _reference_and_one_swap()
    shifted = np.clip(reference.scores * 0.8 + 0.1, 0, 1)  # same ranking, same label sets at 0.5, other scores
    result = compare_scores(reference, shifted, precision="fp32")
    assert result["delta_mAP_points"] == 0 and result["labelset_agreement"] == 1.0
    assert not result["passed"] and result["failures"] == ["max |Δscore| 1.00e-01 exceeds 1e-02"]
    assert compare_scores(reference, shifted, precision="int8")["passed"]  # no score limit for int8 by default


def test_label_sets_below_the_floor_fail_and_nothing_compared_is_not_a_pass(trained_run):
    reference, scores = _reference_and_one_swap()
    result = compare_scores(reference, scores, precision="int8", tolerance_points=1.5)
    assert not result["passed"] and result["failures"] == [
        "65.0 % of images have the reference's label set, below the floor 98.5 %"]
    report = parity_report(RunDir(trained_run), [], [{"backend": "onnxruntime", "precision": "fp32",
                                                      "reason": "model.onnx is not a valid ONNX file"}])
    assert report["passed"] is False
    with pytest.raises(ParityError, match="nothing to compare: .*model.onnx is not a valid ONNX file"):
        check_parity(report)
