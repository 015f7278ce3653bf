"""Real `overdrive launch` runs from config files, on two "machines" of one host (flags, c10d, SLURM variables),
pre-flight faults with their bound, the Python launchers and `overdrive test`.

Training runs use `overdrive.commands.sanity` (the worker of `overdrive test`), which trains a tiny model on every
rank and compares its weights with a plain single-process PyTorch loop over the same global batches.
"""

from __future__ import annotations

import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launching import ROOT, WORKERS, overdrive_launch, run_cmd, worker_env

pytestmark = pytest.mark.dist

PROBE = str(WORKERS / "launch_probe.py")
CLI = [sys.executable, "-m", "overdrive.commands.cli"]
SANITY_OK = re.compile(r"overdrive test: rank (\d) of 2 OK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """No default config file of this machine, no scheduler or settings variables of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OVERDRIVE_", "ACCELERATE_"))}
    env.update({"HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra or {})
    return env


def _ok_ranks(output: str) -> list[int]:
    return sorted(int(r) for r in SANITY_OK.findall(output))


def test_accelerate_default_config_launches_two_cpu_processes_in_bf16(tmp_path: Path) -> None:
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    path = tmp_path / "hf" / "accelerate" / "default_config.yaml"  # Accelerate's default location, no overdrive file
    path.parent.mkdir(parents=True)
    config_args.ClusterConfig(compute_environment="LOCAL_MACHINE", distributed_type="MULTI_CPU", mixed_precision="bf16",
                              use_cpu=True, debug=False, num_processes=2).to_yaml_file(str(path))
    proc = overdrive_launch(PROBE, "--world", "2", "--expect", "mixed_precision=bf16", "--expect", "cpu=true",
                            env=_env(tmp_path))
    assert len(re.findall(r"OK rank=\d world=2", proc.stdout)) == 2, proc.stdout + proc.stderr
    # The same file through --config_file trains on its 2 processes; the flag overrides the file's bf16 because
    # the sanity run compares with an fp32 reference to 1e-6.
    proc = run_cmd([*CLI, "launch", "--config_file", str(path), "--mixed_precision", "no", "-m",
                    "overdrive.commands.sanity"], env=_env(tmp_path))
    assert _ok_ranks(proc.stdout) == [0, 1], proc.stdout + proc.stderr


class Terminal:
    """A child process on a pseudo-terminal: `expect` waits for text, `send` types a line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:
                    break
        assert text in self.seen, f"waited for {text!r}; the terminal shows:\n{self.seen}"
        self.seen = self.seen[self.seen.index(text) + len(text):]

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())


def test_questionnaire_written_in_a_terminal_launches(tmp_path: Path) -> None:
    env = _env(tmp_path, {"PYTHONPATH": str(ROOT / "src")})
    term = Terminal([*CLI, "config"], env)  # default location: $HF_HOME/overdrive/default_config.yaml
    try:
        for prompt, answer in [("Which kind of run?", "1"), ("How many machines", ""),
                               ("How many processes in total", "2"), ("torch.compile", ""), ("Mixed precision", "2"),
                               ("collectives", "")]:
            term.expect(prompt)
            term.send(answer)
        term.expect("Saved")
    finally:
        code = term.proc.wait(timeout=30)
        os.close(term.master)
    assert code == 0
    assert (tmp_path / "hf" / "overdrive" / "default_config.yaml").is_file()
    proc = overdrive_launch(PROBE, "--world", "2", "--expect", "mixed_precision=bf16", "--expect", "cpu=true",
                            env=env)
    assert len(re.findall(r"OK rank=\d world=2", proc.stdout)) == 2, proc.stdout + proc.stderr


def _two_machines(argvs: list[list[str]], envs: list[dict[str, str]], timeout: float = 150
                  ) -> list[subprocess.CompletedProcess[str]]:
    """Start one launcher per "machine" (own session each), wait for all, kill all on timeout; report everything."""
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True) for argv, env in zip(argvs, envs)]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for argv, proc in zip(argvs, procs):
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        report = "\n".join(f"--- machine {i} ---\n" + "\n".join(p.communicate()) for i, p in enumerate(procs))
        pytest.fail(f"two-machine launch timed out after {timeout}s\n{report}")
    return results


def _report(results: list[subprocess.CompletedProcess[str]]) -> str:
    return "\n".join(f"--- machine {i} (exit {r.returncode}) ---\n{r.stdout}\n{r.stderr}" for i, r in enumerate(results))


@pytest.mark.parametrize("backend", ["static", "c10d"])
def test_two_machines_train_together(backend: str, tmp_path: Path) -> None:
    port = str(_free_port())
    argvs = [[*CLI, "launch", "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
              "--main_process_port", port, "--num_processes", "2", "--rdzv_backend", backend,
              "--preflight_timeout", "60", "-m", "overdrive.commands.sanity"] for rank in (0, 1)]
    results = _two_machines(argvs, [worker_env(_env(tmp_path))] * 2)
    assert [r.returncode for r in results] == [0, 0], _report(results)
    assert _ok_ranks(results[0].stdout + results[1].stdout) == [0, 1], _report(results)
    assert "checked in" in results[0].stderr and "reached machine 0" in results[1].stderr, _report(results)


def test_two_machines_from_slurm_variables(tmp_path: Path) -> None:
    # The job id decides the port (20000 + id % 10000): pick one whose port is free now.
    while True:
        job = random.randrange(1, 10**6)
        try:
            with socket.socket() as sock:
                sock.bind(("", 20000 + job % 10000))
            break
        except OSError:
            continue
    base = {"SLURM_JOB_ID": str(job), "SLURM_JOB_NODELIST": "localhost,localhost", "SLURM_NNODES": "2",
            "SLURM_LOCALID": "0", "OVERDRIVE_PREFLIGHT_TIMEOUT": "60"}
    envs = [worker_env(_env(tmp_path, {**base, "SLURM_NODEID": str(rank)})) for rank in (0, 1)]
    results = _two_machines([[*CLI, "launch", "-m", "overdrive.commands.sanity"]] * 2, envs)
    assert [r.returncode for r in results] == [0, 0], _report(results)
    assert _ok_ranks(results[0].stdout + results[1].stdout) == [0, 1], _report(results)
    for rank, result in enumerate(results):
        assert (f"from SLURM: main_process_ip=localhost (SLURM_JOB_NODELIST), num_machines=2 (SLURM_NNODES), "
                f"machine_rank={rank} (SLURM_NODEID), main_process_port={20000 + job % 10000} (SLURM_JOB_ID)"
                ) in result.stderr, _report(results)


# -- pre-flight faults: each fails within 10 s, naming the host/rank and the fix -----------------------------------

BOUND_S = 10.0
HOST = socket.gethostname()


def _launch_machine(rank: int, port: int, *extra: str, ip: str = "127.0.0.1", processes: int = 2,
                    env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    argv = [*CLI, "launch", "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", ip,
            "--main_process_port", str(port), "--num_processes", str(processes), *extra, PROBE, "--world", "2"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _finish(proc: subprocess.Popen[str], start: float) -> tuple[int, str, float]:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"a pre-flight fault did not fail within 60 s:\n{out}\n{err}")
    return proc.returncode, out + err, time.monotonic() - start


def test_busy_main_process_port_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as other_job:
        other_job.bind(("127.0.0.1", 0))
        other_job.listen()
        port = other_job.getsockname()[1]
        start = time.monotonic()
        code, output, took = _finish(_launch_machine(0, port, env=worker_env(_env(tmp_path))), start)
    assert code == 1 and took < BOUND_S, (took, output)
    assert f"machine_rank 0 (host {HOST}): main_process_port {port} is already in use on this machine" in output
    assert re.search(r"pass a free port to every machine, e\.g\. --main_process_port \d+", output), output


def test_unreachable_main_address_fails_fast(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens on 127.0.0.2 at this port
    start = time.monotonic()
    code, output, took = _finish(_launch_machine(1, port, ip="127.0.0.2", env=worker_env(_env(tmp_path))), start)
    assert code == 1 and took < BOUND_S, (took, output)
    assert f"machine_rank 1 (host {HOST}): nothing accepts connections at 127.0.0.2:{port}" in output, output
    assert "--main_process_ip 127.0.0.2 is its address as seen from this machine" in output, output


def test_mismatched_world_size_fails_fast_on_both_machines(tmp_path: Path) -> None:
    port = _free_port()
    env = worker_env(_env(tmp_path))
    start = time.monotonic()
    main = _launch_machine(0, port, processes=2, env=env)
    worker = _launch_machine(1, port, processes=4, env=env)
    results = [_finish(main, start), _finish(worker, start)]
    for code, output, took in results:
        assert code == 1 and took < BOUND_S, (took, output)
        assert (f"machine_rank 1 (host {HOST}) was started with --num_machines 2 --num_processes 4 --rdzv_backend "
                f"static, but machine_rank 0 (host {HOST}) with --num_machines 2 --num_processes 2") in output, output
        assert "pass the same --num_processes on every machine" in output, output


def test_machine_rank_out_of_range_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    code, output, took = _finish(_launch_machine(2, _free_port(), env=worker_env(_env(tmp_path))), start)
    assert code == 2 and took < BOUND_S, (took, output)
    assert f"--machine_rank=2 (host {HOST}) must be in 0..1 (--num_machines=2); number the machines from 0" in output


def test_missing_machine_fails_within_the_preflight_window(tmp_path: Path) -> None:
    start = time.monotonic()
    code, output, took = _finish(_launch_machine(0, _free_port(), "--preflight_timeout", "2",
                                                 env=worker_env(_env(tmp_path))), start)
    assert code == 1 and took < BOUND_S, (took, output)
    assert f"machine_rank 0 (host {HOST}): machine_rank(s) 1 did not check in within 2 s" in output, output


# -- Python launchers and `overdrive test` ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["notebook", "debug"])
def test_python_launchers_run_the_function_on_two_ranks(kind: str, tmp_path: Path) -> None:
    argv = [sys.executable, str(WORKERS / "cli_notebook.py"), kind]
    if kind == "notebook":
        argv.append(str(_free_port()))
    proc = run_cmd(argv, env=_env(tmp_path))
    assert _ok_ranks(proc.stdout) == [0, 1] and "LAUNCHER DONE" in proc.stdout, proc.stdout + proc.stderr


def test_overdrive_test_passes(tmp_path: Path) -> None:
    proc = run_cmd([*CLI, "test"], env=_env(tmp_path))
    assert _ok_ranks(proc.stdout) == [0, 1] and "overdrive test: passed" in proc.stdout, proc.stdout + proc.stderr
