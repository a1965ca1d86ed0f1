"""Training, export and the reference: what the run directory holds afterwards, and that it is right."""

from __future__ import annotations

from dataclasses import replace

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlic_edge import metrics
from mlic_edge.data import open_dataset
from mlic_edge.data.images import preprocess, read_image
from mlic_edge.errors import MlicError
from mlic_edge.models.checkpoint import load_model
from mlic_edge.rundir import RunDir
from mlic_edge.train.trainer import TrainConfig, train


def test_training_writes_the_run_directory(trained_run):
    run = RunDir(trained_run)
    meta = run.read()
    assert run.checkpoint.is_file() and run.last_checkpoint.is_file()
    assert meta["model"] == "baseline" and meta["backbone"] == "resnet10t" and meta["img_size"] == 64
    assert len(meta["labels"]) == 4 and len(meta["mean"]) == 3
    history = meta["train"]["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(row["train_loss"]) for row in history)
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"]
    assert (run.reports / "train_log.csv").read_text().startswith("epoch,train_loss,val_mAP")


def test_resume_continues_from_the_last_epoch(run_copy, synth_data):
    result = train(TrainConfig(model="baseline", data=f"voc:{synth_data}", out=run_copy, epochs=7, resume=True,
                               workers=0))
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3, 4, 5, 6, 7]
    assert result["config"]["backbone"] == "resnet10t" and result["config"]["img_size"] == 64


def test_resume_refuses_a_finished_run(run_copy, synth_data):
    with pytest.raises(MlicError, match="already finished 6 epochs"):
        train(TrainConfig(model="baseline", data=f"voc:{synth_data}", out=run_copy, epochs=6, resume=True,
                          workers=0))


def test_broken_images_are_skipped_and_counted(tmp_path, synth_data):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    victims = sorted((data / "JPEGImages").glob("*.jpg"))[:3]
    victims[0].write_bytes(b"\xff\xd8 truncated")
    victims[1].write_bytes(b"")
    victims[2].unlink()
    result = train(TrainConfig(model="baseline", data=f"voc:{data}", out=tmp_path / "run", backbone="resnet10t",
                               epochs=1, img_size=32, batch_size=16, workers=0, pretrained=False))
    skipped = sum(result["skipped_images"].values())  # train, validation and eval splits
    assert skipped == 2  # the deleted one is dropped when the split is opened, with a note


def test_baseline_learns_the_synthetic_data(tmp_path_factory):
    """Clearly better than chance: chance AP of a class is its prevalence."""
    from mlic_edge.data.synth import SynthConfig, generate

    data = tmp_path_factory.mktemp("learn")
    generate(data, SynthConfig(classes=4, images=240, size=64, seed=3))
    result = train(TrainConfig(model="baseline", data=f"voc:{data}", out=tmp_path_factory.mktemp("r") / "run",
                               backbone="resnet10t", epochs=5, img_size=64, batch_size=16, optimizer="adamw",
                               lr=3e-3, warmup_epochs=0.5, workers=0, pretrained=False))
    eval_set = open_dataset(f"voc:{data}", role="eval")
    chance = float(np.mean((eval_set.targets == 1).mean(axis=0)))
    assert result["eval_mAP"] > chance + 0.2, (result["eval_mAP"], chance)  # the eval split, unseen by any choice


def test_export_is_dynamic_simplified_and_carries_metadata(trained_run):
    run = RunDir(trained_run)
    proto = onnx.load(str(run.onnx()))
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    run_meta = run.read()
    assert json.loads(meta["labels"]) == run_meta["labels"] and int(meta["img_size"]) == 64
    assert json.loads(meta["mean"]) == pytest.approx(run_meta["mean"])
    assert proto.opset_import[0].version == 17
    assert run_meta["export"]["check"]["max_abs_diff"] < 1e-4
    assert run_meta["export"]["check"]["images"] == 8


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_pytorch_on_real_images(trained_run, synth_data, batch):
    run = RunDir(trained_run)
    meta = run.read()
    dataset = open_dataset(f"voc:{synth_data}", role="eval")
    inputs = np.stack([preprocess(read_image(p), 64, meta["mean"], meta["std"]) for p in dataset.image_paths[:batch]])
    session = ort.InferenceSession(str(run.onnx()), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": inputs})[0]
    with torch.no_grad():
        expected = torch.sigmoid(load_model(run.checkpoint)(torch.from_numpy(inputs))).numpy()
    assert got.shape == (batch, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_reference_holds_pytorch_scores_of_the_eval_split(trained_run, synth_data):
    run = RunDir(trained_run)
    with np.load(run.reference) as ref:
        dataset = open_dataset(f"voc:{synth_data}", role="eval")
        assert list(ref["image_ids"]) == dataset.image_ids()
        np.testing.assert_array_equal(ref["targets"], dataset.targets)
        assert list(ref["labels"]) == dataset.names
        assert ref["scores"].shape == dataset.targets.shape
        ref_map = metrics.mean_average_precision(ref["scores"], ref["targets"]).map
    assert run.read()["reference"]["mAP"] == pytest.approx(ref_map)


def test_export_without_training_says_what_to_do(tmp_path):
    from mlic_edge.export.onnx_export import export_onnx

    with pytest.raises(MlicError, match="train first"):
        export_onnx(RunDir(tmp_path / "nothing"))


def test_resume_refuses_a_dataset_whose_classes_come_in_another_order(run_copy, synth_data, tmp_path):
    """Resuming on reordered classes would train outputs under other names than run.json and the exported model."""
    import shutil

    reordered = tmp_path / "reordered"
    shutil.copytree(synth_data, reordered)
    classes = reordered / "ImageSets" / "Main" / "classes.txt"
    names = classes.read_text().split()
    classes.write_text("".join(f"{name}\n" for name in reversed(names)))
    before = (run_copy / "run.json").read_bytes()
    with pytest.raises(MlicError, match="another order") as caught:
        train(TrainConfig(model="baseline", data=f"voc:{reordered}", out=run_copy, epochs=7, resume=True, workers=0))
    assert "\n" not in str(caught.value) and "new --out" in caught.value.hint
    assert (run_copy / "run.json").read_bytes() == before  # nothing touched


def test_training_afresh_into_an_exported_run_never_mixes_two_models(run_copy, synth_data):
    """The old model.onnx and reference.npz must not outlive the checkpoint they came from (parity would pass
    against the old model): refused, or with --overwrite moved whole to previous/<time>/."""
    before = {name: (run_copy / name).read_bytes() for name in ("model.onnx", "reference.npz", "run.json")}
    config = TrainConfig(model="baseline", data=f"voc:{synth_data}", out=run_copy, backbone="resnet10t", epochs=1,
                         img_size=64, batch_size=16, workers=0, pretrained=False)
    with pytest.raises(MlicError, match="holds an exported model .*model.onnx.*reference.npz") as caught:
        train(config)
    assert "--overwrite" in caught.value.hint
    assert {name: (run_copy / name).read_bytes() for name in before} == before  # nothing touched
    train(replace(config, overwrite=True))
    (previous,) = (run_copy / "previous").iterdir()
    assert {name: (previous / name).read_bytes() for name in before} == before
    assert not (run_copy / "model.onnx").exists() and not (run_copy / "reference.npz").exists()
    assert "export" not in RunDir(run_copy).read()  # run.json describes only the new generation


def test_training_curves_survive_a_diverging_loss(tmp_path):
    """--lr 1e8: the loss check stops training on a non-finite step; an enormous but finite epoch loss must not
    break the chart first (its values are drawn as gaps, the PNG is still written)."""
    import cv2

    from mlic_edge.plot import line_chart

    path = line_chart(tmp_path / "curves.png", "diverging", [1, 2, 3, 4],
                      {"train loss": [0.7, 1e308, -1e308, float("inf")], "val mAP": [0.5, None, 0.1, float("nan")]})
    assert cv2.imread(str(path)) is not None


def test_the_validation_split_is_held_out_before_training_recorded_and_re_derived(validated_run, synth_data):
    """10 % of the training split (at least 8 images), chosen from the seed alone, is held out: neither trained on
    nor part of the eval split; run.json records its fraction, seed, count and the sha256 of its sorted ids, from
    which the same ids are derived again."""
    from mlic_edge.data.splits import ids_sha256, validation_split

    dataset = RunDir(validated_run).spec().dataset
    train_split = open_dataset(f"voc:{synth_data}", role="train")
    eval_ids = set(open_dataset(f"voc:{synth_data}", role="eval").image_ids())
    assert (dataset.val_fraction, dataset.val_seed, dataset.val_images) == (0.1, 0, 12)
    split = validation_split(train_split.image_ids(), dataset.val_fraction, dataset.val_seed)
    assert split.sha256 == dataset.val_ids_sha256 == ids_sha256(reversed(split.image_ids)) and len(split) == 12
    assert not set(split.image_ids) & eval_ids and set(split.image_ids) <= set(train_split.image_ids())
    assert dataset.train_images == len(train_split) - 12  # trained on the rest
    assert validation_split(list(reversed(train_split.image_ids())), 0.1, 0) == split  # the seed decides, not order
    assert validation_split(train_split.image_ids(), 0.1, 1).image_ids != split.image_ids
    assert validation_split(train_split.image_ids(), 0.0, 0).image_ids == ()


def test_the_best_epoch_is_chosen_on_the_validation_split_and_the_eval_split_only_reported(validated_run,
                                                                                          synth_data):
    """best_val_mAP is checkpoint.pt's mAP on the validation images (the split that chose it); eval_mAP its mAP on
    the eval split, measured once training ended, which no choice looked at."""
    from mlic_edge.commands.evaluate import EvalRequest, evaluate
    from mlic_edge.data.splits import validation_split
    from mlic_edge.train.evaluate import predict_scores

    spec = RunDir(validated_run).spec()
    section = spec.train
    assert section.selected_on == "validation" and section.config["val_fraction"] == 0.1
    train_split = open_dataset(f"voc:{synth_data}", role="train")
    held = set(validation_split(train_split.image_ids(), 0.1, 0).image_ids)
    val_set = train_split.subset([i for i, image_id in enumerate(train_split.image_ids()) if image_id in held])
    scores = predict_scores(load_model(RunDir(validated_run).checkpoint), val_set, spec.img_size, spec.mean,
                            spec.std, 16, resize=spec.resize, device=torch.device("cpu"))
    val_map = metrics.mean_average_precision(scores.scores, scores.targets(val_set)).map
    assert section.best_val_mAP == pytest.approx(val_map, abs=1e-6)
    eval_map = evaluate(RunDir(validated_run), EvalRequest(device="cpu", batch_size=16))["mAP"]
    assert section.eval_mAP == pytest.approx(eval_map, abs=1e-6) and section.eval_mAP != section.best_val_mAP
    assert section.skipped_images == {"train": 0, "val": 0, "eval": 0}


def test_val_fraction_is_checked_before_training(tmp_path):
    for bad in (-0.1, 0.6, 1.0):
        with pytest.raises(MlicError, match="--val-fraction"):
            TrainConfig(model="baseline", data="voc:nowhere", out=tmp_path / "run", val_fraction=bad).validate()


def test_the_training_summary_names_the_split_that_chose_the_epoch_and_the_eval_splits_figure():
    from mlic_edge.commands.train import training_summary

    chosen_on_validation = {"best_val_mAP": 0.8123, "best_epoch": 3, "selected_on": "validation", "eval_mAP": 0.7456}
    assert training_summary(chosen_on_validation) == ("best validation mAP 81.23 at epoch 3; eval split mAP 74.56 "
                                                      "(scored once, at the end)")
    assert training_summary({"best_val_mAP": 0.5, "best_epoch": 1, "selected_on": "eval", "eval_mAP": 0.5}) == \
        "best val mAP 50.00 at epoch 1 (the eval split chose it)"
    assert "best val mAP" in training_summary({"best_val_mAP": 0.5, "best_epoch": 1})  # a run written before
