"""Distributed training under torchrun (2 gloo processes on CPU): one run, its checkpoint's single-process mAP,
a resume with one process, a failing rank, bad input, and the class-aware sampler's shares across ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TRAIN = ["-m", "mlic_edge", "train", "--model", "baseline", "--recipe", "quick", "--backbone", "resnet10t",
         "--img-size", "32", "--batch-size", "16", "--workers", "0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, processes: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, synth_data) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = torchrun(*TRAIN, "--data", f"voc:{synth_data}", "--epochs", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_two_process_run_writes_once_and_its_map_is_the_single_process_one(ddp_run):
    from mlic_edge.commands.evaluate import EvalRequest, evaluate
    from mlic_edge.rundir import RunDir

    assert (ddp_run / "checkpoint.pt").is_file() and (ddp_run / "last.pt").is_file()
    assert not list(ddp_run.rglob(".*")), "temporary files left behind"
    train = json.loads((ddp_run / "run.json").read_text())["train"]
    assert train["world_size"] == 2 and train["epochs_done"] == 2
    assert [row["epoch"] for row in train["history"]] == [1, 2]  # one writer: no repeated epochs
    single = evaluate(RunDir(ddp_run), EvalRequest(device="cpu", batch_size=16))
    # the eval split's mAP, gathered from the ranks once training ended (the best epoch is chosen on the validation
    # split), equals one process's evaluation of checkpoint.pt
    assert train["selected_on"] == "validation"
    assert single["mAP"] == pytest.approx(train["eval_mAP"], abs=1e-9)


def test_resume_with_one_process(ddp_run, tmp_path, synth_data):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ddp_run, run)
    result = torchrun(*TRAIN, "--data", f"voc:{synth_data}", "--epochs", "3", "--out", str(run), "--resume",
                      processes=1)
    assert result.returncode == 0, result.stdout + result.stderr
    train = json.loads((run / "run.json").read_text())["train"]
    assert [row["epoch"] for row in train["history"]] == [1, 2, 3]
    assert "world_size" not in train  # the last epoch ran in one process


def test_a_failing_rank_ends_the_launch_with_its_message():
    result = torchrun(str(Path(__file__).with_name("distributed_fail.py")), timeout=120)
    assert result.returncode != 0
    assert "rank 1: the data of this rank could not be read" in result.stdout + result.stderr


def test_sync_bn_on_cpus_is_refused_by_every_rank(tmp_path, synth_data):
    out = tmp_path / "run"
    result = torchrun(*TRAIN, "--data", f"voc:{synth_data}", "--epochs", "1", "--out", str(out), "--sync-bn",
                      "--device", "cpu")
    assert result.returncode != 0
    # each rank refuses; torchrun may stop the second before it prints, once the first has exited
    assert (result.stdout + result.stderr).count("--sync-bn needs CUDA devices") >= 1
    assert not out.exists()


def test_an_unreachable_rendezvous_is_one_line_and_writes_nothing(tmp_path, synth_data):
    """A rank whose MASTER_ADDR:MASTER_PORT never answers (a hand-set launch, a dead head node) stops in one line
    instead of retrying for the collective timeout."""
    out = tmp_path / "run"
    environment = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(free_port()), "MLIC_EDGE_RENDEZVOUS_SECONDS": "1"}
    result = subprocess.run([sys.executable, *TRAIN, "--data", f"voc:{synth_data}", "--epochs", "1", "--out",
                             str(out), "--device", "cpu"], capture_output=True, text=True, timeout=120,
                            env=environment)
    assert result.returncode == 2  # a refusal (MlicError), not a crash
    assert "rank 1: nothing answered at the rendezvous 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_more_processes_than_gpus_is_refused_by_the_rank_without_one(monkeypatch):
    import torch

    from mlic_edge.errors import MlicError
    from mlic_edge.train.distributed import process_group

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MlicError, match="rank 3: local rank 3 has no GPU \\(this machine has 2\\)") as refused:
        with process_group(torch.device("cuda")):
            pass
    assert "--nproc-per-node at most the GPU count" in refused.value.hint


@pytest.mark.parametrize(("changes", "message"), [
    ({"accumulate": 0}, "--accumulate must be at least 1"),
    ({"amp": "fp8"}, "--amp must be one of bf16, fp16, off"),
    ({"sync_bn": True, "device": "cpu"}, "--sync-bn needs CUDA devices"),
    ({"amp": "bf16", "device": "cpu"}, "--amp bf16 needs a CUDA device"),
])
def test_bad_distributed_options_are_refused_before_torch(tmp_path, changes, message):
    from mlic_edge.errors import MlicError
    from mlic_edge.train.config import TrainConfig

    config = TrainConfig(model="baseline", data="voc:x", out=tmp_path / "run", **changes)
    with pytest.raises(MlicError, match=message.replace("+", r"\+")):
        config.validate()


def test_class_aware_sampler_shares_cover_every_class_across_ranks():
    from mlic_edge.train.samplers import ClassAwareSampler

    rng = np.random.default_rng(0)
    targets = (rng.random((200, 5)) < [0.6, 0.3, 0.1, 0.02, 0.0]).astype(np.int8)  # long-tailed
    targets[:2, 4] = 1  # the tail class: two images of 200
    single = ClassAwareSampler(targets, seed=3)
    shares = [ClassAwareSampler(targets, seed=3, num_replicas=3, rank=rank) for rank in range(3)]
    drawn = [list(share) for share in shares]
    assert all(len(share) == len(indices) for share, indices in zip(shares, drawn))
    assert len({len(indices) for indices in drawn}) == 1  # equal shares: no rank waits for another's batch
    interleaved = [index for row in zip(*drawn) for index in row]
    assert interleaved[:len(single)] == list(single)  # the ranks split the one sequence a single process draws
    covered = targets[interleaved] == 1
    assert covered.any(axis=0).all()
