"""Data-parallel training under ``torchrun``: process group, sharded loaders, one rank decides.

``torchrun --nproc_per_node=N -m prunekit run RECIPE`` starts N processes with ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` set; :func:`init_from_env` joins them (nccl on GPUs, gloo on CPU). What stays the same as one
process:

- ``train.batch_size`` is the *global* batch: every rank draws the same shuffled global batch from the same seeded
  order and trains on its slice (``batch[rank::world]``); the loss is scaled so DDP's gradient average equals the
  single-process mean over the global batch exactly, even for a last batch that does not split evenly.
- evaluation is sharded and the sums are all-reduced: the same top-1 as one process.
- pruning: rank 0 scores the (synchronised) weights and decides the plan; it is broadcast, every rank applies it,
  and the model is wrapped in DDP again for the next cycle.
- only rank 0 writes the run directory and prints progress.
"""
from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, RandomSampler, Sampler

from ..registry import PrunekitError

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "broadcast_object",
           "all_gather_object", "all_reduce_sum", "GlobalBatchSampler", "ShardSampler", "digest_tensors",
           "launched_by_torchrun", "barrier", "shutdown"]


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str, timeout_s: float = 1800.0) -> torch.device | None:
    """Join the process group torchrun describes; returns this rank's device (None when not under torchrun)."""
    if not launched_by_torchrun():
        return None
    if dist.is_initialized():
        return _local_device(device_type)
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PrunekitError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: launch with "
                            "`torchrun --nproc_per_node=N -m prunekit run RECIPE`")
    device = _local_device(device_type)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return device


def _local_device(device_type: str) -> torch.device:
    if device_type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device_type)


def shutdown() -> None:
    """Leave the process group (after a run; ``rank()`` keeps answering from the environment)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op in one process); gloo needs CPU tensors, nccl CUDA ones: both are fine here
    because every tensor passed lives on this rank's training device."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's slice of each global batch; the global batches are those one process would draw.

    Args:
        n: dataset length.
        batch_size: the global batch.
        generator: the seeded generator a single-process DataLoader would shuffle with (its state advances the
            same way, so a resumed run continues the same order).
        shuffle: as ``DataLoader(shuffle=...)``.

    A last global batch with fewer samples than ranks is dropped (some rank would have none); any other last batch
    is split unevenly and the trainer's loss scaling keeps the gradient exact.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True,
                 drop_last: bool = False):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.shuffle, self.drop_last = shuffle, drop_last

    def __iter__(self) -> Iterator[list[int]]:
        # Exactly the batches of DataLoader(shuffle=..., generator=g): torch's own samplers draw them.
        order = RandomSampler(range(self.n), generator=self.generator) if self.shuffle else range(self.n)
        r, w = rank(), world_size()
        for batch in BatchSampler(order, self.batch_size, self.drop_last):
            if len(batch) < w:
                continue  # only a last batch can be this small; consume the sampler to its end as torch does
            yield batch[r::w]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (0 if self.drop_last or rest < world_size() else 1)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` (no padding: all-reduced sums count every sample exactly once)."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(rank(), self.n, world_size()))

    def __len__(self) -> int:
        return len(range(rank(), self.n, world_size()))


def digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of names, shapes and bytes: equal on two ranks iff their weights are bit-identical."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
