"""INT8 over the whole zoo, judged on images no decision saw: for each trained run, `build -p int8` for ONNX Runtime
with post-training quantization only (``--qat-epochs 0``) and as it runs by default (fine-tuning each graph that
misses its target on the run's validation split), each int8 graph (TensorRT's Q/DQ graph, ONNX Runtime's CPU graph)
scored on the eval split against the fp32 ONNX with parity's test.

    python benchmarks/zoo.py --update --models baseline mlgcn mlgat semdep q2l msrn   # the trained runs, if not there
    python benchmarks/int8_zoo.py --runs runs/bench/*-recipe-quick

Each run is copied to ``--work`` once per path (the originals are not changed) and exported afresh with its
reference scores. The eval-split figures are the build's own (``reports/build.json``: ONNX Runtime CPU on the eval
split, the verdict parity gives); the validation figures are what the build decided by; the CPU latency ratio is the
build's own timing of the CPU graph against fp32, in turns, on this machine. ``--exact-cpu`` also scores the
post-training CPU graph with 8-bit weights in exact integer arithmetic (its QDQ form with ONNX Runtime's graph
optimisations off, so no u8×s8 product saturates): the accuracy a CPU with VNNI gets, which this machine, without
VNNI, cannot run at speed. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import numpy as np

from common import notes_section, results_header, write_results
from mlic_edge.commands.build import BuildRequest, build
from mlic_edge.rundir import RunDir
from qat import fresh_copy

PATHS = {"post-training": 0, "default": None}  # --qat-epochs of each path (None: the build's default)


def graph_rows(entry: dict, path: str, seconds: float) -> list[dict]:
    """One row per int8 graph of a build entry: eval-split figures and verdict, validation figures, float layers."""
    int8, accuracy = entry["int8"], entry.get("accuracy") or {}
    rows = []
    for graph, record, measured in (("tensorrt", int8, accuracy), ("cpu", int8.get("cpu_graph") or {},
                                                                     accuracy.get("cpu_graph") or {})):
        if not measured:
            continue
        search = record.get("accuracy_target") or {}
        step = (search.get("steps") or [{}])[-1]
        verdict = measured["verdict"]
        row = {"graph": graph, "path": path, "source": record.get("source", "post-training"),
               "delta_mAP_points": measured["delta_mAP_vs_fp32"] * 100,
               "labelset_agreement": measured["labelset_agreement_vs_fp32"], "eval_images": measured["images"],
               "passed": verdict["passed"], "target": [verdict["tolerance_points"], verdict["labelset_floor"]],
               "next_step": verdict.get("next_step"), "kept_fp": len(record.get("kept_fp") or []),
               "validation": {"images": search.get("images"), "delta_mAP_points": step.get("delta_mAP_points"),
                              "labelset_agreement": step.get("labelset_agreement"),
                              "estimated_agreement": step.get("estimated_agreement"), "met": search.get("met"),
                              "unseen": (search.get("judged_on") or {}).get("unseen")},
               "build_seconds": round(seconds, 1)}
        if graph == "cpu":
            row["cpu"] = cpu_latency(record, record["reduce_range"])
        rows.append(row)
    return rows


def cpu_latency(record: dict, reduce_range: bool) -> dict:
    """A CPU graph record's chosen candidate and its latency ratio to fp32, as the build timed them (the staged
    graph's timing where its search kept more layers float)."""
    latency = record.get("staged_latency_ms") or record["latency_ms"]
    chosen = record.get("candidate", record["quant_format"])
    return {"form": chosen, "reduce_range": reduce_range,
            "ratio_vs_fp32": {batch: latency[chosen][batch] / latency["fp32"][batch] for batch in latency["fp32"]}}


def post_training_rows(entry: dict, run: RunDir, rows: list[dict]) -> list[dict]:
    """For a default build that fine-tuned a graph: that graph's post-training row, from what the same build measured
    before replacing it (validation: the search's last post-training step; eval: TensorRT's graph as run.json's qat
    section recorded it, the CPU graph as its record's ``post_training`` did); eval figures None where not measured."""
    from mlic_edge.runtime.checks.parity import limit_failures

    int8, derived = entry["int8"], []
    qat = run.spec().qat  # read once: TensorRT's post-training figures, where fine-tuning replaced its graph
    for row in rows:
        if row["source"] != "qat":
            derived.append({**row, "path": "post-training (kept by the default build)"})
            continue
        record = int8 if row["graph"] == "tensorrt" else int8["cpu_graph"]
        steps = record["accuracy_target"]["steps"]
        measured = (qat.ptq_accuracy if qat is not None else None) if row["graph"] == "tensorrt" else \
            record.get("post_training", {}).get("eval_accuracy")
        previous = steps[-2]
        out = {**row, "path": "post-training (measured by the default build)", "source": "post-training",
               "kept_fp": len(previous["kept_fp"]), "build_seconds": None,
               "validation": {**row["validation"], "delta_mAP_points": previous["delta_mAP_points"],
                              "labelset_agreement": previous["labelset_agreement"],
                              "estimated_agreement": previous.get("estimated_agreement"), "met": previous["met"]},
               "delta_mAP_points": None, "labelset_agreement": None, "passed": None, "next_step": None}
        if row["graph"] == "cpu" and "latency_ms" in record.get("post_training", {}):  # timed apart from fine-tuned
            out["cpu"] = cpu_latency(record["post_training"], record["reduce_range"])
        if measured:
            out.update(delta_mAP_points=measured["delta_mAP_vs_fp32"] * 100,
                       labelset_agreement=measured["labelset_agreement_vs_fp32"],
                       passed=not limit_failures(measured["mAP_int8"], measured["mAP_fp32"],
                                                 measured["labelset_agreement_vs_fp32"], *row["target"]))
        derived.append(out)
    return derived


def exact_cpu_row(run: RunDir) -> dict:
    """The post-training CPU graph with 8-bit weights (no reduce_range), QDQ, scored with ONNX Runtime's graph
    optimisations off: integer values, exact arithmetic, as VNNI's int32 accumulation computes them."""
    import onnxruntime as ort

    from mlic_edge.calibration import select_calibration_set, validation_holdout
    from mlic_edge.calibration.accuracy import compare, onnx_scores
    from mlic_edge.calibration.int8 import cpu_int8_scheme, quantize_int8
    from mlic_edge.data import open_dataset

    spec = run.spec()
    recorded = spec.dataset_record
    eval_split = open_dataset(recorded.spec, role="eval", split=recorded.eval_split, labels=spec.labels)
    everything, _ = validation_holdout(eval_split, eval_split.image_ids(), len(eval_split))
    images, targets = everything.inputs_and_targets(spec.preprocessing)
    train_split = open_dataset(recorded.spec, role="train", split=recorded.train_split, labels=spec.labels)
    out = run.path / "exact" / "model.int8.cpu.qdq8.onnx"
    with contextlib.redirect_stderr(io.StringIO()):
        quantize_int8(run.onnx("fp32"), out, run.path / "exact" / "records", calibration=select_calibration_set(
            train_split, 512), preprocessing=spec.preprocessing, scheme=cpu_int8_scheme("QDQ", reduce_range=False))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores = np.concatenate([session.run(None, {name: images[start:start + 16]})[0]
                             for start in range(0, len(images), 16)])
    delta, agreement = compare(scores, onnx_scores(run.onnx("fp32"), images), targets, 0.5)
    return {"delta_mAP_points": delta, "labelset_agreement": agreement, "eval_images": len(images)}


def measure(source: Path, work: Path, exact_cpu: bool, paths: list[str]) -> dict:
    rows = []
    spec = None
    for path in paths:
        epochs = PATHS[path]
        with contextlib.redirect_stderr(io.StringIO()):
            run = fresh_copy(source, work, f"{source.name}-{path}")
            request = BuildRequest(precision="int8", backend="onnxruntime")
            if epochs is not None:
                request.qat_epochs = epochs
            started = time.monotonic()
            entry = build(run, request)
        built = graph_rows(entry, path, time.monotonic() - started)
        if path == "default" and "post-training" not in paths:
            built = post_training_rows(entry, run, built) + built
        rows += built
        print(built, flush=True)
        spec = run.spec()
    model = {"run": str(source), "model": spec.model, "backbone": spec.backbone, "img_size": spec.img_size,
             "rows": rows}
    if exact_cpu:
        model["exact_cpu_8bit"] = exact_cpu_row(RunDir(work / f"{source.name}-{paths[0]}"))
        print(model["exact_cpu_8bit"], flush=True)
    return model


def markdown(result: dict) -> str:
    held_out = sorted({row["validation"]["images"] for model in result["models"] for row in model["rows"]
                       if row["validation"].get("images")})
    lines = [f"# INT8 over the zoo, judged on unseen images ({result['date']}, {result['machine']})", "",
             "`build -p int8 --backend onnxruntime` on each zoo run (`benchmarks/zoo.py`: resnet10t from scratch, "
             "96 px, the quick recipe, synthetic long-tailed data, "
             f"{' or '.join(map(str, held_out)) or 'no'} validation images held out before training), "
             "post-training only (`--qat-epochs 0`) and by default (each graph that misses its target on the "
             "validation images is fine-tuned for its own scheme, 3 epochs of quantization-aware distillation, as many "
             "layers float as its post-training search kept: those a module exports, then the most sensitive modules). "
             "Eval split: 300 images no decision saw (their labels' class mix alone weighs the validation images), ONNX Runtime CPU against the fp32 ONNX, with parity's test "
             "(TensorRT's Q/DQ graph: |ΔmAP| ≤ 0.2 and ≥ 98.5 % identical label sets; the CPU graph: 0.5 and 97 %). "
             "Validation: what the build decided by: ΔmAP / identical label sets counted (estimated from the validation "
             "images' margins and int8's errors, weighed to the eval split's class mix, asked with two standard errors of "
             "margin). CPU × fp32: the "
             "build's timing of its CPU graph against fp32 in turns, batch 1 / 8, on this machine. Command: `"
             + result["command"] + "`.", "",
             "| model | graph | path | graph source | ΔmAP (eval) | identical (eval) | target (eval) | layers in float "
             "| validation: ΔmAP / identical | build s | CPU × fp32 (b1 / b8) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in result["models"]:
        for row in model["rows"]:
            validation = row["validation"]
            estimated = validation.get("estimated_agreement")
            judged = (f"{validation['delta_mAP_points']:+.2f} / {validation['labelset_agreement'] * 100:.1f} % "
                      + (f"(est. {estimated * 100:.1f} %) " if estimated is not None else "")
                      + f"({'met' if validation['met'] else 'missed'}, {validation['images']})"
                      if validation["delta_mAP_points"] is not None else "-")
            cpu = row.get("cpu")
            ratio = (" / ".join(f"{value:.2f}" for value in cpu["ratio_vs_fp32"].values())
                     + f" ({cpu['form']}{', 7-bit' if cpu['reduce_range'] else ''})") if cpu else "-"
            measured = row["delta_mAP_points"] is not None
            lines.append(f"| {model['model']} | {'CPU' if row['graph'] == 'cpu' else 'TensorRT Q/DQ'} | "
                         f"{row['path']} | {row['source']} | "
                         + (f"{row['delta_mAP_points']:+.2f} | {row['labelset_agreement'] * 100:.1f} % | "
                            f"{'met' if row['passed'] else 'missed'} | " if measured else "- | - | not measured | ")
                         + f"{row['kept_fp']} | {judged} | {row['build_seconds'] or '-'} | {ratio} |")
    exact = [model for model in result["models"] if model.get("exact_cpu_8bit")]
    if exact:
        lines += ["", "## The CPU graph with 8-bit weights in exact arithmetic (what a VNNI CPU computes)", "",
                  "Post-training, every layer int8 but the score head, QDQ form run with ONNX Runtime's graph "
                  "optimisations off (integer values, float arithmetic: no u8×s8 product saturates, as VNNI's int32 "
                  "accumulation).", "",
                  "| model | ΔmAP (eval) | identical (eval) |", "|---|---|---|"]
        lines += [f"| {model['model']} | {model['exact_cpu_8bit']['delta_mAP_points']:+.2f} | "
                  f"{model['exact_cpu_8bit']['labelset_agreement'] * 100:.1f} % |" for model in exact]
    lines += notes_section(result.get("notes", []))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="trained run directories")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-int8"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--exact-cpu", action="store_true", help="also the 8-bit CPU graph in exact arithmetic")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS), help="builds to run (default "
                        "alone: the post-training rows are what that build measured before fine-tuning)")
    args = parser.parse_args()
    result = {**results_header("int8_zoo.py"), "models": []}
    for source in args.runs:  # written after each model: a long sweep stopped early keeps what it measured
        result["models"].append(measure(source, args.work, args.exact_cpu, args.paths))
        write_results(args.out, "int8_zoo", result, markdown)


if __name__ == "__main__":
    main()
