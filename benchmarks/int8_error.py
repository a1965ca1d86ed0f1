"""Where post-training int8 loses label sets on a trained run: TensorRT's Q/DQ graph (every layer int8) against fp32,
then the same graph with its activation quantizers removed, with its weight quantizers removed, with one activation
quantizer removed at a time, and calibrated at other percentiles or minmax.

    python benchmarks/zoo.py --update --models mlgcn msrn          # the trained zoo runs, if not there yet
    python benchmarks/int8_error.py --runs runs/bench/mlgcn-recipe-quick runs/bench/msrn-recipe-quick

A quantizer is removed by wiring its consumers to the float tensor it quantized (activations) or to the fp32 weight
(weights). Calibration and held-out images are chosen as ``build -p int8`` chooses them; every figure is ONNX Runtime
CPU against the fp32 ONNX, on the held-out training images and on the eval split. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
import onnx

from common import results_header, write_results
from qat import fresh_copy
from mlic_edge.calibration import quantize_int8, select_calibration_set, split_holdout
from mlic_edge.calibration import int8 as int8_module
from mlic_edge.calibration.accuracy import compare, onnx_scores
from mlic_edge.commands.build import BuildRequest, _training_images
from mlic_edge.data import open_dataset

PERCENTILES = (99.9, 99.99, 99.9999)


def quantizers(model: onnx.ModelProto) -> tuple[dict[str, str], dict[str, str]]:
    """(activations, weights): each DequantizeLinear output -> the float tensor (activation) or the quantized weight
    initializer it dequantizes."""
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {tensor.name for tensor in model.graph.initializer}
    activations, weights = {}, {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in initializers:
            weights[node.output[0]] = source
        elif source in producer and producer[source].op_type == "QuantizeLinear":
            activations[node.output[0]] = producer[source].input[0]
    return activations, weights


def rewired(model: onnx.ModelProto, mapping: dict[str, str], extra: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.initializer.extend(extra)
    for node in copy.graph.node:
        for index, name in enumerate(node.input):
            if name in mapping:
                node.input[index] = mapping[name]
    return copy


class Scorer:
    """ΔmAP / identical label sets of a graph against fp32 on the held-out and the eval images."""

    def __init__(self, fp32: Path, held_out: tuple[np.ndarray, np.ndarray], evaluation: tuple[np.ndarray, np.ndarray],
                 work: Path) -> None:
        self.sets = {"held_out": held_out, "eval": evaluation}
        self.fp32 = {name: onnx_scores(fp32, images) for name, (images, _) in self.sets.items()}
        self.work = work

    def __call__(self, graph: Path | onnx.ModelProto) -> dict:
        if isinstance(graph, onnx.ModelProto):
            path = self.work / "variant.onnx"
            onnx.save(graph, str(path))
            graph = path
        row = {}
        for name, (images, targets) in self.sets.items():
            delta, agreement = compare(onnx_scores(graph, images), self.fp32[name], targets, 0.5)
            row[name] = {"delta_mAP_points": delta, "labelset_agreement": agreement, "images": len(images)}
        return row


def measure(source: Path, work: Path) -> dict:
    with contextlib.redirect_stderr(io.StringIO()):
        run = fresh_copy(source, work, source.name)
    spec = run.spec()
    request = BuildRequest(precision="int8")
    dataset = _training_images(spec, request, required=True)
    holdout, rest = split_holdout(dataset, request.holdout_images)
    calibration = select_calibration_set(rest, request.calib_images)
    eval_set = open_dataset(spec.dataset.spec, role="eval", split=spec.dataset.eval_split,
                            labels=spec.labels)
    preprocessing = (spec.img_size, spec.mean, spec.std, spec.resize, spec.input_format)
    score = Scorer(run.onnx("fp32"), holdout.inputs_and_targets(*preprocessing),
                   select_calibration_set(eval_set, len(eval_set), purpose="eval").inputs_and_targets(*preprocessing),
                   run.path)

    def quantized(method: str, tag: str) -> Path:
        path = run.path / f"int8.{tag}.onnx"
        with contextlib.redirect_stderr(io.StringIO()):
            quantize_int8(run.onnx("fp32"), path, run.path / "calibration", method=method, calibration=calibration,
                          img_size=spec.img_size, mean=spec.mean, std=spec.std, resize=spec.resize,
                          input_format=spec.input_format)
        return path

    base = quantized("percentile", "percentile")
    model = onnx.load(str(base))
    fp32_weights = {tensor.name: tensor for tensor in onnx.load(str(run.onnx("fp32"))).graph.initializer}
    activations, weights = quantizers(model)
    float_weights = {out: name.removesuffix("_quantized") for out, name in weights.items()
                     if name.removesuffix("_quantized") in fp32_weights}
    rows = [{"variant": "every layer int8 (percentile 99.999)", **score(base)},
            {"variant": f"activations float ({len(activations)} quantizers removed)",
             **score(rewired(model, activations))},
            {"variant": f"weights float ({len(float_weights)} quantizers removed)",
             **score(rewired(model, float_weights, [fp32_weights[name] for name in set(float_weights.values())]))}]
    for output, tensor in activations.items():
        rows.append({"variant": f"one activation float: {tensor}", **score(rewired(model, {output: tensor}))})
    settings = int8_module.SETTINGS["calibrators"]["percentile"]
    default = settings["percentile"]
    try:
        for percentile in PERCENTILES:
            settings["percentile"] = percentile  # the record key includes it: each is calibrated anew
            rows.append({"variant": f"every layer int8 (percentile {percentile})",
                         **score(quantized("percentile", f"p{percentile}"))})
    finally:
        settings["percentile"] = default
    rows.append({"variant": "every layer int8 (minmax)", **score(quantized("minmax", "minmax"))})
    return {"run": str(source), "model": spec.model, "backbone": spec.backbone, "img_size": spec.img_size,
            "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"# Where post-training int8 loses label sets ({result['date']}, {result['machine']})", "",
             "TensorRT's Q/DQ graph of each run, every layer int8, against its fp32 ONNX (ONNX Runtime CPU): "
             "ΔmAP points / identical label sets, on the held-out training images `build -p int8` judges by and "
             "on the eval split. Command: `" + result["command"] + "`.", ""]
    for model in result["models"]:
        held, evaluation = (model["rows"][0][name]["images"] for name in ("held_out", "eval"))
        lines += [f"## {model['model']} ({model['backbone']}, {model['img_size']} px; {model['run']})", "",
                  f"| variant | held-out ({held} images) | eval ({evaluation} images) |", "|---|---|---|"]
        for row in model["rows"]:
            cells = [f"{row[name]['delta_mAP_points']:+.2f} / {row[name]['labelset_agreement'] * 100:.1f} %"
                     for name in ("held_out", "eval")]
            lines.append(f"| {row['variant']} | {cells[0]} | {cells[1]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="trained run directories")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-int8-error"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    result = {**results_header("int8_error.py"),
              "models": [measure(source, args.work) for source in args.runs]}
    write_results(args.out, "int8_error", result, markdown)


if __name__ == "__main__":
    main()
