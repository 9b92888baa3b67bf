"""Many runs over many processes: `torchrun --nproc_per_node=K run.py --runs N ...`.

Each process (one GPU each, cuda:LOCAL_RANK; or the CPU) trains the runs i with
i % K == its rank, each with seed --seed + i, exactly as a single process would (on
the CPU: a single process with OMP_NUM_THREADS=1, which torchrun sets in each process;
CPU results depend on the thread count).
At the end every result is gathered through torch.distributed (gloo on the CPU,
NCCL on CUDA) and rank 0 alone prints and writes the one summary. Without
torchrun's variables, or with one process, nothing here touches torch.distributed.

Waiting on the other processes is bounded, and a wait that runs out names the ranks
that did not come: `start` waits `join_seconds` for every process to join (a process
started by hand, or a node that never came up), `gather` waits `gather_seconds` for
every process to finish its runs (set it above the longest run: the ranks finish up
to one run apart). Both raise PeersMissing.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine.options import GATHER_SECONDS, JOIN_SECONDS   # --join-timeout's and --gather-timeout's defaults

KEY = "cifar-speedrun"


class PeersMissing(RuntimeError):
    """Some processes did not join, or did not finish, in time; the message names them."""


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
    """The process's place as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK);
    ValueError naming the variable when they are not integers, not all there, or out of range."""
    environ = os.environ if environ is None else environ
    given = [name for name in ("RANK", "WORLD_SIZE") if environ.get(name) is not None]
    if len(given) == 1:
        missing = "WORLD_SIZE" if given == ["RANK"] else "RANK"
        raise ValueError(f"{given[0]} is set but {missing} is not; start the processes with torchrun, "
                         f"or unset {given[0]} to run one process")
    try:
        world = World(rank=int(environ.get("RANK", 0)), size=int(environ.get("WORLD_SIZE", 1)),
                      local_rank=int(environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start the processes "
                         "with torchrun") from None
    if world.size < 1:
        raise ValueError(f"WORLD_SIZE={world.size}: the number of processes must be at least 1; start the "
                         f"processes with torchrun")
    if not 0 <= world.rank < world.size:
        raise ValueError(f"RANK={world.rank} with WORLD_SIZE={world.size}: a rank is 0 .. WORLD_SIZE - 1; "
                         f"start the processes with torchrun")
    if world.local_rank < 0:
        raise ValueError(f"LOCAL_RANK={world.local_rank}: must be >= 0; start the processes with torchrun")
    return world


@dataclass(frozen=True)
class Peers:
    """What `gather` waits on: the group's store, and for how long."""
    store: object
    gather_seconds: float


def start(world: World, device: torch.device, join_seconds: float = JOIN_SECONDS,
          gather_seconds: float = GATHER_SECONDS, environ=None) -> Peers | None:
    """Join the process group (NCCL when this process trains on CUDA, else gloo) through
    torchrun's MASTER_ADDR and MASTER_PORT, waiting at most `join_seconds` for every
    process: PeersMissing names the ranks that did not join. Collective operations then
    time out after `gather_seconds`. Returns the Peers to pass to `gather` (None with one
    process)."""
    if not world.distributed or dist.is_initialized():
        return None
    environ = os.environ if environ is None else environ
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise PeersMissing(f"WORLD_SIZE={world.size} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                           f"not set; start the processes with torchrun")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        store = dist.TCPStore(environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), world.size, world.main,
                              timeout=datetime.timedelta(seconds=join_seconds), wait_for_workers=False)
    except (RuntimeError, ValueError) as error:
        raise PeersMissing(f"rank {world.rank} could not reach rank 0 at {environ['MASTER_ADDR']}:"
                           f"{environ['MASTER_PORT']} within {join_seconds:g} s ({first_line(error)}); check that "
                           f"every process was started, or raise --join-timeout") from None
    wait_for_all(store, world, "joined", join_seconds, "join", "--join-timeout")
    store.set_timeout(datetime.timedelta(seconds=gather_seconds))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=world.rank,
                            world_size=world.size, timeout=datetime.timedelta(seconds=gather_seconds))
    return Peers(store, gather_seconds)


def wait_for_all(store, world: World, step: str, seconds: float, what: str, option: str):
    """Mark this rank as past `step` in the store and wait for every rank; PeersMissing
    naming the ranks that did not get there within `seconds`."""
    store.set(f"{KEY}/{step}/{world.rank}", "1")
    keys = [f"{KEY}/{step}/{rank}" for rank in range(world.size)]
    try:
        store.wait(keys, datetime.timedelta(seconds=seconds))
    except (RuntimeError, dist.DistError) as error:
        try:
            absent = [rank for rank, key in enumerate(keys) if not store.check([key])]
        except (RuntimeError, dist.DistError):
            absent = []               # rank 0's store itself is gone: it died
        who = (f"rank(s) {', '.join(map(str, absent))} of {world.size}" if absent
               else f"the store on rank 0 ({first_line(error)})")
        raise PeersMissing(f"rank {world.rank}: {who} did not {what} within {seconds:g} s; check that every "
                           f"process was started and is alive, or raise {option}") from None


def first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def gather(world: World, item, peers: Peers | None = None, step: str = "gathered"):
    """Every process's `item`, in rank order (a one-element list without torchrun). With
    `peers` (from start), waits for every process first: PeersMissing names those that did
    not come in time; `step` names this gather among several."""
    if not world.distributed:
        return [item]
    if peers is not None:
        wait_for_all(peers.store, world, step, peers.gather_seconds, "finish its runs", "--gather-timeout")
    items = [None] * world.size
    dist.all_gather_object(items, item)
    return items


def barrier(world: World):
    if world.distributed:
        dist.barrier()


def finish(world: World):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
