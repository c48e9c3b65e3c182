"""What the numbers were measured on: one description of the machine, recorded in every JSON and report."""

from __future__ import annotations

import os
import platform

import torch

from spon.serving.huge_pages import huge_page_mode

__all__ = ["machine", "describe_machine"]


def cpu_model() -> str | None:
    """The CPU's model name where the OS says it (Linux: /proc/cpuinfo), e.g. "AMD EPYC"; hosts of one kind differ."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def machine() -> dict:
    """Platform, CPU model and count, torch threads and version, GPU name (None on a CPU-only machine), THP mode."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "transparent_huge_pages": huge_page_mode(),  # where the decode head's weight can go (spon.serving.huge_pages)
    }


def describe_machine(m: dict | None) -> str:
    """One line for reports: 'Linux-..., 2 CPUs (AMD EPYC), torch 2.13.0, 2 threads, no GPU'."""
    if not m:
        return "machine not recorded"
    threads = f", {m['torch_threads']} threads" if m.get("torch_threads") else ""
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU"
    model = f" ({m['cpu_model']})" if m.get("cpu_model") else ""
    return f"{m.get('platform', '?')}, {m.get('cpu_count', '?')} CPUs{model}, torch {m.get('torch', '?')}{threads}{gpu}"
