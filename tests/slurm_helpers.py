"""The real one-node Slurm cluster that Slurm tests run against, started outside pytest (as root) by
`scripts/local-slurm.sh start`. Tests take the `slurm_cluster` fixture (tests/conftest.py): it skips with a
reason naming the script when Slurm is not installed or the cluster is not up. With FLUX_TUI_REQUIRE_SLURM=1
(set by .ci/run once the cluster is up) a missing cluster fails the tests instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

SCRIPT = "scripts/local-slurm.sh"
PARTITIONS = ("debug", "down", "closed")  # what the script defines

T = TypeVar("T")


@dataclass
class Cluster:
    """The script's cluster. Jobs recorded with `track` are cancelled when the test ends."""

    node: str
    partition: str = "debug"  # the default: the node, State=UP
    down_partition: str = "down"  # State=DOWN: takes jobs, keeps them PENDING (reason PartitionDown)
    closed_partition: str = "closed"  # State=INACTIVE: sbatch refuses jobs
    jobs: list[str] = field(default_factory=list)

    def track(self, job_id: str) -> str:
        self.jobs.append(job_id)
        return job_id

    def cancel_tracked(self) -> None:
        if self.jobs:
            subprocess.run(["scancel", *self.jobs], capture_output=True, timeout=30)


def find_cluster() -> tuple[Cluster | None, str]:
    """The local cluster, or None and why not."""
    start = f"start it with `{SCRIPT} start` (as root; see DEVELOPERS.md)"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None, f"Slurm is not installed (no sinfo or sbatch): apt-get install slurm-wlm munge; {start}"
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N|%P|%T"],
                              capture_output=True, text=True, timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"sinfo did not answer in 20 s: no Slurm controller is up; {start}"
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no answer"])[0]
        return None, f"no Slurm cluster is up ({first}); {start}"
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.count("|") == 2]
    # A node state with a suffix ("idle*": not responding, "idle~": powered off, ...) is not ready.
    ready = {(n, p.rstrip("*")) for n, p, s in rows if s in ("idle", "mixed", "allocated")}
    nodes = {n for n, p in ready if p == "debug"}
    if not nodes or not all((n, p) in ready for n in nodes for p in PARTITIONS):
        return None, f"the Slurm cluster here is not {SCRIPT}'s or its node is not ready ({rows}); {start}"
    return Cluster(node=sorted(nodes)[0]), ""


def cluster_or_skip() -> Cluster:
    cluster, why = find_cluster()
    if cluster is None:
        if os.environ.get("FLUX_TUI_REQUIRE_SLURM") == "1":
            pytest.fail(f"FLUX_TUI_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    return cluster


def wait_for(pred: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """Poll `pred` until it returns something true (and return that); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
