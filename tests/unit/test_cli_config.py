"""`overdrive config` / `env` / `launch --dry_run` and SLURM derivation, no spawning of training processes.

The questionnaire is driven through a real pseudo-terminal (python's pty module), as a user would answer it.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overdrive.commands import UsageError
from overdrive.commands.cli import main
from overdrive.commands.config import (
    accelerate_config_path,
    default_config_path,
    find_config_file,
    load_config,
    save_config,
)
from overdrive.commands.env import env_report
from overdrive.commands.launch import build_env, build_torchrun_argv, dry_run_plan, parse_launch_args
from overdrive.commands.slurm import expand_nodelist, slurm_settings

ROOT = Path(__file__).resolve().parents[2]
S = __file__


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in list(os.environ):
        if var.startswith(("SLURM_", "OVERDRIVE_", "ACCELERATE_", "FSDP_")):
            monkeypatch.delenv(var)


# -- locations ----------------------------------------------------------------------------------------------------


def test_default_locations_follow_accelerates_convention() -> None:
    assert default_config_path({"HF_HOME": "/h"}) == Path("/h/overdrive/default_config.yaml")
    assert accelerate_config_path({"HF_HOME": "/h"}) == Path("/h/accelerate/default_config.yaml")
    assert default_config_path({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/overdrive/default_config.yaml")
    assert default_config_path({}) == Path.home() / ".cache/huggingface/overdrive/default_config.yaml"


def test_accelerates_default_file_is_read_when_overdrive_has_none(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path)}
    assert find_config_file(None, env) is None
    save_config({"distributed_type": "MULTI_CPU", "num_processes": 3}, accelerate_config_path(env))
    assert find_config_file(None, env) == accelerate_config_path(env)
    save_config({"distributed_type": "NO"}, default_config_path(env))
    assert find_config_file(None, env) == default_config_path(env)  # overdrive's own wins


def test_launch_reads_the_default_file_and_names_it_as_source(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path)}
    path = save_config({"distributed_type": "MULTI_CPU", "num_processes": 3, "mixed_precision": "bf16",
                        "use_cpu": True}, accelerate_config_path(env))
    args = parse_launch_args([S], environ=env)
    assert (args.num_processes, args.mixed_precision, args.cpu) == (3, "bf16", True)
    assert args.sources["mixed_precision"] == f"file {path}"
    assert build_env(args)["ACCELERATE_MIXED_PRECISION"] == "bf16"
    # A flag beats the file; the environment too.
    args = parse_launch_args(["--num_processes", "2", S], environ={**env, "OVERDRIVE_MIXED_PRECISION": "fp16"})
    assert (args.num_processes, args.mixed_precision) == (2, "fp16")
    assert (args.sources["num_processes"], args.sources["mixed_precision"]) == (
        "flag --num_processes", "env OVERDRIVE_MIXED_PRECISION")
    assert "OVERDRIVE_MIXED_PRECISION" not in build_env(args)  # already in the workers' environment


def test_a_file_written_by_accelerate_loads_unchanged(tmp_path: Path) -> None:
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    path = tmp_path / "acc.yaml"
    config_args.ClusterConfig(compute_environment="LOCAL_MACHINE", distributed_type="FSDP", mixed_precision="bf16",
                              use_cpu=False, debug=True, num_processes=4,
                              fsdp_config={"fsdp_version": 2, "fsdp_offload_params": True},
                              dynamo_config={"dynamo_backend": "INDUCTOR"}).to_yaml_file(str(path))
    args = parse_launch_args(["--config_file", str(path), S], environ={})
    assert (args.use_fsdp, args.debug, args.num_processes, args.dynamo_backend) == (True, True, 4, "inductor")
    env = build_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_OFFLOAD_PARAMS"] == "true"


def test_unknown_key_warns_with_the_closest_one(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("distributed_type: NO\nmixed_precison: bf16\n")
    seen: list[str] = []
    load_config(path, warn=seen.append)
    assert len(seen) == 1 and "'mixed_precison'; did you mean 'mixed_precision'?" in seen[0]


def test_bad_file_value_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    path = save_config({"distributed_type": "NO", "mixed_precision": "fp17"}, tmp_path / "c.yaml")
    with pytest.raises(UsageError, match=rf"'fp17' \(from file {re.escape(str(path))}: mixed_precision\)"):
        parse_launch_args(["--config_file", str(path), S], environ={})


# -- config default / update ----------------------------------------------------------------------------------


def test_config_default_writes_a_working_file_and_refuses_to_overwrite(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "default", "--mixed_precision", "bf16"]) == 0
    path = default_config_path()
    config = load_config(path)
    assert config["mixed_precision"] == "bf16" and config["distributed_type"] in ("NO", "MULTI_GPU")
    assert parse_launch_args([S]).sources["mixed_precision"] == f"file {path}"
    with pytest.raises(SystemExit) as exc:
        main(["config", "default"])
    assert exc.value.code == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert main(["config", "default", "--force"]) == 0


def test_config_update_converts_old_keys_and_leaves_accelerates_file_alone(tmp_path: Path) -> None:
    acc = accelerate_config_path()
    acc.parent.mkdir(parents=True)
    acc.write_text("distributed_type: MULTI_CPU\nfp16: true\ndynamo_backend: INDUCTOR\nnum_processes: 2\n")
    before = acc.read_text()
    assert main(["config", "update"]) == 0
    assert acc.read_text() == before
    updated = load_config(default_config_path())
    assert updated["mixed_precision"] == "fp16" and updated["dynamo_config"] == {"dynamo_backend": "INDUCTOR"}
    assert "fp16" not in updated and updated["use_cpu"] is False and updated["debug"] is False
    # --config_file: updated in place.
    own = tmp_path / "own.yaml"
    own.write_text("distributed_type: NO\n")
    assert main(["config", "update", "--config_file", str(own)]) == 0
    assert load_config(own)["num_processes"] == 1


# -- the questionnaire, through a real terminal ------------------------------------------------------------------


class Terminal:
    """A child process on a pseudo-terminal; `expect` waits for text, `send` types a line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout}s for {text!r}; the terminal shows:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
        assert text in self.seen, self.seen
        self.seen = self.seen[self.seen.index(text) + len(text):]

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=30)
        os.close(self.master)
        return code


def answer_questionnaire(path: Path, answers: list[tuple[str, str]], env: dict[str, str]) -> int:
    """Run `overdrive config --config_file PATH` on a terminal, answering each prompt (text, answer) in order."""
    term = Terminal([sys.executable, "-m", "overdrive.commands.cli", "config", "--config_file", str(path)], env)
    try:
        for prompt, answer in answers:
            term.expect(prompt)
            term.send(answer)
        term.expect("Saved")
    finally:
        code = term.close()
    return code


def _child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OVERDRIVE_", "ACCELERATE_"))}
    # No GPU for the questions' defaults, whatever this machine has: CUDA_VISIBLE_DEVICES="" hides them all.
    env.update({"PYTHONPATH": str(ROOT / "src"), "HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": ""})
    return env


def test_questionnaire_multi_cpu_through_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "multi_cpu.yaml"
    code = answer_questionnaire(path, [
        ("Which kind of run?", "7"),  # out of range: asked again
        ("is not one of 0..4", "1"),
        ("How many machines", ""),
        ("How many processes in total", "zero"),  # not a number: asked again
        ("is invalid", "2"),
        ("torch.compile", ""),
        ("Mixed precision", "2"),
        ("collectives", ""),
    ], _child_env(tmp_path))
    assert code == 0
    config = load_config(path)
    assert config["distributed_type"] == "MULTI_CPU" and config["num_processes"] == 2
    assert config["mixed_precision"] == "bf16" and config["use_cpu"] is True and config["debug"] is False
    args = parse_launch_args(["--config_file", str(path), S], environ={})
    assert build_torchrun_argv(args)[:3] == ["--nproc-per-node", "2", "--standalone"]
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    assert config_args.load_config_from_file(str(path)).num_processes == 2  # Accelerate reads our file too


def test_questionnaire_two_machines_fsdp(tmp_path: Path) -> None:
    path = tmp_path / "fsdp.yaml"
    code = answer_questionnaire(path, [
        ("Which kind of run?", "3"),
        ("How many machines", "2"),
        ("Rank of this machine", "1"),
        ("IP address", ""),  # required: asked again
        ("required", "10.0.0.5"),
        ("Port on machine 0", ""),
        ("How should the machines meet", "1"),
        ("same local network", "no"),
        ("How many processes in total", "4"),
        ("which blocks", ""),
        ("offload parameters", "yes"),
        ("free gathered parameters", ""),
        ("checkpoint format", "1"),
        ("torch.compile", ""),
        ("Mixed precision", ""),
        ("collectives", "y"),
    ], _child_env(tmp_path))
    assert code == 0
    config = load_config(path)
    assert (config["num_machines"], config["machine_rank"], config["main_process_ip"], config["main_process_port"],
            config["rdzv_backend"], config["same_network"]) == (2, 1, "10.0.0.5", 29500, "c10d", False)
    assert config["fsdp_config"]["fsdp_offload_params"] is True
    assert config["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    args = parse_launch_args(["--config_file", str(path), S], environ={})
    assert (args.use_fsdp, args.debug, args.machine_rank, args.rdzv_backend) == (True, True, 1, "c10d")
    assert build_env(args)["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"


HEAVY = ("torch", "numpy")


@pytest.mark.parametrize("argv", [["config", "--help"], ["config", "default", "--config_file", "{tmp}/c.yaml"],
                                  ["config", "update", "--config_file", "{tmp}/c.yaml"], ["launch", "--help"],
                                  ["--help"]])
def test_config_commands_do_not_import_torch(argv: list[str], tmp_path: Path) -> None:
    argv = [a.format(tmp=tmp_path) for a in argv]
    code = ("import sys\nfrom overdrive.commands import cli\ntry:\n    code = cli.main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    code = e.code\nprint('CODE', code, 'HEAVY', [m for m in ('torch', 'numpy') if m in sys.modules])\n")
    env = _child_env(tmp_path)
    if argv[1:2] == ["update"]:
        proc = subprocess.run([sys.executable, "-c", code, "config", "default", "--config_file", argv[-1]],
                              capture_output=True, text=True, timeout=60, env=env)
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, env=env)
    assert "HEAVY []" in proc.stdout and "CODE 0" in proc.stdout, proc.stdout + proc.stderr


# -- env -------------------------------------------------------------------------------------------------------


def test_env_report_names_every_source() -> None:
    env = {"OVERDRIVE_MIXED_PRECISION": "bf16", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_NNODES": "2", "SLURM_NODEID": "1"}
    text = env_report(environ=env, config={"gradient_accumulation_steps": 4, "debug": True}, config_path="/c.yaml",
                      probe_torch=False)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("  ")}
    assert rows["mixed_precision"] == ["bf16", "env", "OVERDRIVE_MIXED_PRECISION"]
    assert rows["gradient_accumulation_steps"] == ["4", "file", "/c.yaml"]
    assert rows["debug"] == ["True", "file", "/c.yaml"]
    assert rows["num_machines"] == ["2", "env", "SLURM_NNODES"]
    assert rows["main_process_ip"] == ["n1", "env", "SLURM_JOB_NODELIST"]
    assert rows["cpu"] == ["False", "default"]


def test_env_command_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "process-group backends" in out and "mixed_precision" in out


# -- dry run --------------------------------------------------------------------------------------------------


def test_dry_run_plans_64_ranks_without_a_process_group(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["launch", "--dry_run", "--num_processes", "64", "--num_machines", "8", "--main_process_ip", "10.0.0.1",
            "--gradient_accumulation_steps", "4", "--cpu", "no_such_script.py", "--batch_size", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s*\d+\s+\d+\s+\d+\s+cpu", line)]
    assert len(rows) == 64 and rows[63] == ["63", "7", "7", "cpu", "16", "4"]
    assert "global batch 4096 = micro-batch 16 x 64 processes x 4 accumulation step(s)" in out
    commands = [line for line in out.splitlines() if line.startswith("torchrun command on machine")]
    assert len(commands) == 8 and "--node-rank 7" in commands[7] and "--nproc-per-node 8" in commands[7]
    assert "gradient_accumulation_steps" in out and "flag --gradient_accumulation_steps" in out
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_dry_run_does_not_import_torch_or_need_the_script(tmp_path: Path) -> None:
    code = ("import sys\nfrom overdrive.commands import cli\ncode = cli.main(sys.argv[1:])\n"
            "print('CODE', code, 'HEAVY', [m for m in ('torch', 'numpy') if m in sys.modules])\n")
    argv = ["launch", "--dry_run", "--num_processes", "4", "missing.py"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          env=_child_env(tmp_path))
    assert "CODE 0 HEAVY []" in proc.stdout and "global batch: unknown" in proc.stdout, proc.stdout + proc.stderr


def test_dry_run_plan_with_gpus() -> None:
    args = parse_launch_args(["--dry_run", "--num_processes", "4", "--gpu_ids", "2,3", "t.py", "--batch_size=8"],
                             config={}, environ={})
    plan = dry_run_plan(args, gpus=8)
    assert "CUDA_VISIBLE_DEVICES=2,3" in plan and "global batch 32" in plan
    assert [line.split()[3] for line in plan.splitlines() if re.match(r"\s+[0-3]\s+0\s", line)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]


# -- SLURM ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("gpu5", ["gpu5"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("x[1-5:2],y", ["x1", "x3", "x5", "y"]),
        ("h-1.example.org,h-2.example.org", ["h-1.example.org", "h-2.example.org"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[01-03", "node01]", "node[a-b]", "node[5-2]", ""])
def test_bad_nodelist_names_the_part(bad: str) -> None:
    with pytest.raises(ValueError, match="node list"):
        expand_nodelist(bad)


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
         "SLURM_GPUS_ON_NODE": "4", "SLURM_LOCALID": "0"}


def test_slurm_derivation() -> None:
    derived = slurm_settings(SLURM)
    assert derived == {
        "main_process_ip": ("gpu07", "env SLURM_JOB_NODELIST"), "num_machines": (2, "env SLURM_NNODES"),
        "machine_rank": (1, "env SLURM_NODEID"), "num_processes": (8, "env SLURM_GPUS_ON_NODE"),
        "main_process_port": (20000 + 4242 % 10000, "env SLURM_JOB_ID"),
    }
    args = parse_launch_args([S], config={"num_machines": 1}, environ=SLURM)  # SLURM beats the file
    argv = build_torchrun_argv(args)
    assert argv[:10] == ["--nproc-per-node", "4", "--nnodes", "2", "--node-rank", "1", "--master-addr", "gpu07",
                         "--master-port", "24242"]
    args = parse_launch_args(["--num_processes", "2", "--main_process_port", "6000", S], config={}, environ=SLURM)
    assert (args.num_processes, args.main_process_port, args.sources["main_process_ip"]) == (
        2, 6000, "env SLURM_JOB_NODELIST")  # flags beat SLURM


@pytest.mark.parametrize(
    ("extra", "wanted"),
    [
        ({"SLURM_LOCALID": "3"}, "once per node"),
        ({"SLURM_NNODES": "3"}, "SLURM_NNODES=3 but SLURM_JOB_NODELIST names 2 host"),
        ({"SLURM_NODEID": "5"}, "SLURM_NODEID=5 is outside 0..1"),
    ],
)
def test_inconsistent_slurm_variables_are_usage_errors(extra: dict[str, str], wanted: str) -> None:
    with pytest.raises(UsageError, match=re.escape(wanted)):
        slurm_settings({**SLURM, **extra})


def test_slurm_values_are_printed_on_launch(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "localhost")
    monkeypatch.setenv("SLURM_NNODES", "1")
    monkeypatch.setenv("SLURM_NODEID", "0")
    assert main(["launch", "--no_python", "true"]) == 0
    err = capfd.readouterr().err
    assert "from SLURM: main_process_ip=localhost (SLURM_JOB_NODELIST), num_machines=1 (SLURM_NNODES)" in err
