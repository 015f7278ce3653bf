"""`overdrive` CLI, no spawning: launch flags → torchrun argv and worker env, usage errors, --help without torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from overdrive.commands import UsageError
from overdrive.commands.cli import main
from overdrive.commands.launch import (
    build_env,
    build_single_process_cmd,
    build_torchrun_argv,
    launch_command_parser,
    parse_launch_args,
    resolve_launch_args,
)
from overdrive.settings import SETTINGS, SOURCES_VAR

S = __file__  # any script that exists


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No default config file, scheduler or settings variables of the machine running the tests leak in."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in list(os.environ):
        if var.startswith(("SLURM_", "OVERDRIVE_", "ACCELERATE_", "FSDP_")):
            monkeypatch.delenv(var)

ARGV_CASES = [
    # (launch args, expected torchrun argv)
    (["--num_processes", "2", S], ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", S]),
    (["--num-processes=2", "--multi-gpu", S], ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", S]),
    (
        ["--num_processes", "8", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.1.2.3", S],
        ["--nproc-per-node", "4", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.1.2.3",
         "--master-port", "29500", "--rdzv-conf", "timeout=60", "--max-restarts", "0", S],
    ),
    (
        ["--num-machines", "2", "--machine-rank", "0", "--main-process-ip", "h0", "--main-process-port", "6000",
         "--num_processes", "2", S],
        ["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "0", "--master-addr", "h0", "--master-port", "6000",
         "--rdzv-conf", "timeout=60", "--max-restarts", "0", S],
    ),
    (  # without --num_processes: one per machine
        ["--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "h0", S],
        ["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1", "--master-addr", "h0", "--master-port", "29500",
         "--rdzv-conf", "timeout=60", "--max-restarts", "0", S],
    ),
    (
        ["--num_processes", "2", "--main_process_port", "6001", S],
        ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", "6001", "--max-restarts", "0", S],
    ),
    (["--num_processes", "2", "--main_process_port", "0", S],
     ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", S]),
    (
        ["--num_processes", "2", "--max_restarts", "3", "--monitor-interval", "0.5", S],
        ["--nproc-per-node", "2", "--standalone", "--max-restarts", "3", "--monitor-interval", "0.5", S],
    ),
    (
        ["--num_processes", "2", "-m", "pkg.train", "--lr", "0.1"],
        ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", "--module", "pkg.train", "--lr", "0.1"],
    ),
    (
        ["--num_processes", "2", "--no_python", sys.executable, "-c", "pass"],
        ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", "--no-python", sys.executable, "-c", "pass"],
    ),
    # Everything after the script is the script's, even launcher flags, -h and --.
    (
        ["--num_processes", "2", S, "--num_processes", "7", "--cpu", "-h", "--", "x"],
        ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", S, "--num_processes", "7", "--cpu", "-h", "--",
         "x"],
    ),
    # A "--" right after the script is the script's too (argparse alone would drop it); one before it ends options.
    (["--num_processes", "2", S, "--", "-x"],
     ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", S, "--", "-x"]),
    (["--num_processes", "2", "--", S, "--", "-x"],
     ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", S, "--", "-x"]),
    (["--num_processes", "2", "-m", "pkg", "--"],
     ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", "--module", "pkg", "--"]),
    # c10d: torchrun's elastic rendezvous at the main address, a short join timeout unless --rdzv_conf sets one.
    (["--num_processes", "4", "--num_machines", "2", "--main_process_ip", "h0", "--main_process_port", "7000",
      "--rdzv_backend", "c10d", S],
     ["--nproc-per-node", "2", "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
      "h0:7000", "--rdzv-id", "overdrive-7000", "--rdzv-conf", "join_timeout=60", "--max-restarts", "0", S]),
    (["--num_machines", "2", "--main_process_ip", "h0", "--rdzv_conf", "timeout=5,read_timeout=9", S],
     ["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "0", "--master-addr", "h0", "--master-port", "29500",
      "--rdzv-conf", "timeout=5,read_timeout=9", "--max-restarts", "0", S]),
    # torchrun's own options pass through, with their values (which must not be taken for the script).
    (["--num_processes", "2", "--log-dir", "/tmp/logs", "--tee=3", "-r", "1", S, "--x"],
     ["--nproc-per-node", "2", "--standalone", "--max-restarts", "0", "--log-dir", "/tmp/logs", "--tee=3", "-r", "1",
      S, "--x"]),
]


@pytest.mark.parametrize(("launch_args", "expected"), ARGV_CASES)
def test_torchrun_argv(launch_args: list[str], expected: list[str]) -> None:
    assert build_torchrun_argv(parse_launch_args(launch_args)) == expected


ENV_CASES = [
    ([S], {}),
    (["--mixed_precision", "bf16", S], {"OVERDRIVE_MIXED_PRECISION": "bf16", "ACCELERATE_MIXED_PRECISION": "bf16"}),
    (["--mixed-precision=FP16", S], {"OVERDRIVE_MIXED_PRECISION": "fp16", "ACCELERATE_MIXED_PRECISION": "fp16"}),
    (["--cpu", S], {"OVERDRIVE_USE_CPU": "true", "ACCELERATE_USE_CPU": "true"}),
    (["--gradient_accumulation_steps", "4", S],
     {"OVERDRIVE_GRADIENT_ACCUMULATION_STEPS": "4", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}),
    (["--dynamo_backend", "Inductor", "--debug", S],
     {"OVERDRIVE_DYNAMO_BACKEND": "inductor", "ACCELERATE_DYNAMO_BACKEND": "inductor", "OVERDRIVE_DEBUG": "true",
      "ACCELERATE_DEBUG_MODE": "true"}),
    ([S, "--cpu", "--mixed_precision", "bf16"], {}),  # the script's arguments, not the launcher's
]


@pytest.mark.parametrize(("launch_args", "expected"), ENV_CASES)
def test_worker_env(launch_args: list[str], expected: dict[str, str]) -> None:
    env = build_env(parse_launch_args(launch_args))
    record = json.loads(env.pop(SOURCES_VAR, "{}"))
    assert env == expected
    # The record names, for each exported setting, the flag it came from and the text exported.
    assert {name: source for name, (source, _) in record.items()} == {
        s.name: f"flag {s.flag}" for s in SETTINGS.values() if s.env and s.env[0] in expected}


def test_every_setting_flag_is_a_launch_option_and_training_ones_export_overdrive_names() -> None:
    parser = launch_command_parser()
    options = {s for action in parser._actions for s in action.option_strings}
    for setting in SETTINGS.values():
        if setting.flag:
            assert setting.flag in options, setting.name
        if setting.group == "training":
            assert setting.env[0].startswith("OVERDRIVE_"), setting.name


def test_single_process_runs_the_target_directly() -> None:
    assert build_single_process_cmd(parse_launch_args([S, "--x"])) == [sys.executable, S, "--x"]
    assert build_single_process_cmd(parse_launch_args(["-m", "pkg.mod", "a"])) == [sys.executable, "-m", "pkg.mod", "a"]
    assert build_single_process_cmd(parse_launch_args(["--no_python", sys.executable, "-V"])) == [sys.executable, "-V"]


def test_config_layer_sits_below_flags_and_above_defaults() -> None:
    config = {"num_processes": 4, "mixed_precision": "fp16", "max_restarts": 2}
    args = resolve_launch_args(launch_command_parser().parse_args(["--num_processes", "2", S]), config)
    assert (args.num_processes, args.mixed_precision, args.max_restarts, args.num_machines) == (2, "fp16", 2, 1)


def test_single_process_launch_propagates_the_exit_code(tmp_path: pytest.TempPathFactory) -> None:
    script = tmp_path / "exit7.py"  # type: ignore[operator]
    script.write_text("import os, sys\nsys.exit(7 if os.environ['OVERDRIVE_USE_CPU'] == 'true' else 1)\n")
    assert main(["launch", "--cpu", str(script)]) == 7


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `overdrive ARGV`, expect exit code 2 and return the error text."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["launch", "--num_procs", "2", S], "'--num_procs'; did you mean '--num_processes'?"),
        (["launch", "--mixed-precison=bf16", S], "'--mixed-precison'; did you mean '--mixed-precision'?"),
        (["launch", "--machine_rnk", "1", S], "did you mean '--machine_rank'?"),
        (["launch", "--zzz", S], "unrecognized option '--zzz'"),
    ],
)
def test_unknown_flag_exits_2_with_the_closest_valid_one(
    argv: list[str], wanted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert wanted in usage_error(argv, capsys)


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["launch", "no/such/train.py"], "script 'no/such/train.py' does not exist"),
        (["launch", "--num_processes", "2"], "missing the script"),
        (["launch", "--num_processes", "0", S], "--num_processes=0 must be at least 1"),
        (["launch", "--num_machines", "0", S], "--num_machines=0 must be at least 1"),
        (["launch", "--num_machines", "2", "--machine_rank", "2", "--main_process_ip", "h", "--num_processes", "2", S],
         f"--machine_rank=2 (host {socket.gethostname()}) must be in 0..1"),
        (["launch", "--machine_rank", "-1", S], "must be in 0..0"),
        (["launch", "--num_machines", "2", "--main_process_ip", "h", "--num_processes", "3", S],
         "must be a multiple of --num_machines=2"),
        (["launch", "--num_machines", "2", "--num_processes", "2", S], "needs --main_process_ip"),
        (["launch", "--mixed_precision", "fp17", S], "'fp17' (from --mixed_precision) is not one of 'no', 'fp16'"),
        (["launch", "--gradient_accumulation_steps", "0", S], "--gradient_accumulation_steps '0' is invalid"),
        (["launch", "--max_restarts", "-1", S], "--max_restarts=-1 must be 0 or more"),
        (["launch", "--main_process_port", "70000", S], "--main_process_port '70000' is invalid: 70000 is not a TCP port"),
        (["launch", "-m", "--no_python", "pkg"], "--module and --no_python exclude each other"),
        (["launch", "--num_processes", "two", S], "--num_processes 'two' is invalid"),
        (["launch", "--nproc_per_node", "2", S], "torchrun's --nproc_per_node is derived by overdrive launch; pass "
         "--num_processes"),
        (["launch", "--fsdp_offload_params", "true", S], "--fsdp_offload_params only applies with --use_fsdp"),
        (["launch", "--zero_stage", "2", S], "--zero_stage only applies with --use_deepspeed"),
        (["launch", "--use_fsdp", "--use_deepspeed", S], "exclude each other"),
        (["launch", "--config_file", "/no/such.yaml", S], "--config_file '/no/such.yaml' does not exist"),
        (["launch", "--rdzv_backend", "zk", S], "rdzv_backend='zk' (from --rdzv_backend) is not one of 'static', 'c10d'"),
    ],
)
def test_bad_values_exit_2_naming_the_value(argv: list[str], wanted: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert wanted in usage_error(argv, capsys)


def test_parse_launch_args_raises_usage_error() -> None:
    with pytest.raises(UsageError, match="did you mean '--num_processes'"):
        parse_launch_args(["--num_process", "2", S])


def test_single_process_script_gets_its_arguments_verbatim(tmp_path: pytest.TempPathFactory) -> None:
    script = tmp_path / "echo_args.py"  # type: ignore[operator]
    script.write_text("import sys\nsys.exit(0 if sys.argv[1:] == ['--', '-h', '--num_processes', '3'] else 9)\n")
    assert main(["launch", str(script), "--", "-h", "--num_processes", "3"]) == 0


def test_no_command_prints_help_and_returns_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "launch" in capsys.readouterr().err


HEAVY = ("torch", "numpy")


@pytest.mark.parametrize("argv", [["--help"], ["launch", "--help"]])
def test_help_does_not_import_torch(argv: list[str]) -> None:
    # The real entry point (`python -m overdrive.commands.cli`), with Python's import log on stderr.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "overdrive.commands.cli", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: overdrive" in proc.stdout, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert not {m for m in imported if m.split(".")[0] in HEAVY}, sorted(imported)
    # And through main() itself, as the console script calls it.
    code = ("import sys\nfrom overdrive.commands import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nprint('HEAVY', [m for m in ('torch', 'numpy') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
