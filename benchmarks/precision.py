"""Precision benchmark: what fp16 and int8 cost in mAP, and what they save in size and CPU latency.

    python benchmarks/precision.py --out benchmarks/results          # writes precision.json and precision.md

On one trained synthetic model (resnet10t, long-tailed synthetic data): ΔmAP and label-set agreement against the fp32
ONNX for every calibration method and calibration-set size with the Q/DQ placement alone (``--max-fp-layers 0``), and
for the default command (which keeps layers in float until its accuracy target holds on held-out training images)
(ONNX Runtime CPU, eval split); ONNX and TensorRT-for-RTX engine sizes
per precision (engines built ahead of time on the CPU, never run here); ONNX Runtime CPU latency of every graph
(fp32, fp16, TensorRT's int8 Q/DQ graph and the int8 CPU graph) at batch 1 and 8, timed in turns in one process,
with the CPU's int8 instructions named. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path


from common import machine
from mlic_edge.calibration import METHODS
from mlic_edge.data.synth import SynthConfig, generate
from mlic_edge.export.onnx_export import export_onnx
from mlic_edge.export.reference import write_reference
from mlic_edge.io import write_json
from mlic_edge.rundir import RunDir, installed_versions
from mlic_edge.commands.build import DEFAULT_CALIB_IMAGES, BuildRequest, build
from mlic_edge.runtime.inference.latency import interleaved_latency
from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend, cpu_features, describe_cpu
from mlic_edge.spec import ModelSpec
from mlic_edge.train.trainer import TrainConfig, train

CALIBRATION_SIZES = (64, 256, 1024)


def prepare_run(work: Path, args) -> RunDir:
    data = work / "data"
    if not (data / "synth.json").is_file():
        generate(data, SynthConfig(classes=args.classes, images=args.images, size=args.size, seed=0,
                                   long_tail=True))
    run = RunDir(work / "run")
    if not run.reference.is_file():
        train(TrainConfig(model="baseline", data=f"voc:{data}", out=run.path, backbone="resnet10t",
                          epochs=args.epochs, img_size=args.size, batch_size=32, optimizer="adamw", lr=3e-3,
                          workers=0, seed=0, pretrained=False))
        export_onnx(run)
        write_reference(run)
    return run


def quiet_build(run: RunDir, request: BuildRequest) -> dict:
    with contextlib.redirect_stderr(io.StringIO()):
        return build(run, request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-precision"))
    parser.add_argument("--images", type=int, default=1800, help="synthetic images (75 %% train)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per latency figure")
    parser.add_argument("--note", default="", help="what else ran on the machine, said under the latency table")
    args = parser.parse_args()

    run = prepare_run(args.work, args)
    meta = run.read()
    started = time.monotonic()
    builds = {"fp16": quiet_build(run, BuildRequest(precision="fp16", backend="onnxruntime"))}
    calibration = []
    for method in METHODS:
        for size in CALIBRATION_SIZES:
            entry = quiet_build(run, BuildRequest(precision="int8", backend="onnxruntime", calib_method=method,
                                                  calib_images=size, max_fp_layers=0, qat_epochs=0))
            calibration.append({"method": method, "requested": size, "images": entry["int8"]["images"],
                                "seconds": entry["seconds"], "mAP_int8": entry["accuracy"]["mAP_int8"],
                                "mAP_fp32": entry["accuracy"]["mAP_fp32"],
                                "delta_mAP_points": entry["accuracy"]["delta_mAP_vs_fp32"] * 100,
                                "labelset_agreement": entry["accuracy"]["labelset_agreement_vs_fp32"]})
            print(f"int8 {method:10s} {size:5d} images: ΔmAP {calibration[-1]['delta_mAP_points']:+.3f} points, "
                  f"{calibration[-1]['labelset_agreement'] * 100:.1f} % identical label sets", flush=True)
    # The default command; its int8 ONNX is the one the size/latency rows use.
    builds["int8"] = quiet_build(run, BuildRequest(precision="int8", backend="onnxruntime"))
    cpu_graph = builds["int8"]["int8"]["cpu_graph"]
    default = {"delta_mAP_points": builds["int8"]["accuracy"]["delta_mAP_vs_fp32"] * 100,
               "labelset_agreement": builds["int8"]["accuracy"]["labelset_agreement_vs_fp32"],
               "search": builds["int8"]["int8"]["accuracy_target"],
               "cpu_graph": {"format": cpu_graph["quant_format"], "search": cpu_graph.get("accuracy_target"),
                             "delta_mAP_points": builds["int8"]["accuracy"]["cpu_graph"]["delta_mAP_vs_fp32"] * 100,
                             "labelset_agreement":
                                 builds["int8"]["accuracy"]["cpu_graph"]["labelset_agreement_vs_fp32"]}}

    graphs = {"fp32": run.onnx("fp32"), "fp16": run.onnx("fp16"), "int8": run.onnx("int8"),
              f"int8 CPU graph ({cpu_graph['quant_format']})": run.onnx("int8", "cpu")}
    with contextlib.ExitStack() as stack:
        backends = {name: stack.enter_context(OnnxRuntimeBackend(path, device="cpu")) for name, path in graphs.items()}
        latency = interleaved_latency(backends, ModelSpec.from_run(meta), (1, 8), rounds=args.runs)
    precisions = []
    for name, path in graphs.items():
        precision = name.split()[0]
        engine = (quiet_build(run, BuildRequest(precision=precision, backend="tensorrt-rtx", evaluate=False))
                  if name in ("fp32", "fp16", "int8") else None)
        accuracy = builds[precision]["accuracy"] if precision != "fp32" else builds["fp16"]["accuracy"]
        precisions.append({
            "precision": name,
            "onnx_bytes": path.stat().st_size,
            "engine_bytes": engine["engine"]["size_bytes"] if engine else None,
            "engine_build_seconds": engine["engine"]["seconds"] if engine else None,
            "mAP_onnxruntime": (accuracy["cpu_graph"] if name.startswith("int8 CPU") else accuracy)[f"mAP_{precision}"],
            "latency_ms": {f"batch{batch}": latency[name][batch] for batch in (1, 8)},
            "latency_vs_fp32": {f"batch{batch}": latency[name][batch] / latency["fp32"][batch] for batch in (1, 8)},
        })

    versions = installed_versions()
    result = {"machine": machine(), "cpu": describe_cpu(cpu_features()), "cpu_features": cpu_features(),
              "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/precision.py",
              "settings": {k: str(v) for k, v in vars(args).items()}, "versions": versions,
              "eval_images": builds["fp16"]["accuracy"]["images"], "fp16": builds["fp16"]["fp16"],
              "calibration": calibration, "default_int8": default, "precisions": precisions,
              "minutes": (time.monotonic() - started) / 60}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "precision.json", result)
    (args.out / "precision.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [f"# Precision benchmark ({result['date']}, {result['machine']})", "",
             f"Command: `{result['command']}`. Model: baseline resnet10t, {settings['size']} px, trained "
             f"{settings['epochs']} epochs on {settings['images']} synthetic long-tailed images of "
             f"{settings['classes']} classes; mAP on {result['eval_images']} eval images with ONNX Runtime "
             f"{result['versions'].get('onnxruntime')} (CPU). Engines: TensorRT for RTX, built ahead of time on this "
             "CPU and never run here (no engine speed or accuracy is reported).", "",
             "## int8 against the fp32 ONNX: ΔmAP (points) / identical label sets, Q/DQ placement alone", "",
             "`--max-fp-layers 0`: every quantizable layer in int8.", "",
             "| method | " + " | ".join(f"{n} images" for n in CALIBRATION_SIZES) + " |",
             "|---|" + "---|" * len(CALIBRATION_SIZES)]
    for method in METHODS:
        rows = [r for r in result["calibration"] if r["method"] == method]
        lines.append(f"| {method} | " + " | ".join(
            f"{r['delta_mAP_points']:+.2f} / {r['labelset_agreement'] * 100:.1f} %"
            + (f" ({r['images']} used)" if r["images"] != r["requested"] else "") for r in rows) + " |")
    default = result["default_int8"]
    search = default["search"]
    final = search["steps"][-1]
    lines += ["", "## The default command (`mlic-edge build --precision int8`)", "",
              f"Percentile, {DEFAULT_CALIB_IMAGES} calibration images asked; accuracy target |ΔmAP| ≤ "
              f"{search['target']['max_delta_points']} points and ≥ {search['target']['min_agreement'] * 100:.0f} % "
              f"identical label sets on {search['images']} held-out training images: "
              f"{'met' if search['met'] else 'missed (' + search['stopped'] + ')'} there with "
              f"{len(final['kept_fp'])} layer(s) in float ({', '.join(final['kept_fp']) or 'none'}; held-out ΔmAP "
              f"{final['delta_mAP_points']:+.2f}, {final['labelset_agreement'] * 100:.1f} % identical). On the eval "
              f"split: ΔmAP **{default['delta_mAP_points']:+.2f}** points, **{default['labelset_agreement'] * 100:.1f} %"
              "** identical label sets."]
    cpu = default["cpu_graph"]
    if cpu["search"]:
        final = cpu["search"]["steps"][-1]
        lines += ["", f"Its ONNX Runtime CPU graph ({cpu['format']}, uint8 activations): held-out ΔmAP "
                      f"{final['delta_mAP_points']:+.2f}, {final['labelset_agreement'] * 100:.1f} % identical with "
                      f"{len(final['kept_fp'])} layer(s) in float (target "
                      f"{'met' if cpu['search']['met'] else 'missed'}); eval split ΔmAP "
                      f"**{cpu['delta_mAP_points']:+.2f}**, **{cpu['labelset_agreement'] * 100:.1f} %** identical."]
    fp32_map = result["calibration"][0]["mAP_fp32"] * 100
    lines += ["", f"fp32 mAP: {fp32_map:.2f}. fp16 nodes kept in fp32 (measured): "
              + (", ".join(k["name"] for k in result["fp16"]["kept_fp32"]) or "none") + ".", "",
              f"## Size and ONNX Runtime CPU latency per graph ({result.get('cpu', 'CPU not recorded')})", "",
              "| graph | mAP (ORT; int8: the default command) | ONNX MB | engine MB (RTX, AOT) | ms batch 1 | "
              "ms batch 8 | vs fp32 (b1 / b8) |",
              "|---|---|---|---|---|---|---|"]
    for row in result["precisions"]:
        latency, ratio = row["latency_ms"], row["latency_vs_fp32"]
        engine = f"{row['engine_bytes'] / 1e6:.2f}" if row["engine_bytes"] else "-"
        lines.append(f"| {row['precision']} | {row['mAP_onnxruntime'] * 100:.2f} | {row['onnx_bytes'] / 1e6:.2f} | "
                     f"{engine} | {latency['batch1']:.2f} | {latency['batch8']:.2f} | "
                     f"{ratio['batch1']:.2f} / {ratio['batch8']:.2f} |")
    lines += ["", f"Latency: median of {settings['runs']} timed rounds after warm-up, one process, every graph timed "
              "once per round at each batch in turn, so a load on the machine falls on all of them alike. ONNX "
              "Runtime's CPU kernels are not TensorRT's: these ratios say nothing about a GPU."
              + (f" {settings['note']}" if settings.get("note") else "")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
