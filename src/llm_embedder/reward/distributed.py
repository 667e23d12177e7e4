"""Several processes / GPUs scoring one file: ``torchrun --nproc_per_node N -m llm_embedder.cli.main score ...``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; each rank scores its share of the file's chunks
(chunk ``c`` belongs to rank ``c % WORLD_SIZE``) into its own resumable partial file, and rank 0 merges them in
input order. The process group only provides barriers, so it uses gloo (CPU) even when the LM runs on GPUs: no
tensor ever crosses ranks, and gloo accepts the long timeout a multi-hour scoring job needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

#: a barrier waits this long for the slowest rank (scoring shards can differ by hours)
BARRIER_TIMEOUT = timedelta(days=3)


@dataclass
class DistributedContext:
    """This process's place among the scoring processes (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistributedContext:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=world,
            local_rank=int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def init(self) -> None:
        """Join the process group (no-op for a single process)."""
        import torch.distributed as dist

        if self.active and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def device(self, requested: str | None) -> str:
        """The device of this rank: ``cuda:<local rank>`` when GPUs are used, else what was asked (or cpu)."""
        if requested is None:
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if self.active and requested == "cuda":
            return f"cuda:{self.local_rank % max(1, torch.cuda.device_count())}"
        return requested
