"""`overdrive launch --dynamo_backend aot_eager`: DDP(compiled module), the graph runs, weights match eager DDP."""

from __future__ import annotations

from launching import WORKERS, overdrive_launch


def test_launch_flag_compiles_inside_ddp() -> None:
    out = overdrive_launch("--num_processes", "2", "--dynamo_backend", "aot_eager", str(WORKERS / "compile_ddp.py"),
                           timeout=180).stdout
    for rank in range(2):
        assert f"COMPILED DDP OK rank={rank} " in out, out
        assert f"ALL OK rank={rank}" in out, out
