"""``HomogeneousBatchSampler``: every optimizer step takes all its queries, on every process, from ONE dataset.

Why: in-batch negatives must be of the kind the positive is (a tool description is no negative for a dialogue);
the paper's ablation shows removing this costs the most (PopQA 0.5052 -> 0.4520).

How, per epoch ``e`` (a full pass over the weighted data):

1. each dataset's indices are shuffled with a generator seeded by ``(seed, e, dataset)`` - the same on every
   rank - repeated / truncated to ``weight x size`` items, and cut into *global* batches of
   ``batch_size x num_replicas`` (the incomplete rest is dropped);
2. the list of all global batches of all datasets is shuffled, so datasets are mixed in proportion to their
   (weighted) size;
3. each global batch is yielded as ``num_replicas`` consecutive per-process batches of ``batch_size``.

Step 3 is what makes it work with a standard distributed data loader: accelerate's ``BatchSamplerShard`` (used by
the Hugging Face / sentence-transformers trainers) deals batch ``i`` to rank ``i % num_replicas``, so the ranks of
one step get the slices of one global batch. Pass ``rank`` to use the sampler without such a wrapper (it then yields
only that rank's slices). Unlike the reference (batch size 1, no workers), these are ordinary index batches of the
real batch size: the DataLoader's workers load and collate them in parallel.

Items are :class:`SampleRef` ``(dataset, index, seed)``: the per-item seed makes group sampling (random negatives)
a pure function of the position in the stream, so it does not depend on which worker loads it and replays exactly
on resume. ``mode="mixed"`` drops homogeneity (the ablation): the pooled items of all datasets are shuffled
together and cut into batches.

The position is ``(epoch, step)`` - :meth:`state_dict` / :meth:`load_state_dict` - and the order within an epoch is a
function of the seed only, so a run resumed from a checkpoint continues the same sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import Sampler

from llm_embedder.errors import UserError


class BatchMixing(StrEnum):
    """How datasets share the steps: ``homogeneous`` (the paper) or ``mixed`` (the ablation)."""

    HOMOGENEOUS = "homogeneous"
    MIXED = "mixed"


class SampleRef(NamedTuple):
    """One item of a batch: dataset number, record index within it, and the seed for its group sampling."""

    dataset: int
    index: int
    seed: int


class HomogeneousBatchSampler(Sampler[list[SampleRef]]):
    """Batches of :class:`SampleRef`, one dataset per optimizer step across all processes.

    Args:
        dataset_sizes: records per dataset, as ``{name: size}`` or a list (names are then ``"0"``, ``"1"``...).
        batch_size: queries per process per step.
        num_replicas: processes (ranks) taking part in a step.
        seed: shared by all ranks; the whole sequence is a function of it.
        weights: per-dataset multiplier of its share (2.0 = every record twice per epoch, 0.5 = half of them);
            default 1.0 each, i.e. proportional to size.
        mode: ``"homogeneous"`` or ``"mixed"`` (:class:`BatchMixing`).
        rank: yield only this rank's batches (for use without a sharding wrapper); default: all, in blocks of
            ``num_replicas``.
    """

    def __init__(
        self,
        dataset_sizes: Mapping[str, int] | Sequence[int],
        batch_size: int,
        *,
        num_replicas: int = 1,
        seed: int = 0,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        mode: str | BatchMixing = BatchMixing.HOMOGENEOUS,
        rank: int | None = None,
    ) -> None:
        if isinstance(dataset_sizes, Mapping):
            self.names = [str(name) for name in dataset_sizes]
            self.sizes = [int(size) for size in dataset_sizes.values()]
        else:
            self.sizes = [int(size) for size in dataset_sizes]
            self.names = [str(i) for i in range(len(self.sizes))]
        if not self.sizes:
            raise UserError("no training data", hint="give at least one dataset")
        if batch_size < 1 or num_replicas < 1:
            raise ValueError(f"batch_size and num_replicas must be >= 1, got {batch_size}, {num_replicas}")
        if rank is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.batch_size = batch_size
        self.drop_last = True  # read by accelerate's BatchSamplerShard
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = int(seed)
        self.mode = BatchMixing(mode)
        self.weights = self._weights(weights)
        self.epoch = 0
        self._resume_step = 0
        self._yielded_steps = 0
        for name, size, weight in zip(self.names, self.sizes, self.weights, strict=True):
            if int(round(size * weight)) < self.global_batch_size and self.mode == BatchMixing.HOMOGENEOUS:
                raise UserError(
                    f"dataset '{name}' has {size} usable record(s) (weight {weight:g}), fewer than one step's batch "
                    f"({self.batch_size} per process x {self.num_replicas} process(es) = {self.global_batch_size})",
                    hint="lower --batch-size, raise its weight, or add data",
                )
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the training data ({sum(self.sizes)} records) is smaller than one step's batch ({self.global_batch_size})",
                hint="lower --batch-size or add data",
            )

    def _weights(self, weights: Mapping[str, float] | Sequence[float] | None) -> list[float]:
        if weights is None:
            return [1.0] * len(self.sizes)
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(self.names)
            if unknown:
                raise UserError(
                    f"weight given for unknown dataset(s) {', '.join(sorted(unknown))}",
                    hint=f"datasets: {', '.join(self.names)}",
                )
            values = [float(weights.get(name, 1.0)) for name in self.names]
        else:
            values = [float(w) for w in weights]
            if len(values) != len(self.sizes):
                raise ValueError(f"{len(values)} weights for {len(self.sizes)} datasets")
        for name, value in zip(self.names, values, strict=True):
            if not value > 0:
                raise UserError(f"dataset '{name}' has weight {value}", hint="weights must be > 0")
        return values

    # ------------------------------------------------------------------ sizes
    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def _items_per_epoch(self, dataset: int) -> int:
        return int(round(self.sizes[dataset] * self.weights[dataset]))

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        if self.mode == BatchMixing.MIXED:
            return sum(self._items_per_epoch(d) for d in range(len(self.sizes))) // self.global_batch_size
        return sum(self._items_per_epoch(d) // self.global_batch_size for d in range(len(self.sizes)))

    def steps_per_dataset(self) -> dict[str, int]:
        """Steps each dataset gets per epoch (homogeneous mode): the mixing proportions."""
        return {name: self._items_per_epoch(d) // self.global_batch_size for d, name in enumerate(self.names)}

    def __len__(self) -> int:
        """Per-process batches in a full epoch (``steps_per_epoch``, times ``num_replicas`` without ``rank``)."""
        return self.steps_per_epoch * (1 if self.rank is not None else self.num_replicas)

    # ------------------------------------------------------------------ order
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *key])

    def _stream(self, dataset: int) -> np.ndarray:
        """This epoch's shuffled, weight-repeated indices of one dataset."""
        size, count = self.sizes[dataset], self._items_per_epoch(dataset)
        rng = self._rng(1, dataset)
        passes = -(-count // size)
        return np.concatenate([rng.permutation(size) for _ in range(passes)])[:count]

    def global_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's steps: ``(datasets, indices)``, two int arrays of shape ``(steps, batch_size x replicas)``."""
        size = self.global_batch_size
        if self.mode == BatchMixing.MIXED:
            datasets = np.concatenate([np.full(self._items_per_epoch(d), d) for d in range(len(self.sizes))])
            indices = np.concatenate([self._stream(d) for d in range(len(self.sizes))])
            order = self._rng(2).permutation(len(indices))
            steps = len(indices) // size
            return (
                datasets[order][: steps * size].reshape(steps, size),
                indices[order][: steps * size].reshape(steps, size),
            )
        dataset_blocks, index_blocks = [], []
        for d in range(len(self.sizes)):
            stream = self._stream(d)
            steps = len(stream) // size
            index_blocks.append(stream[: steps * size].reshape(steps, size))
            dataset_blocks.append(np.full((steps, size), d))
        order = self._rng(3).permutation(sum(len(block) for block in index_blocks))
        return np.concatenate(dataset_blocks)[order], np.concatenate(index_blocks)[order]

    def __iter__(self) -> Iterator[list[SampleRef]]:
        datasets, indices = self.global_batches()
        seeds = self._rng(4).integers(0, 2**63 - 1, size=indices.shape)
        start, self._resume_step = self._resume_step, 0
        self._yielded_steps = start
        for step in range(start, len(indices)):
            refs = [
                SampleRef(int(d), int(i), int(s))
                for d, i, s in zip(datasets[step], indices[step], seeds[step], strict=True)
            ]
            self._yielded_steps = step + 1
            for replica in range(self.num_replicas):
                if self.rank is None or replica == self.rank:
                    yield refs[replica * self.batch_size : (replica + 1) * self.batch_size]

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each epoch; all ranks must pass the same value."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ checkpoints
    def fingerprint(self) -> dict[str, Any]:
        """What the sequence depends on; a resumed run must match it to continue the same sequence."""
        return {
            "names": self.names,
            "sizes": self.sizes,
            "weights": self.weights,
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "seed": self.seed,
            "mode": str(self.mode),
        }

    def state_dict(self, steps_consumed: int | None = None) -> dict[str, Any]:
        """Position ``(epoch, step)`` plus the fingerprint.

        ``steps_consumed``: steps of the current epoch the training loop actually used; a prefetching DataLoader
        draws batches ahead of it, so the trainer passes its own count. Default: the steps yielded so far.
        """
        step = self._yielded_steps if steps_consumed is None else int(steps_consumed)
        return {"epoch": self.epoch, "step": step, **self.fingerprint()}

    def check_fingerprint(self, state: Mapping[str, Any]) -> None:
        """Refuse a saved state made with other data, batch size, processes or seed (another sequence)."""
        mine = self.fingerprint()
        changed = [key for key in mine if key in state and state[key] != mine[key]]
        if changed:
            raise UserError(
                f"the checkpoint's batch sampler was made with different {', '.join(changed)} "
                f"({'; '.join(f'{k}: {state[k]} -> {mine[k]}' for k in changed)})",
                hint="resume with the same data, batch size, processes and seed, or start a new output folder",
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue at ``state``'s position: the next ``__iter__`` starts at its step of its epoch."""
        self.check_fingerprint(state)
        self.epoch = int(state["epoch"])
        self._resume_step = int(state["step"])
        self._yielded_steps = self._resume_step
