"""Run by tests/test_distributed.py under torchrun: rank 1 raises while rank 0 waits in a collective. The whole
launch must end non-zero with rank 1's message, not hang."""

import torch

from mlic_edge.errors import MlicError
from mlic_edge.train.distributed import process_group

with process_group(torch.device("cpu")) as dist:
    if dist.rank == 1:
        raise MlicError("the data of this rank could not be read")
    dist.barrier()  # without the failing rank's exit ending the launch, rank 0 would wait here
