"""Slurm's low-level layer: a run's batch script, `sbatch`, `squeue`/`sacct`, `scancel`. No policy here
(which run to submit, when to resubmit): that is the executor's. Refusals raise SlurmError in Slurm's words.

What Slurm 22.05 does, measured on the one-node cluster of scripts/local-slurm.sh (tests/test_slurm.py):
- `--signal=B:TERM@N` signals the batch shell only, so the script's shell traps TERM and passes it to the
  trainer, its child (it does not `exec` the trainer: after it, the shell runs the queue step,
  `core/slurm_tick.py`). The controller checks time limits about every 30 s and sends the signal at the
  first check less than N + ~60 s before the limit, so it comes N to N + 60 s early (with `--time=1`, at
  once). The trainer checkpoints and exits 143: the job ends FAILED, exit code 143. Had it not ended by the
  limit: TIMEOUT.
- `scancel --signal=TERM --batch` (what `cancel` sends) reaches the trainer the same way and ends the same
  way (FAILED, 143); plain `scancel` (`cancel(kill=True)`, or an admin's scancel) sends TERM to every
  process and KILL after the cluster's KillWait: the job ends CANCELLED (while the batch shell still runs,
  `squeue` already says COMPLETING for it). `scancel --signal=KILL` is the same as plain scancel. So Slurm
  cannot tell a time-limit stop from a user's: whoever stops a run must remember that it did.
- A time limit never requeues a job (TIMEOUT is final); `--requeue` only covers node failure and
  preemption. `scontrol requeue JOB` works from inside the job, but the job then waits AuthInfo's
  cred_expire (120 s by default) before it may start again; a new `sbatch` starts at once.
- `squeue -t all` shows a finished job for MinJobAge seconds (300 by default). After that only `sacct`
  knows it: through slurmdbd, or without one through the job completion log (`JobCompType=jobcomp/filetxt`)
  that `sacct --completion` reads (the fallback here; it has no reason, and gives cancelled jobs 0:0).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flux_tui.core.config import SlurmSettings
from flux_tui.core.fsutil import atomic_write_text
from flux_tui.core.runs import RunDir

DEFAULT_GRACE_S = 120  # how long before the time limit the trainer is told to checkpoint (Slurm adds <= 60 s)
COMMAND_TIMEOUT_S = 60.0  # a Slurm command that hangs this long means the controller is not answering

PENDING_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)
RUNNING_STATES = frozenset(
    {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "RESIZING", "STAGE_OUT"}
)


class SlurmError(Exception):
    """A Slurm command refused or failed. The message is Slurm's, in plain words, for the user."""


class SlurmMissing(SlurmError):
    """A Slurm command is not installed here."""


class SlurmRefused(SlurmError):
    """Slurm answered and refused the job (an unknown partition or account, a limit it cannot meet)."""


def available() -> bool:
    return shutil.which("sbatch") is not None


# -- the batch script ----------------------------------------------------------------------------


def grace_seconds(slurm: SlurmSettings) -> int:
    """Seconds before the time limit at which the trainer gets TERM: 120, at most a quarter of the limit
    (Slurm may send it up to a minute earlier still, and a short job should get some work done first)."""
    limit = slurm.time_limit_s
    return DEFAULT_GRACE_S if limit is None else max(1, min(DEFAULT_GRACE_S, limit // 4))


def _directive_value(value: str, what: str) -> str:
    """A value for an `#SBATCH` line: sbatch splits those lines on blanks but honours double quotes."""
    if '"' in value or "\n" in value:
        raise SlurmError(f"cannot put {what} {value!r} in a batch script: it holds a double quote or newline")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def sbatch_options(run: RunDir, slurm: SlurmSettings, grace_s: int | None = None) -> list[str]:
    """The options of a run's job, each `--name[=value]`, in the order the script lists them."""
    path = str(run.path)
    # In --output Slurm expands %j and friends; %% is a literal %.
    log = _directive_value(str(run.train_log).replace("%", "%%"), "the log path")
    opts = [
        f"--job-name=flux-tui/{run.name}",
        f"--output={log}",
        "--open-mode=append",
        f"--chdir={_directive_value(path, 'the run folder')}",
        f"--signal=B:TERM@{grace_s if grace_s is not None else grace_seconds(slurm)}",
        "--requeue",
    ]
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time"),
                      ("gres", "gres"), ("cpus_per_task", "cpus-per-task"), ("mem", "mem"),
                      ("constraint", "constraint")):  # fmt: skip
        value = getattr(slurm, key)
        if value not in (None, ""):
            opts.append(f"--{flag}={_directive_value(str(value), key)}")
    for arg in slurm.sbatch_args:
        name, eq, value = arg.partition("=")
        opts.append(f"{name}={_directive_value(value, 'an sbatch argument')}" if eq else arg)
    return opts


def batch_script(
    run: RunDir, slurm: SlurmSettings, *, python: str | None = None, grace_s: int | None = None
) -> str:
    """The text of the run's batch script. The trainer runs with `python` (default: this interpreter, which
    must exist on the nodes; launch's FLUX_TUI_TRAINER test switch applies as for local runs)."""
    from flux_tui.core.launch import engine_command

    cmd = [python, "-u", "-m", "flux_tui.engine.train", str(run.path)] if python else engine_command(run)
    trainer = shlex.join(cmd)
    tick = shlex.join([sys.executable, "-u", "-m", "flux_tui.core.slurm_tick", str(run.path)])
    lines = [
        "#!/bin/bash",
        f"# flux-tui run {run.name!r} as one Slurm batch job, written by flux-tui.",
        f"# To resubmit it by hand: sbatch {shlex.quote(str(run.slurm_script))}",
        *(f"#SBATCH {opt}" for opt in sbatch_options(run, slurm, grace_s)),
        "",
        "# The queue step, however the script ends (after the trainer, or after a failing setup line). No",
        "# torch: it records how the trainer ended if it could not, resubmits the run if its time limit",
        "# stopped it, and submits the sweep's next queued runs (the queue advances with nobody logged in).",
        "queue_step() {",
        "    trap - EXIT",
        f'    {tick} --pid "${{trainer:-0}}" --exit-code "$1" || true',
        '    exit "$1"',
        "}",
        "trap 'queue_step $?' EXIT",
        "set -e  # a failing setup line stops the job before the trainer starts",
        'echo; echo "=== slurm job $SLURM_JOB_ID on $(hostname)'
        '${SLURM_RESTART_COUNT:+ (restart $SLURM_RESTART_COUNT)}: $(date \'+%Y-%m-%d %H:%M:%S\')"',
    ]
    if slurm.setup_lines:
        lines += ["# [slurm] setup", *slurm.setup_lines, "# end of setup"]
    lines += [
        "set +e",
        "# The trainer is this shell's child. The TERM that Slurm sends before the time limit",
        "# (--signal=B:TERM) and flux-tui's stop (scancel --signal=TERM --batch) reach only this shell,",
        "# which passes them on: the trainer saves a checkpoint and ends `cancelled`.",
        f"{trainer} &",
        "trainer=$!",
        "trap 'kill -TERM \"$trainer\" 2>/dev/null' TERM",
        "trap 'kill -INT \"$trainer\" 2>/dev/null' INT",
        'wait "$trainer"; code=$?',
        'while [ "$code" -gt 128 ] && kill -0 "$trainer" 2>/dev/null; do wait "$trainer"; code=$?; done',
        'exit "$code"',
        "",
    ]
    return "\n".join(lines)


def write_batch_script(
    run: RunDir, slurm: SlurmSettings, *, python: str | None = None, grace_s: int | None = None
) -> Path:
    """Write `runs/<name>/slurm.sbatch` (atomically) and return its path."""
    atomic_write_text(run.slurm_script, batch_script(run, slurm, python=python, grace_s=grace_s))
    return run.slurm_script


# -- commands -------------------------------------------------------------------------------------


def _run(
    cmd: list[str], timeout: float = COMMAND_TIMEOUT_S, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0], path=(env or os.environ).get("PATH")) is None:
        raise SlurmMissing(
            f"{cmd[0]} is not on PATH: Slurm's commands are needed here (run flux-tui on a login node of the "
            "cluster, or load Slurm first, e.g. `module load slurm`)"
        )
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=None if env is None else dict(env))  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]} did not answer in {timeout:.0f} s: is the Slurm controller up?") from None


def _slurm_words(stderr: str, command: str) -> str:
    """Slurm's complaint without its prefixes: 'sbatch: error: Batch job submission failed: X' -> 'X'."""
    words = []
    for line in stderr.splitlines():
        line = line.strip()
        for prefix in (f"{command}: error: ", "error: ", "Batch job submission failed: "):
            line = line.removeprefix(prefix)
        if line and line not in words:
            words.append(line)
    return "; ".join(words) or f"{command} failed without saying why"


def submit(script: Path, *, options: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """`sbatch --parsable [OPTIONS] SCRIPT`; returns the job id. Raises SlurmError('Slurm refused the job:
    ...'), or SlurmError('sbatch failed: ...') when the controller does not answer. `env`: sbatch's
    environment (which the job inherits), default ours."""
    proc = _run(["sbatch", "--parsable", *options, str(script)], env=env)
    first = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
    job_id = first.split(";")[0].strip()  # "<id>" or "<id>;<cluster>"
    if proc.returncode != 0 or not job_id.isdigit():
        words = _slurm_words(proc.stderr, "sbatch")
        if _unreachable(words):
            raise SlurmError(f"sbatch failed: {words}")
        raise SlurmRefused(f"Slurm refused the job: {words}")
    return job_id


def _unreachable(words: str) -> bool:
    """Slurm's controller (or its database) did not answer: nothing is known about the jobs."""
    return any(w in words for w in ("Unable to contact slurm controller", "Problem talking to the database",
                                    "Socket timed out", "Connection refused"))  # fmt: skip


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says of one job. `state` is None when Slurm does not (or no longer) know it."""

    job_id: str
    state: str | None = None  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, ...
    reason: str | None = None  # why it waits or ended: Resources, Priority, QOSMaxJobsPerUserLimit, ...
    node: str | None = None
    exit_code: int | None = None  # the batch script's exit status, once it ended
    signal: int | None = None  # the signal that ended it, if one did
    source: str = ""  # squeue, sacct, or sacct --completion

    @property
    def known(self) -> bool:
        return self.state is not None

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def ended(self) -> bool:
        """Slurm knows the job and it is over (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, ...)."""
        return self.known and not self.pending and not self.running

    def describe(self) -> str:
        """One line for a person: 'PENDING (Resources)', 'RUNNING on node7', 'FAILED (exit 1) on node7'."""
        if not self.known:
            return f"job {self.job_id} unknown to Slurm"
        text = self.state or ""
        if self.pending and self.reason:
            text += f" ({self.reason})"
        elif self.ended and self.signal:
            text += f" (signal {self.signal})"
        elif self.ended and self.exit_code:
            text += f" (exit {self.exit_code})"
        return text + (f" on {self.node}" if self.node and not self.pending else "")


def _none(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "None", "(null)", "None assigned", "n/a") else value


def _squeue(job_ids: list[str]) -> dict[str, JobInfo]:
    fields = "JobID:|,State:|,Reason:|,NodeList:|,exit_code:|"
    proc = _run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}", f"--Format={fields}"])
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:  # all of them unknown: not an error
        raise SlurmError(f"squeue failed: {_slurm_words(proc.stderr, 'squeue')}")
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or parts[0].strip() not in job_ids:
            continue
        status = int(parts[4]) if parts[4].strip().isdigit() else 0  # a wait status: code << 8 | signal
        state = parts[1].strip()
        ended = state not in PENDING_STATES | RUNNING_STATES
        code, sig = ((status >> 8) & 0xFF, (status & 0x7F) or None) if ended else (None, None)
        found[parts[0].strip()] = JobInfo(
            job_id=parts[0].strip(), state=state, reason=_none(parts[2]), node=_none(parts[3]),
            exit_code=code, signal=sig, source="squeue",
        )  # fmt: skip
    return found


def _sacct(job_ids: list[str]) -> dict[str, JobInfo]:
    """Jobs that squeue has forgotten: sacct (slurmdbd), else `sacct --completion` (the completion log)."""
    fields = ["--noheader", "--parsable2", "--allocations", f"--jobs={','.join(job_ids)}"]
    source, proc = "sacct", _run(["sacct", *fields, "--format=JobID,State,Reason,NodeList,ExitCode"])
    if proc.returncode != 0 and "accounting storage is disabled" in proc.stderr:
        source, proc = "sacct --completion", _run(["sacct", "--completion", *fields,
                                                   "--format=JobID,State,NodeList,ExitCode"])  # fmt: skip
    if proc.returncode != 0:
        words = _slurm_words(proc.stderr, "sacct")
        if source == "sacct" and _unreachable(words):
            raise SlurmError(f"sacct failed: {words}")  # not knowing is not the same as "forgotten"
        return {}  # no accounting at all: Slurm has forgotten these jobs
    found = {}
    for line in proc.stdout.splitlines():  # a requeued job has one line per attempt: the last one wins
        parts = line.split("|")
        if source != "sacct":
            parts.insert(2, "")  # the completion log has no reason
        if len(parts) < 5 or parts[0] not in job_ids:
            continue
        code, _, sig = parts[4].partition(":")  # "exit:signal"
        found[parts[0]] = JobInfo(
            job_id=parts[0], state=parts[1].split()[0] if parts[1].strip() else None,  # "CANCELLED by 1000"
            reason=_none(parts[2]), node=_none(parts[3]), exit_code=int(code) if code.isdigit() else None,
            signal=(int(sig) or None) if sig.isdigit() else None, source=source,
        )  # fmt: skip
    return found


def query(job_ids: Iterable[str]) -> dict[str, JobInfo]:
    """What Slurm knows of each job, by id: squeue first (queued, running, recently ended), then sacct.
    Every id asked for is in the answer; `known` is False for a job Slurm has no record of."""
    ids = list(dict.fromkeys(str(j) for j in job_ids))
    for job_id in ids:
        if not job_id.isdigit():
            raise ValueError(f"not a Slurm job id: {job_id!r}")
    if not ids:
        return {}
    found = _squeue(ids)
    missing = [j for j in ids if j not in found]
    if missing:
        found.update(_sacct(missing))
    return {j: found.get(j, JobInfo(job_id=j)) for j in ids}


def query_one(job_id: str) -> JobInfo:
    return query([job_id])[str(job_id)]


def live_jobs_of(run: RunDir) -> list[str]:
    """Ids of the jobs Slurm holds (pending or running) for this run folder: its job name and folder."""
    fields = "JobID:|,State:|,WorkDir:|"
    proc = _run(["squeue", "--noheader", f"--name=flux-tui/{run.name}", f"--Format={fields}"])
    if proc.returncode != 0:
        raise SlurmError(f"squeue failed: {_slurm_words(proc.stderr, 'squeue')}")
    found = []
    for line in proc.stdout.splitlines():
        parts = [part.strip() for part in line.split("|")] + ["", "", ""]
        job, state, folder = parts[:3]
        if job.isdigit() and state in PENDING_STATES | RUNNING_STATES and folder == str(run.path):
            found.append(job)
    return found


def cancel(job_id: str, *, kill: bool = False) -> bool:
    """Stop a job. Default: TERM to the trainer (it checkpoints and ends `cancelled`); a pending job is simply
    removed. kill=True: Slurm's own cancel (TERM to every process, KILL after the cluster's KillWait).
    Returns False when Slurm no longer knows the job or it has already ended."""
    job_id = str(job_id)
    if not job_id.isdigit():
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    info = query_one(job_id)
    if not info.known or info.ended:
        return False
    if not kill and not info.pending:
        proc = _run(["scancel", "--signal=TERM", "--batch", job_id])
        if proc.returncode == 0:
            return True
        # It may have ended, or gone back to pending (requeued), since we looked.
        info = query_one(job_id)
        if not info.known or info.ended:
            return False
        if not info.pending:
            raise SlurmError(f"scancel failed: {_slurm_words(proc.stderr, 'scancel')}")
    proc = _run(["scancel", job_id])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr or "already completing or completed" in proc.stderr:
            return False
        raise SlurmError(f"scancel failed: {_slurm_words(proc.stderr, 'scancel')}")
    return True
