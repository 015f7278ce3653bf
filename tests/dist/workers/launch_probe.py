"""Worker for tests/dist/test_launch.py: checks what `overdrive launch` gave this process, prints `OK rank=<r> ...`.

Prints its arguments exactly as received as `argv=[...]` (to show they pass through unchanged); a leading `--` is
skipped before parsing. Options (others are ignored):
    --world N            expected WORLD_SIZE (1: no torchrun, no process group)
    --expect NAME=VALUE  setting NAME arrived as its OVERDRIVE_* variable with VALUE and resolves to it
    --expect_unset NAME  setting NAME's OVERDRIVE_* variable is not set
    --fail_rank R --exit_code C [--fail_attempts K]
                         rank R exits with C before joining the group, on restart attempts < K (default: always)
    --final_exit C       exit with C after the checks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta


def say(line: str) -> None:
    """One write per line: ranks share the launcher's stdout, and print()'s separate newline write can interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--expect", action="append", default=[])
    parser.add_argument("--expect_unset", action="append", default=[])
    parser.add_argument("--fail_rank", type=int, default=-1)
    parser.add_argument("--exit_code", type=int, default=1)
    parser.add_argument("--fail_attempts", type=int, default=1_000_000)
    parser.add_argument("--final_exit", type=int, default=0)
    received = sys.argv[1:]
    args, _ = parser.parse_known_args(received[1:] if received[:1] == ["--"] else received)

    rank = int(os.environ.get("RANK", "0"))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if rank == args.fail_rank and attempt < args.fail_attempts:
        say(f"FAIL rank={rank} attempt={attempt} exit={args.exit_code}")
        return args.exit_code

    import torch
    import torch.distributed as dist

    from overdrive.settings import SETTINGS, resolve_value
    from overdrive.state import PartialState

    assert int(os.environ.get("WORLD_SIZE", "1")) == args.world, (rank, os.environ.get("WORLD_SIZE"))
    for item in args.expect:
        name, value = item.split("=", 1)
        var = SETTINGS[name].env[0]
        assert os.environ.get(var) == value, (rank, var, os.environ.get(var), value)
        assert resolve_value(name) == SETTINGS[name].parse(value), (rank, name, resolve_value(name), value)
    for name in args.expect_unset:
        var = SETTINGS[name].env[0]
        assert var not in os.environ, (rank, var, os.environ[var])

    state = PartialState(timeout=timedelta(seconds=60))  # no cpu=True: WORLD_SIZE > 1 alone forms the group
    assert state.num_processes == args.world and state.process_index == rank, (rank, repr(state))
    if args.world > 1:
        assert dist.is_initialized() and dist.get_backend() == "gloo", (rank, dist.is_initialized())
        assert state.device.type == "cpu", (rank, state.device)
        gathered = [torch.zeros(1, dtype=torch.long) for _ in range(args.world)]
        dist.all_gather(gathered, torch.tensor([rank]))
        ranks = [int(t.item()) for t in gathered]
        assert ranks == list(range(args.world)), (rank, ranks)
    else:
        assert not dist.is_initialized() and "TORCHELASTIC_RUN_ID" not in os.environ, rank

    node = os.environ.get("GROUP_RANK", "0")
    say(f"OK rank={rank} world={args.world} node={node} attempt={attempt} argv={json.dumps(received)}")
    if args.world > 1:
        dist.barrier()
        state.destroy_process_group()  # avoids gloo's exit abort (FACTS.md)
    return args.final_exit


if __name__ == "__main__":
    sys.exit(main())
