"""The registry and the baseline: names, shapes, checkpoints, and errors a user can act on."""

from __future__ import annotations

import pytest
import torch

from mlic_edge.errors import MlicError
from mlic_edge.models import create_model, list_models
from mlic_edge.models.checkpoint import load_model, save_checkpoint


def test_registry_lists_baseline_with_its_defaults():
    entry = {m.name: m for m in list_models()}["baseline"]
    assert entry.default_backbone == "resnet50" and entry.default_img_size == 224


def test_unknown_model_lists_the_names():
    with pytest.raises(MlicError) as error:
        create_model("basline", 3)
    assert "did you mean 'baseline'" in str(error.value) and "available: baseline" in str(error.value)


def test_unknown_backbone_is_one_clear_error():
    with pytest.raises(MlicError, match="unknown timm backbone 'resnet5O'"):
        create_model("baseline", 3, backbone="resnet5O")


def test_pretrained_without_network_stops_with_a_hint(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # What a machine without network sees, without waiting for connection time-outs.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MlicError, match="no ImageNet weights for backbone 'resnet10t'") as error:
        create_model("baseline", 3, backbone="resnet10t", pretrained=True)
    assert "--pretrained-file" in str(error.value) and "--recipe quick" in str(error.value)


def test_pretrained_file_loads_local_weights(tmp_path):
    source = create_model("baseline", 3, backbone="resnet10t")
    weights = tmp_path / "resnet10t.pth"
    torch.save(source.backbone.state_dict(), weights)
    loaded = create_model("baseline", 3, backbone="resnet10t", pretrained_file=str(weights))
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(tensor, loaded.backbone.state_dict()[name]), name


@pytest.mark.parametrize("num_classes", [1, 7, 80])
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_baseline_gives_one_logit_per_label(num_classes, pool):
    model = create_model("baseline", num_classes, backbone="resnet10t", pool=pool).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, num_classes)
    scores = model.for_export()(torch.zeros(2, 3, 64, 64))
    assert torch.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "efficientnet_b0", "densenet121"])
def test_backbones_with_a_head_block_or_other_widths(backbone):
    model = create_model("baseline", 3, backbone=backbone).eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model = create_model("baseline", 5, backbone="resnet10t", pool="max", drop_rate=0.1).eval()
    save_checkpoint(tmp_path / "checkpoint.pt", model, epoch=3)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["epoch"] == 3 and payload["config"]["hyperparameters"] == {"pool": "max", "drop_rate": 0.1}
    restored = load_model(tmp_path / "checkpoint.pt")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), restored(x))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MlicError, match="could not be read as an mlic-edge checkpoint"):
        load_model(tmp_path / "checkpoint.pt")
