"""Data-parallel training under torchrun (DDP); a no-op in a single process.

Under `torchrun --nproc_per_node=N transferlab run ...` every rank runs the same experiment on
its shard of each batch; rank 0 alone claims experiments, writes the store and checkpoints,
and tells the other ranks what to run next.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as td
from torch import nn


def init() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        td.init_process_group(backend)


def world() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    if world() == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel
    if not any(p.requires_grad for p in net.parameters()):
        return net
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def broadcast(obj):
    """Rank 0's value on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world() > 1:
        td.barrier()


def finish() -> None:
    """Leave the process group together: a rank that exits while gloo's threads still talk to
    the others can abort at interpreter shutdown ("terminate called without an active
    exception"), which torchrun reports as a failure."""
    if td.is_initialized():
        td.barrier()
        td.destroy_process_group()
