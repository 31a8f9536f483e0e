"""Telemetry on this machine, which has no NVIDIA driver: host figures are real, the GPU part says why it
is empty, and nothing raises. (The NVML branch runs only on a GPU server; see the README.)"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from flux_tui.core.telemetry import GpuStat, Sample, Telemetry, host_stat, process_tree


def test_without_nvidia_the_sample_has_host_figures_and_says_why_there_is_no_gpu() -> None:
    t = Telemetry()
    sample = t.sample()
    assert sample.gpus == ()
    assert sample.gpu_error and sample.gpu_error.startswith("NVML: ")
    assert sample.host.ram_total == psutil.virtual_memory().total
    assert 0 < sample.host.ram_used <= sample.host.ram_total
    assert sample.host.n_cpus == psutil.cpu_count()
    assert t.gpus() == []
    t.close()


def test_cpu_use_is_measured_between_two_samples() -> None:
    t = Telemetry()
    t.sample()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # keep one core busy
        pass
    busy = t.sample().host.cpu_percent
    assert 0 < busy <= 100


def test_nvml_is_tried_once_not_every_second() -> None:
    t = Telemetry()
    t.sample()
    first = t.gpu_error
    started = time.perf_counter()
    for _ in range(50):
        t.sample()
    assert t.gpu_error == first
    assert time.perf_counter() - started < 2  # 50 samples, no retries of the driver


def test_a_runs_gpu_memory_counts_its_children() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
         "'import time; time.sleep(30)']); time.sleep(30)"]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while len(tree := process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree[0] == parent.pid and len(tree) == 2
        sample = Sample(at=0, host=host_stat(), proc_gpu_mem={tree[0]: 3, tree[1]: 4, 999999: 100})
        assert sample.gpu_mem_of(tree) == 7
    finally:
        for pid in reversed(process_tree(parent.pid)):
            psutil.Process(pid).kill()
        parent.wait()
    assert process_tree(parent.pid) == []
    assert process_tree(None) == []


def test_free_memory_is_total_minus_used() -> None:
    assert GpuStat(0, "x", mem_used=30, mem_total=80).mem_free == 50
