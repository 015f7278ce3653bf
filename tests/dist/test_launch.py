"""Real `overdrive launch` runs: processes, process group, settings, failures, restarts, modules, two machines."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from launching import ROOT, WORKERS, overdrive_launch, worker_env

pytestmark = pytest.mark.dist

PROBE = str(WORKERS / "launch_probe.py")


def ok_lines(output: str) -> dict[int, str]:
    """The probe's `OK rank=<r> ...` records by rank (found anywhere in a line: ranks share one stdout)."""
    records = re.findall(r"OK rank=\d+ [^\n]*?argv=\[[^\]\n]*\]", output)
    return {int(rec.split()[1].split("=")[1]): rec for rec in records}


def test_two_processes_form_a_gloo_group_and_receive_settings() -> None:
    # The user's ACCELERATE_* variable loses to the flag, which arrives as OVERDRIVE_*; everything after the script
    # is the script's own and arrives verbatim, even "--" and `--num_processes 7 --cpu`.
    script_args = ["--", "--world", "2", "--expect", "mixed_precision=bf16", "--expect",
                   "gradient_accumulation_steps=4", "--expect_unset", "cpu", "--num_processes", "7", "--cpu"]
    proc = overdrive_launch(
        "--num-processes", "2", "--mixed_precision", "bf16", "--gradient_accumulation_steps", "4", PROBE, *script_args,
        env={"ACCELERATE_MIXED_PRECISION": "fp16"},
    )
    oks = ok_lines(proc.stdout)
    assert sorted(oks) == [0, 1], proc.stdout + proc.stderr
    for line in oks.values():
        assert "world=2" in line
        assert json.loads(line.split("argv=", 1)[1]) == script_args


def test_a_failing_rank_fails_the_launch_and_is_named() -> None:
    proc = overdrive_launch(
        "--num_processes", "2", "--debug", PROBE, "--world", "2", "--fail_rank", "1", "--exit_code", "3",
        check=False,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    summary = [line for line in proc.stderr.splitlines() if line.startswith("overdrive launch:")]
    assert len(summary) == 1, proc.stderr
    assert "rank 1 (local rank 1) exited with code 3" in summary[0], proc.stderr
    assert "FAILED" in proc.stderr  # --debug adds torchrun's own report


def test_module_launch_with_cpu_flag_survives_a_restart() -> None:
    # Rank 1 fails on the first attempt only; --max_restarts 1 lets torchrun start the group again.
    pythonpath = os.pathsep.join([str(ROOT / "src"), str(WORKERS)])
    proc = overdrive_launch(
        "--num_processes", "2", "--cpu", "--max_restarts", "1", "--monitor_interval", "0.2", "-m", "launch_probe",
        "--world", "2", "--expect", "cpu=true", "--fail_rank", "1", "--exit_code", "3", "--fail_attempts", "1",
        env={"PYTHONPATH": pythonpath},
    )
    assert "FAIL rank=1 attempt=0" in proc.stdout, proc.stdout
    oks = ok_lines(proc.stdout)
    assert sorted(oks) == [0, 1] and all("attempt=1" in line for line in oks.values()), proc.stdout


def test_single_process_runs_the_script_directly_and_returns_its_exit_code() -> None:
    proc = overdrive_launch(
        "--cpu", "--mixed_precision", "BF16", PROBE, "--world", "1", "--expect", "cpu=true",
        "--expect", "mixed_precision=bf16", "--final_exit", "5", check=False,
    )
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert sorted(ok_lines(proc.stdout)) == [0], proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_machines_meet_through_static_rendezvous() -> None:
    # Two launchers on this host play machine 0 and machine 1, one process each.
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "overdrive.commands.cli", "launch", "--num_machines", "2", "--machine_rank",
             str(machine), "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--num_processes", "2",
             PROBE, "--world", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=worker_env(), start_new_session=True,
        )
        for machine in (0, 1)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers: a session of their own
        outputs = [proc.communicate()[0] for proc in procs]
        pytest.fail("two-machine launch timed out\n" + "\n--- next machine ---\n".join(outputs))
    report = "\n--- next machine ---\n".join(outputs)
    assert [proc.returncode for proc in procs] == [0, 0], report
    for machine, output in enumerate(outputs):
        oks = ok_lines(output)
        assert list(oks) == [machine] and f"node={machine}" in oks[machine], report
