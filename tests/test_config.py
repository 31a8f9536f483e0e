"""The study file: the shipped sweep, sweeps, and one test per kind of mistake a user makes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from flux_tui.core import config
from flux_tui.core.config import ConfigError

REPO = Path(__file__).resolve().parents[1]

# The study's Table 1, row by row in the shipped file's order (by scenario, so 8 and 9 come before 6 and 7):
# (number, name, group, learning rate, rank, steps, scheduler).
TABLE_1 = [
    (1, "exp01", "Extreme parameters", 1e-3, 8, 500, "cosine"),
    (2, "exp02", "Extreme parameters", 1e-4, 32, 1500, "cosine"),
    (3, "exp03", "Extreme parameters", 5e-4, 16, 1000, "cosine"),
    (4, "exp04", "Fixed-step variations", 1e-3, 8, 1000, "cosine"),
    (5, "exp05", "Fixed-step variations", 1e-4, 32, 1000, "cosine"),
    (8, "exp08", "Fixed-step variations", 1e-3, 32, 1000, "cosine"),
    (9, "exp09", "Fixed-step variations", 1e-4, 8, 1000, "cosine"),
    (6, "exp06", "Step count effects", 5e-4, 16, 500, "cosine"),
    (7, "exp07", "Step count effects", 5e-4, 16, 1500, "cosine"),
    (10, "exp10", "Expressiveness vs fast training", 1e-3, 32, 500, "cosine"),
    (11, "exp11", "LR scheduler impact", 5e-4, 16, 1000, "constant"),
]


def test_shipped_file_has_table_1s_numbers_names_and_settings() -> None:
    study = config.load(REPO / "experiments.toml")
    rows = [
        (e.number, e.name, e.group, e.settings.learning_rate, e.settings.lora_rank, e.settings.max_train_steps,
         e.settings.lr_scheduler)
        for e in study.experiments
    ]  # fmt: skip
    assert rows == TABLE_1
    # The study's text compares "experiments 4, 9 and 5, 8" for the learning rate and "4, 8 and 5, 9" for
    # the rank: each pair differs in that hyperparameter alone.
    by_number = {e.number: e.settings for e in study.experiments}
    keys = ("learning_rate", "lora_rank", "max_train_steps", "lr_scheduler")
    for varied, pairs in (("learning_rate", [(4, 9), (5, 8)]), ("lora_rank", [(4, 8), (5, 9)])):
        for a, b in pairs:
            differ = [k for k in keys if getattr(by_number[a], k) != getattr(by_number[b], k)]
            assert differ == [varied], (a, b, differ)


def test_shipped_file_reproduces_the_study() -> None:
    study = config.load(REPO / "experiments.toml")
    assert len(study.experiments) == 11
    for exp in study.experiments:
        s = exp.settings
        assert s.alpha == s.lora_rank  # the study's script forced alpha = rank
        assert s.base_model == "black-forest-labs/FLUX.1-dev"
        assert s.instance_prompt == "a photo of cr7man"
        assert s.resolution == 1024 and s.guidance_scales == [5.0]
        assert len(s.eval_prompts) == 11 and "cr7man holding a trophy" in s.eval_prompts
    # Paths resolve relative to the file, whatever the current directory.
    assert study.experiments[0].settings.data_dir == str(REPO / "photos")
    assert study.workspace.runs_dir == REPO / "runs"


def write(tmp_path: Path, body: str, name: str = "experiments.toml") -> Path:
    (tmp_path / "photos").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


GOOD_HEAD = """
[defaults]
data_dir = "photos"
resolution = 512

[[experiment]]
name = "a"
learning_rate = 1e-4
"""


def test_minimal_file_and_defaults(tmp_path: Path) -> None:
    study = config.load(write(tmp_path, GOOD_HEAD))
    (exp,) = study.experiments
    assert exp.name == "a" and exp.number == 1 and exp.settings.resolution == 512
    assert exp.settings.data_dir == str(tmp_path / "photos")
    assert study.warnings == []


def test_default_data_folder_resolves_relative_to_the_file(tmp_path: Path) -> None:
    study = config.load(write(tmp_path, '[[experiment]]\nname = "a"\n'))
    assert study.experiments[0].settings.data_dir == str(tmp_path / "photos")


def test_sweep_expands_cartesian_product_with_generated_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [defaults]
        data_dir = "photos"

        [[experiment]]
        name = "base"

        [[sweep]]
        name = "grid"
        group = "LR x rank"
        learning_rate = [1e-4, 5e-4]
        lora_rank = [8, 16, 32]
        max_train_steps = 300
        eval_prompts = ["a photo of cr7man"]
        """,
    )
    study = config.load(path)
    names = study.names
    assert names[0] == "base"
    assert len(names) == 7 and len(set(names)) == 7
    assert "grid-lr1e-4-r8" in names and "grid-lr5e-4-r32" in names
    swept = [e for e in study.experiments if e.group == "LR x rank"]
    assert {(e.settings.learning_rate, e.settings.lora_rank) for e in swept} == {
        (lr, r) for lr in (1e-4, 5e-4) for r in (8, 16, 32)
    }
    # Fixed keys of the sweep apply to every combination; a list-valued key is not swept.
    assert all(e.settings.max_train_steps == 300 for e in swept)
    assert all(e.settings.eval_prompts == ["a photo of cr7man"] for e in swept)
    assert [e.number for e in study.experiments] == list(range(1, 8))


def test_sweep_over_a_list_valued_key_takes_a_list_of_lists(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [defaults]
        data_dir = "photos"
        [[sweep]]
        name = "g"
        guidance_scales = [[3.5], [5.0]]
        """,
    )
    study = config.load(path)
    assert [e.settings.guidance_scales for e in study.experiments] == [[3.5], [5.0]]
    assert study.names == ["g-g3.5", "g-g5"]


def test_the_score_curve_defaults_to_a_quarter_of_the_steps_on_three_prompts(tmp_path: Path) -> None:
    body = GOOD_HEAD + 'max_train_steps = 1500\neval_prompts = ["p1", "p2", "p3", "p4"]\n'
    s = config.load(write(tmp_path, body)).experiments[0].settings
    assert (s.eval_every, s.eval_interval, s.curve_prompts, s.early_stop_patience) == (None, 375, ["p1", "p2", "p3"], None)
    body += 'eval_every = 100\ncheckpoint_eval_prompts = ["p4"]\nearly_stop_patience = 3\n'
    s = config.load(write(tmp_path, body)).experiments[0].settings
    assert (s.eval_interval, s.curve_prompts, s.early_stop_patience) == (100, ["p4"], 3)
    assert config.load(write(tmp_path, GOOD_HEAD + "eval_every = 0\n")).experiments[0].settings.eval_interval == 0


def test_hashes_separate_training_from_evaluation(tmp_path: Path) -> None:
    a = config.load(write(tmp_path, GOOD_HEAD)).experiments[0]
    b = config.load(write(tmp_path, GOOD_HEAD + 'eval_prompts = ["x"]\n')).experiments[0]
    c = config.load(write(tmp_path, GOOD_HEAD + "lora_rank = 4\n")).experiments[0]
    assert a.train_hash == b.train_hash and a.config_hash != b.config_hash
    assert a.train_hash != c.train_hash


# One mistake per file: (body, line, key fragment, message fragment).
BAD = [
    pytest.param(GOOD_HEAD + "lerning_rate = 1e-4\n", 8, "lerning_rate", "did you mean 'learning_rate'", id="typo-key"),
    pytest.param(GOOD_HEAD + 'lora_rank = "16"\n', 8, "lora_rank", "expected an integer >= 1", id="rank-string"),
    pytest.param(GOOD_HEAD + "lora_rank = 16.5\n", 8, "lora_rank", "integer", id="rank-float"),
    pytest.param(GOOD_HEAD + "lora_rank = 0\n", 8, "lora_rank", ">= 1", id="rank-zero"),
    pytest.param(GOOD_HEAD + "lora_alpha = 0\n", 8, "lora_alpha", ">= 1", id="alpha-zero"),
    pytest.param(GOOD_HEAD.replace("1e-4", "-1e-4"), 7, "learning_rate", "> 0", id="lr-negative"),
    pytest.param(GOOD_HEAD.replace("1e-4", "0.0"), 7, "learning_rate", "> 0", id="lr-zero"),
    pytest.param(GOOD_HEAD + "max_train_steps = 0\n", 8, "max_train_steps", ">= 1", id="steps-zero"),
    pytest.param(GOOD_HEAD.replace("512", "500"), 3, "resolution", "multiple of 16", id="resolution"),
    pytest.param(GOOD_HEAD + 'lr_scheduler = "cosine_annealing"\n', 8, "lr_scheduler", "one of linear", id="scheduler"),
    pytest.param(GOOD_HEAD + 'mixed_precision = "fp8"\n', 8, "mixed_precision", "one of no, fp16, bf16", id="precision"),
    pytest.param(GOOD_HEAD + '\n[[experiment]]\nname = "a"\n', 10, "name", "duplicate run name 'a'", id="duplicate"),
    pytest.param(GOOD_HEAD.replace('"a"', '"../evil"'), 6, "name", "unsafe run name", id="dotdot-name"),
    pytest.param(GOOD_HEAD.replace('"a"', '"x/y"'), 6, "name", "no path separators", id="slash-name"),
    pytest.param(GOOD_HEAD + "eval_prompts = []\n", 8, "eval_prompts", "non-empty list", id="no-prompts"),
    pytest.param(GOOD_HEAD + 'eval_prompts = ["a photo", "  "]\n', 8, "eval_prompts", "item 2 is empty", id="blank-prompt"),
    pytest.param(GOOD_HEAD + "gradient_checkpointing = 1\n", 8, "gradient_checkpointing", "true or false", id="bool"),
    pytest.param(GOOD_HEAD + "learning_rate = \n", 8, None, "TOML syntax error", id="syntax"),
    pytest.param(GOOD_HEAD.replace('"a"', '""'), 6, "name", "unsafe run name ''", id="empty-name"),
    pytest.param(GOOD_HEAD + 'number = 1\n\n[[experiment]]\nname = "b"\nnumber = 1\n', 12, "number", "duplicate experiment number 1", id="dup-number"),
    pytest.param("[defualts]\n", 1, "defualts", "did you mean 'defaults'", id="unknown-table"),
    pytest.param(GOOD_HEAD + "\n[workspace]\nruns_per_gpu = 0\n", 10, "runs_per_gpu", ">= 1", id="per-gpu"),
    pytest.param(GOOD_HEAD + '\n[[sweep]]\nname = "s"\nlora_rank = []\n', 11, "lora_rank", "non-empty list", id="empty-sweep"),
    pytest.param(GOOD_HEAD + '\n[workspace]\nexecutor = "pbs"\n', 10, "[workspace].executor", "expected one of local, slurm", id="executor"),
    pytest.param('slurm = "gpu"\n' + GOOD_HEAD, 1, "slurm", "expected a table [slurm]", id="slurm-not-a-table"),
    pytest.param(GOOD_HEAD + '\n[slurm]\npartiton = "gpu"\n', 10, "[slurm].partiton", "did you mean 'partition'", id="slurm-typo"),
    pytest.param(GOOD_HEAD + '\n[slurm]\npartition = "gpu long"\n', 10, "[slurm].partition", "expected a partition name", id="slurm-partition"),
    pytest.param(GOOD_HEAD + '\n[slurm]\naccount = 42\n', 10, "[slurm].account", "expected an account name", id="slurm-account"),
    pytest.param(GOOD_HEAD + '\n[slurm]\ntime = "4h"\n', 10, "[slurm].time", "expected a Slurm time limit: minutes, MM:SS", id="slurm-time"),
    pytest.param(GOOD_HEAD + '\n[slurm]\ntime = "0"\n', 10, "[slurm].time", "longer than 0", id="slurm-time-zero"),
    pytest.param(GOOD_HEAD + '\n[slurm]\ntime = 240\n', 10, "[slurm].time", 'expected a time limit per run, e.g. "4:00:00"', id="slurm-time-int"),
    pytest.param(GOOD_HEAD + '\n[slurm]\ngres = "gpu 1"\n', 10, "[slurm].gres", 'expected generic resources per run', id="slurm-gres"),
    pytest.param(GOOD_HEAD + '\n[slurm]\ncpus_per_task = 0\n', 10, "[slurm].cpus_per_task", ">= 1", id="slurm-cpus"),
    pytest.param(GOOD_HEAD + '\n[slurm]\nmem = "64GB"\n', 10, "[slurm].mem", 'expected memory per run, e.g. "64G"', id="slurm-mem"),
    pytest.param(GOOD_HEAD + '\n[slurm]\nmax_jobs = 0\n', 10, "[slurm].max_jobs", "expected an integer >= 1", id="slurm-max-jobs"),
    pytest.param(GOOD_HEAD + '\n[slurm]\nsbatch_args = "--exclusive"\n', 10, "[slurm].sbatch_args", "expected a list of sbatch options", id="slurm-args-string"),
    pytest.param(GOOD_HEAD + '\n[slurm]\nsbatch_args = ["--exclusive", "exclusive"]\n', 10, "[slurm].sbatch_args", "item 2 ('exclusive') is not an option", id="slurm-args-item"),
    pytest.param(GOOD_HEAD + '\n[slurm]\nsetup = 3\n', 10, "[slurm].setup", "expected shell lines", id="slurm-setup"),
    pytest.param(GOOD_HEAD + "eval_every = -250\n", 8, "eval_every", "an integer >= 0", id="eval-every-negative"),
    pytest.param(GOOD_HEAD + "eval_every = 2.5\n", 8, "eval_every", "integer", id="eval-every-float"),
    pytest.param(GOOD_HEAD + "early_stop_patience = 0\n", 8, "early_stop_patience", ">= 1", id="patience-zero"),
    pytest.param(GOOD_HEAD + "eval_every = 0\nearly_stop_patience = 3\n", 9, "early_stop_patience",
                 "eval_every = 0 turns it off", id="patience-without-curve"),
    pytest.param(GOOD_HEAD + "checkpoint_eval_prompts = []\n", 8, "checkpoint_eval_prompts", "non-empty list",
                 id="no-curve-prompts"),
    pytest.param(GOOD_HEAD + 'checkpoint_eval_prompts = ["a photo", ""]\n', 8, "checkpoint_eval_prompts",
                 "item 2 is empty", id="blank-curve-prompt"),
    # What would pass here and fail later (a file name too long, a NaN loss, a model that cannot take the size):
    pytest.param(GOOD_HEAD.replace('"a"', '"' + "a" * 300 + '"'), 6, "name", "run name too long (300 characters, at most 80", id="name-too-long"),
    pytest.param(GOOD_HEAD.replace('"a"', '"' + "a" * 81 + '"'), 6, "name", "run name too long (81", id="name-81"),
    pytest.param(GOOD_HEAD.replace("1e-4", "nan"), 7, "learning_rate", "expected a number > 0, got NaN", id="lr-nan"),
    pytest.param(GOOD_HEAD.replace("1e-4", "inf"), 7, "learning_rate", "expected a number > 0, got Infinity", id="lr-inf"),
    pytest.param(GOOD_HEAD + "lora_dropout = nan\n", 8, "lora_dropout", "got NaN", id="dropout-nan"),
    pytest.param(GOOD_HEAD + "guidance_scales = [3.5, 0.5]\n", 8, "guidance_scales", "numbers >= 1, got 0.5", id="guidance-below-1"),
    pytest.param(GOOD_HEAD + "guidance_scale = 0.0\n", 8, "guidance_scale", ">= 1, got 0.0", id="train-guidance-below-1"),
    pytest.param(GOOD_HEAD + "resolution = 8\n", 8, "resolution", "multiple of 16 (try 16)", id="resolution-too-small"),
    pytest.param(GOOD_HEAD + "eval_resolution = 24\n", 8, "eval_resolution", "multiple of 16 (try 16 or 32)", id="eval-resolution"),
    pytest.param(GOOD_HEAD + 'number = 2\n\n[[experiment]]\nname = "b"\nnumber = 1\n\n[[experiment]]\nname = "c"\n', 14, "number", "experiment number 2 (counted on from the row before) is taken by 'a'", id="implicit-number-collides"),
    pytest.param(GOOD_HEAD + '\n[[experiment]]\nname = "z"\nnumber = 3\n\n[[experiment]]\nname = "y"\nnumber = 2\n\n[[sweep]]\nlora_rank = [4]\n', 17, "[[sweep]] #1.number", "experiment number 3 (counted on from the row before) is taken by 'z'", id="sweep-number-collides"),
    pytest.param(GOOD_HEAD + '\n[[sweep]]\nname = "' + "s" * 78 + '"\nlora_rank = [4]\n', 10, "name", "give it a shorter name", id="sweep-names-too-long"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "line", "key", "fragment"), BAD)
def test_bad_file_names_file_line_key_and_expectation(
    tmp_path: Path, body: str, line: int, key: str | None, fragment: str
) -> None:
    path = write(tmp_path, body)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    errors = [p for p in info.value.problems if p.severity == "error"]
    assert len(errors) == 1, [str(p) for p in errors]
    (problem,) = errors
    text = str(problem)
    assert text.startswith(f"{path}:{line}:"), text
    if key:
        assert key in (problem.key or ""), text
    assert fragment in text
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_every_problem_is_listed_not_just_the_first(tmp_path: Path) -> None:
    body = GOOD_HEAD + "lora_rank = 0\nmax_train_steps = -5\nfoo = 1\n"
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, body))
    keys = {p.key.split(".")[-1] for p in info.value.problems}
    assert {"lora_rank", "max_train_steps", "foo"} <= keys


def test_rows_are_checked_even_when_the_defaults_are_wrong(tmp_path: Path) -> None:
    body = '[defaults]\nseed = 4.2\n\n[[experiment]]\nname = "a"\nmax_train_steps = "30"\nlerning_rate = 1\nlora_rank = 0\n'
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, body))
    assert sorted((p.line, p.key) for p in info.value.problems) == [
        (2, "[defaults].seed"), (6, "[[experiment]] #1.max_train_steps"),
        (7, "[[experiment]] #1.lerning_rate"), (8, "[[experiment]] #1.lora_rank"),
    ]  # fmt: skip


def test_missing_data_folder_is_a_warning_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEAD.replace('"photos"', '"nowhere"'))
    study = config.load(path)
    (warning,) = study.warnings
    assert warning.severity == "warning" and warning.line == 2
    assert "nowhere" in warning.message and "does not exist" in warning.message


SLURM = """
[workspace]
executor = "slurm"

[slurm]
partition = "gpu"
account = "lab"
qos = "normal"
time = "1-00:00:00"
gres = "gpu:a100:2"
cpus_per_task = 8
mem = "64G"
constraint = "a100|h100"
max_jobs = 4
sbatch_args = ["--exclusive", "--comment=flux sweep"]
setup = \"\"\"
module load cuda/12.1
source ~/venvs/flux/bin/activate
\"\"\"
"""


def test_slurm_table_and_executor(tmp_path: Path) -> None:
    study = config.load(write(tmp_path, GOOD_HEAD + SLURM))
    assert study.workspace.executor == "slurm"
    s = study.slurm
    assert (s.partition, s.account, s.qos, s.time) == ("gpu", "lab", "normal", "1-00:00:00")
    assert (s.time_limit_s, s.gres, s.cpus_per_task, s.mem) == (86400, "gpu:a100:2", 8, "64G")
    assert (s.constraint, s.max_jobs) == ("a100|h100", 4)
    assert s.sbatch_args == ["--exclusive", "--comment=flux sweep"]
    assert s.setup_lines == ["module load cuda/12.1", "source ~/venvs/flux/bin/activate"]
    # Without the table: local, and Slurm's defaults should the executor change.
    plain = config.load(write(tmp_path, GOOD_HEAD))
    assert plain.workspace.executor == "local" and plain.slurm == config.SlurmSettings()
    assert (plain.slurm.gres, plain.slurm.setup_lines, plain.slurm.time_limit_s) == ("gpu:1", [], None)


def test_slurm_workspace_under_tmp_is_a_warning_at_the_executor_line(tmp_path: Path) -> None:
    assert tmp_path.is_relative_to("/tmp")  # pytest's folders are under /tmp here
    study = config.load(write(tmp_path, GOOD_HEAD + SLURM))
    tmp_warnings = [w for w in study.warnings if "compute nodes will not see them" in w.message]
    assert len(tmp_warnings) == 1 and tmp_warnings[0].line == 10, [str(w) for w in study.warnings]
    assert tmp_warnings[0].key == "[workspace].executor" and str(tmp_path / "runs") in tmp_warnings[0].message
    # A local workspace under /tmp is fine, and so is a Slurm one whose runs go elsewhere.
    assert config.load(write(tmp_path, GOOD_HEAD + SLURM.replace('"slurm"', '"local"'))).warnings == []
    home = SLURM.replace('executor = "slurm"', f'executor = "slurm"\nruns_dir = "{Path.home()}/flux-runs"')
    assert not [w for w in config.load(write(tmp_path, GOOD_HEAD + home)).warnings if "/tmp" in w.message]


def test_slurm_without_sbatch_is_a_warning_and_check_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD_HEAD + SLURM)
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without Slurm's commands
    study = config.load(path)
    (warning,) = [w for w in study.warnings if "not on PATH" in w.message]
    assert warning.line == 10 and "sbatch is not on PATH" in warning.message
    proc = subprocess.run([sys.executable, "-m", "flux_tui.main", "check", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PATH": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = f'{path}:10: warning: [workspace].executor: executor is "slurm" but sbatch is not on PATH'
    assert expected in proc.stderr


def test_missing_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


def test_scheduler_names_match_diffusers() -> None:
    from diffusers.optimization import SchedulerType

    assert set(config.SCHEDULERS) == {s.value for s in SchedulerType}


# -- what passes check must not fail later ------------------------------------------------------------


def check(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flux_tui.main", "check", str(path), *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEAD)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert config.load(path).names == ["a"]


def test_a_study_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_HEAD)
    path.write_bytes(path.read_bytes().replace(b'"a"', b'"caf\xe9"'))  # Latin-1, as an old editor saves it
    proc = check(path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}:6: not UTF-8 text: byte 0xe9 at column 12" in proc.stderr


def test_a_folder_or_a_fifo_given_as_the_study_file_is_a_problem(tmp_path: Path) -> None:
    proc = check(tmp_path)
    assert proc.returncode == 2 and f"{tmp_path}: cannot read: a folder" in proc.stderr
    fifo = tmp_path / "study.toml"
    os.mkfifo(fifo)
    proc = check(fifo)  # reading it would wait for a writer forever
    assert proc.returncode == 2 and "not a regular file" in proc.stderr


def check_as_a_teammate(path: Path) -> subprocess.CompletedProcess:
    """`flux-tui check` as an ordinary user (nobody): root may read and write anything, a teammate may not."""
    if os.geteuid() != 0:
        return check(path)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot check as an ordinary user")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run([*drop, sys.executable, "-m", "flux_tui.main", "check", str(path)], capture_output=True,
                          text=True, timeout=60, cwd="/", env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip


@pytest.fixture
def shared_dir():
    """A folder others may read (pytest's tmp folders are private to their owner), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="flux-tui-shared-"))
    folder.chmod(0o755)  # readable by a teammate, writable only by its owner
    yield folder
    shutil.rmtree(folder)


def test_a_study_file_without_read_permission_is_a_problem(shared_dir: Path) -> None:
    path = write(shared_dir, GOOD_HEAD)
    path.chmod(0)
    proc = check_as_a_teammate(path)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}: cannot read: Permission denied" in proc.stderr and "Traceback" not in proc.stderr
    path.chmod(0o644)  # readable now; but the teammate cannot write beside it, and check says so too
    proc = check_as_a_teammate(path)
    assert "cannot read" not in proc.stderr
    if os.geteuid() == 0:
        assert f"[workspace].runs_dir: folder {shared_dir / 'runs'} cannot be created: {shared_dir} is not " \
               "writable" in proc.stderr


def test_runs_dir_or_cache_dir_that_cannot_be_a_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the runs would go")
    path = write(tmp_path, GOOD_HEAD + '\n[workspace]\nruns_dir = "taken"\ncache_dir = "taken/cache"\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    found = sorted((p.line, p.key, p.message.split(" (")[0]) for p in info.value.problems)
    assert found == [
        (10, "[workspace].runs_dir", f"{tmp_path / 'taken'} is not a folder"),
        (11, "[workspace].cache_dir", f"folder {tmp_path / 'taken/cache'} cannot be created: {tmp_path / 'taken'} "
         "is not a folder"),
    ]  # fmt: skip
    proc = check(path)
    assert proc.returncode == 2 and f"{path}:10: [workspace].runs_dir:" in proc.stderr
    assert not (tmp_path / "runs").exists()  # check creates nothing


def test_runs_dir_where_the_user_may_not_write_is_an_error(shared_dir: Path) -> None:
    path = write(shared_dir, GOOD_HEAD + '\n[workspace]\nruns_dir = "/flux-tui-runs"\n')
    path.chmod(0o644)
    proc = check_as_a_teammate(path)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:10: [workspace].runs_dir: folder /flux-tui-runs cannot be created: / is not writable" in proc.stderr


def test_paths_that_do_not_exist_are_warnings_and_hub_ids_are_not_paths(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "photos.txt").write_text("not a folder")
    body = GOOD_HEAD.replace('data_dir = "photos"', 'data_dir = "photos.txt"\nbase_model = "./models/flux"\n'
                             'clip_model = "models/clip/v1"\nface_weights = "weights"')  # fmt: skip
    study = config.load(write(tmp_path, body))
    found = {w.key: (w.line, w.message.split(" (")[0]) for w in study.warnings}
    assert found == {
        "[defaults].data_dir": (2, f"{tmp_path / 'photos.txt'} is not a folder"),
        "[defaults].base_model": (3, f"folder {tmp_path / 'models/flux'} does not exist"),
        "[defaults].clip_model": (4, f"folder {tmp_path / 'models/clip/v1'} does not exist"),
        "[defaults].face_weights": (5, f"{tmp_path / 'weights'} is not a file"),
    }
    # `org/name` (one slash, no leading ./) is a hub id: not resolved, not checked on disk.
    hub = config.load(write(tmp_path, GOOD_HEAD + 'base_model = "black-forest-labs/FLUX.1-dev"\n'))
    assert hub.experiments[0].settings.base_model == "black-forest-labs/FLUX.1-dev" and hub.warnings == []
    assert config.is_local_path("models/flux", tmp_path) is False
    (tmp_path / "models" / "flux").mkdir(parents=True)
    assert config.is_local_path("models/flux", tmp_path) is True  # a folder that exists beside the file


def test_a_resolution_too_small_for_a_local_models_vae_is_an_error(tmp_path: Path) -> None:
    vae = tmp_path / "models" / "big-vae" / "vae"
    vae.mkdir(parents=True)
    (vae / "config.json").write_text('{"block_out_channels": [8, 8, 16, 16, 32]}')  # 5 blocks: factor 16
    body = GOOD_HEAD.replace("resolution = 512", 'resolution = 48\nbase_model = "./models/big-vae"')
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, body))
    (problem,) = info.value.problems
    assert (problem.line, problem.key) == (3, "[defaults].resolution")
    assert "48 px does not fit the model: its VAE needs a multiple of 32 px per side (try 32)" in problem.message
    assert config.vae_factor(str(tmp_path / "models" / "big-vae")) == 16
    assert config.vae_factor("black-forest-labs/FLUX.1-dev") == 8  # a hub id: FLUX.1's VAE


def test_sweep_names_keep_every_significant_digit(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [defaults]
        data_dir = "photos"
        [[sweep]]
        name = "lr"
        learning_rate = [1e-4, 1.5e-4, 2.25e-5, 0.0123456789, 0.5, 1e-3]
        """)  # fmt: skip
    study = config.load(path)
    assert study.names == ["lr-lr1e-4", "lr-lr1.5e-4", "lr-lr2.25e-5", "lr-lr0.0123456789", "lr-lr0.5", "lr-lr1e-3"]


def test_string_settings_are_swept_and_named_by_their_position(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [defaults]
        data_dir = "photos"
        [[sweep]]
        name = "s"
        base_model = ["black-forest-labs/FLUX.1-dev", "org/other-flux"]
        instance_prompt = ["a photo of cr7man", "cr7man, a footballer"]
        lr_scheduler = ["constant", "cosine"]
        eval_prompts = [["a photo of cr7man"], ["cr7man smiling", "cr7man in a suit"]]
        """)  # fmt: skip
    study = config.load(path)
    assert len(study.names) == 16 and len(set(study.names)) == 16
    assert study.names[0] == "s-base_model1-instance_prompt1-constant-eval_prompts1"
    assert study.names[-1] == "s-base_model2-instance_prompt2-cosine-eval_prompts2"
    last = study.experiments[-1].settings
    assert (last.base_model, last.instance_prompt, last.eval_prompts) == (
        "org/other-flux", "cr7man, a footballer", ["cr7man smiling", "cr7man in a suit"])
