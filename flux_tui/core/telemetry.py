"""GPU and host telemetry: pynvml for each GPU and each process's GPU memory, psutil for the host.

Core wing (no Textual, no torch). Without an NVIDIA driver (a laptop, a CPU box, a container without the
GPU) `Telemetry.sample()` still works: it returns no GPUs and says why in `gpu_error`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# psutil imports where it is used (~20 ms): the dashboard's first frame reads no telemetry.


def _import_pynvml() -> Any:
    """pynvml, imported on first use (the dashboard's first frame does not wait for it); None where the
    nvidia-ml-py wheel is missing (it is a dependency: only broken installs)."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - exercised only on broken installs
        return None
    return pynvml

GiB = 1024**3


@dataclass(frozen=True)
class GpuStat:
    index: int  # NVML index (PCI bus order, which CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA use too)
    name: str
    mem_used: int  # bytes
    mem_total: int
    util: int | None = None  # percent of time a kernel ran, over the driver's last sample period
    temperature: int | None = None  # degrees Celsius
    uuid: str = ""

    @property
    def mem_free(self) -> int:
        return max(0, self.mem_total - self.mem_used)


@dataclass(frozen=True)
class HostStat:
    cpu_percent: float  # all cores together, 0..100
    ram_used: int  # bytes
    ram_total: int
    n_cpus: int


@dataclass(frozen=True)
class Sample:
    """One reading of the machine. `proc_gpu_mem` maps every pid that holds GPU memory to its bytes."""

    at: float
    host: HostStat
    gpus: tuple[GpuStat, ...] = ()
    proc_gpu_mem: dict[int, int] = field(default_factory=dict)
    proc_gpu_index: dict[int, int] = field(default_factory=dict)  # pid -> the GPU it holds most memory on
    gpu_error: str | None = None  # why there are no GPUs (no driver, no device), None when NVML works

    def gpu_mem_of(self, pids: Iterable[int]) -> int:
        """GPU memory held by these processes together (a run's process and its children)."""
        return sum(self.proc_gpu_mem.get(pid, 0) for pid in pids)


def host_stat() -> HostStat:
    import psutil

    vm = psutil.virtual_memory()
    # interval=None: the CPU use since the previous call, without sleeping (the first call reads 0).
    return HostStat(
        cpu_percent=psutil.cpu_percent(interval=None),
        ram_used=vm.total - vm.available,
        ram_total=vm.total,
        n_cpus=psutil.cpu_count() or 1,
    )


def process_tree(pid: int | None) -> list[int]:
    """`pid` and its descendants (a run's data loaders or helpers may hold GPU memory too)."""
    if not pid:
        return []
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


class Telemetry:
    """Reads the machine. NVML is initialised on first use and once only; failure is remembered, not retried
    every second (a box without a driver stays without one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml_ready = False
        self._nvml_tried = False
        self._nv: Any = None  # the pynvml module, once NVML is initialised
        self.gpu_error: str | None = None

    def _init_nvml(self) -> bool:
        if self._nvml_tried:
            return self._nvml_ready
        self._nvml_tried = True
        nv = _import_pynvml()
        if nv is None:
            self.gpu_error = "nvidia-ml-py is not installed"
            return False
        try:
            nv.nvmlInit()
            if nv.nvmlDeviceGetCount() == 0:
                self.gpu_error = "the NVIDIA driver reports no GPU"
                return False
        except nv.NVMLError as exc:
            self.gpu_error = f"NVML: {exc}"
            return False
        self._nv, self._nvml_ready = nv, True
        return True

    def gpus(self) -> list[GpuStat]:
        with self._lock:
            if not self._init_nvml():
                return []
            return [self._gpu(i)[0] for i in range(self._nv.nvmlDeviceGetCount())]

    def _gpu(self, index: int) -> tuple[GpuStat, list]:
        nv = self._nv
        h = nv.nvmlDeviceGetHandleByIndex(index)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        name = nv.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else str(name)
        util = temp = None
        with contextlib.suppress(nv.NVMLError):  # some virtualised GPUs do not report it
            util = int(nv.nvmlDeviceGetUtilizationRates(h).gpu)
        with contextlib.suppress(nv.NVMLError):
            temp = int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
        try:
            uuid = nv.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        except nv.NVMLError:
            uuid = ""
        try:
            procs = list(nv.nvmlDeviceGetComputeRunningProcesses(h))
        except nv.NVMLError:
            procs = []
        stat = GpuStat(index, name, int(mem.used), int(mem.total), util, temp, uuid)
        return stat, procs

    def sample(self) -> Sample:
        host = host_stat()
        with self._lock:
            if not self._init_nvml():
                return Sample(at=time.time(), host=host, gpu_error=self.gpu_error)
            gpus: list[GpuStat] = []
            by_pid: dict[int, int] = {}
            where: dict[int, tuple[int, int]] = {}
            try:
                for i in range(self._nv.nvmlDeviceGetCount()):
                    stat, procs = self._gpu(i)
                    gpus.append(stat)
                    for p in procs:
                        # usedGpuMemory is None where the driver hides it (no permission, some vGPUs)
                        used = int(p.usedGpuMemory or 0)
                        by_pid[p.pid] = by_pid.get(p.pid, 0) + used
                        if used >= where.get(p.pid, (0, -1))[1]:
                            where[p.pid] = (i, used)
            except self._nv.NVMLError as exc:  # a GPU fell off the bus: report it, keep the host figures
                return Sample(at=time.time(), host=host, gpus=tuple(gpus), gpu_error=f"NVML error: {exc}")
            return Sample(
                at=time.time(),
                host=host,
                gpus=tuple(gpus),
                proc_gpu_mem=by_pid,
                proc_gpu_index={pid: i for pid, (i, _) in where.items()},
            )

    def close(self) -> None:
        with self._lock:
            if self._nvml_ready:
                with contextlib.suppress(self._nv.NVMLError):
                    self._nv.nvmlShutdown()
                self._nvml_ready = False
            self._nvml_tried = False
