"""ImageNet weights (mlic_edge/models/backbone.py): the paper recipe starts from them and the quick one does not;
without network they are refused at once, in one line, never retried; a local cache is used without network; files
in timm's, torchvision's and safetensors' formats load into the backbone as they are, and a file of another
architecture is refused naming its keys. No test reaches the network: the hub is a closed or a listening local
port, and timm's downloads are recorded instead of made."""

from __future__ import annotations

import json
import socket

import pytest
import timm
import torch
from safetensors.torch import save_file

from cli_helpers import assert_one_line_error, exit_before_torch, invoke
from mlic_edge.errors import MlicError
from mlic_edge.models import create_model
from mlic_edge.train.config import TrainConfig

BACKBONE = "resnet10t"


class Network:
    """What weight loading asked of the network: timm's downloads and the connection attempts."""

    def __init__(self) -> None:
        self.downloads: list[str] = []
        self.connections: list[tuple[str, int]] = []


@pytest.fixture
def network(monkeypatch, tmp_path) -> Network:
    """Empty Hugging Face and torch hub caches, the hub on, no proxy; timm's downloads recorded (and failing), every
    connection attempt recorded before it is made."""
    import huggingface_hub.constants
    from timm.models import _builder

    recorded = Network()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)

    def download(location, *args, **kwargs):
        recorded.downloads.append(location)
        raise OSError("a test downloaded nothing")

    monkeypatch.setattr(_builder, "load_state_dict_from_hf", download)
    monkeypatch.setattr(_builder, "load_state_dict_from_url", download)
    connect = socket.create_connection

    def recorded_connect(address, *args, **kwargs):
        recorded.connections.append(address)
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recorded_connect)
    return recorded


def hub_at(monkeypatch, port: int) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def randomized(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating tensor random, so that equal weights cannot come from an initialisation."""
    torch.manual_seed(0)
    return {key: torch.randn_like(value) if value.is_floating_point() else value
            for key, value in state_dict.items()}


def assert_backbone_holds(model, weights: dict[str, torch.Tensor]) -> None:
    """Each tensor of the model's backbone is the file's own (so none stayed random)."""
    loaded = model.backbone.state_dict()
    assert loaded, "no backbone weights"
    for key, tensor in loaded.items():
        assert key in weights, key
        assert torch.equal(tensor, weights[key]), key


# ------------------------------------------------------------------------------------------------ which recipe
@pytest.mark.parametrize("fields, expected", [
    ({}, True), ({"recipe": "quick"}, False), ({"pretrained": False}, False),
    ({"recipe": "quick", "pretrained": True}, True), ({"recipe": "quick", "pretrained_file": "w.pth"}, True),
])
def test_the_paper_recipe_starts_from_imagenet_weights_and_the_quick_one_from_scratch(fields, expected):
    assert TrainConfig(model="msrn", data="voc:x", out="runs/x", **fields).starts_pretrained() is expected


def test_a_pretrained_file_is_checked_before_any_work(capsys, tmp_path, synth_data):
    out = tmp_path / "run"
    absent = invoke(capsys, "train", "--data", f"voc:{synth_data}", "--pretrained-file", tmp_path / "absent.pth",
                    "--out", out)
    assert_one_line_error(absent, "--pretrained-file", "absent.pth", "does not exist", ".safetensors")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    both = invoke(capsys, "train", "--data", f"voc:{synth_data}", "--pretrained-file", weights, "--no-pretrained",
                  "--out", out)
    assert_one_line_error(both, "--pretrained-file and --no-pretrained")
    assert not out.exists()


# --------------------------------------------------------------------------------------------- without network
def test_with_the_hub_off_the_paper_recipe_stops_in_one_line_without_trying(capsys, monkeypatch, tmp_path,
                                                                              synth_data, network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    result = invoke(capsys, "train", "--model", "baseline", "--data", f"voc:{synth_data}", "--backbone", BACKBONE,
                    "--out", out)
    assert_one_line_error(result, f"no ImageNet weights for backbone '{BACKBONE}'", "HF_HUB_OFFLINE",
                          "--pretrained-file FILE", "HF_HOME", str(tmp_path / "hf" / "hub"), "--recipe quick")
    assert network.downloads == [] and network.connections == []
    assert not out.exists()


def test_an_unreachable_hub_is_tried_once_and_never_downloaded_from(monkeypatch, network):
    port = closed_port()
    hub_at(monkeypatch, port)
    with pytest.raises(MlicError) as refused:
        create_model("baseline", 3, backbone=BACKBONE, pretrained=True)
    message = str(refused.value)
    assert f"127.0.0.1:{port} cannot be reached" in message and "\n" not in message
    assert "--pretrained-file" in message and "HF_HOME" in message and "--recipe quick" in message
    assert network.connections == [("127.0.0.1", port)] and network.downloads == []


def offline_machine(tmp_path, **more: str) -> dict[str, str]:
    """The environment of a machine whose Hugging Face and torch hub caches are empty, with no proxy."""
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
            "TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "", "https_proxy": "", "ALL_PROXY": "",
            "all_proxy": "", **more}


@pytest.mark.parametrize("hub", ["off", "unreachable"])
def test_offline_the_paper_recipe_is_refused_before_pytorch_loads(tmp_path, synth_data, hub):
    port = closed_port()
    env = offline_machine(tmp_path, **({"HF_HUB_OFFLINE": "1"} if hub == "off" else
                                       {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}))
    out = tmp_path / "run"
    exit_line, err = exit_before_torch("train", "--model", "msrn", "--data", f"voc:{synth_data}", "--out", str(out),
                                       env=env)
    assert exit_line == ["exit", "2", "False"], err  # refused, and PyTorch (so timm) never imported
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    why = "HF_HUB_OFFLINE" if hub == "off" else f"127.0.0.1:{port} cannot be reached"
    repository = timm.models.get_pretrained_cfg("resnet101").hf_hub_id  # MSRN's backbone, named from the listing
    for fragment in ("no ImageNet weights for backbone 'resnet101'", why, "--pretrained-file FILE",
                     str(tmp_path / "hf" / "hub"), f"hf download {repository}", "--recipe quick"):
        assert fragment in err.replace("\n", " "), err
    assert not out.exists()


def test_the_early_check_passes_wherever_a_copy_may_be(monkeypatch, tmp_path, network):
    from mlic_edge.models.hub import check_weights_obtainable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_cache = tmp_path / "hf" / "hub"
    (hub_cache / "models--timm--resnet50d.a1_in1k").mkdir(parents=True)  # another architecture's weights
    for name in ("resnet50", "resnet50.a1_in1k"):
        with pytest.raises(MlicError, match=f"backbone '{name}'"):
            check_weights_obtainable(name)
    (hub_cache / "models--timm--resnet50.a1_in1k").mkdir()
    check_weights_obtainable("resnet50")  # any tag: the exact lookup then decides
    check_weights_obtainable("resnet50.a1_in1k")
    with pytest.raises(MlicError):
        check_weights_obtainable("resnet50.tv_in1k")
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet50_a1_0-14fe96d1.pth").write_bytes(b"")
    check_weights_obtainable("resnet50.tv_in1k")  # a torch hub file's name does not say what it holds
    assert network.connections == []


def test_a_hub_that_answers_downloads_through_timm(monkeypatch, network):
    from timm.models import _builder

    source = randomized(timm.create_model(BACKBONE, num_classes=1000).state_dict())
    monkeypatch.setattr(_builder, "load_state_dict_from_hf", lambda location, **_: (
        network.downloads.append(location), dict(source))[1])
    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen()
        hub_at(monkeypatch, hub.getsockname()[1])
        model = create_model("baseline", 3, backbone=BACKBONE, pretrained=True)
    assert network.downloads == [timm.models.get_pretrained_cfg(BACKBONE).hf_hub_id]
    assert len(network.connections) == 1
    assert_backbone_holds(model, source)


def test_weights_in_the_local_hugging_face_cache_load_with_no_network(monkeypatch, tmp_path, network):
    hub_at(monkeypatch, closed_port())
    source = randomized(timm.create_model(BACKBONE, num_classes=1000).state_dict())
    repo = timm.models.get_pretrained_cfg(BACKBONE).hf_hub_id
    cached = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(commit)
    (cached / "snapshots" / commit).mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in source.items()},
              str(cached / "snapshots" / commit / "model.safetensors"))
    model = create_model("baseline", 3, backbone=BACKBONE, pretrained=True)
    assert network.connections == [] and network.downloads == []
    assert_backbone_holds(model, source)


# ---------------------------------------------------------------------------------------------- weights files
def _timm_file(path, source):
    torch.save(source, path)


def _wrapped_timm_file(path, source):  # a training checkpoint of DistributedDataParallel: module. prefixes
    torch.save({"state_dict": {f"module.{key}": value for key, value in source.items()}, "epoch": 90}, path)


def _safetensors_file(path, source):  # the backbone alone, no classifier
    save_file({key: value.contiguous() for key, value in source.items() if not key.startswith("fc.")}, str(path))


@pytest.mark.parametrize("name, write", [("timm.pth", _timm_file), ("wrapped.pth", _wrapped_timm_file),
                                         ("backbone.safetensors", _safetensors_file)])
def test_timm_and_safetensors_files_load_into_the_backbone(tmp_path, name, write):
    source = randomized(timm.create_model("resnet18", num_classes=1000).state_dict())
    write(tmp_path / name, source)
    model = create_model("baseline", 3, backbone="resnet18", pretrained_file=str(tmp_path / name))
    assert_backbone_holds(model, source)


def test_a_torchvision_checkpoint_loads_into_timms_resnet(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    source = randomized(torchvision.models.resnet18().state_dict())
    torch.save(source, tmp_path / "resnet18-torchvision.pth")
    model = create_model("baseline", 3, backbone="resnet18", pretrained_file=str(tmp_path / "resnet18-torchvision.pth"))
    assert_backbone_holds(model, source)  # its fc (1000 ImageNet classes) is dropped: the head is the model's own


def test_a_file_for_another_architecture_is_refused_naming_its_keys(capsys, tmp_path, synth_data):
    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    out = tmp_path / "run"
    result = invoke(capsys, "train", "--model", "baseline", "--data", f"voc:{synth_data}", "--backbone", BACKBONE,
                    "--pretrained-file", weights, "--workers", "0", "--out", out)
    # resnet10t's deep stem (conv1.0, conv1.1, ...) against resnet18's single conv1; its one block per stage
    assert_one_line_error(result, f"{weights} holds weights of another architecture than backbone '{BACKBONE}'",
                          "lacks conv1.0.weight", "has unknown conv1.weight", "more", "--backbone")
    assert not (out / "checkpoint.pt").exists()


def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    weights = tmp_path / "notes.pth"
    weights.write_text("not weights")
    with pytest.raises(MlicError, match=f"could not load ImageNet weights for 'resnet18' from {weights}") as refused:
        create_model("baseline", 3, backbone="resnet18", pretrained_file=str(weights))
    assert "\n" not in str(refused.value)


def test_training_from_a_file_records_that_it_started_pretrained(capsys, tmp_path, synth_data):
    weights = tmp_path / "resnet10t.safetensors"
    save_file(timm.create_model(BACKBONE, num_classes=0).state_dict(), str(weights))
    run = tmp_path / "run"
    result = invoke(capsys, "train", "--model", "baseline", "--data", f"voc:{synth_data}", "--backbone", BACKBONE,
                    "--pretrained-file", weights, "--img-size", "32", "--epochs", "1", "--batch-size", "16",
                    "--workers", "0", "--out", run)
    assert result.code == 0, result.err
    assert "from scratch" not in result.err
    recorded = json.loads((run / "run.json").read_text())["train"]["config"]
    assert recorded["pretrained"] is True and recorded["pretrained_file"] == str(weights)
