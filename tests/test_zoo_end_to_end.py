"""Every model of the zoo through the user's path: train → export (static parts folded) → parity, from the CLI."""

from __future__ import annotations

import json

import onnx
import pytest

from cli_helpers import invoke
from mlic_edge.models import list_models

# Paper architectures at toy widths, so each trains in seconds on a CPU; the structure is the paper's.
TINY = {
    "baseline": [],
    "mlgcn": ["hidden=32"],
    "mlgat": ["d_reduced=32"],
    "msrn": ["embed_dim=32", "label_hidden=16", "gat_hidden=16", "fc_hidden=32"],
    "q2l": ["hidden_dim=32", "ffn_dim=64"],
    "semdep": ["attention_hidden=16", "dependency_channels=(8,8,16,16)"],
}
# Activations that only the label branch uses: folded to constants at export, so never in the ONNX.
LABEL_BRANCH_OPS = {"mlgcn": {"LeakyRelu"}, "mlgat": {"Elu"}, "msrn": {"Elu"}}


def test_every_registered_model_is_covered():
    assert {entry.name for entry in list_models()} == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_train_export_parity(capsys, tmp_path, synth_data, name):
    run = tmp_path / name
    args = ["train", "--model", name, "--data", str(synth_data), "--backbone", "resnet10t", "--img-size", "64",
            "--epochs", "2", "--batch-size", "16", "--recipe", "quick", "--workers", "0", "--out", str(run)]
    for kwarg in TINY[name]:
        args += ["--model-kwargs", kwarg]
    result = invoke(capsys, *args)
    assert result.code == 0, result.err
    meta = json.loads((run / "run.json").read_text())
    if name in ("mlgcn", "mlgat", "msrn"):
        assert (run / "label_graph.npz").is_file() and meta["label_graph"]["vectors_source"]

    result = invoke(capsys, "eval", "--run", str(run), "--json")
    assert result.code == 0, result.err
    assert 0.0 <= json.loads(result.out)["mAP"] <= 1.0

    result = invoke(capsys, "export", "--run", str(run))
    assert result.code == 0, result.err
    proto = onnx.load(str(run / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert not LABEL_BRANCH_OPS.get(name, set()) & {node.op_type for node in proto.graph.node}
    assert json.loads((run / "run.json").read_text())["export"]["check"]["max_abs_diff"] < 1e-4

    result = invoke(capsys, "parity", "--run", str(run), "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["passed"] and report["results"][0]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("loss", ["bce", "softmargin", "focal", "asl", "dbl", "dab"])
def test_every_loss_trains(capsys, tmp_path, synth_data, loss):
    args = ["train", "--data", str(synth_data), "--backbone", "resnet10t", "--img-size", "32", "--epochs", "2",
            "--batch-size", "16", "--workers", "0", "--loss", loss, "--no-pretrained", "--out", str(tmp_path / "run"),
            "--json"]
    if loss == "dbl":
        args += ["--sampler", "class-aware"]
    result = invoke(capsys, *args)
    assert result.code == 0, result.err
    history = json.loads(result.out)["history"]
    assert len(history) == 2 and all(row["train_loss"] > 0 for row in history)
