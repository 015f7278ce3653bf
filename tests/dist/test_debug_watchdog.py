"""Debug mode, the hang watchdog and find_executable_batch_size agreement, on 2 real gloo ranks under torchrun.

Each launch has a wall-clock bound; each check asserts what the error says (every rank's operation and file:line,
or the stuck rank's stack) and how fast it came (measured inside the workers, or from the stuck moment to the end
of the launch).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from launching import WORKERS, torchrun

pytestmark = pytest.mark.dist

WORKER = WORKERS / "debug_checks.py"
SOURCE = WORKER.read_text().splitlines()


def line_of(marker: str) -> str:
    """``debug_checks.py:N`` of the line carrying the comment ``# <marker>``."""
    [n] = [i + 1 for i, text in enumerate(SOURCE) if text.rstrip().endswith(f"# <{marker}>")]
    return f"debug_checks.py:{n}"


def site_pattern(expected: str) -> str:
    """Regex for ``expected`` where ``{marker}`` matches any path ending in that marker's ``debug_checks.py:N``."""
    parts = re.split(r"\{([a-z-]+)\}", expected)  # text, marker, text, ...
    return "".join(re.escape(p) if i % 2 == 0 else r"\S*" + re.escape(line_of(p)) for i, p in enumerate(parts))


def records(out: str, tag: str) -> dict[int, dict]:
    """Per rank, the JSON payload of its ``[rank r] TAG {...}`` line."""
    found = {}
    for m in re.finditer(rf"\[rank (\d)\] {tag} (\{{.*\}})", out):
        found[int(m.group(1))] = json.loads(m.group(2))
    return found


def show(proc) -> str:
    return f"\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


@pytest.mark.parametrize(
    "scenario, expected",
    [
        ("skip", ["rank 0: gather(float32[2, 3]) at {skip-gather}", "rank 1: reduce(float32[], reduction='sum') at "
                  "{skip-reduce}", "different collectives"]),
        ("shape", ["rank 0: gather(float32[2, 3]) at {shape-gather}", "rank 1: gather(float32[2, 4]) at "
                   "{shape-gather}", "incompatible shapes"]),
        ("op", ["rank 0: reduce(float32[2, 3], reduction='sum') at {op-reduce}", "rank 1: gather(float32[2, 3]) at "
                "{op-gather}", "different collectives"]),
    ],
)
def test_debug_mode_mismatch_fails_fast_on_every_rank(scenario, expected):
    env = {"OVERDRIVE_DEBUG": "1", "OVERDRIVE_DEBUG_TIMEOUT": "5", "OVERDRIVE_WATCHDOG_TIMEOUT": "60"}
    proc = torchrun(WORKER, scenario, env=env, timeout=90, check=False)
    assert proc.returncode != 0, show(proc)
    caught = records(proc.stdout, "CAUGHT")
    assert sorted(caught) == [0, 1], "every rank must raise" + show(proc)
    # "{marker}" stands for the worker's path (as the launch's working directory shows it) and that line's number.
    wanted = [site_pattern(e) for e in expected]
    for rank, rec in caught.items():
        for pattern in wanted:
            assert re.search(pattern, rec["message"]), f"rank {rank} lacks {pattern!r}" + show(proc)
        assert rec["seconds"] < 5.0, f"rank {rank} took {rec['seconds']:.2f} s" + show(proc)
    assert "NO ERROR" not in proc.stdout


def test_debug_mode_clean_run_gives_plain_results():
    proc = torchrun(WORKER, "clean", env={"OVERDRIVE_DEBUG": "1", "OVERDRIVE_WATCHDOG_TIMEOUT": "60"}, timeout=90)
    assert proc.stdout.count("CLEAN OK") == 2, show(proc)


def test_watchdog_dumps_the_stuck_rank_and_stops_the_job():
    threshold = 3.0
    proc = torchrun(WORKER, "stuck", env={"OVERDRIVE_WATCHDOG_TIMEOUT": str(threshold)}, timeout=90, check=False)
    ended = time.time()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "NO HANG DETECTED" not in out, show(proc)
    start = max(rec["time"] for rec in records(proc.stdout, "STUCK START").values())
    # Detection after `threshold`, polling every threshold/10, every rank dumps, then the launcher stops: a bound
    # of threshold + 4 s (the process-group timeout is 60 s, the default watchdog 600 s).
    assert ended - start < threshold + 4.0, f"took {ended - start:.1f} s" + show(proc)
    assert re.search(site_pattern("rank 0 waited") + r" [\d.]+ s .*in gather called at " +
                     site_pattern("{stuck-gather}"), out), show(proc)
    stuck_stack = [line for line in out.splitlines() if "[rank 1]" in line]
    assert any("in spin_forever" in line for line in stuck_stack), show(proc)
    assert any("while True:  # <stuck-loop>" in line for line in stuck_stack), show(proc)
    assert "rank 1/2: not inside an overdrive collective" in out, show(proc)
    assert "exit code 86" in out, show(proc)


def test_oom_on_one_rank_converges_to_one_batch_size():
    proc = torchrun(WORKER, "oom", env={"OOM_LIMIT": "20", "OVERDRIVE_WATCHDOG_TIMEOUT": "30"}, timeout=120)
    result = records(proc.stdout, "OOM RESULT")
    assert sorted(result) == [0, 1], show(proc)
    assert result[0] == result[1], "ranks must agree on every size tried" + show(proc)
    rec = result[0]
    assert rec["size"] == 16 and rec["tried"] == [64, 32, 16], show(proc)
    assert len(rec["tried"]) - 1 <= rec["bound"], show(proc)  # retries <= log2(start/size) + 1
    assert proc.stdout.count("OOM OK") == 2, show(proc)  # weights matched the reference on both ranks


def test_non_oom_error_on_one_rank_stops_the_others():
    proc = torchrun(WORKER, "oom_error", env={"OOM_LIMIT": "20", "OVERDRIVE_WATCHDOG_TIMEOUT": "30"}, timeout=120)
    result = records(proc.stdout, "OOM_ERROR")
    assert sorted(result) == [0, 1], show(proc)
    assert result[1]["type"] == "ValueError" and "not out-of-memory" in result[1]["message"], show(proc)
    assert result[0]["type"] == "RuntimeError" and "rank(s) [1]" in result[0]["message"], show(proc)
    assert all(r["seconds"] < 10 for r in result.values()), show(proc)
