"""NaN never passes (issue 26, family 2): a NaN or inf in scores, references, thresholds or numeric options is refused
or fails, never compared (``nan > limit`` is false, so a comparison would let it through)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, invoke
from mlic_edge import metrics
from mlic_edge.errors import MlicError
from mlic_edge.rundir import RunDir

NON_FINITE = [("NaN", math.nan), ("inf", math.inf)]


def _top_positive(run_path) -> tuple[int, int]:
    """(image, label) of a positive that outranks every image in its class in the reference: a NaN there keeps the
    class's AP (NaN sorts first too), so with the label-set floor at 0 only a NaN check sees it."""
    with np.load(RunDir(run_path).reference) as data:
        scores, targets = data["scores"], data["targets"]
    tops = scores.argmax(axis=0)
    label = next(label for label, row in enumerate(tops) if targets[row, label] == 1)
    return int(tops[label]), label


def _rewrite_reference(run_path, row: int, label: int, value: float) -> None:
    path = RunDir(run_path).reference
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["scores"] = arrays["scores"].copy()
    arrays["scores"][row, label] = value
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


# ------------------------------------------------------------------------------------------ reference.npz
@pytest.mark.parametrize("word, value", NON_FINITE)
def test_parity_refuses_a_reference_with_nan_or_inf_scores(capsys, run_copy, word, value):
    _rewrite_reference(run_copy, *_top_positive(run_copy), value)
    result = invoke(capsys, "parity", "--run", run_copy, "--min-same", "fp32=0")
    assert_one_line_error(result, "reference.npz", word, f"mlic-edge export --run {run_copy}")
    assert result.code == 2 and not (run_copy / "reports" / "parity.json").exists()


# ------------------------------------------------------------------------------------------ backend scores
@pytest.mark.parametrize("word, value", NON_FINITE)
def test_parity_fails_a_backend_that_returns_nan_or_inf(capsys, run_copy, monkeypatch, tmp_path, word, value):
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

    (row, label), seen, real_infer = _top_positive(run_copy), [0], OnnxRuntimeBackend.infer

    def infer(self, batch):
        scores = np.array(real_infer(self, batch), np.float32)
        start, seen[0] = seen[0], seen[0] + len(batch)
        if start <= row < seen[0]:
            scores[row - start, label] = value
        return scores

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", infer)
    result = invoke(capsys, "parity", "--run", run_copy, "--min-same", "fp32=0")
    assert result.code == 3, result.err
    assert_one_line_error(result, "onnxruntime fp32:", word, "so nothing was compared", "--requantize")
    (failed,) = json.loads((run_copy / "reports" / "parity.json").read_text(), parse_constant=_no_constants)["results"]
    assert not failed["passed"] and failed["mAP"] is None and failed["max_abs_diff"] is None
    assert any(word in failure for failure in failed["failures"])
    # A bundle records the failed result as it is, and says so (its figures were never measured).
    packed = invoke(capsys, "pack", "--run", run_copy, tmp_path / "run.mlic.tar.gz", "--no-images")
    assert packed.code == 0 and "nothing compared (scores not finite), FAIL" in packed.err, packed.err


def _no_constants(name: str):
    raise AssertionError(f"parity.json holds {name}, which is not JSON")


def test_compare_scores_fails_nan_scores_with_a_sentence_naming_the_image_and_label():
    from mlic_edge.runtime.checks.parity import Reference, compare_scores

    targets = np.array([[1, 0], [0, 1]] * 4)
    reference = Reference(targets.astype(np.float32), targets, [f"img{i}" for i in range(8)], ["a", "b"], "x", "t")
    scores = reference.scores.copy()
    scores[3, 1] = np.nan
    result = compare_scores(reference, scores, precision="fp32", labelset_floor=0.0, max_score_diff=1.0,
                            tolerance_points=100.0)
    assert not result["passed"]
    (failure,) = result["failures"]
    assert "NaN" in failure and "img3" in failure and "'b'" in failure, failure


# ------------------------------------------------------------------------------------------ thresholds files
@pytest.mark.parametrize("suffix, text", [(".json", '{{"{label}": NaN}}'), (".json", '{{"{label}": Infinity}}'),
                                          (".csv", "{label},nan\n"), (".csv", "label,threshold\n{label},inf\n")])
def test_a_thresholds_file_with_nan_or_inf_is_refused(capsys, run_copy, synth_data, tmp_path, suffix, text):
    label = RunDir(run_copy).spec().labels[0]
    thresholds = tmp_path / f"thresholds{suffix}"
    thresholds.write_text(text.format(label=label))
    out = tmp_path / "records.jsonl"
    result = invoke(capsys, "run", str(synth_data / "JPEGImages"), "--run", run_copy, "--thresholds", thresholds,
                    "--out", out, "--max-frames", 2)
    assert_one_line_error(result, str(thresholds), "[0, 1]")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ numeric options
@pytest.mark.parametrize("args, option", [
    (("parity", "--tolerance", "fp16=nan"), "--tolerance"),
    (("parity", "--max-diff", "int8=inf"), "--max-diff"),
    (("parity", "--min-same", "fp32=nan"), "--min-same"),
    (("parity", "--threshold", "nan"), "--threshold"),
    (("eval", "--threshold", "nan"), "--threshold"),
    (("run", "IMAGES", "--threshold", "nan"), "--threshold"),
    (("run", "IMAGES", "--smoothing", "inf"), "--smoothing"),
])
def test_nan_or_inf_options_are_refused_before_work(capsys, run_copy, synth_data, args, option):
    args = [str(synth_data / "JPEGImages") if arg == "IMAGES" else arg for arg in args]
    result = invoke(capsys, *args, "--run", run_copy)
    assert_one_line_error(result, option)
    assert not (run_copy / "reports" / "parity.json").exists()


@pytest.mark.parametrize("field, option, value", [("tolerances", "--tolerance", math.nan),
                                                  ("labelset_floors", "--min-same", math.nan),
                                                  ("max_score_diffs", "--max-diff", math.inf),
                                                  ("max_score_diffs", "--max-diff", -1.0)])
def test_parity_limits_from_the_library_are_checked_before_work(run_copy, field, option, value):
    """The Python API (and `Run.parity`) passes limits without the CLI's parsing: the command checks them."""
    from mlic_edge.commands.parity import ParityRequest, parity

    with pytest.raises(MlicError, match=option) as raised:
        parity(RunDir(run_copy), ParityRequest(**{field: {"fp32": value}}))
    assert str(raised.value).splitlines() == [str(raised.value)]
    assert not (run_copy / "reports" / "parity.json").exists()


# ------------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("word, value", NON_FINITE)
@pytest.mark.parametrize("measure", [
    lambda s, t: metrics.mean_average_precision(s, t),
    lambda s, t: metrics.mean_average_precision(s, t, mode="voc07"),
    lambda s, t: metrics.average_precision(s[:, 0], t[:, 0]),
    lambda s, t: metrics.threshold_metrics(s, t),
    lambda s, t: metrics.evaluate(s, t, ["a", "b"]),
], ids=["mAP", "mAP-voc07", "AP", "threshold_metrics", "evaluate"])
def test_metrics_refuse_nan_or_inf_scores(measure, word, value):
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.3]])
    scores[0, 0] = value  # a top-ranked positive: ranked first, a NaN would leave AP at 1.0
    with pytest.raises(MlicError, match=word):
        measure(scores, targets)


# ------------------------------------------------------------------------------------------ the evaluations
def test_eval_refuses_a_checkpoint_that_scores_nan(capsys, run_copy, monkeypatch):
    from mlic_edge.train import evaluate as torch_evaluation

    real_predict = torch_evaluation.predict_scores

    def predict(*args, **kwargs):
        result = real_predict(*args, **kwargs)
        result.scores[0, 0] = np.nan
        return result

    monkeypatch.setattr(torch_evaluation, "predict_scores", predict)
    result = invoke(capsys, "eval", "--run", run_copy, "--json")
    assert_one_line_error(result, "checkpoint.pt", "NaN")
    assert result.out == ""


def test_the_onnx_accuracy_of_a_build_refuses_nan_scores(run_copy, monkeypatch):
    """evaluate_precision (build's and QAT's mAP of a graph against fp32) names the graph that returned NaN."""
    from mlic_edge.commands.evaluate import evaluate_precision
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

    real_infer = OnnxRuntimeBackend.infer

    def infer(self, batch):
        scores = np.array(real_infer(self, batch), np.float32)
        scores[0, 0] = np.nan
        return scores

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", infer)
    with pytest.raises(MlicError, match="model.onnx.*NaN"):
        evaluate_precision(RunDir(run_copy), "fp32", lambda *progress: None)


# ------------------------------------------------------------------------------------------ run
def test_run_stops_at_a_frame_whose_scores_are_not_finite(capsys, run_copy, synth_data, monkeypatch):
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

    real_infer, label = OnnxRuntimeBackend.infer, RunDir(run_copy).spec().labels[1]

    def infer(self, batch):
        scores = np.array(real_infer(self, batch), np.float32)
        scores[:, 1] = np.inf
        return scores

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", infer)
    result = invoke(capsys, "run", str(synth_data / "JPEGImages"), "--run", run_copy, "--max-frames", 3)
    assert_one_line_error(result, "(frame 0) hold 1 inf", f"label {label!r}", "--requantize")
    assert result.out == ""  # no record compared an inf with a threshold
