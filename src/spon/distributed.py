"""Data parallelism over `torch.distributed` (launched by torchrun): who am I, and the few collectives we need.

Without a process group every function is the single-process identity, so library code calls them freely.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from spon.errors import SponError

__all__ = ["init_from_env", "world_size", "rank", "is_main", "all_reduce_mean_", "all_gather_variable", "barrier", "require_everywhere", "shutdown"]


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, nccl with CUDA. True if joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def shutdown() -> None:
    """Leave the process group before exit (no barrier: a process leaving on an error must not wait for the others).

    A process that exits with its gloo group still alive can abort ("terminate called without an active exception")
    when its peer has already gone, turning a clean run into a failed torchrun job (4 of 30 launches here).
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average each tensor over the processes, in place (one flat all-reduce)."""
    if not _active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t).to(t.device))
        offset += t.numel()


def all_gather_variable(t: torch.Tensor) -> list[torch.Tensor]:
    """Every process's tensor (1-D, any length per process), in rank order."""
    if not _active():
        return [t]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = t.to(device)
    n = torch.tensor([t.numel()], device=device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=device)
    padded[: t.numel()] = t.reshape(-1)
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return [o[: int(s.item())].cpu() for o, s in zip(out, sizes)]


def require_everywhere(ok: bool, missing: str, partial: str) -> None:
    """Raise `SponError` on every process unless `ok` holds on every process (no process is left in a collective).

    missing: the message when no process has it; partial: when some processes have it and others do not (e.g. a
    file that only process 0 sees without a shared filesystem).
    """
    flags = torch.tensor([float(ok)])
    if _active():
        everyone = all_gather_variable(flags)
        count = sum(float(f[0]) for f in everyone)
    else:
        count = float(ok)
    if count == world_size():
        return
    raise SponError(missing if count == 0 else partial)
