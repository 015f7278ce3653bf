"""overdrive against a hand-written DDP loop (2 processes, gloo): the final state dicts are bitwise equal."""

from __future__ import annotations

from launching import WORKERS, torchrun


def test_overdrive_equals_hand_written_ddp_bitwise() -> None:
    out = torchrun(WORKERS / "parity_ddp.py", nproc=2, timeout=180).stdout
    for rank in range(2):
        for mode in ("fp32", "accum4", "bf16", "bf16_accum4", "two_models_accum4"):
            assert f"PARITY BITWISE OK rank={rank} mode={mode}" in out, out
        assert f"TRIGGER SYNC OK rank={rank}" in out, out
        assert f"ALL OK rank={rank}" in out, out
