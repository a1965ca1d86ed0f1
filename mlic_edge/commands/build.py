"""``mlic-edge build``: the precision's ONNX (fp16 mixed, int8 Q/DQ), then the TensorRT engine, then the build
report with ONNX Runtime's mAP of the precision against fp32 on the eval split.

Precision lives in the ONNX (docs/design.md): ``model.fp16.onnx`` and ``model.int8.onnx`` are made here from
``model.onnx`` and serve every backend; the engine builder only parses them. Nothing here needs PyTorch unless
``model.onnx`` itself is missing (then the run is exported first, which does).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from mlic_edge.commands.evaluate import evaluate_or_warn
from mlic_edge.console import info, warn
from mlic_edge.errors import BuildError, CalibrationError, MlicError
from mlic_edge.export.lineage import ONNX_SHA, check_onnx
from mlic_edge.io import json_text, read_json, sha256_file
from mlic_edge.rundir import RunChange, RunDir
from mlic_edge.runtime.inference.backends import registry as backend_registry
from mlic_edge.spec import (CPU_INT8_TARGET_AGREEMENT, CPU_INT8_TARGET_DELTA_POINTS, DEFAULT_BACKEND,
                            DEFAULT_CALIB_IMAGES, DEFAULT_CALIBRATION_METHOD, DEFAULT_HOLDOUT_IMAGES, DEFAULT_QAT_EPOCHS,
                            INT8_TARGET_AGREEMENT, INT8_TARGET_DELTA_POINTS, PRECISIONS, RunSpec, require_at_least,
                            require_choice, require_fraction)

if TYPE_CHECKING:
    from mlic_edge.calibration.plan import Int8Plan, Progress
    from mlic_edge.train.qat import QatResult

FP16_MEASURE_IMAGES = 64  # fp16 decisions are measured on this many of the calibration images
# int8's judging images weighed to the eval split's class mix (its labels only), or as drawn from the training split
JUDGE_MIXES = ("eval", "drawn")


@dataclass
class BuildRequest:
    precision: str
    backend: str = DEFAULT_BACKEND
    calib_data: str | None = None
    calib_images: int = DEFAULT_CALIB_IMAGES
    calib_method: str = DEFAULT_CALIBRATION_METHOD  # benchmarks/results/precision.md: entropy clipped too much
    keep_fp: list[str] = field(default_factory=list)
    target_delta: float = INT8_TARGET_DELTA_POINTS  # int8: |ΔmAP| in points on the run's validation images
    target_agreement: float = INT8_TARGET_AGREEMENT  # int8: share of images with fp32's label set
    cpu_target_delta: float = CPU_INT8_TARGET_DELTA_POINTS  # int8, ONNX Runtime's CPU graph: the same, its own
    cpu_target_agreement: float = CPU_INT8_TARGET_AGREEMENT
    max_fp_layers: int | None = None  # int8: layers the search may keep in float (None: 30 %; 0: none)
    holdout_images: int = DEFAULT_HOLDOUT_IMAGES
    judge_mix: str = "eval"  # int8: weigh the judging images to the eval split's class mix ("drawn": as drawn)
    qat_epochs: int = DEFAULT_QAT_EPOCHS  # int8: fine-tune this long when post-training misses the target (0: never)
    batch: tuple[int, int, int] | None = None  # None: the builder's default (1,1,8; DLA 1,1,1)
    workspace_mb: int | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str | None = None
    evaluate: bool = True
    requantize: bool = False  # a bundle's run: make the precision's ONNX here instead of deploying the shipped one

    def cpu_graph_wanted(self, backend: str) -> bool:
        """int8 for ONNX Runtime also makes model.int8.cpu.onnx, the graph its CPU kernels fuse."""
        return backend == "onnxruntime"


def resolve_build_backend(name: str) -> str:
    """``auto``: full TensorRT when installed (it builds for this GPU), else ONNX Runtime (the ONNX is the artefact).
    TensorRT for RTX is used only when asked: its engines run on RTX GPUs, not necessarily this machine."""
    require_choice("build backend", name, backend_registry.BUILD_BACKENDS, BuildError)
    if name != "auto":
        return name
    return "tensorrt" if importlib.util.find_spec("tensorrt") is not None else "onnxruntime"


def check_request(request: BuildRequest) -> tuple[str, Any]:
    """(backend, TensorRT or None) for ``request``, refusing before any work (and before a bundle is unpacked) a
    precision or backend that does not exist, a TensorRT that is not installed, or an option it cannot honour."""
    require_choice("precision", request.precision, PRECISIONS, BuildError)
    require_fraction("--target-agreement", request.target_agreement, hint="for example 0.985")
    require_at_least("--target-delta", request.target_delta, 0, hint="mAP points, for example 0.2")
    require_fraction("--cpu-target-agreement", request.cpu_target_agreement, hint="for example 0.97")
    require_at_least("--cpu-target-delta", request.cpu_target_delta, 0, hint="mAP points, for example 0.5")
    require_at_least("--max-fp-layers", request.max_fp_layers, 0, hint="0 measures without keeping any")
    require_at_least("--qat-epochs", request.qat_epochs, 0, hint="0 never fine-tunes")
    require_choice("--judge-mix", request.judge_mix, JUDGE_MIXES, BuildError)
    require_at_least("--workspace", request.workspace_mb, 1, hint="a limit in MB, for example 2048")
    require_at_least("--dla-core", request.dla_core, 0, hint="a DLA core number: 0 or 1 on a Jetson")
    backend = resolve_build_backend(request.backend)
    trt = _load_builder(backend)
    if trt is not None:
        from mlic_edge.runtime.engines.builder import plan_build

        plan_build(trt.caps, _engine_options(request))
    return backend, trt


def unpack_to_build(bundle: Path, request: BuildRequest, out: Path | None = None) -> RunDir:
    """``build --bundle``: the bundle unpacked into its run directory (default runs/NAME, every member's sha256
    checked), once ``request`` is known to be buildable here (a backend or option this machine lacks is refused
    before anything is unpacked)."""
    from mlic_edge.commands.pack import unpack

    check_request(request)
    return unpack(bundle, out)


def parse_batch(text: str) -> tuple[int, int, int]:
    """'1,4,8' -> (1, 4, 8); '8' -> (1, 8, 8)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = [1, values[0], values[0]]
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise BuildError(f"--batch {text!r} is not MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX",
                         hint="for example --batch 1,4,8")
    return values[0], values[1], values[2]


def build(run: RunDir, request: BuildRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Make everything ``request`` asks for in ``run``; returns (and records in reports/build.json) the summary."""
    from mlic_edge.runtime.deployment.deploy_report import write_deploy_report

    backend, trt = check_request(request)
    if request.backend == "auto":
        info(f"--backend auto: {backend}" + ("" if backend == "tensorrt" else
                                             " (no TensorRT here: the artefact is the precision's ONNX)"))
    spec = run.spec()
    run.require_writable()
    started = time.monotonic()
    say = progress or (lambda what, done, total: None)

    fp32 = ensure_fp32_onnx(run)
    check_onnx(run, "fp32", spec)  # readable, made for this run's classes and preprocessing, from its checkpoint
    entry: dict[str, Any] = {"precision": request.precision, "backend": backend,
                             "onnx": {"fp32": _file_facts(fp32)}}
    shipped = _shipped_graphs(run, request)
    # The precision's ONNX and its report entry are put in place together (a stop before the end changes nothing);
    # the engine, built from the ONNX in place, follows with its own report entry.
    with run.transaction() as change:
        onnx_path = fp32
        if request.precision in shipped:
            onnx_path, entry[request.precision] = _deploy_shipped(run, request, shipped[request.precision])
        elif request.precision == "fp16":
            onnx_path, entry["fp16"] = _make_fp16(run, spec, request, say, change)
        elif request.precision == "int8":
            onnx_path, entry["int8"] = _make_int8(run, spec, request, say, change, backend)
        entry["onnx"][request.precision] = _file_facts(onnx_path, name=run.onnx(request.precision).name)
        cpu_graph = change.current(run.onnx("int8", "cpu")) if (entry.get("int8") or {}).get("cpu_graph") else None
        if cpu_graph:
            entry["onnx"]["int8.cpu"] = _file_facts(cpu_graph, name=run.onnx("int8", "cpu").name)
        if request.evaluate:
            measured = (entry.get("int8") or {}).pop("eval_accuracy", None)  # a fine-tuned graph, as it was recorded
            entry["accuracy"] = measured or evaluate_or_warn(run, request.precision, say, onnx_path)
            if cpu_graph and entry["accuracy"]:
                entry["accuracy"]["cpu_graph"] = evaluate_or_warn(run, "int8", say, cpu_graph)
            if request.precision == "int8":
                state_int8_verdicts(run, entry, request)
        entry["seconds"] = round(time.monotonic() - started, 2)
        stage_build_report(run, entry, change)
    if backend in backend_registry.ENGINE_BACKENDS:
        entry["engine"] = _build_engine(run, spec, trt, run.onnx(request.precision), request, say)
        entry["seconds"] = round(time.monotonic() - started, 2)
        with run.transaction() as change:
            stage_build_report(run, entry, change)
    write_deploy_report(run)
    return entry


def state_int8_verdicts(run: RunDir, entry: dict[str, Any], request: BuildRequest) -> None:
    """Each int8 graph's verdict on the eval split against its target, added to its accuracy entry and told: parity's
    test (``limit_failures``) with the build's targets, so the two agree. Reported, never used for a decision (the
    validation split made those); a graph that misses is named with its figures and the cheapest next step."""
    from mlic_edge.runtime.checks.parity import limit_failures

    accuracy = entry.get("accuracy") or {}
    graphs = [("tensorrt", accuracy, (request.target_delta, request.target_agreement))]
    if accuracy.get("cpu_graph"):
        graphs.append(("cpu", accuracy["cpu_graph"], (request.cpu_target_delta, request.cpu_target_agreement)))
    for graph, measured, (tolerance, floor) in graphs:
        if not measured:
            continue
        failures = limit_failures(measured["mAP_int8"], measured["mAP_fp32"], measured["labelset_agreement_vs_fp32"],
                                  tolerance, floor)
        verdict = {"graph": graph, "split": measured.get("split", "eval"), "images": measured["images"],
                   "tolerance_points": tolerance, "labelset_floor": floor, "passed": not failures,
                   "failures": failures}
        name = "int8 CPU graph" if graph == "cpu" else "int8"
        figures = (f"ΔmAP {measured['delta_mAP_vs_fp32'] * 100:+.2f} points, "
                   f"{measured['labelset_agreement_vs_fp32'] * 100:.1f} % identical label sets on the "
                   f"{measured['images']} eval images (target |ΔmAP| ≤ {tolerance:g}, ≥ {floor * 100:g} %)")
        if not failures:
            info(f"{name} meets its target on the eval split: {figures}; parity holds it to the same")
        else:
            verdict["next_step"] = _int8_next_step(run, entry, graph)
            warn(f"{name} misses its target on the eval split: {figures}. Next: {verdict['next_step']}")
        measured["verdict"] = verdict


def _agreement_cell(step: dict[str, Any]) -> str:
    """A recorded search step's identical label sets, as the build said them."""
    from mlic_edge.calibration.accuracy import agreement_text

    return agreement_text(step["labelset_agreement"], step.get("estimated_agreement"))


def _delta_cell(step: dict[str, Any]) -> str:
    """A recorded search step's ΔmAP with its standard error, where the build measured one."""
    se = step.get("delta_se")
    return f"{step['delta_mAP_points']:+.3f}" + (f" ± {se:.3f}" if se else "")


def _estimate_words(search: dict[str, Any]) -> str:
    """What the search's agreement figure is, for the report."""
    final = search["steps"][-1]
    if final.get("estimated_agreement") is None:
        return f"a count over {search['images']} images"
    return (f"an estimate from the {search['images']} judging images' margins and int8's score errors on them and "
            f"on {final.get('error_images', 0)} training images (calibration/accuracy.py, estimate_agreement)")


def _int8_next_step(run: RunDir, entry: dict[str, Any], graph: str) -> str:
    """The cheapest steps towards the target for an int8 graph that missed it on the eval split, from what this
    build did: where its judging images read the graph as meeting the target, a stricter target for them (the
    build then keeps more layers float or fine-tunes); where they did not and it was not fine-tuned, fine-tuning;
    after fine-tuning, more layers in float. Then fp16 (TensorRT's graph) or another graph (the CPU's).

    Fine-tuning longer is not offered: on the zoo (separate checks, TensorRT's scheme, eval split) 6 epochs left
    MSRN's graph at 97.7 % identical label sets where 3 read 98.0 %, and ML-GAT's RMS logit error stayed at
    0.07-0.09 through 4 epochs (the default rate, and SGD at 30× and 300× it) where keeping 8 modules float read
    0.023 before any fine-tuning."""
    int8 = entry.get("int8") or {}
    record = (int8.get("cpu_graph") or {}) if graph == "cpu" else int8
    search = record.get("accuracy_target") or {}
    floor = (search.get("target") or {}).get("min_agreement") or (
        CPU_INT8_TARGET_AGREEMENT if graph == "cpu" else INT8_TARGET_AGREEMENT)
    option = "--cpu-target-agreement" if graph == "cpu" else "--target-agreement"
    if search.get("met"):
        first = (f"the build's judging images read it as meeting the target: ask more of them (mlic-edge build -p "
                 f"int8 --run {run.path} {option} {min(floor + 0.01, 0.999):g}), or hold out more when training "
                 "(mlic-edge train --val-fraction 0.25)")
    elif record.get("source") != "qat" and "qat_trial" not in record:
        first = (f"fine-tune for int8 (mlic-edge build -p int8 --run {run.path} --qat-epochs 3: needs the "
                 "checkpoint, the training data and ModelOpt)")
    else:
        kept = len(record.get("kept_fp") or [])
        first = (f"keep more layers in float (mlic-edge build -p int8 --run {run.path} --max-fp-layers "
                 f"{2 * kept or 4}; this build kept {kept})")
    if graph == "cpu":
        return f"{first}; or serve the TensorRT Q/DQ graph or fp32 on this CPU"
    return f"{first}; or build fp16 (-p fp16)"


def _shipped_graphs(run: RunDir, request: BuildRequest) -> dict[str, dict[str, Any]]:
    """In a run unpacked from a bundle: {precision: its bundle record} for the precisions whose ONNX the bundle
    shipped, each file checked to be the shipped bytes (model.onnx always, as every graph's source). Empty for a run
    made here; with --requantize the precision asked for is made here instead (and said so)."""
    from mlic_edge.runtime.deployment.bundle import bundle_manifest, bundled_graph

    manifest = bundle_manifest(run)
    if manifest is None:
        if request.requantize:
            raise BuildError("--requantize is for a run unpacked from a bundle (`build --bundle`)",
                             hint="here the precision's ONNX is made from model.onnx anyway; drop --requantize")
        return {}
    bundled_graph(run, run.onnx("fp32"))
    if request.precision == "fp32":
        return {}
    if request.requantize:
        if run.onnx(request.precision).name in manifest["files"]:
            warn(f"{request.precision}: --requantize: {run.onnx(request.precision).name} is made here, replacing the "
                 "one the bundle shipped; the workstation's parity figures no longer apply to it (run `mlic-edge "
                 "parity` here)")
        return {}
    record = bundled_graph(run, run.onnx(request.precision))
    return {} if record is None else {request.precision: record}


def _deploy_shipped(run: RunDir, request: BuildRequest, record: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The bundle's graph of the precision, as it was verified on the workstation: nothing converted or quantized
    (for int8 the CPU graph too, where the bundle shipped it)."""
    from mlic_edge.runtime.checks.parity import figures_text
    from mlic_edge.runtime.deployment.bundle import bundled_graph

    path = run.onnx(request.precision)
    verified = [f"{r['backend']} {figures_text(r)}" for r in record.get("workstation_parity") or []]
    info(f"{request.precision}: {path.name} deployed as the bundle shipped it (sha256 {record['sha256'][:12]}…, "
         + (f"workstation parity: {'; '.join(verified)}" if verified else "no workstation parity recorded")
         + "); --requantize makes a new one here")
    if request.keep_fp:
        warn(f"{request.precision}: --keep-fp does not change a shipped graph (pass --requantize to make one here)")
    summary = {"path": str(path), "reused": True, "source": "bundle", "sha256": record["sha256"],
               "workstation_parity": record.get("workstation_parity") or []}
    if request.precision == "int8":
        cpu = run.onnx("int8", "cpu")
        cpu_record = bundled_graph(run, cpu)
        if cpu_record is not None:
            summary["cpu_graph"] = {"path": str(cpu), "reused": True, "source": "bundle",
                                    "sha256": cpu_record["sha256"]}
    return path, summary


def ensure_fp32_onnx(run: RunDir) -> Path:
    """model.onnx, exporting the checkpoint first when it is missing (that step needs PyTorch)."""
    if run.onnx("fp32").is_file():
        return run.onnx("fp32")
    if importlib.util.find_spec("torch") is None:
        raise BuildError(f"{run.onnx('fp32')} is missing and PyTorch is not installed here to export it",
                         hint="export on the training machine (`mlic-edge export`) and copy the run directory")
    from mlic_edge.export.onnx_export import export_onnx
    from mlic_edge.export.reference import write_reference

    info(f"{run.onnx('fp32').name} is missing: exporting {run.path} first")
    export_onnx(run)
    write_reference(run)
    return run.onnx("fp32")


def _make_fp16(run: RunDir, spec: RunSpec, request: BuildRequest, say: Progress,
               change: RunChange) -> tuple[Path, dict]:
    """model.fp16.onnx staged in ``change`` (put in place when the build commits), or the one in place when it is
    still current (then nothing is staged)."""
    from mlic_edge.calibration import first_images, select_calibration_set
    from mlic_edge.export.fp16 import convert_to_fp16

    reusable = None if request.requantize else _reusable_fp16(run, request)
    if reusable is not None:
        info(f"fp16: {run.onnx('fp16').name} was made from this model.onnx with the same --keep-fp: reused "
             "(delete it to measure again)")
        return run.onnx("fp16"), reusable
    calibration = select_calibration_set(_training_images(spec, request, required=True),
                                         min(request.calib_images, FP16_MEASURE_IMAGES))
    inputs = first_images(calibration, spec.preprocessing, FP16_MEASURE_IMAGES)
    say("fp16: measuring ranges and errors", 0, 1)
    out = change.path(run.onnx("fp16"))
    report = convert_to_fp16(run.onnx("fp32"), out, inputs, keep_fp32=request.keep_fp,
                             progress=lambda message: say(f"fp16: {message}", 0, 1))
    for kept in report.kept_fp32:
        info(f"fp16: {kept.name} ({kept.op_type}) stays fp32: {kept.reason}")
    return out, {**report.as_dict(), "path": str(run.onnx("fp16"))}


def _reusable_fp16(run: RunDir, request: BuildRequest) -> dict[str, Any] | None:
    """The existing fp16 ONNX's record when it was converted from the current model.onnx with the same --keep-fp
    (a device rebuilding from a bundle has the file but not the images to measure again)."""
    import json

    from mlic_edge.export.metadata import read_metadata

    path = run.onnx("fp16")
    if not path.is_file():
        return None
    metadata = read_metadata(path)
    if (metadata.get(ONNX_SHA) != sha256_file(run.onnx("fp32"))
            or metadata.get("asked_fp32") != json.dumps(sorted(request.keep_fp))):
        return None
    return {"path": str(path), "reused": True, "kept_fp32": json.loads(metadata.get("fp32_nodes", "[]"))}


def _make_int8(run: RunDir, spec: RunSpec, request: BuildRequest, say: Progress, change: RunChange,
               backend: str) -> tuple[Path, dict]:
    """model.int8.onnx (and for ONNX Runtime model.int8.cpu.onnx) staged in ``change``, as the int8 plan decides
    (calibration/plan.py); the calibration records are stored under calibration/<key>/ at once (named by what they
    were made from, so never stale). Where post-training misses its target, fine-tuning runs here and the plan judges
    it."""
    from mlic_edge.calibration import Int8Plan

    dataset = _training_images(spec, request, required=False)
    validation, no_validation = _run_validation(spec, dataset)
    plan = Int8Plan(_int8_inputs(spec, request, backend), _int8_files(run, change), spec.preprocessing,
                    spec.labels, dataset, progress=say, validation=validation, no_validation=no_validation,
                    class_mix=_eval_class_mix(run, spec) if request.judge_mix == "eval" else None)
    decision = plan.post_training()
    if plan.fine_tuning_wanted:
        _fine_tune(run, spec, request, plan, change, say)
    if request.cpu_graph_wanted(backend):
        plan.cpu_graph()
        if plan.cpu_fine_tuning_wanted:
            _fine_tune_cpu_graph(run, spec, request, plan, say)
    return decision.graph, decision.record


def _eval_class_mix(run: RunDir, spec: RunSpec):
    """The eval split's class mix, from its labels in reference.npz (never its images or scores), for the int8
    plan to weigh its judging images to; None where the run has no usable reference (the evaluation says why)."""
    from mlic_edge.calibration import ClassMix
    from mlic_edge.runtime.checks.parity import Reference

    if not run.reference.is_file():
        return None
    try:
        reference = Reference.load(run)
    except MlicError:
        return None
    if reference.labels != list(spec.labels):
        return None
    shares = (reference.targets == 1).mean(axis=0)
    return ClassMix(tuple(float(share) for share in shares),
                    f"the eval split's class mix ({reference.split}, {len(reference.targets)} images' labels)")


def _int8_inputs(spec: RunSpec, request: BuildRequest, backend: str):
    """``request`` as the int8 plan's inputs; for ONNX Runtime, this CPU as the CPU graph's target."""
    from mlic_edge.calibration import AccuracyTarget, CpuTarget, Int8Inputs

    cpu = None
    if request.cpu_graph_wanted(backend):
        from mlic_edge.runtime.inference.backends.onnxruntime_backend import cpu_features, describe_cpu

        features = cpu_features()
        cpu = CpuTarget(features["int8_reduce_range"], describe_cpu(features), _cpu_timer(spec))
    return Int8Inputs(target=AccuracyTarget(request.target_delta, request.target_agreement),
                      cpu_target=AccuracyTarget(request.cpu_target_delta, request.cpu_target_agreement),
                      method=request.calib_method, calib_images=request.calib_images,
                      holdout_images=request.holdout_images, keep_fp=tuple(request.keep_fp),
                      max_fp_layers=request.max_fp_layers, fine_tune_epochs=request.qat_epochs,
                      reuse_fine_tuned=not request.requantize, cpu=cpu)


def _int8_files(run: RunDir, change: RunChange):
    from mlic_edge.calibration import CPU_GRAPH, Int8Files

    return Int8Files(fp32=run.onnx("fp32"), tensorrt=run.onnx("int8"), cpu=run.onnx("int8", CPU_GRAPH),
                     records=run.path / "calibration", run=run.path, stage=change.path)


def _cpu_timer(spec: RunSpec):
    """Graphs timed in turns by ONNX Runtime on this CPU (the int8 plan chooses the CPU graph's form by it)."""
    def time_graphs(graphs, batches, rounds):
        import contextlib

        from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
        from mlic_edge.runtime.inference.latency import interleaved_latency
        from mlic_edge.spec import ModelSpec

        with contextlib.ExitStack() as stack:
            backends = {name: stack.enter_context(OnnxRuntimeBackend(path, device="cpu")) for name, path in
                        graphs.items()}
            return interleaved_latency(backends, ModelSpec.from_run(spec), batches, rounds)

    return time_graphs


def _fine_tune(run: RunDir, spec: RunSpec, request: BuildRequest, plan: Int8Plan, change: RunChange, say: Progress) -> None:
    """Post-training int8 missed its target: quantization-aware distillation (train/qat.py) for
    ``request.qat_epochs`` epochs, the held-out images left out of it; the plan measures the result on them as the
    search measured post-training and keeps the graph nearer fp32. Where it is the fine-tuned one, the run records
    the fine-tuning (qat.pt, run.json's qat, reports/qat.md) and the earlier int8 builds are marked superseded."""
    import tempfile

    from mlic_edge.commands.qat import export_qat_graph, qat_blocker, record_qat
    from mlic_edge.train.config import QAT_WORKERS
    from mlic_edge.train.qat import quantization_aware_finetune

    blocker = qat_blocker(run)
    if blocker is not None:
        warn(f"int8: no quantization-aware fine-tuning here ({blocker.message}); {blocker.hint}")
        return
    info(f"int8: post-training misses the target; fine-tuning {request.qat_epochs} epoch(s) with quantization-aware "
         f"distillation of the fp32 scores, the {len(plan.holdout)} held-out images left out (--qat-epochs 0: never)")
    say("int8: quantization-aware fine-tuning", 0, 1)
    result = quantization_aware_finetune(run, request.qat_epochs, workers=QAT_WORKERS, exclude=plan.holdout.image_ids,
                                         keep_fp=plan.decision.search.kept_fp, method=_fine_tuning_calibration(request))
    _say_kept_float("int8", plan.decision.search.kept_fp, result)
    with tempfile.TemporaryDirectory(prefix=".int8-qat.", dir=run.path) as work:
        graph = Path(work) / run.onnx("int8").name
        dequantized = export_qat_graph(result, spec, run.onnx("fp32"), graph)
        trial = plan.judge_fine_tuned(graph, f"quantization-aware, {result.epochs} epoch(s)", result.seconds,
                                      result.kept_fp)
        if not trial.adopted:
            return
        staged = plan.decision.graph
        ptq_eval = evaluate_or_warn(run, "int8", lambda *_: None, staged) if request.evaluate else None
        plan.adopt_fine_tuned(trial, graph, result.epochs)
    by = "build -p int8 (quantization-aware fine-tuning)"
    section = record_qat(run, result, change, dequantized, ptq_eval, by=by, evaluate=request.evaluate)
    stage_int8_superseded(run, change, by)  # this build's own entry replaces its mark
    plan.record_fine_tuning({"epochs": section.epochs, "lr": section.lr, "target": section.target,
                             "seconds": section.seconds, "device": section.device}, section.accuracy)


def _fine_tuning_calibration(request: BuildRequest) -> str:
    """How the fine-tuning calibrates its activation ranges: as post-training did (``--calib-method``), or by
    percentile where ModelOpt cannot (``QAT_CALIBRATION_METHODS``: entropy), said."""
    from mlic_edge.train.qat import QAT_CALIBRATION_METHODS

    if request.calib_method in QAT_CALIBRATION_METHODS:
        return request.calib_method
    info(f"int8: the fine-tuning calibrates its activation ranges by {DEFAULT_CALIBRATION_METHOD}, not "
         f"{request.calib_method} (it calibrates by {' or '.join(QAT_CALIBRATION_METHODS)})")
    return DEFAULT_CALIBRATION_METHOD


def _say_kept_float(what: str, asked: Sequence[str], result: QatResult) -> None:
    """Which of the post-training graph's float layers the fine-tuning kept float (those a Conv/Linear module
    exports); the others (an Add, a matmul outside a Linear) it does not quantize anyway, and it said which modules
    it kept float in their place (``result.chosen_fp``)."""
    kept = [name for name in result.kept_fp if name not in result.chosen_fp]
    if asked:
        info(f"{what}: fine-tuned with {len(kept)} of the {len(asked)} layer(s) the search kept in float left "
             "unquantized" + (f" ({', '.join(kept)})" if kept else ""))


def _fine_tune_cpu_graph(run: RunDir, spec: RunSpec, request: BuildRequest, plan: Int8Plan, say: Progress) -> None:
    """The CPU graph missed its target after its search: quantization-aware distillation for the CPU graph's scheme
    (uint8 activations, per-channel int8 weights, 7-bit on a CPU without VNNI; train/qat.py ``cpu_qat_scheme``),
    the held-out images left out of it; the plan quantizes the fine-tuned weights into the CPU graph and keeps it
    where it comes closer. The TensorRT graph and qat.pt are not touched: only model.int8.cpu.onnx changes."""
    import tempfile

    from mlic_edge.commands.qat import export_fine_tuned_fp32, qat_blocker
    from mlic_edge.train.config import QAT_WORKERS
    from mlic_edge.train.qat import cpu_qat_scheme, quantization_aware_finetune, weight_steps

    blocker = qat_blocker(run)
    if blocker is not None:
        warn(f"int8 CPU graph: no quantization-aware fine-tuning here ({blocker.message}); {blocker.hint}")
        return
    scheme = cpu_qat_scheme(plan.inputs.cpu.reduce_range)
    info(f"int8 CPU graph: post-training misses its target; fine-tuning {request.qat_epochs} epoch(s) with "
         f"quantization-aware distillation for the {scheme.describe()}, the {len(plan.holdout)} held-out images left "
         "out (--qat-epochs 0: never)")
    say("int8 CPU graph: quantization-aware fine-tuning", 0, 1)
    result = quantization_aware_finetune(run, request.qat_epochs, workers=QAT_WORKERS, exclude=plan.holdout.image_ids,
                                         scheme=scheme, keep_fp=plan.cpu_search.kept_fp,
                                         method=_fine_tuning_calibration(request))
    _say_kept_float("int8 CPU graph", plan.cpu_search.kept_fp, result)
    # the post-training CPU graph's figures on the eval split, for the report, before a fine-tuned one replaces it
    ptq_eval = evaluate_or_warn(run, "int8", lambda *_: None, plan.files.stage(plan.files.cpu)) \
        if request.evaluate else None
    with tempfile.TemporaryDirectory(prefix=".int8-cpu-qat.", dir=run.path) as work:
        fine_tuned = Path(work) / "fine-tuned.onnx"
        export_fine_tuned_fp32(result, spec, fine_tuned)
        trial = plan.adopt_cpu_fine_tuned(fine_tuned, {"epochs": result.epochs, "lr": result.lr,
                                                       "target": result.target, "scheme": scheme.describe(),
                                                       "seconds": result.seconds, "device": result.device},
                                          result.kept_fp, weight_steps(result.model, fine_tuned))
    if trial.adopted and ptq_eval:
        plan.decision.record["cpu_graph"]["post_training"]["eval_accuracy"] = ptq_eval


def _training_images(run_spec: RunSpec, request: BuildRequest, *, required: bool):
    """The training split (or --calib-data) the calibration and held-out images come from; ``None`` where the data
    is absent and not required (an int8 rebuild on a device reuses its calibration record)."""
    from mlic_edge.data import open_dataset

    recorded = run_spec.dataset_record
    spec = request.calib_data or recorded.spec
    split = None if request.calib_data else recorded.train_split
    try:
        if not spec:
            raise CalibrationError("run.json names no dataset", hint="pass --calib-data DATA")
        dataset = open_dataset(spec, role="train", split=split, labels=run_spec.labels)
    except MlicError as error:
        if required or request.calib_data:
            raise CalibrationError(f"calibration data cannot be read: {error}",
                                   hint="pass --calib-data DATA (images of the training distribution)") from error
        info(f"calibration data not available here ({error.message}); reusing the stored calibration record")
        return None
    if dataset.names != run_spec.labels:
        warn(f"calibration data {dataset.spec} has other classes than the model: class coverage is not checked")
    return dataset


def _run_validation(run_spec: RunSpec, dataset):
    """(the run's validation split re-derived from ``dataset`` and checked against run.json's record, or None; why
    there is none): its images judge int8's accuracy target, unseen in training (mlic_edge/data/splits.py)."""
    from mlic_edge.data.splits import recorded_validation

    if dataset is None:
        return None, "no training images here"
    recorded = run_spec.dataset_record
    validation, why = recorded_validation(dataset, recorded.val_fraction, recorded.val_seed, recorded.val_ids_sha256)
    if validation is None and recorded.has_validation:
        warn(f"int8: {why}: the accuracy target is judged on images held out of it instead, optimistically")
    return validation, why


def _load_builder(backend: str):
    if backend not in backend_registry.ENGINE_BACKENDS:
        return None
    from mlic_edge.runtime.engines.api import load_tensorrt

    return load_tensorrt(backend)


def _build_engine(run: RunDir, spec: RunSpec, trt, onnx_path: Path, request: BuildRequest,
                  say: Progress) -> dict[str, Any]:
    from mlic_edge.runtime.engines.gpu import detect_gpu
    from mlic_edge.runtime.engines.builder import build_engine

    result = build_engine(trt, onnx_path, run.path, _engine_options(request), labels=spec.labels,
                          preprocessing=spec.preprocessing.as_dict(),
                          gpu=detect_gpu(), on_progress=lambda phase, done, total: say(f"engine: {phase}", done, total))
    info(f"engine: {result.engine_path.relative_to(run.path)} ({result.size_bytes / 1e6:.1f} MB, "
         f"{result.seconds:.1f} s{', timing cache reused' if result.timing_cache_reused else ''})")
    return {"path": str(result.engine_path.relative_to(run.path)), "size_bytes": result.size_bytes,
            "seconds": round(result.seconds, 2), "timing_cache_reused": result.timing_cache_reused,
            "manifest": result.manifest}


def _engine_options(request: BuildRequest):
    from mlic_edge.runtime.engines.builder import BuildOptions

    return BuildOptions(precision=request.precision, batch=request.batch, workspace_mb=request.workspace_mb,
                        dla_core=request.dla_core, version_compatible=request.version_compatible,
                        hardware_compatibility=request.hardware_compatibility)


def _file_facts(path: Path, name: str | None = None) -> dict[str, Any]:
    return {"file": name or path.name, "size_bytes": path.stat().st_size, "sha256": sha256_file(path)}


def stage_build_report(run: RunDir, entry: dict[str, Any], change: RunChange) -> None:
    """reports/build.json keeps the latest build of each precision (and engine backend); build.md tabulates it.
    Both are staged in ``change``, to be put in place with the files they describe."""
    engine = entry["backend"] in backend_registry.ENGINE_BACKENDS
    key = entry["precision"] + (f".{entry['backend']}" if engine else "")
    report = _build_report(run, change)
    report["builds"][key] = entry
    _stage_report(run, report, change)


def _build_report(run: RunDir, change: RunChange) -> dict[str, Any]:
    """reports/build.json as ``change`` has it so far."""
    path = change.current(run.reports / "build.json")
    return read_json(path) if path.is_file() else {"builds": {}}


def _stage_report(run: RunDir, report: dict[str, Any], change: RunChange) -> None:
    change.path(run.reports / "build.json").write_text(json_text(report))
    change.path(run.reports / "build.md").write_text(build_markdown(report))


def stage_int8_superseded(run: RunDir, change: RunChange, by: str) -> None:
    """Quantization-aware training replaced model.int8.onnx: the int8 builds on record describe the graph before it.
    They stay in reports/build.json, marked, and build.md says so above them (until ``build -p int8`` again)."""
    report = _build_report(run, change)
    stale = [entry for entry in report["builds"].values() if entry["precision"] == "int8"]
    for entry in stale:
        entry["superseded_by"] = by
    if stale:
        _stage_report(run, report, change)


def _cpu_graph_markdown(key: str, entry: dict[str, Any]) -> list[str]:
    """The int8 CPU graph's section: the form chosen and why, its latency against fp32, its accuracy."""
    cpu = (entry.get("int8") or {}).get("cpu_graph")
    if not cpu or cpu.get("source") == "bundle":
        return []
    latency, chosen = cpu["latency_ms"], cpu.get("candidate", cpu["quant_format"])  # older records: a form alone
    batches = list(latency["fp32"])
    lines = ["", f"## {key}: ONNX Runtime CPU graph ({Path(cpu['path']).name}), {chosen}", "",
             f"uint8 activations, int8 per-channel weights{' (7-bit: reduce_range)' if cpu['reduce_range'] else ''}"
             + (f", the score head float ({', '.join(cpu['float_head'])})" if cpu.get("float_head") else "")
             + f", on {cpu['cpu']}; chosen by {cpu['chosen_by']}. Median ms per batch on the machine that built it:",
             "",
             "| graph | " + " | ".join(f"batch {b}" for b in batches) + " | " +
             " | ".join(f"× fp32 at {b}" for b in batches) + " |", "|---|" + "---|" * (2 * len(batches))]
    rows = [(f"{name}{' (chosen)' if name == chosen else ''}", by_batch, latency["fp32"])
            for name, by_batch in latency.items()]
    staged = cpu.get("staged_latency_ms")  # timed again once the search kept more layers float
    if staged:
        staged_fp32 = " / ".join(f"{staged['fp32'][b]:.2f}" for b in batches)
        rows.append((f"{chosen} as staged, with the search's float layers (timed again, fp32 {staged_fp32} ms)",
                     staged[chosen], staged["fp32"]))
    for name, by_batch, fp32 in rows:
        lines.append(f"| {name} | " + " | ".join(f"{by_batch[b]:.2f}" for b in batches) + " | "
                     + " | ".join(f"{by_batch[b] / fp32[b]:.2f}" for b in batches) + " |")
    search = cpu.get("accuracy_target")
    accuracy = ((entry.get("accuracy") or {}).get("cpu_graph")) or {}
    if search:
        step = search["steps"][-1]
        lines += ["", f"{_judged_on_words(search).capitalize()}: ΔmAP {_delta_cell(step)} points, "
                      f"{_agreement_cell(step)} identical label sets, layers in float: "
                      f"{', '.join(step['kept_fp']) or 'none'} (target {'met' if search['met'] else 'missed'})."]
    if accuracy:
        lines += ["", f"Eval split (ONNX Runtime CPU): mAP {accuracy['mAP_int8'] * 100:.2f}, Δ vs fp32 "
                      f"{accuracy['delta_mAP_vs_fp32'] * 100:+.3f} points, "
                      f"{accuracy['labelset_agreement_vs_fp32'] * 100:.1f} % identical label sets."]
    return lines


def _verdict_markdown(key: str, entry: dict[str, Any]) -> list[str]:
    """Each int8 graph's verdict on the eval split (``state_int8_verdicts``), as parity would give it."""
    accuracy = entry.get("accuracy") or {}
    lines = []
    for measured in (accuracy, accuracy.get("cpu_graph") or {}):
        verdict = measured.get("verdict")
        if not verdict:
            continue
        graph = "ONNX Runtime's CPU graph" if verdict["graph"] == "cpu" else "TensorRT's Q/DQ graph"
        lines += ["", f"## {key}: {graph} on the eval split, target {'met' if verdict['passed'] else 'missed'}", "",
                  f"|ΔmAP| ≤ {verdict['tolerance_points']:g} points and ≥ {verdict['labelset_floor'] * 100:g} % "
                  f"identical label sets on {verdict['images']} eval images, the test parity applies (no decision "
                  f"was made on these images): ΔmAP {measured['delta_mAP_vs_fp32'] * 100:+.3f}, "
                  f"{measured['labelset_agreement_vs_fp32'] * 100:.1f} % identical."]
        if not verdict["passed"]:
            lines += ["", "Missed: " + "; ".join(verdict["failures"]) + f". Next: {verdict['next_step']}."]
    return lines


def _judged_on_words(search: dict[str, Any]) -> str:
    """Which images judged an accuracy-target search, in words (build.json's ``judged_on``; an older build.json
    has none: held-out training images)."""
    from mlic_edge.calibration.plan import weighing_words

    judged = search.get("judged_on") or {}
    weighed = weighing_words(judged)
    if judged.get("unseen"):
        return (f"{search['images']} images of the run's validation split (held out before training: unseen by the "
                f"model; neither calibration nor eval images){weighed}")
    return (f"{search['images']} held-out training images, neither calibration nor eval images{weighed}"
            + (f" (**{judged['note']}**)" if judged.get("note") else ""))


def build_markdown(report: dict[str, Any]) -> str:
    lines = ["# Builds", "",
             "mAP: ONNX Runtime (CPU) on the eval split; Δ against the fp32 ONNX. Engine sizes and build times are "
             "from the machine that built them; no engine was run to produce these figures.", "",
             "| build | ONNX size | engine | build s | kept in higher precision | mAP | Δ vs fp32 (pts) |",
             "|---|---|---|---|---|---|---|"]
    for key, entry in sorted(report["builds"].items()):
        precision = entry["precision"]
        onnx_size = entry["onnx"][precision]["size_bytes"] / 1e6
        engine = entry.get("engine")
        engine_text = f"{engine['size_bytes'] / 1e6:.2f} MB ({entry['backend']})" if engine else "-"
        if (entry.get(precision) or {}).get("source") == "bundle":
            kept = "as the bundle shipped it"
        elif precision == "fp16":
            kept = ", ".join(f"{k['name']} ({k['op_type']})" for k in entry["fp16"]["kept_fp32"]) or "none"
        elif precision == "int8":
            kept = ", ".join(entry["int8"]["kept_fp"]) or "none"
        else:
            kept = "-"
        accuracy = entry.get("accuracy") or {}
        map_text = f"{accuracy[f'mAP_{precision}'] * 100:.2f}" if accuracy else "-"
        delta = f"{accuracy['delta_mAP_vs_fp32'] * 100:+.3f}" if accuracy else "-"
        lines.append(f"| {key} | {onnx_size:.2f} MB | {engine_text} | {entry['seconds']} | {kept} | {map_text} | "
                     f"{delta} |")
    superseded = {entry["superseded_by"] for entry in report["builds"].values() if entry.get("superseded_by")}
    for by in sorted(superseded):
        keys = ", ".join(key for key, entry in sorted(report["builds"].items()) if entry.get("superseded_by") == by)
        lines += ["", f"**Superseded:** the {keys} build(s) above describe the post-training graph that {by} "
                      "replaced; `mlic-edge build -p int8` builds and measures the current one."]
    for key, entry in sorted(report["builds"].items()):
        manifest = (entry.get("engine") or {}).get("manifest") or {}
        dla = manifest.get("dla_layers")
        if manifest.get("device", "gpu") != "gpu":
            placement = (f"{dla['dla']} layers on {manifest['device']}, {dla['gpu']} on the GPU"
                         + (f" ({', '.join(dla['gpu_layers'])})" if dla["gpu_layers"] else "") if dla else
                         "this TensorRT cannot say which layers run on DLA")
            lines += ["", f"## {key}: DLA placement (asked of the builder before building)", "", placement]
        lines += _cpu_graph_markdown(key, entry)
        lines += _verdict_markdown(key, entry)
        search = (entry.get("int8") or {}).get("accuracy_target")
        if search:
            outcome = "met" if search["met"] else f"missed ({search['stopped']})"
            lines += ["", f"## {key}: accuracy target, {outcome}", "",
                      f"Measured with ONNX Runtime (CPU; layers in float run fp32) on {_judged_on_words(search)} "
                      f"(fp32 mAP there "
                      f"{search['mAP_fp32'] * 100:.2f}). Each step keeps the next most sensitive layers in float. "
                      f"Identical label sets are asked as ≥ "
                      f"{search.get('required_agreement', search['target']['min_agreement']) * 100:.1f} %: the target "
                      f"{search['target']['min_agreement'] * 100:g} % plus {search['target'].get('margin_se', 0):g} "
                      f"standard error(s) of {_estimate_words(search)}; |ΔmAP| as within the target by "
                      f"{search['target'].get('delta_margin_se', 0):g} standard error(s) of a paired bootstrap over "
                      "those images (calibration/accuracy.py, delta_map_standard_error).", "",
                      "| step | layers in float | ΔmAP vs fp32 (pts) ± standard error | identical label sets | target met |",
                      "|---|---|---|---|---|"]
            for number, step in enumerate(search["steps"]):
                kept = ", ".join(step["kept_fp"]) or "none"
                if step.get("source", "post-training") != "post-training":
                    kept += f" ({step['source']} fine-tuning, reports/qat.md)"
                lines.append(f"| {number} | {kept} | {_delta_cell(step)} | "
                             f"{_agreement_cell(step)} | {'yes' if step['met'] else 'no'} |")
        worst = (entry.get("int8") or {}).get("sensitivity")
        if worst:
            lines += ["", f"## {key}: layers that hurt most (copy names into --keep-fp)", "",
                      "| layer | op | " + " | ".join(k for k in worst[0] if k not in ("node", "op_type")) + " |",
                      "|---|---|" + "---|" * (len(worst[0]) - 2)]
            for row in worst:
                values = [f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in row.items()
                          if k not in ("node", "op_type")]
                lines.append(f"| {row['node']} | {row['op_type']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
