"""Which int8 graphs a build makes, which layers stay float and why, and what was measured: the int8 plan.

``Int8Plan`` is given what is asked (``Int8Inputs``: the accuracy target, the calibration images and method, the
float-layer budget, whether fine-tuning may follow, the CPU graph), where the files go (``Int8Files``), the model's
``Preprocessing`` and the training images, and decides, in the order a build runs:

1. ``post_training()``: reuse the quantization-aware graph in place (made from this model.onnx), or quantize
   TensorRT's Q/DQ graph; where the training images are here, rank the layers by sensitivity and keep the most
   harmful in float until the accuracy target holds on the judging images or the budget of float layers is spent
   (``accuracy.py``). The judging images are the run's validation split (held out before training: unseen), or,
   for a run without one (imported checkpoints, older runs, ``--val-fraction 0``), images held out of the training
   split here, which the model may have trained on: that judgement is optimistic, and ``judged_on`` says so.
2. ``fine_tuning_wanted``: post-training missed and fine-tuning may be used. Fine-tuning itself needs PyTorch and
   writes the run's qat records, so the command runs it; the plan judges its graph on the same held-out images
   (``judge_fine_tuned``), puts it in place of the post-training one where it comes closer (``adopt_fine_tuned``)
   and records it (``record_fine_tuning``).
3. ``cpu_graph()``: ONNX Runtime's CPU graph, in the form (QDQ or QOperator) and op set (every op type, or the
   weighted ops and Adds, with or without their Relu) chosen by ``choose_cpu_graph``: of those meeting the CPU
   target on the judging images, the nearest to fp32 within the latency target on this CPU (the ``CpuTarget``'s
   timer), or else the fastest of those these images cannot tell from the nearest to it; its float layers grown by
   the same search towards its own target
   (``cpu_target``);
   where it still misses (``cpu_fine_tuning_wanted``), the command fine-tunes for the CPU graph's scheme and
   ``adopt_cpu_fine_tuned`` quantizes those weights into the CPU graph, judged and kept as in step 2.

``Int8Decision`` is the outcome: the graph, its source, the float layers with their reasons, and ``record``, the
int8 entry of reports/build.json. Nothing here imports the commands, the runtime or PyTorch; messages go through
mlic_edge.console as the build's always did, progress through ``Progress``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from mlic_edge.calibration.accuracy import (AccuracyTarget, ErrorSample, KeepFpSearch, Step, agreement_text,
                                            class_mix_weights, effective_images, improves_on, measure_step,
                                            onnx_scores, search_keep_fp)
from mlic_edge.calibration.images import (CalibrationSet, first_images, select_calibration_set, split_holdout,
                                          validation_holdout)
from mlic_edge.calibration.int8 import (CPU_FORMATS, FINE_TUNED_CPU_OP_SETS, POST_TRAINING_CPU_OP_SETS,
                                        TENSORRT_INT8, Int8Report, Int8Scheme, cpu_int8_scheme, has_record,
                                        quantize_int8, quantized_node_names, stamp_source, unsimulated_nodes)
from mlic_edge.calibration.sensitivity import layer_sensitivity
from mlic_edge.console import info, warn
from mlic_edge.export.lineage import ONNX_SHA
from mlic_edge.export.metadata import read_metadata
from mlic_edge.io import sha256_file
from mlic_edge.spec import (CPU_INT8_TARGET_AGREEMENT, CPU_INT8_TARGET_DELTA_POINTS, CPU_INT8_TARGET_LATENCY,
                            DEFAULT_CALIB_IMAGES, DEFAULT_CALIBRATION_METHOD, DEFAULT_HOLDOUT_IMAGES, DEFAULT_QAT_EPOCHS,
                            Preprocessing)

if TYPE_CHECKING:
    from mlic_edge.data.dataset import MultiLabelDataset
    from mlic_edge.data.splits import ValidationSplit

SENSITIVITY_IMAGES = 32  # calibration images the per-layer sensitivity is measured on
ERROR_IMAGES = 128  # calibration images int8's score errors are sampled on, for the agreement estimate
# default budget of layers kept in float: this share of the quantizable ones. 0.1 left ML-GCN's post-training graph
# 2 layers and its fine-tuned one at 98.0 % identical label sets; 6 of its 19 (0.3) kept float through fine-tuning
# gave 99.3 % (zoo, eval split). The search keeps only what its target needs, most sensitive first.
DEFAULT_FP_LAYER_SHARE = 0.3
CPU_TIMING_BATCHES = (1, 8)  # the int8 CPU graph is chosen by its latency at the last of these
CPU_TIMING_ROUNDS = 10
# a CPU graph keeping fewer identical label sets than the best by more than this is not chosen for its speed: on the
# zoo's q2l, ONNX Runtime 1.32's QOperator graph (7-bit weights) kept 1 % of the label sets where QDQ kept 88 %
FORM_AGREEMENT_SLACK = 0.01

Progress = Callable[[str, int, int], None]  # (what, done, total)
# {name: graph} -> {name: {batch: median ms}}, each graph timed in turns with the others at ``batches``, ``rounds``
GraphTimer = Callable[[Mapping[str, Path], Sequence[int], int], Mapping[str, Mapping[int, float]]]


@dataclass(frozen=True)
class CpuTarget:
    """The CPU ONNX Runtime's int8 graph is made for: 7-bit weights or not, its description, and how to time graphs
    on it (the command binds ONNX Runtime's CPU backend)."""

    reduce_range: bool
    description: str
    time_graphs: GraphTimer = field(compare=False)


@dataclass(frozen=True)
class Int8Inputs:
    """What a build asks of int8."""

    target: AccuracyTarget = AccuracyTarget()  # TensorRT's Q/DQ graph's
    cpu_target: AccuracyTarget = AccuracyTarget(CPU_INT8_TARGET_DELTA_POINTS, CPU_INT8_TARGET_AGREEMENT)
    method: str = DEFAULT_CALIBRATION_METHOD  # calibration method (CALIBRATION_METHODS)
    calib_images: int = DEFAULT_CALIB_IMAGES
    holdout_images: int = DEFAULT_HOLDOUT_IMAGES
    keep_fp: tuple[str, ...] = ()  # layers asked to stay float (--keep-fp)
    max_fp_layers: int | None = None  # layers the search may keep in float (None: DEFAULT_FP_LAYER_SHARE; 0: none)
    fine_tune_epochs: int = DEFAULT_QAT_EPOCHS  # fine-tune this long when post-training misses the target (0: never)
    reuse_fine_tuned: bool = True  # a quantization-aware graph in place, from this model.onnx, is the graph
    cpu: CpuTarget | None = None  # also ONNX Runtime's CPU graph, for this CPU

    def float_budget(self, quantizable: int) -> int:
        """Layers the search may keep in float beyond ``keep_fp``, of ``quantizable`` layers."""
        if self.max_fp_layers is None:
            return max(1, math.ceil(DEFAULT_FP_LAYER_SHARE * quantizable))
        return self.max_fp_layers


def _in_place(path: Path) -> Path:
    return path


@dataclass(frozen=True)
class ClassMix:
    """The class mix the judging images are weighed to (``class_mix_weights``): the share of images holding each of
    the model's classes where the int8 graph will be judged, and where it was read (in words, for the report)."""

    shares: tuple[float, ...]
    source: str


@dataclass(frozen=True)
class Int8Files:
    """Where the plan reads and writes: the fp32 graph, the int8 graphs as they are named in the run, the calibration
    records, a folder for trial graphs, and ``stage`` (a final path -> where to write its new content)."""

    fp32: Path
    tensorrt: Path  # model.int8.onnx
    cpu: Path  # model.int8.cpu.onnx
    records: Path  # <run>/calibration
    run: Path  # the run folder: trial graphs go into temporary folders there
    stage: Callable[[Path], Path] = field(default=_in_place, compare=False)


@dataclass(frozen=True)
class FloatLayer:
    """A layer kept in float and why: asked for, or chosen by the search (then its sensitivity row)."""

    name: str
    reason: str
    sensitivity: Mapping[str, Any] | None = None


@dataclass
class Int8Decision:
    """What the plan decided and measured. ``record`` is the int8 entry of reports/build.json."""

    graph: Path  # the TensorRT graph: staged, or in place where a quantization-aware graph is reused
    source: str  # "post-training" | "qat"
    record: dict[str, Any]
    made_here: bool = True  # False: the quantization-aware graph in place was reused as it is
    asked_fp: tuple[str, ...] = ()
    ranking: list[dict] | None = None  # every quantized layer's sensitivity, most harmful first
    search: KeepFpSearch | None = None

    @property
    def float_layers(self) -> list[FloatLayer]:
        rows = {row["node"]: row for row in self.ranking or []}
        return [FloatLayer(name, "asked (--keep-fp)") if name in self.asked_fp else
                FloatLayer(name, "kept by the accuracy-target search (most sensitive first)", rows.get(name))
                for name in self.record.get("kept_fp", [])]

    @property
    def cpu_graph(self) -> dict[str, Any] | None:
        return self.record.get("cpu_graph")


@dataclass(frozen=True)
class FineTunedTrial:
    """A fine-tuned graph measured on the held-out images as the search measured post-training."""

    step: Step
    seconds: float
    adopted: bool


def agreement_words(step: Step) -> str:
    """A step's figures in words: 'ΔmAP +0.05 ± 0.03, 98.7 % estimated (97.8 % counted) identical label sets'."""
    return (f"ΔmAP {step.delta_mAP_points:+.2f} ± {step.delta_se:.2f}, "
            f"{agreement_text(step.labelset_agreement, step.estimated_agreement)} identical label sets")


def weighing_words(judged_on: Mapping[str, Any]) -> str:
    """What a ``judged_on`` record's images were weighed to, as a clause: ', weighed to ... (25 effective images)',
    or nothing where they were taken as drawn."""
    if not judged_on.get("weighed_to"):
        return ""
    return f", weighed to {judged_on['weighed_to']} ({judged_on['effective_images']:.0f} effective images)"


def choose_cpu_graph(latency_ms: Mapping[str, float], judged: Mapping[str, Step] | None,
                     target: AccuracyTarget, fp32_ms: float | None = None) -> str:
    """The CPU graph a build stages, by name, of those timed (``latency_ms``: median ms at the deciding batch) and
    judged against the CPU ``target`` on the judging images. Of those that meet it: the nearest to fp32 (most
    identical label sets, then the fastest) of those within the latency target (``CPU_INT8_TARGET_LATENCY`` ×
    ``fp32_ms``; all of them where it is not given), else the fastest. Where none meets it: the fastest of those
    the judging images cannot tell from the nearest to it (``nearest_cpu_graph``), which the keep-fp search then
    starts from. Unjudged (no judging images): the fastest.

    Why the nearest of those fast enough, not the fastest: the judging images resolve a candidate's accuracy only
    roughly, and a candidate that barely meets the target on them can miss it on unseen images. On the zoo's MSRN
    (90 validation images, 25 effective) four candidates met, estimated 99.4-99.6 %; the fastest (0.28× fp32 at
    batch 8) read 96.3 % on the eval split and the nearest (0.39×) 98.0 %, its RMS logit error half the other's.

    Why not the nearest where none meets: on the zoo's ML-GCN (90 validation images, 25 effective) the six
    candidates read 93.5-95.8 % identical label sets ± 3-4 points and |ΔmAP| 0.0-0.3 ± 0.1-1.0; the nearest ran at
    0.53× fp32 at batch 8 where QDQ with every op type, no further from the target by what those images resolve, ran
    at 0.24×."""
    names = list(latency_ms)

    def fastest(among: Sequence[str]) -> str:
        return min(among, key=latency_ms.__getitem__)

    if judged is None:
        return fastest(names)
    met = [name for name in names if judged[name].met]
    fast_enough = [name for name in met if fp32_ms is None or latency_ms[name] <= CPU_INT8_TARGET_LATENCY * fp32_ms]
    if fast_enough:
        return min(fast_enough, key=lambda name: (-judged[name].agreement, latency_ms[name]))
    if met:
        return fastest(met)
    nearest = judged[nearest_cpu_graph(latency_ms, judged, target)]
    return fastest([name for name in names if not resolvably_worse(judged[name], nearest, target)])


def nearest_cpu_graph(latency_ms: Mapping[str, float], judged: Mapping[str, Step], target: AccuracyTarget) -> str:
    """Of CPU graphs none of which meets ``target``: the fastest of those within ``FORM_AGREEMENT_SLACK`` of the most
    identical label sets whose |ΔmAP| (with its margin) is within the target, and where none is, the one of those
    with the smallest |ΔmAP|."""
    best = max(each.agreement for each in judged.values())
    accurate = [name for name in latency_ms if judged[name].agreement >= best - FORM_AGREEMENT_SLACK]
    bound = {name: target.delta_bound(judged[name].delta_mAP_points, judged[name].delta_se) for name in accurate}
    within = [name for name in accurate if bound[name] <= target.max_delta_points]
    if within:
        return min(within, key=latency_ms.__getitem__)
    return min(accurate, key=bound.__getitem__)


def resolvably_worse(candidate: Step, reference: Step, target: AccuracyTarget) -> bool:
    """Whether the judging images show ``candidate`` further from ``target`` than ``reference``: fewer identical
    label sets by more than ``FORM_AGREEMENT_SLACK`` and ``target.margin_se`` standard errors of the difference, or
    a larger |ΔmAP| by more than ``target.delta_margin_se`` of them. The two figures' errors are taken as
    independent, which overstates the error of a difference measured on the same images: where in doubt, speed."""
    agreement_se = math.hypot(candidate.estimate_se or 0.0, reference.estimate_se or 0.0)
    fewer = reference.agreement - candidate.agreement > max(FORM_AGREEMENT_SLACK, target.margin_se * agreement_se)
    further = (abs(candidate.delta_mAP_points) - abs(reference.delta_mAP_points)
               > target.delta_margin_se * math.hypot(candidate.delta_se, reference.delta_se))
    return fewer or further


def _cpu_choice_words(batch: int, judged: bool) -> str:
    """How ``choose_cpu_graph`` chose, for the build record and report."""
    timing = f"median latency at batch {batch} ({CPU_TIMING_ROUNDS} rounds, timed in turns with fp32, ONNX Runtime CPU)"
    if not judged:
        return f"lowest {timing}"
    return (f"of those meeting the CPU target on the judging images, the most identical label sets among those "
            f"within {CPU_INT8_TARGET_LATENCY:g}× fp32's {timing}, else the fastest; where none meets it, the fastest "
            "of those the judging images cannot tell from the nearest to it (within "
            f"{FORM_AGREEMENT_SLACK * 100:g} point(s) of the most identical label sets, |ΔmAP| within it or the "
            "smallest; calibration/plan.py choose_cpu_graph)")


class Int8Plan:
    """The int8 graphs of one build (module docstring): the steps are called in order by the command."""

    def __init__(self, inputs: Int8Inputs, files: Int8Files, preprocessing: Preprocessing, labels: Sequence[str],
                 dataset: "MultiLabelDataset | None", progress: Progress | None = None, *,
                 validation: "ValidationSplit | None" = None,
                 no_validation: str = "the run records no validation split", class_mix: ClassMix | None = None
                 ) -> None:
        """``validation``: the run's validation split (re-derived and checked by the caller), whose images judge the
        accuracy target; without it, images held out of ``dataset`` judge it, optimistically (``no_validation``
        says why there is none). ``class_mix``: weigh the judging images to it, from the class mix of ``dataset``
        they were drawn at (None: as drawn)."""
        self.inputs, self.files, self.preprocessing, self.labels = inputs, files, preprocessing, list(labels)
        self.class_mix = class_mix
        self.dataset = dataset
        self.say: Progress = progress or (lambda what, done, total: None)
        self.holdout: CalibrationSet | None = None
        self.calibration: CalibrationSet | None = None
        self.judged_on: dict[str, Any] | None = None  # which images judge the accuracy target (build.json)
        if dataset is not None:
            if validation is not None:
                self.holdout, rest = validation_holdout(dataset, validation.image_ids, inputs.holdout_images)
                self.judged_on = {
                    "split": "validation", "images": len(self.holdout), "validation_images": len(validation),
                    "unseen": True, "val_ids_sha256": validation.sha256,
                    "note": "the run's validation split, held out of the training split before training: images "
                            "the model never trained on, neither calibration nor eval images"}
            else:
                self.holdout, rest = split_holdout(dataset, inputs.holdout_images)
                self.judged_on = {
                    "split": f"training ({dataset.split}), held out here", "images": len(self.holdout),
                    "unseen": False,
                    "note": f"optimistic: {no_validation}, so images held out of {dataset.spec} ({dataset.split}) "
                            "judge it, which the model may have trained on (a trained model agrees more there "
                            "than on unseen images); neither calibration nor eval images"}
            self.calibration = select_calibration_set(rest, inputs.calib_images)
        self.decision: Int8Decision | None = None
        self.cpu_search: KeepFpSearch | None = None  # the CPU graph's accuracy search, where it ran
        self._error_sample: ErrorSample | None = None
        self._judging: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._judging_scores = None  # fp32's scores of the judging images, once

    @property
    def judging_images(self) -> str:
        """The judging images in words, for the messages: '12 validation images' or '30 held-out training images
        (optimistic: ...)'."""
        judged = self.judged_on or {}
        weighed = weighing_words(judged)
        if judged.get("unseen"):
            return f"{judged['images']} validation images (unseen in training){weighed}"
        return (f"{judged.get('images', 0)} held-out training images (optimistic: the model may have trained on "
                f"them){weighed}")

    def _search_record(self, search: KeepFpSearch) -> dict[str, Any]:
        """build.json's record of an accuracy-target search: what it measured and which images judged it."""
        return {**search.as_dict(), "judged_on": self.judged_on}

    # 1. post-training (or the quantization-aware graph in place)

    def post_training(self) -> Int8Decision:
        inputs, files = self.inputs, self.files
        keep_fp = list(inputs.keep_fp)
        qat = self._reusable_qat_graph() if inputs.reuse_fine_tuned else None
        if qat is not None:
            info(f"int8: {files.tensorrt.name} is the Q/DQ graph of quantization-aware training (mlic-edge train "
                 "--qat) from this model.onnx: reused instead of post-training quantization (delete it to quantize "
                 "after training instead)")
            if keep_fp:
                warn("int8: --keep-fp does not change the quantization-aware graph (it applies to the CPU graph "
                     "only)")
            self.decision = Int8Decision(files.tensorrt, "qat", qat, made_here=False, asked_fp=inputs.keep_fp)
            return self.decision
        out = files.stage(files.tensorrt)
        quantize = self._quantizer(TENSORRT_INT8, "int8")
        report = quantize(keep_fp, out)
        info(f"int8: {report.quantized_nodes} quantized layers, " + (
            f"calibration {report.key} reused ({report.images} images, {report.method})" if report.reused else
            f"calibrated on {report.images} images ({report.method}), record calibration/{report.key}/"))
        summary = {**report.as_dict(), "path": str(files.tensorrt)}
        self.decision = decision = Int8Decision(out, "post-training", summary, asked_fp=inputs.keep_fp)
        if self.calibration is None:
            info("int8: accuracy target not measured (no training images here); the layers kept in float are the "
                 "ones asked with --keep-fp")
            return decision
        self.say("int8: per-layer sensitivity", 0, 1)
        decision.ranking = layer_sensitivity(files.fp32, out, self._first_images(SENSITIVITY_IMAGES), top=None)
        summary["sensitivity"] = decision.ranking[:5]
        search = self._meet_accuracy_target(quantize, out, start=keep_fp, what="int8")
        if search is not None:
            if search.kept_fp != report.kept_fp:
                final = quantize(search.kept_fp, out)  # from the same calibration record
                summary.update(kept_fp=final.kept_fp, quantized_nodes=final.quantized_nodes)
            summary["accuracy_target"] = self._search_record(search)
            summary["judged_on"] = self.judged_on
            decision.search = search
        return decision

    # 2. fine-tuning, where post-training missed

    @property
    def fine_tuning_wanted(self) -> bool:
        """Post-training missed the target, and fine-tuning may be used (it needs the held-out images)."""
        search = self.decision.search if self.decision is not None else None
        return search is not None and not search.met and self.inputs.fine_tune_epochs > 0

    def judge_fine_tuned(self, graph: Path, source: str, seconds: float, kept_fp: Sequence[str] = ()
                         ) -> FineTunedTrial:
        """``graph`` (fine-tuned, ``source`` says how, ``kept_fp`` float in it) measured on the held-out images;
        adopted where it meets the target or comes closer than post-training. A trial not adopted is recorded under
        ``qat_trial``."""
        search = self.decision.search
        step = dataclasses.replace(self._judge(graph, search.target), source=source, kept_fp=list(kept_fp))
        best = search.final
        verdict = "meets" if step.met else "misses"
        info(f"int8: the quantization-aware graph {verdict} the target on the {self.judging_images}: "
             f"{agreement_words(step)} (post-training: {agreement_words(best)})")
        adopted = improves_on(step, best, search.target, search.images)
        if not adopted:
            warn("int8: the quantization-aware graph is no closer to fp32 than the post-training one: the "
                 "post-training graph is kept")
            self.decision.record = {**self.decision.record, "qat_trial": {**dataclasses.asdict(step),
                                                                          "seconds": seconds}}
        return FineTunedTrial(step, seconds, adopted)

    def adopt_fine_tuned(self, trial: FineTunedTrial, graph: Path, epochs: int) -> None:
        """Put the adopted fine-tuned ``graph`` in place of the staged post-training one; the search records it."""
        search = self.decision.search
        shutil.copyfile(graph, self.decision.graph)
        search.steps.append(trial.step)
        search.kept_fp = list(trial.step.kept_fp)
        search.stopped = "met" if trial.step.met else f"{search.stopped}, then fine-tuned"
        if not trial.step.met:
            warn(f"int8 misses its accuracy target after {epochs} epoch(s) of quantization-aware fine-tuning "
                 "(kept: it comes closer than post-training): raise --qat-epochs, or use fp16")

    def record_fine_tuning(self, qat: Mapping[str, Any], eval_accuracy: Any) -> Int8Decision:
        """The decision once the fine-tuned graph is the build's: ``qat`` (what fine-tuning ran) and its accuracy on
        the eval split as the fine-tuning recorded it; the post-training record kept under ``post_training``."""
        decision = self.decision
        decision.record = {"path": str(self.files.tensorrt), "reused": False, "source": "qat",
                           "kept_fp": list(decision.search.kept_fp),
                           "quantized_nodes": quantized_node_count(decision.graph),
                           "accuracy_target": self._search_record(decision.search),
                           "judged_on": self.judged_on, "qat": dict(qat),
                           "post_training": decision.record, "eval_accuracy": eval_accuracy}
        decision.source = "qat"
        return decision

    # 3. ONNX Runtime's CPU graph

    def cpu_graph(self) -> dict[str, Any] | None:
        """model.int8.cpu.onnx staged: the int8 graph ONNX Runtime's CPU kernels fuse (uint8 activations, its own
        calibration record), of the forms (QDQ, QOperator) and op sets (``POST_TRAINING_CPU_OP_SETS``) the
        one ``choose_cpu_graph`` picks, each timed against fp32 in turns on this CPU at batch 8 and judged on the
        judging images; the layers kept in float start from the post-training graph's and grow by the same search
        where held-out images are here. None (and a warning) where neither images nor a stored record exist. Also
        recorded as the decision's ``cpu_graph``."""
        cpu, decision = self.inputs.cpu, self.decision
        if decision.made_here:  # the CPU graph is post-training: it starts from the post-training graph's layers
            keep_fp, ranking = decision.record.get("post_training", decision.record)["kept_fp"], decision.ranking
        else:
            keep_fp, ranking = list(self.inputs.keep_fp), None
        decision.record["cpu_graph"] = self._make_cpu_graph(cpu, keep_fp, ranking)
        return decision.record["cpu_graph"]

    def _make_cpu_graph(self, cpu: CpuTarget, keep_fp: list[str], ranking: list[dict] | None
                        ) -> dict[str, Any] | None:
        files, method = self.files, self.inputs.method
        out = files.stage(files.cpu)
        schemes = self._cpu_schemes()
        quantizers = {name: self._quantizer(scheme, "int8 CPU graph") for name, scheme in schemes.items()}
        if self.calibration is None and not has_record(files.records, files.fp32, method,
                                                       cpu_int8_scheme(CPU_FORMATS[0])):
            warn(f"int8 CPU graph not made: no training images here and no {method} calibration record of it in the "
                 "run (build it where the images are, or pass --calib-data)")
            return None
        with tempfile.TemporaryDirectory(prefix=".int8-cpu.", dir=files.run) as work:
            reports = {name: quantizers[name](keep_fp, _candidate_path(Path(work), scheme))
                       for name, scheme in schemes.items()}
            self.say(f"int8 CPU graph: timing {', '.join(schemes)} against fp32", 0, 1)
            graphs = {"fp32": files.fp32, **{name: report.path for name, report in reports.items()}}
            latency = cpu.time_graphs(graphs, CPU_TIMING_BATCHES, CPU_TIMING_ROUNDS)
            batch = CPU_TIMING_BATCHES[-1]
            judged = self._judge_candidates({name: report.path for name, report in reports.items()})
            at_batch = {name: latency[name][batch] for name in schemes}
            chosen = choose_cpu_graph(at_batch, judged, self.inputs.cpu_target, latency["fp32"][batch])
            fastest = min(at_batch, key=at_batch.__getitem__)
            if chosen != fastest:
                tell, further = (info, "keeps fewer identical label sets") if judged[fastest].met else (
                    warn, "is further from the CPU target")
                tell(f"int8 CPU graph: {fastest} runs faster but {further} on the {self.judging_images} "
                    f"({agreement_words(judged[fastest])}, against {chosen}'s {agreement_words(judged[chosen])}): "
                    f"{chosen} chosen")
            shutil.copyfile(reports[chosen].path, out)
        report, scheme = reports[chosen], schemes[chosen]
        info(f"int8 CPU graph: {chosen} (uint8 activations{', 7-bit weights' if cpu.reduce_range else ''})"
             f", {_against_fp32(latency, chosen)} on this CPU ({cpu.description}); " + ", ".join(f"{name} {latency[name][batch]:.2f} ms"
                                                               for name in schemes if name != chosen))
        summary = {**report.as_dict(), "path": str(files.cpu), "candidate": chosen, "op_set": scheme.op_set,
                   "op_types": scheme.describe()["op_types"],
                   "reused": all(each.reused for each in reports.values()),  # the others read the first's record
                   "reduce_range": cpu.reduce_range, "cpu": cpu.description,
                   "chosen_by": _cpu_choice_words(batch, judged is not None),
                   "candidates_judged": None if judged is None else {name: dataclasses.asdict(step)
                                                                     for name, step in judged.items()},
                   "latency_ms": _timing_record(latency)}
        if ranking is not None:
            search = self._meet_accuracy_target(quantizers[chosen], out, start=keep_fp, ranking=ranking,
                                                what="int8 CPU graph", target=self.inputs.cpu_target)
            if search is not None:
                if search.kept_fp != keep_fp:
                    final = quantizers[chosen](search.kept_fp, out)
                    summary.update(kept_fp=final.kept_fp, quantized_nodes=final.quantized_nodes,
                                   staged_latency_ms=self._time_staged(chosen, out))
                summary["accuracy_target"] = self._search_record(search)
                self.cpu_search = search
        return summary

    def _time_staged(self, chosen: str, staged: Path) -> dict[str, dict[str, float]]:
        """The staged CPU graph (``chosen`` with the layers its search kept float) timed against fp32 in turns: the
        candidates were timed before the search, and each float layer it adds costs time."""
        latency = self.inputs.cpu.time_graphs({"fp32": self.files.fp32, chosen: staged}, CPU_TIMING_BATCHES,
                                              CPU_TIMING_ROUNDS)
        info(f"int8 CPU graph: {chosen} with the search's float layers, {_against_fp32(latency, chosen)}")
        return _timing_record(latency)

    @property
    def cpu_fine_tuning_wanted(self) -> bool:
        """The CPU graph missed its target after its search, and fine-tuning may be used."""
        search = self.cpu_search
        return search is not None and not search.met and self.inputs.fine_tune_epochs > 0

    def adopt_cpu_fine_tuned(self, fine_tuned_fp32: Path, fine_tuning: Mapping[str, Any],
                             kept_fp: Sequence[str] = (), weight_steps: Mapping[str, Mapping] | None = None
                             ) -> FineTunedTrial:
        """ONNX Runtime's CPU graph quantized, in each form and each op set of what the fine-tuning simulated
        (``FINE_TUNED_CPU_OP_SETS``), from ``fine_tuned_fp32`` (the weights fine-tuned for the CPU graph's scheme,
        ``fine_tuning`` says how; min/max ranges, as the fine-tuning's max calibration set them; the weights rounded
        with the fine-tuning's own ``weight_steps`` where given, train/qat.py ``weight_steps``), every layer int8 but
        ``kept_fp`` (those fine-tuned without quantizers) and, given the steps, the weighted ops the fine-tuning did
        not quantize (``unsimulated_nodes``: an attention's), each timed against fp32 in turns and judged against
        model.onnx on the judging images; staged in place of the post-training CPU graph where it meets the CPU target
        or comes closer, and recorded either way."""
        import onnx

        record, search, cpu = self.decision.record["cpu_graph"], self.cpu_search, self.inputs.cpu
        source = f"quantization-aware for the CPU graph, {fine_tuning['epochs']} epoch(s)"
        unsimulated = [] if weight_steps is None else [
            name for name in unsimulated_nodes(onnx.load(str(fine_tuned_fp32)), weight_steps) if name not in kept_fp]
        with tempfile.TemporaryDirectory(prefix=".int8-cpu-qat.", dir=self.files.run) as work:
            schemes = self._cpu_schemes(FINE_TUNED_CPU_OP_SETS)
            reports = {name: quantize_int8(fine_tuned_fp32, _candidate_path(Path(work), scheme), Path(work) / "records",
                                           method="minmax", calibration=self.calibration,
                                           preprocessing=self.preprocessing, scheme=scheme,
                                           keep_fp=[*kept_fp, *unsimulated], weight_steps=weight_steps)
                       for name, scheme in schemes.items()}
            judged = {name: dataclasses.replace(self._judge(report.path, search.target), source=source,
                                                kept_fp=list(report.kept_fp)) for name, report in reports.items()}
            self.say(f"int8 CPU graph: timing the fine-tuned {', '.join(schemes)} against fp32", 0, 1)
            latency = cpu.time_graphs({"fp32": self.files.fp32, **{name: report.path for name, report in
                                                                    reports.items()}},
                                      CPU_TIMING_BATCHES, CPU_TIMING_ROUNDS)
            batch = CPU_TIMING_BATCHES[-1]
            chosen = choose_cpu_graph({name: latency[name][batch] for name in schemes}, judged, search.target,
                                      latency["fp32"][batch])
            step, report = judged[chosen], reports[chosen]
            adopted = improves_on(step, search.final, search.target, search.images)
            info(f"int8 CPU graph: fine-tuned ({chosen}), it {'meets' if step.met else 'misses'} its target on the "
                 f"{self.judging_images}: {agreement_words(step)} (post-training, {record['candidate']}: "
                 f"{agreement_words(search.final)})" + ("" if adopted else "; the post-training CPU graph is kept"))
            trial = FineTunedTrial(step, float(fine_tuning.get("seconds") or 0.0), adopted)
            timings = _timing_record(latency)
            fine_tuning = {**fine_tuning, "fine_tuned_steps": report.fine_tuned_steps, "unsimulated": unsimulated,
                           "candidates_judged": {name: dataclasses.asdict(each) for name, each in judged.items()},
                           "latency_ms": timings}
            if not adopted:
                record["qat_trial"] = {**dataclasses.asdict(step), "candidate": chosen, **fine_tuning}
                return trial
            stamp_source(report.path, self.files.fp32, int8_source="qat", fine_tuned_onnx_sha256=sha256_file(
                fine_tuned_fp32))
            shutil.copyfile(report.path, self.files.stage(self.files.cpu))
        search.steps.append(step)
        search.kept_fp = list(step.kept_fp)
        search.stopped = "met" if step.met else f"{search.stopped}, then fine-tuned"
        post_training = {key: record[key] for key in ("kept_fp", "quantized_nodes", "key", "method", "candidate",
                                                      "quant_format", "op_set", "op_types", "latency_ms",
                                                      "staged_latency_ms") if key in record}
        record.pop("staged_latency_ms", None)  # the post-training graph's: the fine-tuned one's timing replaces it
        scheme = schemes[chosen]
        info(f"int8 CPU graph: the fine-tuned {chosen}, {_against_fp32(latency, chosen)} on this CPU "
             f"({cpu.description})")
        record.update(source="qat", kept_fp=list(step.kept_fp), quantized_nodes=report.quantized_nodes, method="minmax",
                      candidate=chosen, quant_format=scheme.quant_format, op_set=scheme.op_set,
                      op_types=scheme.describe()["op_types"], accuracy_target=self._search_record(search),
                      latency_ms=timings, fine_tuning=fine_tuning, post_training=post_training)
        if not step.met:
            warn("int8 CPU graph misses its target after fine-tuning (kept: it comes closer than post-training): "
                 "raise --qat-epochs, or serve TensorRT's Q/DQ graph or fp32 on this CPU")
        return trial

    # the pieces

    def _cpu_schemes(self, op_sets: Sequence[str] = POST_TRAINING_CPU_OP_SETS) -> dict[str, Int8Scheme]:
        """The CPU graphs a build chooses from (each form, each of ``op_sets``), by name (``Int8Scheme.candidate``)."""
        return {scheme.candidate: scheme for scheme in (cpu_int8_scheme(form, self.inputs.cpu.reduce_range, op_set)
                                                        for form in CPU_FORMATS for op_set in op_sets)}

    def _meet_accuracy_target(self, quantize: Callable[[list[str], Path], Int8Report], first: Path, *,
                              start: list[str], what: str, ranking: list[dict] | None = None,
                              target: AccuracyTarget | None = None) -> KeepFpSearch | None:
        """The keep-fp search for ``target`` (default: the TensorRT graph's) on the judging images (None where they
        cannot be scored), told to the user; ``first`` is the graph (``what``) already quantized with ``start`` in
        float."""
        inputs = self.inputs
        ranking = self.decision.ranking if ranking is None else ranking
        if self.dataset.names != self.labels:
            info("int8: accuracy target not measured: the calibration data's classes are not the model's")
            return None
        images, targets, weights = self._judging_images()
        quantizable = len(ranking) + len(inputs.keep_fp)  # the ranking holds every quantized layer of TensorRT's graph
        budget = inputs.float_budget(quantizable)
        budget = max(0, budget - (len(start) - len(inputs.keep_fp)))  # what an earlier search kept counts against it
        target = target or inputs.target
        with tempfile.TemporaryDirectory(prefix=".int8-search.", dir=self.files.run) as work:
            def trial(keep_fp: list[str]) -> Path:
                if keep_fp == list(start):
                    return first
                return quantize(keep_fp, Path(work) / f"int8.{len(keep_fp)}.onnx").path

            search = search_keep_fp(trial, self.files.fp32, images, targets, [row["node"] for row in ranking], target,
                                    budget, keep_fp=start, progress=lambda message: self.say(f"{what}: {message}", 0, 1),
                                    error_sample=self._errors(), weights=weights,
                                    fp32_scores=self._fp32_judging_scores())
        step = search.final
        verdict = "meets" if search.met else f"misses ({search.stopped})"
        info(f"{what}: {verdict} the target (|ΔmAP| ≤ {target.max_delta_points} points with "
             f"{target.delta_margin_se:g} standard error(s) of margin, ≥ {target.min_agreement * 100:g} % identical "
             f"label sets, asked as ≥ {target.required_agreement(search.images, step.estimate_se) * 100:.1f} %, on "
             f"{self.judging_images}): {agreement_words(step)}, "
             f"{len(step.kept_fp)} layer(s) in float" + (f" ({', '.join(step.kept_fp)})" if step.kept_fp else ""))
        if not search.met and not inputs.fine_tune_epochs:  # else fine-tuning follows, for either graph
            warn(f"{what} misses its accuracy target with {len(step.kept_fp)} layer(s) in float: fine-tune it "
                 f"(mlic-edge train --qat --run {self.files.run} --epochs 3, distilling the fp32 scores), raise "
                 "--max-fp-layers, try another --calib-method, or use fp16")
        return search

    def _quantizer(self, scheme: Int8Scheme, what: str) -> Callable[[list[str], Path], Int8Report]:
        """``quantize(keep_fp, path)``: the fp32 ONNX in ``scheme``'s int8 graph at ``path`` with ``keep_fp`` in
        float, from the calibration images (or the stored record), progress shown as ``what``."""
        method = self.inputs.method

        def quantize(keep_fp: list[str], path: Path) -> Int8Report:
            return quantize_int8(self.files.fp32, path, self.files.records, method=method,
                                 calibration=self.calibration, preprocessing=self.preprocessing, keep_fp=keep_fp,
                                 scheme=scheme,
                                 progress=lambda done, total: self.say(f"{what}: calibrating ({method})", done, total))

        return quantize

    def _first_images(self, count: int):
        return first_images(self.calibration, self.preprocessing, count)

    def _errors(self) -> ErrorSample:
        """The calibration images int8's score errors are sampled on (``ERROR_IMAGES``), with fp32's scores."""
        if self._error_sample is None:
            self._error_sample = ErrorSample.of(self.files.fp32, self._first_images(ERROR_IMAGES))
        return self._error_sample

    def _judge_candidates(self, graphs: Mapping[str, Path]) -> dict[str, Step] | None:
        """Each candidate CPU graph judged against the CPU target on the judging images (None where there are
        none)."""
        if self.holdout is None or self.dataset.names != self.labels:
            return None
        return {form: self._judge(graph, self.inputs.cpu_target) for form, graph in graphs.items()}

    def _judging_images(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(inputs, targets, weights) of the judging images, read once; the weights give them ``class_mix`` (None:
        as drawn), and ``judged_on`` records what they were weighed to."""
        if self._judging is None:
            images, targets = self.holdout.inputs_and_targets(self.preprocessing)
            weights = None
            if self.class_mix is not None and self.dataset.names == self.labels:
                drawn = self.dataset.class_counts() / max(len(self.dataset), 1)
                weights = class_mix_weights(targets, drawn, np.asarray(self.class_mix.shares))
                self.judged_on.update(weighed_to=self.class_mix.source, effective_images=effective_images(weights))
            self._judging = images, targets, weights
            self._say_if_too_few(self.judged_on.get("effective_images", len(images)))
        return self._judging

    def _say_if_too_few(self, evidence: float) -> None:
        """Say, and record in ``judged_on``, where the judging images (``evidence``: their count, or effective count
        once weighed) are too few to show whether a graph keeps the TensorRT target's identical label sets: fewer
        than one changed label set is expected in them. On the zoo (90 validation images, 25 effective) the
        estimate read MSRN's post-training graph at 99.3 % where the eval split counted 93.0 %."""
        needed = self.inputs.target.images_per_change
        self.judged_on["images_per_change"] = needed
        if evidence >= needed:
            return
        warn(f"int8: the judging images ({self.judging_images}) weigh as {evidence:.0f}, fewer than the {needed} in "
             f"which one changed label set is expected at {self.inputs.target.min_agreement * 100:g} %: they "
             "estimate whether a graph keeps it and cannot show it, so the eval split's verdict may differ (hold "
             "more out when training: --val-fraction 0.25)")

    def _judge(self, graph: Path, target: AccuracyTarget) -> Step:
        """``graph`` (every layer as it was made) measured on the judging images as the search measures a step."""
        images, targets, weights = self._judging_images()
        return measure_step(graph, self._fp32_judging_scores(), images, targets, target, error_sample=self._errors(),
                            weights=weights)

    def _fp32_judging_scores(self) -> np.ndarray:
        """fp32's scores of the judging images, computed once for every search and judged graph."""
        if self._judging_scores is None:
            self._judging_scores = onnx_scores(self.files.fp32, self._judging_images()[0])
        return self._judging_scores

    def _reusable_qat_graph(self) -> dict[str, Any] | None:
        """The record of model.int8.onnx when quantization-aware training wrote it (``int8_source=qat``) from the
        current model.onnx; None otherwise (post-training quantization then makes it)."""
        path = self.files.tensorrt
        if not path.is_file():
            return None
        metadata = read_metadata(path)
        if metadata.get("int8_source") != "qat" or metadata.get(ONNX_SHA) != sha256_file(self.files.fp32):
            return None
        return {"path": str(path), "reused": True, "source": "qat", "kept_fp": [],
                "quantized_nodes": quantized_node_count(path)}


def _against_fp32(latency: Mapping[str, Mapping[int, float]], name: str) -> str:
    """``name``'s median at the deciding batch against fp32's, timed in the same turns: 'batch 8 9.71 ms vs fp32
    40.06 ms (0.24×)'."""
    batch = CPU_TIMING_BATCHES[-1]
    return (f"batch {batch} {latency[name][batch]:.2f} ms vs fp32 {latency['fp32'][batch]:.2f} ms "
            f"({latency[name][batch] / latency['fp32'][batch]:.2f}×)")


def _timing_record(latency: Mapping[str, Mapping[int, float]]) -> dict[str, dict[str, float]]:
    """A ``GraphTimer``'s medians as build.json records them: {graph: {batch: ms, rounded to µs}}."""
    return {name: {str(batch): round(ms, 3) for batch, ms in by_batch.items()} for name, by_batch in latency.items()}


def _candidate_path(work: Path, scheme: Int8Scheme) -> Path:
    return work / f"{scheme.quant_format}.{scheme.op_set}.onnx"


def quantized_node_count(path: Path) -> int:
    import onnx

    return len(quantized_node_names(onnx.load(str(path))))
