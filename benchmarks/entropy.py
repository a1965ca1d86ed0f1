"""Why entropy (KL) calibration loses more mAP than percentile on the precision benchmark's model.

    python benchmarks/entropy.py --run runs/bench-precision/run      # after benchmarks/precision.py

Compares the per-tensor ranges of the entropy and percentile calibration records (the same images), then quantizes
with the entropy ranges but the N most-clipped tensors given their percentile ranges, and scores each graph against
the fp32 ONNX on the eval split (ONNX Runtime CPU). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import TensorsData, load_tensors_data, save_tensors_data

from common import machine
from mlic_edge import metrics
from mlic_edge.calibration import quantize_int8
from mlic_edge.calibration.int8 import RANGES_FILE, RECORD_FILE, SETTINGS
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.checks.parity import Reference, ReferenceImages, score_images
from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend


def records(run: RunDir, images: int) -> dict[str, Path]:
    """method -> record folder of TensorRT's int8 settings calibrated on ``images`` requested images."""
    found = {}
    for path in run.path.glob(f"calibration/*/{RECORD_FILE}"):
        record = json.loads(path.read_text())
        if record["settings"] == SETTINGS and record["images_requested"] == images:
            found[record["method"]] = path.parent
    return found


def threshold(data) -> float:
    low, high = data.range_value
    return max(abs(float(np.min(low))), abs(float(np.max(high))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/bench-precision/run"))
    parser.add_argument("--images", type=int, default=1024, help="the calibration set size whose records to compare")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    run = RunDir(args.run)
    found = records(run, args.images)
    ranges = {method: load_tensors_data(folder / RANGES_FILE) for method, folder in found.items()}
    consumers: dict[str, list[str]] = {}
    for node in onnx.load(str(run.onnx("fp32")), load_external_data=False).graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    tensors = sorted((threshold(ranges["entropy"][name]) / threshold(ranges["percentile"][name]), name)
                     for name in ranges["entropy"].keys() if name in ranges["percentile"].data)

    reference = Reference.load(run)
    images = ReferenceImages(run, reference)

    def scores(path: Path) -> np.ndarray:
        with OnnxRuntimeBackend(path) as backend:
            return score_images(backend, images)[0]

    fp32 = scores(run.onnx("fp32"))
    fp32_map = metrics.mean_average_precision(fp32, reference.targets).map
    spec = run.spec()

    def entropy_with_percentile_for(names: set[str]) -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as work:
            record = Path(work) / "calibration" / found["entropy"].name
            shutil.copytree(found["entropy"], record)
            mixed = {name: ranges["percentile"][name] if name in names else data
                     for name, data in ranges["entropy"].data.items()}
            save_tensors_data(TensorsData(ranges["entropy"].calibration_method, mixed), record / RANGES_FILE)
            out = Path(work) / "int8.onnx"
            quantize_int8(run.onnx("fp32"), out, record.parent, method="entropy", calibration=None,
                          img_size=spec.img_size, mean=spec.mean, std=spec.std, resize=spec.resize,
                          input_format=spec.input_format)
            quantized = scores(out)
        delta = (metrics.mean_average_precision(quantized, reference.targets).map - fp32_map) * 100
        return float(delta), float(np.all((quantized >= 0.5) == (fp32 >= 0.5), axis=1).mean())

    swaps = [(count, *entropy_with_percentile_for({name for _, name in tensors[:count]}))
             for count in (0, 1, 3, 10, len(tensors))]
    lines = [f"# Entropy vs percentile calibration, tensor by tensor ({machine()})", "",
             f"Command: `python benchmarks/entropy.py --run {args.run} --images {args.images}` on the precision "
             f"benchmark's model (TensorRT's int8 graph, {args.images} calibration images, ONNX Runtime CPU, "
             f"{len(images)} eval images; fp32 mAP {fp32_map * 100:.2f}).", "",
             "## The tensors entropy clips most (threshold = max |range|)", "",
             "| tensor | entropy | percentile 99.999 | entropy / percentile | read by |", "|---|---|---|---|---|"]
    for ratio, name in tensors[:10]:
        lines.append(f"| {name} | {threshold(ranges['entropy'][name]):.3g} | "
                     f"{threshold(ranges['percentile'][name]):.3g} | {ratio:.2f} | "
                     f"{', '.join(sorted(set(consumers.get(name, []))))} |")
    lines += ["", f"Median ratio over the {len(tensors)} calibrated tensors: "
              f"{np.median([ratio for ratio, _ in tensors]):.2f}.", "",
              "## Entropy ranges with the most-clipped tensors at their percentile ranges", "",
              "| tensors swapped | ΔmAP vs fp32 (points) | identical label sets |", "|---|---|---|"]
    lines += [f"| {count} | {delta:+.2f} | {same * 100:.1f} % |" for count, delta, same in swaps]
    lines.append("")
    (args.out / "entropy.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
