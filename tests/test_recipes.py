"""Training recipes as data (mlic_edge/models/recipe.py): each model's paper recipe and the quick one, resolved
field by field against the user's options; the schedules and EMA they name behave as their references."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import assert_one_line_error, invoke
from mlic_edge.models import list_models
from mlic_edge.models.recipe import AUGMENTATIONS, QUICK, SCHEDULES, Recipe
from mlic_edge.train.config import TrainConfig


def config(**fields) -> TrainConfig:
    return TrainConfig(model="q2l", data="voc:x", out="runs/x", **fields)


def test_every_model_has_a_paper_recipe_with_its_source_and_the_quick_one():
    for entry in list_models():
        paper = entry.recipes["paper"]
        assert paper.source and paper.schedule in SCHEDULES and set(paper.augment) <= set(AUGMENTATIONS)
        quick = entry.recipes["quick"]
        # Q2L's transformer, ML-GCN and MSRN learn at lower rates, Q2L keeps its paper's regularisation (it
        # over-fits without), semdep trains its stages at once (their recipes' sources); nothing else differs.
        own = {"q2l": {"lr": 3e-4, "weight_decay": 1e-2, "augment": ("cutout",), "loss": "asl"},
               "mlgcn": {"lr": 1e-3}, "msrn": {"lr": 1e-3}, "semdep": {"stages": "concurrent"}}
        assert quick == (QUICK.with_changes(**own[entry.name], source=quick.source) if entry.name in own else QUICK)


def test_the_paper_recipes_say_what_the_papers_do():
    recipes = {entry.name: entry.recipes["paper"] for entry in list_models()}
    assert (recipes["q2l"].optimizer, recipes["q2l"].lr, recipes["q2l"].schedule) == ("adamw", 1e-4, "onecycle")
    assert recipes["q2l"].ema_decay == 0.9997 and set(recipes["q2l"].augment) == {"randaugment", "cutout", "cutmix"}
    assert recipes["q2l"].mean == (0.0, 0.0, 0.0) and recipes["q2l"].std == (1.0, 1.0, 1.0)  # paper 003 §2.1
    assert (recipes["mlgcn"].lr, recipes["mlgcn"].backbone_lr_scale, recipes["mlgcn"].grad_clip) == (0.1, 0.1, 10.0)
    assert recipes["mlgcn"].loss == "softmargin" and recipes["msrn"].crop_scale == 0.6
    semdep = recipes["semdep"]  # paper 001 §3.1
    assert (semdep.optimizer, semdep.lr, semdep.weight_decay, semdep.batch_size) == ("sgd", 1e-3, 5e-4, 24)
    assert semdep.stages == "sequential" and semdep.schedule == "step" and semdep.img_size == 448
    assert [name for name, recipe in recipes.items() if recipe.stages != "none"] == ["semdep"]


def test_the_stages_come_from_the_recipe_unless_the_option_says():
    entry = next(entry for entry in list_models() if entry.name == "semdep")
    assert config().resolve(entry.recipes).stages == "sequential"
    assert config(stages="none").resolve(entry.recipes).stages == "none"
    assert config(recipe="quick").resolve(entry.recipes).stages == "concurrent"
    assert config(recipe="quick", stages="sequential").resolve(entry.recipes).stages == "sequential"


def test_runs_recorded_before_the_stage_modes_read_as_sequential_or_none():
    paper = next(entry for entry in list_models() if entry.name == "semdep").recipes["paper"]
    recorded = {**paper.as_dict(), "stages": True}
    assert Recipe(**recorded).stages == "sequential"
    assert Recipe(**{**recorded, "stages": False}).stages == "none"
    assert config(stages=True).stages == "sequential" and config(stages=False).stages == "none"  # a resumed record


def test_each_option_overrides_one_field_and_zero_turns_ema_and_clipping_off():
    entry = next(entry for entry in list_models() if entry.name == "q2l")
    paper = entry.recipes["paper"]
    resolved = config(lr=3e-4, epochs=2).resolve(entry.recipes)
    assert (resolved.lr, resolved.epochs) == (3e-4, 2)
    assert resolved.with_changes(lr=paper.lr, epochs=paper.epochs) == paper  # nothing else moved
    assert config(ema_decay=0.0).resolve(entry.recipes).ema_decay is None
    assert config(recipe="quick").resolve(entry.recipes) == entry.recipes["quick"]
    assert config(loss_options={"gamma_neg": 4}).resolve(entry.recipes).loss_options == {"gamma_neg": 4}


@pytest.mark.parametrize("option, value", [("--recipe", "fast"), ("--ema-decay", "1.5"), ("--schedule", "linear")])
def test_bad_recipe_options_are_one_line(capsys, tmp_path, option, value):
    result = invoke(capsys, "train", "--data", tmp_path, "--out", tmp_path / "run", option, value)
    assert_one_line_error(result, option)


def test_one_cycle_is_pytorchs():
    from mlic_edge.train.schedule import lr_factor

    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=50, pct_start=0.2)
    for step in range(50):
        assert lr_factor(step, 50, 0, "onecycle") == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        reference.step()


def test_the_backbone_learns_at_its_share_of_the_rate():
    from mlic_edge.models import create_model
    from mlic_edge.train.schedule import create_optimizer

    model = create_model("baseline", 3, backbone="resnet10t")
    optimizer = create_optimizer(model, "sgd", 0.1, 1e-4, backbone_lr_scale=0.1)
    backbone = {id(param) for param in model.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(param) in backbone for param in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(0.01 if in_backbone.pop() else 0.1)


def test_ema_follows_its_formula():
    from timm.utils import ModelEmaV3

    model = torch.nn.Linear(3, 1)
    ema = ModelEmaV3(model, decay=0.9)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.9 * before + 0.1 * model.weight.detach())


def test_a_run_records_its_resolved_recipe_and_which_weights_it_kept(capsys, tmp_path, synth_data):
    run = tmp_path / "run"
    result = invoke(capsys, "train", "--model", "baseline", "--data", f"voc:{synth_data}", "--recipe", "quick",
                    "--backbone", "resnet10t", "--img-size", "32", "--epochs", "2", "--ema-decay", "0.5",
                    "--workers", "0", "--out", run, "--json")
    assert result.code == 0, result.err
    section = json.loads(result.out)
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["recipe"]["name"] == "quick" and recorded["recipe"]["ema_decay"] == 0.5
    assert recorded["recipe"]["img_size"] == 32 and recorded["recipe"]["lr"] == QUICK.lr
    assert all("val_mAP_ema" in row for row in section["history"]) and section["best_weights"] in ("raw", "ema")
    assert all(row["train_images_per_s"] > 0 for row in section["history"])  # throughput, also in train_log.csv
    assert "train_images_per_s" in (run / "reports" / "train_log.csv").read_text().splitlines()[0]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["weights"] == section["best_weights"]


def test_a_frozen_backbone_keeps_its_stem_and_batchnorm_statistics():
    """Query2Label's recipe: FrozenBatchNorm2d in the backbone and only layer2-4 trained."""
    from mlic_edge.models import create_model
    from mlic_edge.train.schedule import create_optimizer
    from mlic_edge.train.trainer import freeze_backbone

    torch.manual_seed(0)
    model = create_model("baseline", 3, backbone="resnet10t")
    norms = freeze_backbone(model, frozen_bn=True, frozen_stem=True)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = create_optimizer(model, "sgd", 0.1, 0.0)
    model.train()
    for norm in norms:
        norm.eval()
    loss = model(torch.randn(4, 3, 64, 64)).sum()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not any(name.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1")) for name in changed)
    assert not any("running_" in name or ".bn" in name for name in changed)
    assert any(name.startswith("backbone.layer2") for name in changed) and "head.weight" in changed


def test_compile_and_channels_last_train_the_same_model(capsys, tmp_path, synth_data, monkeypatch):
    """--compile goes through torch.compile; with it and --channels-last, the same first epoch is learnt as without."""
    compiled = []
    real_compile = torch.compile

    def spy(module, **options):
        compiled.append(type(module).__name__)
        return real_compile(module, **options)

    monkeypatch.setattr(torch, "compile", spy)
    losses = {}
    for name, options in (("eager", ["--no-channels-last"]), ("compiled", ["--channels-last", "--compile"])):
        result = invoke(capsys, "train", "--model", "baseline", "--data", f"voc:{synth_data}", "--recipe", "quick",
                        "--backbone", "resnet10t", "--img-size", "32", "--epochs", "1", "--workers", "0",
                        "--out", tmp_path / name, "--json", *options)
        assert result.code == 0, result.err
        losses[name] = json.loads(result.out)["history"][0]["train_loss"]
        config = json.loads((tmp_path / name / "run.json").read_text())["train"]["config"]
        assert config["compile"] == (name == "compiled") and config["channels_last"] == (name == "compiled")
    assert compiled == ["_TrainingLoss"]
    # channels-last convolutions sum in another order: 1.1e-4 apart on an AVX-512 Xeon, 1e-5 on an AVX2 EPYC; a model
    # trained otherwise (another initialisation, another loss) lands percents away
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-3)


def test_cutmix_mixes_a_box_and_the_labels_by_its_area():
    """Paper 003's CutMix: one box from the partner image (the batch reversed), targets mixed by the area kept; a
    label ignored (-1, VOC difficult) in either image stays ignored."""
    from mlic_edge.data.torch_data import cut_mix

    torch.manual_seed(3)
    images = torch.stack([torch.zeros(3, 40, 40), torch.ones(3, 40, 40)])
    targets = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    mixed, soft = cut_mix(images, targets, probability=1.0)
    kept = float((mixed[0] == 0).float().mean())  # share of image 0 still its own
    assert 0.0 < kept < 1.0 and torch.equal(mixed[1] == 1, (mixed[0] == 0))  # the same box, swapped
    torch.testing.assert_close(soft[0, :2], torch.tensor([kept, 1.0 - kept]))
    assert soft[0, 2] == -1.0 and soft[1, 2] == -1.0
    unchanged = cut_mix(images, targets, probability=0.0)
    assert unchanged[0] is images and unchanged[1] is targets


def test_q2ls_paper_recipe_trains_end_to_end_with_its_normalisation(capsys, tmp_path, synth_data):
    """Every part of the paper recipe at once (AdamW one-cycle, EMA, RandAugment, Cutout, CutMix, ASL), small: the
    run records the paper's mean 0 / std 1, which export and the runtime then use."""
    run = tmp_path / "q2l"
    result = invoke(capsys, "train", "--model", "q2l", "--data", f"voc:{synth_data}", "--backbone", "resnet10t",
                    "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--model-kwargs",
                    "hidden_dim=64", "--model-kwargs", "ffn_dim=64", "--no-pretrained", "--out", run, "--json")
    assert result.code == 0, result.err
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["recipe"]["name"] == "paper" and "cutmix" in recorded["recipe"]["augment"]
    assert recorded["mean"] == [0.0, 0.0, 0.0] and recorded["std"] == [1.0, 1.0, 1.0]
    # From scratch the backbone's BatchNorm and stem train: frozen random weights would never learn.
    assert not recorded["recipe"]["frozen_bn"] and not recorded["recipe"]["frozen_stem"]
    assert "meant for pretrained weights" in result.err and "the paper's figures assume" in result.err
    history = json.loads(result.out)["history"]
    assert len(history) == 1 and all(row["train_loss"] > 0 and row["val_mAP_ema"] is not None for row in history)
