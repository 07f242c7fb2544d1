"""Scale-out with torch.distributed: classes are sharded across processes, synthesizer gradients summed.

`torchrun --nproc_per_node=N tools/distill.py --cfg X.yaml` starts N processes; each matches the
classes `rank, rank + N, ...` and the gradients of the synthesizer (and a learnable rotator) are
all-reduced before the one optimizer step, so every process holds the same synthesizer and the result
equals a one-process run up to the order of float additions. Every random draw of the loop is keyed by
(seed, iteration, step, class), never by the process, which is what makes the shards add up to the
same step. Rank 0 alone writes logs, checkpoints and the artifact and runs evaluations.

Without torchrun (no WORLD_SIZE in the environment) every function here is a cheap no-op.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


def init_from_env(device: str = 'cpu') -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); returns (rank, world size)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        backend = 'nccl' if str(device).startswith('cuda') or (device == 'auto' and torch.cuda.is_available()) else 'gloo'
        if backend == 'nccl':
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
        dist.init_process_group(backend=backend)
    return rank(), world_size()


def shutdown(finished: bool) -> None:
    """Leave the process group; after a finished run, only once every process has finished.

    A process that tears down gloo while a peer still works (rank 0 writing the artifact) can abort
    in gloo's teardown, failing a run whose work is done; the barrier lines the teardowns up. After an
    error there is no barrier: a peer may never reach it.
    """
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(items: Iterable[int]) -> list[int]:
    """This process's share: every world_size-th item starting at its rank (balanced within one item)."""
    return list(items)[rank()::world_size()]


def all_reduce_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Sum the gradients of all processes in place (a missing gradient counts as zero)."""
    if world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def sum_scalar(value: float, device: torch.device | str = 'cpu') -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def value_of_main(value: float, device: torch.device | str = 'cpu') -> float:
    """Rank 0's number on every rank, to the bit (float64), e.g. the run's clock: a schedule or a tail average that
    reads it then falls at the same iteration on every rank, which each process's own clock does not guarantee."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def decision_of_main(flag: bool, device: torch.device | str = 'cpu') -> bool:
    """Rank 0's flag on every rank (e.g. 'the budget is spent'): processes never disagree about stopping."""
    return flag if world_size() == 1 else bool(value_of_main(float(flag), device))


def object_of_main(obj):
    """Rank 0's small picklable object (e.g. the run directory's name) on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (after initialisation or resume)."""
    if world_size() == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)
