"""Weights on transparent huge pages (Linux): a GEMV that streams a large matrix once per token reads it faster.

Batch-1 decoding reads each weight once per token, front to back. On the kernel's usual 4 kB pages that walk misses
the TLB every 4 kB; on 2 MB pages 512 times less often. Linux gives such pages to memory marked `MADV_HUGEPAGE`
when transparent huge pages are in `madvise` mode (the default of Debian, Ubuntu, RHEL) or `always`; ordinary tensor
allocations are not marked. `move_to_huge_pages_` copies a tensor into marked, 2 MB-aligned anonymous memory and
swaps `.data` in place, so a weight tied to the embeddings stays tied. Where the system has no such pages (other
OSes, THP off) nothing is moved.

`decode.prepare_decode_` moves the output head's weight: a GEMV that streams a large weight front to back reads it
about twice as fast from 2 MB pages as from 4 kB ones, whose TLB misses stall the stream. It also lays the sparse
layers' input-major weights out in one huge-page arena (`huge_slices`, in module order): the row-gathering kernel
gains less there, a few percent of a step. The measurements are in docs/RESULTS.md (decode speed).
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import torch

__all__ = ["HUGE_PAGE", "huge_page_mode", "huge_pages_available", "huge_empty", "huge_slices", "move_to_huge_pages_",
           "is_huge", "huge_page_bytes"]

HUGE_PAGE = 2 << 20
MIN_ARENA = HUGE_PAGE  # bytes under which `huge_slices` leaves tensors where they are (a whole 2 MB page for less)
_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)


def huge_page_mode() -> str:
    """The system's transparent-huge-page mode ("always", "madvise", "never"), or "unavailable"."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unavailable"
    return next((w[1:-1] for w in text.split() if w.startswith("[")), "unavailable")


def huge_pages_available() -> bool:
    """Whether memory marked MADV_HUGEPAGE can get huge pages here."""
    return _ADVICE is not None and hasattr(mmap, "MAP_PRIVATE") and huge_page_mode() in ("always", "madvise")


def huge_empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor on 2 MB-aligned private anonymous memory marked MADV_HUGEPAGE (each
    2 MB range gets a huge page, if the system grants one, on first write). The tensor keeps the mapping alive."""
    numel = 1
    for s in shape:
        numel *= int(s)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    # private: shared anonymous memory is shmem, whose huge pages follow another switch (usually off)
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20))
    buf.madvise(_ADVICE)
    raw = torch.frombuffer(buf, dtype=torch.uint8)
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start:start + nbytes].view(dtype).view(tuple(shape))


def huge_slices(shapes: list[tuple[int, ...]], dtype: torch.dtype, align: int = 64) -> list[torch.Tensor] | None:
    """Uninitialised contiguous tensors of the given shapes, back to back (each starting on an `align`-byte boundary)
    in one `huge_empty` arena, so no tensor rounds up to a whole 2 MB page of its own; None where the system has no
    huge pages or all of them together are under one huge page."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = [math.prod(int(d) for d in shape) for shape in shapes]
    step = max(1, align // itemsize)
    starts, total = [], 0
    for n in sizes:
        starts.append(total)
        total += -(-n // step) * step
    if not huge_pages_available() or total * itemsize < MIN_ARENA:
        return None
    arena = huge_empty((total,), dtype)
    return [arena[a:a + n].view(tuple(shape)) for a, n, shape in zip(starts, sizes, shapes)]


def is_huge(t: torch.Tensor) -> bool:
    """Whether t starts on a 2 MB boundary (where `huge_empty` puts every tensor)."""
    return t.data_ptr() % HUGE_PAGE == 0


@torch.no_grad()
def move_to_huge_pages_(t: torch.Tensor, min_bytes: int = HUGE_PAGE) -> bool:
    """Copy a contiguous CPU tensor (a Parameter: every module holding it sees the move) onto huge-page memory, in
    place; whether it moved. Left alone: other devices, views that are not contiguous, tensors under min_bytes, ones
    already on a 2 MB boundary, and everything where `huge_pages_available()` is false."""
    if not huge_pages_available() or t.device.type != "cpu" or not t.is_contiguous() or t.nbytes < min_bytes \
            or is_huge(t):
        return False
    moved = huge_empty(t.shape, t.dtype)
    moved.copy_(t.detach())
    t.data = moved
    return True


def huge_page_bytes() -> int:
    """This process's anonymous memory on huge pages (AnonHugePages of /proc/self/smaps_rollup), or -1."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1
