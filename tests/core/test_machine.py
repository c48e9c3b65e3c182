"""The machine description every JSON and report carries names the CPU model where the OS says it."""

from pathlib import Path

import pytest

from spon.serving.machine import describe_machine, machine


def test_description_names_the_cpu_model_and_threads():
    m = {"platform": "Linux-x", "cpu_count": 2, "cpu_model": "AMD EPYC", "torch": "2.13.0", "torch_threads": 2, "cuda": None}
    assert describe_machine(m) == "Linux-x, 2 CPUs (AMD EPYC), torch 2.13.0, 2 threads, no GPU"
    assert describe_machine({**m, "cpu_model": None}) == "Linux-x, 2 CPUs, torch 2.13.0, 2 threads, no GPU"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists() or "model name" not in Path("/proc/cpuinfo").read_text(),
                    reason="no model name in /proc/cpuinfo")
def test_machine_reads_the_cpu_model_from_the_os():
    line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
    assert machine()["cpu_model"] == line.split(":", 1)[1].strip()


def test_machine_says_the_transparent_huge_page_mode():
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    want = thp.read_text().split("[", 1)[1].split("]", 1)[0] if thp.exists() else "unavailable"
    assert machine()["transparent_huge_pages"] == want
