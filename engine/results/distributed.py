"""Many runs over many processes: `torchrun --nproc_per_node=K run.py --runs N ...`.

Each process (one GPU each, cuda:LOCAL_RANK; or the CPU) trains the runs i with
i % K == its rank, each with seed --seed + i, exactly as a single process would.
At the end every result is gathered through torch.distributed (gloo on the CPU,
NCCL on CUDA) and rank 0 alone prints and writes the one summary. Without
torchrun's variables, or with one process, nothing here touches torch.distributed.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Ranks with fewer runs wait for the others at the gather: allow long runs.
GATHER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def my_runs(self, runs: int) -> range:
        """The global indices of the runs this process trains (round robin)."""
        return range(self.rank, runs, self.size)


def world_from_env(environ=None) -> World:
    """The process's place as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK)."""
    environ = os.environ if environ is None else environ
    try:
        return World(rank=int(environ.get("RANK", 0)), size=int(environ.get("WORLD_SIZE", 1)),
                     local_rank=int(environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start the processes "
                         "with torchrun") from None


def start(world: World, device: torch.device):
    """Join the process group: NCCL when this process trains on CUDA, else gloo."""
    if not world.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=GATHER_TIMEOUT)


def gather(world: World, item):
    """Every process's `item`, in rank order (a one-element list without torchrun)."""
    if not world.distributed:
        return [item]
    items = [None] * world.size
    dist.all_gather_object(items, item)
    return items


def barrier(world: World):
    if world.distributed:
        dist.barrier()


def finish(world: World):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
