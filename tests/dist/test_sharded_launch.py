"""The sharding settings reach the engines from the command line and from an Accelerate config file, translated in
one place (the launcher exports Accelerate's FSDP_* / ACCELERATE_DEEPSPEED_* variables, the plugins read them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launching import WORKERS, overdrive_launch

PROBE = str(WORKERS / "sharded_launch_probe.py")


def records(out: str) -> list[dict]:
    found = [json.loads(line.split("SHARDED ", 1)[1]) for line in out.splitlines() if "SHARDED " in line]
    return sorted(found, key=lambda r: r["rank"])


def test_fsdp_flags_shard_the_model() -> None:
    out = overdrive_launch("--num_processes", "2", "--cpu", "--use_fsdp", "--fsdp_version", "2",
                           "--fsdp_auto_wrap_policy", "SIZE_BASED_WRAP", "--fsdp_min_num_params", "100",
                           "--fsdp_state_dict_type", "SHARDED_STATE_DICT", PROBE, timeout=180).stdout
    got = records(out)
    assert [r["rank"] for r in got] == [0, 1], out
    for r in got:
        assert r["type"] == "FSDP" and r["fsdp_version"] == 2 and r["dtensor"] == "DTensor", r
        assert "SIZE_BASED" in r["wrap"].upper() and r["min_num_params"] == 100, r
        assert "SHARDED_STATE_DICT" in r["state_dict_type"], r


def test_deepspeed_flags_pick_the_zero_stage() -> None:
    pytest.importorskip("deepspeed", reason="deepspeed is not installed: DS_BUILD_OPS=0 pip install deepspeed")
    out = overdrive_launch("--num_processes", "2", "--cpu", "--use_deepspeed", "--zero_stage", "2",
                           "--gradient_clipping", "1.0", PROBE, timeout=420).stdout
    got = records(out)
    assert [(r["type"], r["zero_stage"], r["clipping"]) for r in got] == [("DEEPSPEED", 2, 1.0)] * 2, out


def test_accelerate_config_file_with_fsdp_config(tmp_path: Path) -> None:
    config = tmp_path / "fsdp.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_machines: 1\nnum_processes: 2\n"
        "use_cpu: true\nmixed_precision: bf16\nfsdp_config:\n  fsdp_version: 2\n"
        "  fsdp_auto_wrap_policy: NO_WRAP\n  fsdp_state_dict_type: FULL_STATE_DICT\n"
    )
    got = records(overdrive_launch("--config_file", str(config), PROBE, timeout=180).stdout)
    assert len(got) == 2
    for r in got:
        assert (r["type"], r["mixed_precision"], r["fsdp_version"]) == ("FSDP", "bf16", 2), r
        assert r["wrap"] == "None" and "FULL_STATE_DICT" in r["state_dict_type"], r  # NO_WRAP: no policy
