"""The process group of a ``torchrun`` launch and what the trainer needs of it: which rank this process is, its device,
barriers, broadcasting a Python object from rank 0, gathering evaluation scores back into dataset order, and the
teardown. Outside torchrun (or with one process) the context is "not distributed" and every helper is a no-op, so the
single-process path is the one it always was.

NCCL on CUDA devices, gloo on CPUs. Every collective times out after ``COLLECTIVE_TIMEOUT`` rather than PyTorch's
default (10 to 30 minutes): a rank that raised exits non-zero, torchrun's agent then stops the others, and the timeout
is the backstop that keeps a rank from waiting on a dead peer forever. An error raised inside training names its rank.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist

from mlic_edge.console import console
from mlic_edge.errors import MlicError

COLLECTIVE_TIMEOUT = timedelta(minutes=5)
RENDEZVOUS_SECONDS = 120.0  # how long a rank waits for MASTER_ADDR:MASTER_PORT to answer (MLIC_EDGE_RENDEZVOUS_SECONDS)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting its environment) started this process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run; ``world_size`` 1 means not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def broadcast_object(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (each other rank's argument is ignored)."""
        if not self.enabled:
            return value
        holder = [value if self.is_main else None]
        torch_dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them at the start of each
        forward, so after the last training batch each rank holds its own: evaluated as they are, the shards would
        be scored by slightly different models than the one rank 0 saves."""
        if self.enabled:
            for buffer in module.buffers():
                torch_dist.broadcast(buffer, src=0)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_scores(self, scores: np.ndarray, kept: np.ndarray, broken: list[int]) -> tuple[np.ndarray, np.ndarray,
                                                                                               list[int]]:
        """Every rank's (scores, kept indices, broken indices) of its shard of a split, merged into dataset order: the
        arrays a single process evaluating the whole split returns."""
        if not self.enabled:
            return scores, kept, broken
        shards: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(shards, (scores, kept, broken))
        all_kept = np.concatenate([shard[1] for shard in shards])
        order = np.argsort(all_kept, kind="stable")
        all_scores = np.concatenate([shard[0] for shard in shards])[order]
        return all_scores, all_kept[order], sorted(index for shard in shards for index in shard[2])

    def shard(self, count: int) -> list[int] | None:
        """This rank's indices of ``count`` items (every ``world_size``-th); ``None`` when not distributed."""
        return list(range(self.rank, count, self.world_size)) if self.enabled else None


def wait_for_rendezvous(rank: int, host: str, port: int, seconds: float) -> None:
    """Refuse, in one line, a rendezvous nothing answers at: PyTorch's store would otherwise retry for the whole
    collective timeout. Under torchrun the agent's store is up before any rank starts, so this returns at once;
    it matters for hand-set or scheduler-set MASTER_ADDR/MASTER_PORT (every rank but 0 connects to rank 0's store,
    which rank 0 itself creates)."""
    if rank == 0:
        return
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(seconds, 0.1))):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise MlicError(f"rank {rank}: nothing answered at the rendezvous {host}:{port} for {seconds:g} s "
                                f"({error.strerror or error})",
                                hint="check --rdzv-endpoint / MASTER_ADDR:MASTER_PORT and that rank 0 started"
                                ) from None
            time.sleep(0.5)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[DistContext]:
    """The run's context: under torchrun with more than one process, joins the process group (on CUDA, each process
    takes the GPU of its LOCAL_RANK) and leaves it at the end, whatever happened; otherwise ``DistContext(device)``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    if world_size == 1:
        yield DistContext(device=device)
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise MlicError(f"rank {rank}: local rank {local_rank} has no GPU (this machine has "
                            f"{torch.cuda.device_count()})", hint="pass --nproc-per-node at most the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    wait_for_rendezvous(rank, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                        float(os.environ.get("MLIC_EDGE_RENDEZVOUS_SECONDS", RENDEZVOUS_SECONDS)))
    try:
        torch_dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    except Exception as error:  # an unreachable rendezvous, a port in use: one line, naming the rank
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MlicError(f"rank {rank}: could not join the process group ({backend}): {message}",
                        hint="check --rdzv-endpoint / MASTER_ADDR:MASTER_PORT and that every node started") from error
    context = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    console.quiet = not context.is_main  # progress and notes once, from rank 0 (errors still print: mlic_edge.cli)
    try:
        yield context
    except MlicError as error:
        error.message = f"rank {rank}: {error.message}"
        raise
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise RuntimeError(f"rank {rank}: {type(error).__name__}: {message}") from error
    finally:
        console.quiet = False
        torch_dist.destroy_process_group()
