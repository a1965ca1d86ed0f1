"""``mlic-edge import`` end to end: an official-layout ML-GCN checkpoint becomes a run that export, build, parity
and run take unchanged; refusals write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, exit_before_torch, invoke
from test_import_mlgcn import official_gen_a, official_state, save_official, write_pickle


def official_files(tmp_path, synth_data):
    """An ML-GCN checkpoint (official layout, random weights) for the synthetic dataset's classes, with its word
    vectors and co-occurrence pickles, as the paper's repository ships them."""
    from mlic_edge.data import open_dataset

    train = open_dataset(f"voc:{synth_data}", role="train")
    positive = (train.targets == 1).astype(np.int64)
    adj = positive.T @ positive
    np.fill_diagonal(adj, 0)
    nums = positive.sum(0)
    vectors = np.random.default_rng(5).standard_normal((len(train.names), 16)).astype(np.float32)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(train.names) + "\n")
    checkpoint = save_official(tmp_path / "checkpoint.pth.tar", official_state(official_gen_a(adj, nums), 16),
                               module_prefix=True)
    return ["--labels", classes, "--word-vectors", write_pickle(tmp_path / "glove.pkl", vectors),
            "--adjacency", write_pickle(tmp_path / "adj.pkl", {"nums": nums, "adj": adj})], checkpoint


def test_an_imported_checkpoint_goes_through_export_build_parity_and_run(capsys, tmp_path, synth_data):
    options, checkpoint = official_files(tmp_path, synth_data)
    run = tmp_path / "run"
    result = invoke(capsys, "import", "ml-gcn", checkpoint, "--out", run, *options, "--data", f"voc:{synth_data}",
                    "--img-size", "64", "--paper-map", "94.0", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["model"] == "mlgcn" and summary["backbone"] == "resnet18" and summary["paper_mAP"] == 94.0
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["imported"]["sha256"] == summary["sha256"] and recorded["img_size"] == 64
    assert (run / "label_graph.npz").is_file() and "train" not in recorded

    # Random weights are not a model int8 can be accurate for: its parity limits are opened, fp32's are the defaults.
    for command in (["export", "--run", run], ["build", "--run", run, "--precision", "int8", "--backend",
                                                "onnxruntime", "--calib-images", "32", "--qat-epochs", "0"],
                    ["parity", "--run", run, "--json", "--tolerance", "int8=100", "--min-same", "int8=0"]):
        result = invoke(capsys, *command)
        assert result.code == 0, (command, result.err)
    report = json.loads(result.out)
    assert report["passed"] and {r["precision"] for r in report["results"]} == {"fp32", "int8"}
    result = invoke(capsys, "run", synth_data / "JPEGImages", "--run", run, "--max-frames", "3")
    assert result.code == 0 and len(result.out.splitlines()) == 3, result.err


def test_a_refused_import_writes_nothing(capsys, tmp_path, synth_data):
    options, checkpoint = official_files(tmp_path, synth_data)
    (tmp_path / "classes.txt").write_text("one\ntwo\n")  # the checkpoint has the dataset's 4 classes
    result = invoke(capsys, "import", "ml-gcn", checkpoint, "--out", tmp_path / "run", *options)
    assert_one_line_error(result, "the checkpoint has 4 classes but --labels", "names 2")
    assert not (tmp_path / "run").exists()


def test_import_argument_errors_come_before_pytorch(tmp_path):
    printed, err = exit_before_torch("import", "ml-gcn", tmp_path / "absent.pth", "--out", tmp_path / "run")
    assert printed == ["exit", "2", "False"], printed + [err]
    assert "absent.pth does not exist" in err


def test_the_command_knows_every_importer():
    from mlic_edge.commands.import_official import FORMAT_NAMES
    from mlic_edge.models.official import FORMATS

    assert FORMAT_NAMES == tuple(FORMATS)


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    """A small synthetic dataset of 5 classes (the class count of the Query2Label and MSRN official-layout files)."""
    from mlic_edge.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth5")
    generate(out, SynthConfig(classes=5, images=60, size=64, seed=2))
    return out


def q2l_files(folder, names):
    from test_import_q2l import official_resnet_checkpoint, write_checkpoint

    state, config = official_resnet_checkpoint(hidden_dim=64, nheads=4, ffn_dim=64, enc_layers=1, dec_layers=2,
                                               keep_input_proj=True, self_attention=False, img_size=64)
    checkpoint, options = write_checkpoint(folder, state, config, prefix="module.")
    (folder / "labels.txt").write_text("\n".join(names) + "\n")
    return checkpoint, ["--labels", options.labels, "--config", options.config]


def msrn_files(folder, names):
    from test_import_msrn import label_files, official_state, write_checkpoint

    labels, vectors, graph = label_files(folder)
    labels.write_text("\n".join(names) + "\n")
    checkpoint = write_checkpoint(folder / "checkpoint.pth.tar", official_state(), prefix="module.")
    return checkpoint, ["--labels", labels, "--word-vectors", vectors, "--adjacency", graph, "--img-size", "64"]


@pytest.mark.parametrize("fmt, files", [("q2l", q2l_files), ("msrn", msrn_files)])
def test_query2label_and_msrn_imports_export_and_pass_parity(capsys, tmp_path, five_classes, fmt, files):
    from mlic_edge.data import open_dataset

    names = open_dataset(f"voc:{five_classes}", role="eval").names
    checkpoint, options = files(tmp_path, names)
    run = tmp_path / "run"
    result = invoke(capsys, "import", fmt, checkpoint, "--out", run, *options, "--data", f"voc:{five_classes}")
    assert result.code == 0, result.err
    for command in (["export", "--run", run], ["parity", "--run", run, "--json"]):
        result = invoke(capsys, *command)
        assert result.code == 0, (command, result.err)
    assert json.loads(result.out)["passed"]


def test_a_dataset_is_put_in_the_models_class_order_by_name(synth_data):
    """An imported COCO ML-GCN numbers classes alphabetically, the COCO reader by category id: eval, the reference
    and calibration match them by name."""
    from mlic_edge.data import open_dataset

    dataset = open_dataset(f"voc:{synth_data}", role="eval")
    order = list(reversed(dataset.names))
    reordered = open_dataset(f"voc:{synth_data}", role="eval", labels=order)
    assert reordered.names == order and reordered.image_ids() == dataset.image_ids()
    np.testing.assert_array_equal(reordered.targets, dataset.targets[:, ::-1])
    other = open_dataset(f"voc:{synth_data}", role="eval", labels=["a", "b", "c", "d"])
    assert other.names == dataset.names  # other classes are not "reordered": the caller refuses them


def test_the_python_api_imports_too(tmp_path, synth_data):
    from mlic_edge import Run

    options, checkpoint = official_files(tmp_path, synth_data)
    keyword = dict(zip(("labels", "word_vectors", "adjacency"), options[1::2]))
    run = Run.import_checkpoint("ml-gcn", checkpoint, tmp_path / "run", data=f"voc:{synth_data}", **keyword)
    assert run.spec.model == "mlgcn" and run.spec.img_size == 448
    assert run.dir.read()["imported"]["format"] == "ml-gcn"


def test_an_imported_run_without_a_dataset_exports_without_a_reference(capsys, tmp_path, five_classes, monkeypatch):
    """Export refuses before any work, offering --no-reference; with it, the ONNX is checked on inputs of the
    model's own range (a 0/1-normalised Query2Label here), and parity says how to add the reference."""
    import mlic_edge.export.onnx_export as onnx_export
    from mlic_edge.data import open_dataset

    checkpoint, options = q2l_files(tmp_path, open_dataset(f"voc:{five_classes}", role="eval").names)
    config = options[options.index("--config") + 1]
    config.write_text(json.dumps(dict(json.loads(config.read_text()), orid_norm=True)))
    run = tmp_path / "run"
    result = invoke(capsys, "import", "q2l", checkpoint, "--out", run, *options)
    assert result.code == 0, result.err
    assert json.loads((run / "run.json").read_text())["imported"]["taken_on_trust"] == {
        "nheads": {"value": 4, "from": f"config {config.resolve()}"},
        "orid_norm": {"value": True, "from": f"config {config.resolve()}"}}

    result = invoke(capsys, "export", "--run", run)
    assert_one_line_error(result, "names no dataset", "--data DATA", f"mlic-edge export --run {run} --no-reference")
    assert not (run / "model.onnx").exists()

    checked = []
    compare = onnx_export._compare_with_torch
    monkeypatch.setattr(onnx_export, "_compare_with_torch",
                        lambda graph, path, inputs: checked.append(inputs) or compare(graph, path, inputs))
    result = invoke(capsys, "export", "--run", run, "--no-reference", "--uint8-input")
    assert result.code == 0, result.err
    assert (run / "model.onnx").is_file() and not (run / "reference.npz").exists()
    assert checked[0].min() >= 0 and checked[0].max() <= 1 and checked[0].std() > 0.1  # images in [0, 1]
    assert "no eval image" not in result.err  # the folded input is checked on the same images

    result = invoke(capsys, "parity", "--run", run)
    assert_one_line_error(result, "reference.npz is missing", f"mlic-edge export --run {run} --data DATA")
