"""`mlic-edge train --qat`: quantization-aware fine-tuning (NVIDIA ModelOpt) of the trained synthetic model, its Q/DQ
graph through NVIDIA's parser and builder (TensorRT for RTX, on the CPU), and its ΔmAP against post-training int8."""

from __future__ import annotations

import json
import shutil
import sys

import onnx
import pytest

from cli_helpers import assert_one_line_error, invoke

pytest.importorskip("modelopt", reason="quantization-aware training needs NVIDIA ModelOpt (the [qat] extra)")

WEIGHTED = ("Conv", "Gemm")
POOLING = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, trained_run):
    """The trained fixture run as a user meets QAT: post-training int8 built first (ONNX Runtime, its default
    accuracy search), then `train --qat` for 2 epochs on top of it."""
    import contextlib
    import io

    from mlic_edge.commands.build import BuildRequest, build
    from mlic_edge.commands.train import QatRequest, train_qat
    from mlic_edge.rundir import RunDir

    run = RunDir(tmp_path_factory.mktemp("qat") / "run")
    shutil.copytree(trained_run, run.path)
    with contextlib.redirect_stderr(io.StringIO()):
        ptq = build(run, BuildRequest(precision="int8", backend="onnxruntime", calib_images=64, qat_epochs=0))
        section = train_qat(QatRequest(run=run.path, epochs=2, workers=0))
    return run.path, ptq, section


@pytest.mark.slow
def test_qat_graph_has_qdq_on_weighted_inputs_only_and_records_its_lineage(qat_run):
    from mlic_edge.io import sha256_file

    path, _, _ = qat_run
    proto = onnx.load(str(path / "model.int8.onnx"))
    producer = {out: node for node in proto.graph.node for out in node.output}
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}

    def dequantized(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    weighted = [node for node in proto.graph.node if node.op_type in WEIGHTED]
    assert weighted and all(dequantized(node.input[0]) and dequantized(node.input[1]) for node in weighted)
    for node in weighted:  # weights stored as int8, as post-training int8 stores them (no QuantizeLinear left)
        assert initializers[producer[node.input[1]].input[0]].data_type == onnx.TensorProto.INT8
    pools = [node for node in proto.graph.node if node.op_type in POOLING]
    assert pools and not any(dequantized(name) for node in pools for name in node.input)
    assert not any(dequantized(name) for node in proto.graph.node if node.op_type == "Add" for name in node.input)
    quantized_outputs = {node.input[0] for node in proto.graph.node if node.op_type == "QuantizeLinear"}
    assert not quantized_outputs & {out for node in weighted for out in node.output}  # none on outputs
    assert (path / "model.int8.onnx").stat().st_size < (path / "model.onnx").stat().st_size / 2

    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert (metadata["precision"], metadata["int8_graph"], metadata["int8_source"]) == ("int8", "tensorrt", "qat")
    assert metadata["source_onnx_sha256"] == sha256_file(path / "model.onnx")
    section = json.loads((path / "run.json").read_text())["qat"]
    assert section["epochs"] == 2 and section["library"] == "nvidia-modelopt" and section["library_version"]
    assert section["target"] == "distill" and "distillation" in (path / "reports" / "qat.md").read_text()
    builds = json.loads((path / "reports" / "build.json").read_text())["builds"]  # the post-training build's record
    assert builds["int8"]["superseded_by"].startswith("train --qat")
    assert "**Superseded:** the int8 build(s) above" in (path / "reports" / "build.md").read_text()
    assert section["lr"] == pytest.approx(3e-3 * 0.01)  # the fixture's recipe lr × 1 %
    assert section["quantizers"] == 2 * len(weighted) and section["accuracy"]["backend"].startswith("onnxruntime")
    assert (path / "qat.pt").is_file() and "post-training" in (path / "reports" / "qat.md").read_text()


@pytest.mark.slow
def test_nvidia_builder_accepts_the_qat_graph_and_build_reuses_it(qat_run, tmp_path):
    """The TensorRT gate: TensorRT for RTX parses and builds the Q/DQ graph; `build -p int8` uses the QAT graph
    as it is instead of quantizing model.onnx after training."""
    from mlic_edge.commands.build import BuildRequest, build
    from mlic_edge.rundir import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(qat_run[0], run.path)
    before = run.onnx("int8").read_bytes()
    entry = build(run, BuildRequest(precision="int8", backend="tensorrt-rtx", evaluate=False, batch=(1, 2, 4)))
    assert entry["int8"]["source"] == "qat" and entry["int8"]["reused"]
    assert run.onnx("int8").read_bytes() == before
    assert (run.path / entry["engine"]["path"]).stat().st_size == entry["engine"]["size_bytes"] > 0


@pytest.mark.slow
def test_qat_delta_map_is_no_worse_than_post_training_int8(qat_run):
    """Both ΔmAPs are measured alike: ONNX Runtime CPU, the run's 40 reference (eval) images, against model.onnx.
    Tolerance 0.005 (half a point): with about 20 positives per class in 40 images, one positive swapping rank with
    a negative moves that class's AP by up to ~0.01, so mAP (4 classes) by ~0.0025; two such swaps are noise, not a
    worse quantization."""
    _, ptq, section = qat_run
    ptq_delta = ptq["accuracy"]["delta_mAP_vs_fp32"]
    qat_delta = section["accuracy"]["delta_mAP_vs_fp32"]
    assert section["ptq_accuracy"]["delta_mAP_vs_fp32"] == pytest.approx(ptq_delta)  # QAT measured PTQ as build did
    assert abs(qat_delta) <= abs(ptq_delta) + 0.005, (qat_delta, ptq_delta)


@pytest.mark.slow
def test_distillation_keeps_the_int8_scores_nearer_fp32_than_training_on_labels(run_copy):
    """The same fine-tuning (one epoch at the default rate) towards the fp32 model's scores and towards the labels:
    distillation ends nearer the fp32 scores, which is what keeps label sets identical (measured on this fixture:
    mean |Δscore| 0.003 against 0.011)."""
    import contextlib
    import io

    import numpy as np

    from mlic_edge.data import open_dataset
    from mlic_edge.models.checkpoint import load_model
    from mlic_edge.rundir import RunDir
    from mlic_edge.train.evaluate import predict_scores
    from mlic_edge.train.qat import quantization_aware_finetune

    run = RunDir(run_copy)
    spec = run.spec()
    eval_set = open_dataset(spec.dataset.spec, role="eval", labels=spec.labels)

    def scores(model) -> np.ndarray:
        return predict_scores(model, eval_set, spec.img_size, spec.mean, spec.std, 16, 0, "cpu",
                              resize=spec.resize).scores

    fp32 = scores(load_model(run.checkpoint))
    distance = {}
    for target in ("distill", "labels"):
        with contextlib.redirect_stderr(io.StringIO()):
            result = quantization_aware_finetune(run, 1, None, 64, device="cpu", target=target, say=lambda _: None)
        assert result.target == target
        distance[target] = float(np.abs(scores(result.model) - fp32).mean())
    assert distance["distill"] < distance["labels"], distance


@pytest.mark.slow
def test_build_fine_tunes_when_post_training_misses_and_keeps_the_graph_nearer_fp32(run_copy, monkeypatch):
    """`build -p int8` by default: post-training int8 misses a target it cannot reach (|ΔmAP| ≤ 0), so the build
    distils for --qat-epochs with the held-out images left out of fine-tuning and calibration, measures the result on
    them as the search measured post-training, and keeps the graph nearer fp32, recording both. A layer kept in
    float (--keep-fp here; the search's choice alike) stays float through the fine-tuning, in both graphs."""
    import contextlib
    import io

    import mlic_edge.train.qat as qat_module
    from mlic_edge.calibration import split_holdout
    from mlic_edge.commands.build import BuildRequest, _training_images, build
    from mlic_edge.export.lineage import ONNX_SHA
    from mlic_edge.export.metadata import read_metadata
    from mlic_edge.io import sha256_file
    from mlic_edge.rundir import RunDir

    trained_on: list[set[str]] = []
    real_dataset = qat_module.ImageDataset

    def recording_dataset(dataset, *args, **kwargs):
        trained_on.append(set(dataset.image_ids()))
        return real_dataset(dataset, *args, **kwargs)

    monkeypatch.setattr(qat_module, "ImageDataset", recording_dataset)
    run = RunDir(run_copy)
    stem = next(node.name for node in onnx.load(str(run.onnx("fp32"))).graph.node if node.op_type == "Conv")
    request = BuildRequest(precision="int8", backend="onnxruntime", calib_images=64, target_delta=0.0,
                           cpu_target_delta=0.0, max_fp_layers=0, qat_epochs=1, keep_fp=(stem,))
    with contextlib.redirect_stderr(io.StringIO()):
        entry = build(run, request)
    int8 = entry["int8"]
    held_out = set(split_holdout(_training_images(run.spec(), request, required=True), request.holdout_images)[0]
                   .image_ids)
    # calibration and training for TensorRT's graph, then again for the CPU graph's scheme: never the held-out images
    assert len(trained_on) == 4 and all(ids and not ids & held_out for ids in trained_on)

    steps = int8["accuracy_target"]["steps"]
    assert int8["accuracy_target"]["met"] is False and not steps[0]["met"]  # nothing meets |ΔmAP| ≤ 0
    graph = read_metadata(run.onnx("int8"))
    if int8.get("source") == "qat":  # fine-tuning kept more label sets: its graph is the build's
        assert steps[-1]["source"] == "quantization-aware, 1 epoch(s)" and len(steps) == 2
        assert steps[-1]["estimated_agreement"] > steps[0]["estimated_agreement"]  # what the plan decides by
        assert graph["int8_source"] == "qat" and int8["post_training"]["accuracy_target"]["steps"] == steps[:1]
        assert run.read()["qat"]["by"].startswith("build -p int8") and (run.path / "qat.pt").is_file()
        assert entry["accuracy"] == run.read()["qat"]["accuracy"] and "eval_accuracy" not in int8  # measured once
        assert "quantization-aware, 1 epoch(s) fine-tuning" in (run.reports / "build.md").read_text()
    else:  # it did not: the post-training graph stays, the trial is on record
        assert int8["qat_trial"]["source"] == "quantization-aware, 1 epoch(s)" and len(steps) == 1
        assert graph.get("int8_source") != "qat" and "qat" not in run.read()

    cpu = int8["cpu_graph"]  # it missed |ΔmAP| ≤ 0 too: fine-tuned for its own scheme, judged on the same images
    cpu_steps = cpu["accuracy_target"]["steps"]
    cpu_graph = read_metadata(run.onnx("int8", "cpu"))
    assert cpu_graph[ONNX_SHA] == sha256_file(run.onnx("fp32"))  # the fine-tuned graph still belongs to model.onnx
    if cpu.get("source") == "qat":
        assert cpu_steps[-1]["source"] == "quantization-aware for the CPU graph, 1 epoch(s)"
        assert cpu["fine_tuning"]["scheme"].startswith("cpu graph: int") and cpu["method"] == "minmax"
        assert cpu_graph["int8_source"] == "qat" and cpu["post_training"]["kept_fp"] == [stem]
        # the post-training CPU graph it replaced was measured on the eval split first, for the report
        assert cpu["post_training"]["eval_accuracy"]["images"] == entry["accuracy"]["cpu_graph"]["images"]
        assert cpu_steps[-1]["estimated_agreement"] > cpu_steps[0]["estimated_agreement"] or cpu_steps[-1]["met"]
    else:
        assert cpu["qat_trial"]["source"] == "quantization-aware for the CPU graph, 1 epoch(s)"
        assert cpu_graph.get("int8_source") != "qat" and len(cpu_steps) == 1
    assert "qat" not in run.read() or run.read()["qat"]["by"].startswith("build -p int8")  # TensorRT's only
    for path, record, final in ((run.onnx("int8"), int8, steps[-1]), (run.onnx("int8", "cpu"), cpu, cpu_steps[-1])):
        producers = {out: node for node in onnx.load(str(path)).graph.node for out in node.output}
        conv = next(node for node in producers.values() if node.name == stem)
        assert all(getattr(producers.get(name), "op_type", None) != "DequantizeLinear" for name in conv.input)
        assert record["kept_fp"] == [stem] and final["kept_fp"] == [stem]
    trials = [record["qat_trial"] for record in (int8, cpu) if "qat_trial" in record]
    assert all(trial["kept_fp"] == [stem] for trial in trials)  # a trial not adopted kept it float too


@pytest.mark.parametrize("name, options", [("mlgcn", {"hidden": 32, "label_dim": 8}),
                                           ("mlgat", {"d_reduced": 32, "label_dim": 8})])
def test_onnx_nodes_are_traced_back_to_the_modules_that_export_them(tmp_path, name, options):
    """The fine-tuning keeps a layer float by the name model.onnx gives it: every Conv/Gemm exported from a module
    is found, as the module whose weights the node holds, also where the scope leaves a module out (ML-GAT calls
    its backbone's forward_features); a node no module exports (the folded label branch's MatMul) is not."""
    import numpy as np
    import torch
    from onnx import numpy_helper
    from model_checks import to_onnx

    from mlic_edge.models import create_model
    from mlic_edge.train.qat import float_modules

    torch.manual_seed(0)
    model = create_model(name, 5, backbone="resnet10t", **options).eval()
    for module in model.modules():  # BatchNorm as the identity (timm zero-initialises some), folded as it is
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
    graph = to_onnx(model.for_export(), tmp_path / "model.onnx")
    weights = {item.name: numpy_helper.to_array(item) for item in graph.graph.initializer}
    nodes = [node for node in graph.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    found = float_modules(model, [node.name for node in nodes])
    modules = dict(model.named_modules())
    exported = [node for node in nodes if node.op_type == "Conv"]
    assert exported and all(node.name in found for node in exported)
    for node in exported:  # the export folds each BatchNorm (the identity up to its eps) into the weights
        assert np.allclose(weights[node.input[1]], modules[found[node.name]].weight.detach().numpy(), rtol=1e-4)
    assert not [node.name for node in nodes if node.op_type == "MatMul" and node.name in found]


@pytest.mark.slow
def test_the_cpu_scheme_fine_tunes_unsigned_activations_and_narrower_weights(run_copy):
    """Fine-tuning for ONNX Runtime's CPU graph simulates its arithmetic: an input calibration saw non-negative (a
    ReLU's output) is quantized unsigned (0..255, as uint8 activations are), the normalised image stays signed, and
    weights have 7 bits where the CPU lacks VNNI (reduce_range), 8 where it has it; TensorRT's scheme stays signed."""
    import contextlib
    import io

    from mlic_edge.rundir import RunDir
    from mlic_edge.train.qat import TENSORRT_QAT, cpu_qat_scheme, quantization_aware_finetune

    def quantizers(scheme):
        with contextlib.redirect_stderr(io.StringIO()):
            result = quantization_aware_finetune(RunDir(run_copy), 1, None, 16, device="cpu", scheme=scheme,
                                                 say=lambda _: None)
        convs = [module for module in result.model.modules() if isinstance(module, torch.nn.Conv2d)]
        assert result.scheme == scheme and len(convs) > 3
        return ([conv.input_quantizer.unsigned for conv in convs],
                {conv.weight_quantizer.num_bits for conv in convs})

    import torch

    unsigned, bits = quantizers(cpu_qat_scheme(reduce_range=True))
    assert unsigned[0] is False and all(unsigned[1:]) and bits == {7}  # the stem sees the normalised image
    unsigned, bits = quantizers(cpu_qat_scheme(reduce_range=False))
    assert bits == {8} and all(unsigned[1:])
    unsigned, bits = quantizers(TENSORRT_QAT)
    assert not any(unsigned) and bits == {8}


def test_qat_on_a_run_without_checkpoint_is_one_line(capsys, trained_run, tmp_path):
    run = tmp_path / "untrained"
    run.mkdir()
    shutil.copy(trained_run / "run.json", run / "run.json")
    result = invoke(capsys, "train", "--qat", "--run", run, "--epochs", "1")
    assert_one_line_error(result, "checkpoint.pt is missing", "mlic-edge train --qat --run")
    assert_one_line_error(invoke(capsys, "train", "--qat", "--epochs", "1"), "--run DIR is missing")
    assert_one_line_error(invoke(capsys, "train", "--qat", "--run", tmp_path / "absent", "--epochs", "1"),
                          "does not exist")
    assert_one_line_error(invoke(capsys, "train", "--epochs", "1"), "train needs --data")
    result = invoke(capsys, "train", "--qat", "--run", trained_run, "--epochs", "1", "--qat-target", "teacher")
    assert_one_line_error(result, "--qat-target must be one of distill, labels")


def test_qat_without_modelopt_says_how_to_install_it(capsys, monkeypatch, run_copy):
    from mlic_edge.errors import MlicError
    from mlic_edge.train.qat import require_modelopt

    for name in ("modelopt", "modelopt.torch", "modelopt.torch.quantization"):
        monkeypatch.setitem(sys.modules, name, None)  # import and find_spec then see no modelopt
    result = invoke(capsys, "train", "--qat", "--run", run_copy, "--epochs", "1")
    assert_one_line_error(result, "NVIDIA ModelOpt", 'pip install "nvidia-modelopt>=0.47"')
    with pytest.raises(MlicError, match=r'pip install "nvidia-modelopt>=0\.47"'):
        require_modelopt()


def test_fine_tuning_never_sees_the_validation_split_that_judges_the_int8_graph(validated_run):
    """`train --qat` and build's fine-tuning train on the training split less the run's validation split (recorded
    in run.json), so the build's accuracy target stays judged on images no training saw."""
    from mlic_edge.data import open_dataset
    from mlic_edge.data.splits import recorded_validation
    from mlic_edge.rundir import RunDir
    from mlic_edge.train.qat import _qat_data

    run = RunDir(validated_run)
    spec = run.spec()
    recorded = spec.dataset_record
    fine_tuned_on = set(_qat_data(run, spec, exclude=()).train_set.image_ids())
    train_split = open_dataset(recorded.spec, role="train", split=recorded.train_split, labels=spec.labels)
    held, _ = recorded_validation(train_split, recorded.val_fraction, recorded.val_seed, recorded.val_ids_sha256)
    assert held is not None and len(held) == recorded.val_images == 12
    assert not fine_tuned_on & set(held.image_ids) and len(fine_tuned_on) == len(train_split) - len(held)


@pytest.mark.slow
@pytest.mark.parametrize("reduce_range", [True, False], ids=["7-bit", "8-bit"])
def test_the_cpu_graph_rounds_the_fine_tuned_weights_as_the_fine_tuning_did(run_copy, tmp_path, reduce_range):
    """The CPU graph quantized from weights fine-tuned for it computes with the weights the fine-tuning learned
    around: each int8 weight, dequantized, is the fake-quantized one (BatchNorm folded in), with 7-bit weights (a CPU
    without VNNI), where ONNX Runtime by itself steps max|w| / 64 and ModelOpt amax / 63 (so without the fine-tuning's
    steps many weights differ), and with 8-bit ones."""
    import contextlib
    import io

    import numpy as np
    import torch
    from onnx import numpy_helper

    from mlic_edge.calibration.images import select_calibration_set
    from mlic_edge.calibration.int8 import cpu_int8_scheme, quantize_int8
    from mlic_edge.commands.qat import export_fine_tuned_fp32
    from mlic_edge.data import open_dataset
    from mlic_edge.rundir import RunDir
    from mlic_edge.train.qat import cpu_qat_scheme, float_modules, quantization_aware_finetune, weight_steps

    run = RunDir(run_copy)
    spec = run.spec()
    with contextlib.redirect_stderr(io.StringIO()):
        result = quantization_aware_finetune(run, 1, None, 16, device="cpu", scheme=cpu_qat_scheme(reduce_range),
                                             say=lambda _: None)
        fine_tuned = tmp_path / "fine-tuned.onnx"
        export_fine_tuned_fp32(result, spec, fine_tuned)
        steps = weight_steps(result.model, fine_tuned)
        calibration = select_calibration_set(open_dataset(spec.dataset_record.spec, role="train"), 16)

        def dequantized_weights(**options) -> dict[str, np.ndarray]:
            path = quantize_int8(fine_tuned, tmp_path / f"cpu{len(options)}.onnx", tmp_path / "records",
                                 method="minmax", calibration=calibration, preprocessing=spec.preprocessing,
                                 scheme=cpu_int8_scheme("QDQ", reduce_range=reduce_range), **options).path
            graph = onnx.load(str(path)).graph
            tensors = {item.name: numpy_helper.to_array(item).astype(np.float64) for item in graph.initializer}
            return {node.input[0].removesuffix("_quantized"): (tensors[node.input[0]]
                                                               * np.expand_dims(tensors[node.input[1]], (1, 2, 3)))
                    for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in tensors
                    and tensors[node.input[0]].ndim == 4}

    graph = onnx.load(str(fine_tuned)).graph
    floats = {item.name: numpy_helper.to_array(item).astype(np.float64) for item in graph.initializer}
    convs = {node.name: node.input[1] for node in graph.node if node.op_type == "Conv"}
    expected = {}
    for node, module_name in float_modules(result.model, list(convs)).items():
        module = result.model.get_submodule(module_name)
        with torch.no_grad():
            fake = module.weight_quantizer(module.weight).double().numpy()
        trained = module.weight.detach().double().numpy()
        folded = floats[convs[node]].reshape(len(trained), -1)[:, 0] / trained.reshape(len(trained), -1)[:, 0]
        expected[convs[node]] = fake * folded[:, None, None, None]
    assert len(expected) > 3 and set(expected) <= set(steps)
    with_steps, without = dequantized_weights(weight_steps=steps), dequantized_weights()
    rounded_otherwise, total = 0, 0
    for name, weights in expected.items():
        off = np.abs(with_steps[name] - weights)
        step = np.asarray(steps[name]["steps"]).reshape(-1, 1, 1, 1)
        assert np.all(off <= step * 1.001), name  # a tie at half a step may round the other way in float32
        rounded_otherwise, total = rounded_otherwise + np.sum(off > 1e-4 * np.abs(weights) + 1e-7), total + off.size
    assert rounded_otherwise / total < 1e-5
    shares = [np.mean(~np.isclose(without[name], weights, rtol=1e-4, atol=1e-7)) for name, weights in expected.items()]
    assert np.mean(shares) > 0.2 or not reduce_range


def test_distilling_a_student_that_already_matches_the_teacher_changes_nothing():
    """Distillation fine-tunes the graph that is deployed: the student's ``forward`` in eval mode, towards the
    teacher's scores, so its only signal is how far int8 moves them. Without quantizers the student is the teacher,
    and two steps at a high rate leave it so. Run in training mode, as the fine-tuning once did, q2l's dropout and
    BatchFormerV2's second stream moved it (on the zoo's q2l that left the fine-tuned graph at an RMS logit error of
    0.074 and 90.0 % identical label sets; as deployed, 0.0033 and 98.3 %)."""
    import copy
    from types import SimpleNamespace

    import torch

    from mlic_edge.models import create_model
    from mlic_edge.models.recipe import Recipe
    from mlic_edge.train.qat import _frozen, _qat_step, _student_mode
    from mlic_edge.train.schedule import create_optimizer, create_scheduler

    torch.manual_seed(0)
    student = create_model("q2l", 4, backbone="resnet10t", hidden_dim=32, dropout=0.5, bf_dropout=0.5)
    teacher = _frozen(copy.deepcopy(student))
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = torch.sigmoid(teacher(images))
    optimizer = create_optimizer(student, "adamw", 1e-2, weight_decay=0.0)
    scheduler = create_scheduler(optimizer, 2, 0, "cosine")
    batch = SimpleNamespace(images=images, targets=torch.zeros(4, 4), indices=list(range(4)))
    for epoch in range(2):
        _student_mode(student, distilling=True, frozen_norms=[])
        _qat_step(student, teacher, Recipe(source="test"), batch, torch.nn.BCEWithLogitsLoss(), optimizer, scheduler,
                  torch.device("cpu"), epoch)
    with torch.no_grad():
        after = torch.sigmoid(student.eval()(images))
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_a_cpu_graph_from_fine_tuned_weights_keeps_float_what_the_fine_tuning_did_not_quantize(tmp_path):
    """``unsimulated_nodes``: the weighted ops whose weight the fine-tuning did not round (no step in
    ``weight_steps``) stay float in a CPU graph quantized from its weights. In q2l those are its attention's
    products of two activations, which no Conv/Linear module exports; every Conv and Linear the fine-tuning
    quantized is quantized, the attention's four projections included (``Attention``'s ``nn.Linear``)."""
    import torch
    from model_checks import to_onnx

    from mlic_edge.calibration.int8 import unsimulated_nodes
    from mlic_edge.models import create_model
    from mlic_edge.models.layers.transformer import Attention
    from mlic_edge.train.qat import float_modules

    torch.manual_seed(0)
    model = create_model("q2l", 4, backbone="resnet10t", hidden_dim=32).eval()
    graph = to_onnx(model.for_export(), tmp_path / "model.onnx", simplify=True)  # onnxsim fuses MatMul + Add: Gemm
    weighted = [node for node in graph.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    quantized = float_modules(model, [node.name for node in weighted])  # the nodes a module exports
    steps = {node.input[1]: {} for node in weighted if node.name in quantized}  # those modules' weights, rounded
    unsimulated = unsimulated_nodes(graph, steps)
    assert unsimulated and set(unsimulated) == {node.name for node in weighted} - set(quantized)
    assert all("attn/" in name for name in unsimulated), unsimulated  # the attention's, nothing of the backbone's
    attentions = [name for name, module in model.named_modules() if isinstance(module, Attention)]
    assert len(unsimulated) == 2 * len(attentions)  # q·kᵀ and its weights · v, each a MatMul of two activations
    linear = {name for name, module in model.transformer.named_modules(prefix="transformer")
              if isinstance(module, torch.nn.Linear)}  # BatchFormerV2's are train-only, not exported
    assert {f"{name}.{part}" for name in attentions for part in ("q_proj", "k_proj", "v_proj", "out_proj")} <= linear
    assert linear <= set(quantized.values())  # each found by its node's scope, the Gemm onnxsim fused included


def test_every_fine_tuned_linear_weight_gets_its_step_in_the_float_export(tmp_path):
    """``weight_steps`` finds the step of each weight the fine-tuning rounded, by the initializer the float export
    reads it from. onnxsim exports q2l's Linears on (L, B, d) tensors as Gemm or MatMul reading the (in, out)
    transpose; the attention's projections are square, so the shape cannot tell the transpose apart (before: no
    step for any of them, and the CPU graph left them float as never fine-tuned)."""
    import numpy as np
    import onnx
    import torch
    from model_checks import to_onnx

    from mlic_edge.models import create_model
    from mlic_edge.train.qat import (cpu_qat_scheme, float_modules, quant_config, require_modelopt, weight_steps,
                                     without_quantizers)

    torch.manual_seed(0)
    model = create_model("q2l", 4, backbone="resnet10t", hidden_dim=32).eval()
    images = torch.rand(4, 3, 64, 64)
    model = require_modelopt().quantize(model, quant_config(cpu_qat_scheme(reduce_range=False)),
                                        lambda network: network(images))
    path = tmp_path / "fine-tuned.onnx"
    onnx.save(to_onnx(without_quantizers(model).for_export(), path, simplify=True), str(path))
    graph = onnx.load(str(path)).graph
    nodes = {node.name: node for node in graph.node if node.op_type in ("Gemm", "MatMul")}
    linear = {node: module for node, module in float_modules(model, list(nodes)).items()
              if module.startswith("transformer.")}
    assert any("q_proj" in module for module in linear.values())
    steps = weight_steps(model, path)
    for node, module_name in linear.items():
        module = model.get_submodule(module_name)
        expected = module.weight_quantizer.amax.detach().double().numpy().reshape(-1) / module.weight_quantizer.maxbound
        assert nodes[node].input[1] in steps, node
        step = steps[nodes[node].input[1]]
        np.testing.assert_allclose(step["steps"], expected, rtol=1e-6)
        assert step["axis"] == 1  # the (in, out) weight's output channels


def test_the_fine_tuning_starts_from_the_post_training_calibrations_activation_ranges():
    """``_input_ranges``: the activation ranges ModelOpt's max calibration stretched to the largest value seen are
    calibrated again as the post-training graph's are (percentile keeps 99.999 % of |x|), in a float pass, and the
    model quantizes again after it with the weights' ranges unchanged. One outlier in 200,000 values: the max range
    is the outlier's, the percentile one the bulk's."""
    import torch

    from mlic_edge.train.qat import _input_ranges, quant_config, require_modelopt

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.layer, model.unused = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)  # unused: never called, as
    model.forward = lambda inputs: model.layer(inputs)  # BatchFormerV2's layers at eval: no range to calibrate
    batches = [torch.randn(2500, 8) for _ in range(10)]
    batches[3][7, 2] = 1000.0

    def forward_loop(network):
        with torch.no_grad():
            for batch in batches:
                network(batch)

    model = require_modelopt().quantize(model, quant_config(), forward_loop)
    layer = model.layer
    weight_amax = layer.weight_quantizer.amax.clone()
    assert float(layer.input_quantizer.amax) == pytest.approx(1000.0)
    _input_ranges(model, forward_loop)
    amax = float(layer.input_quantizer.amax)
    bulk = float(torch.cat(batches).abs().flatten().sort().values[-3])  # the largest values but the outlier
    assert 1.0 < amax < 2 * bulk
    assert torch.equal(layer.weight_quantizer.amax, weight_amax)
    assert model.unused.input_quantizer.amax is None
    assert layer.input_quantizer.is_enabled and layer.weight_quantizer.is_enabled
    probe = torch.full((1, 8), 0.3)
    with torch.no_grad():
        quantized = model(probe)
        layer.input_quantizer.disable()
        assert not torch.allclose(model(probe), quantized, atol=1e-6)  # the input quantizer quantizes again


def test_an_unknown_calibration_method_is_refused_before_any_work(tmp_path):
    from mlic_edge.errors import MlicError
    from mlic_edge.rundir import RunDir
    from mlic_edge.train.qat import quantization_aware_finetune

    with pytest.raises(MlicError, match="unknown calibration method 'entropy'"):  # before the run (none here) is read
        quantization_aware_finetune(RunDir(tmp_path / "run"), 1, method="entropy")


@pytest.mark.parametrize("asked, used", [("percentile", "percentile"), ("minmax", "minmax"),
                                         ("entropy", "percentile")])
def test_the_build_fine_tunes_with_its_calibration_method_where_modelopt_has_it(asked, used, capsys):
    from mlic_edge.commands.build import BuildRequest, _fine_tuning_calibration

    assert _fine_tuning_calibration(BuildRequest(precision="int8", calib_method=asked)) == used
    said = capsys.readouterr().err
    assert ("not entropy" in said) == (asked == "entropy")


class _Batches(list):
    """Calibration batches as the fine-tuning's loader gives them (``with loader:``, ``batch.images``)."""

    def __init__(self, batches):
        from types import SimpleNamespace

        super().__init__(SimpleNamespace(images=images, indices=range(len(images))) for images in batches)
        self.dataset = range(sum(len(images) for images in batches))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None


def test_a_label_branch_folded_into_constants_fine_tunes_without_quantizers():
    """ML-GAT's label branch (its label-vector reduction, GAT layers and residual projection) is computed once into
    the graph's classifier constant: the fine-tuning leaves it unquantized, so the fake-quantized model's classifier
    is exactly the float one, while the image branch is quantized."""
    import numpy as np
    import torch

    from mlic_edge.label_graph import LabelGraph
    from mlic_edge.models import create_model
    from mlic_edge.train.qat import _calibrate, folded_modules, require_modelopt

    torch.manual_seed(0)
    classes = 5
    graph = LabelGraph(names=[f"c{i}" for i in range(classes)], vectors=np.random.default_rng(0).normal(
        size=(classes, 8)).astype(np.float32), cooccurrence=np.ones((classes, classes), np.int64) - np.eye(classes,
        dtype=np.int64), counts=np.full(classes, 4, np.int64))
    model = create_model("mlgat", classes, backbone="resnet10t", d_reduced=32, label_graph=graph).eval()
    folded = folded_modules(model)
    assert set(folded) == {"label_reduce", "gat.0.lin", "gat.1.lin", "gat_residual.0"}
    with torch.no_grad():
        classifier = model.label_embeddings()
        images = torch.randn(8, 3, 64, 64)
        scores = model(images)
    model, enabled = _calibrate(require_modelopt(), model, _Batches([images[:4], images[4:]]), torch.device("cpu"),
                                lambda message: None, float_names=folded)
    assert enabled and not [name for name in enabled if name.rpartition(".")[0] in folded]
    with torch.no_grad():
        assert torch.equal(model.label_embeddings(), classifier)
        assert not torch.allclose(model(images), scores, atol=1e-6)  # the image branch quantizes


def test_a_float_budget_goes_to_the_module_the_logits_are_most_sensitive_to():
    """``_spend_float_budget``: of two Linear layers whose outputs add up, the one with 50× the weights moves the
    logits the most when quantized; a budget of one keeps it float and the other quantized, none keeps both."""
    import torch

    from mlic_edge.train.qat import _calibrate, _spend_float_budget, require_modelopt

    class TwoBranches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quiet, self.loud = torch.nn.Linear(16, 4), torch.nn.Linear(16, 4)
            with torch.no_grad():
                self.loud.weight.mul_(50.0)

        def forward(self, inputs):
            return self.quiet(inputs) + self.loud(inputs)

    torch.manual_seed(0)
    batches = _Batches([torch.randn(32, 16) for _ in range(3)])
    for budget, float_modules in ((0, []), (1, ["loud"]), (2, ["loud", "quiet"])):
        model, _ = _calibrate(require_modelopt(), TwoBranches(), batches, torch.device("cpu"), lambda message: None)
        assert _spend_float_budget(model, batches, torch.device("cpu"), budget) == float_modules
        for name in ("quiet", "loud"):
            layer = getattr(model, name)
            assert layer.input_quantizer.is_enabled == layer.weight_quantizer.is_enabled == (name not in float_modules)


def test_the_fine_tuning_spends_the_float_the_search_kept_on_nodes_no_module_exports(run_copy):
    """A float layer the post-training search kept that no module exports (here a residual Add, which the fine-tuned
    graph never quantizes) buys one more module fine-tuned float, named by its model.onnx node and float in the
    exported graph."""
    import contextlib
    import io

    from mlic_edge.commands.qat import export_qat_graph
    from mlic_edge.rundir import RunDir
    from mlic_edge.train.qat import quantization_aware_finetune

    run = RunDir(run_copy)
    fp32 = onnx.load(str(run.onnx("fp32")))
    add = next(node.name for node in fp32.graph.node if node.op_type == "Add")
    with contextlib.redirect_stderr(io.StringIO()):
        result = quantization_aware_finetune(run, 1, keep_fp=[add], say=lambda message: None)
    assert len(result.chosen_fp) == 1 and result.kept_fp == result.chosen_fp
    chosen = result.chosen_fp[0]
    assert chosen in {node.name for node in fp32.graph.node if node.op_type in WEIGHTED}
    graph = run_copy / "qat.onnx"
    export_qat_graph(result, run.spec(), run.onnx("fp32"), graph)
    producers = {out: node for node in onnx.load(str(graph)).graph.node for out in node.output}
    consumers = [node for node in producers.values() if node.op_type in WEIGHTED]
    dequantized = [node for node in consumers
                   if any(getattr(producers.get(name), "op_type", None) == "DequantizeLinear" for name in node.input)]
    assert [node.name for node in consumers if node not in dequantized] == [chosen]  # every other one quantized
