"""`overdrive estimate-memory` against a hand computation for a model of known size, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from overdrive.commands.estimate import estimate

FACTORY = '''
import torch.nn as nn

class Tied(nn.Module):
    def __init__(self, vocab=50, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)          # 400 parameters
        self.mid = nn.Linear(dim, dim)                  # 64 + 8
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight            # tied: counted once

def make(**kwargs):
    return Tied(**kwargs)
'''
P = 50 * 8 + 8 * 8 + 8  # 472 parameters


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "overdrive.commands.cli", "estimate-memory", *args],
                          capture_output=True, text=True, timeout=120)


def hand(world: int, dtype: str) -> dict[str, tuple[int, int, int]]:
    """Adam, written out per engine: (parameters, gradients, optimizer) bytes on one rank."""
    shard = -(-P // world)  # ceil
    h = 4 if dtype == "fp32" else 2
    master = 0 if dtype == "fp32" else 4
    return {
        "DDP": (4 * P, 4 * P, 8 * P),
        "FSDP2": (4 * shard, 4 * shard, 8 * shard),
        "ZeRO-1": (h * P, h * P, (8 + master) * shard),
        "ZeRO-2": (h * P, h * shard, (8 + master) * shard),
        "ZeRO-3": (h * shard, h * shard, (8 + master) * shard),
    }


def test_cli_table_matches_hand_computation(tmp_path: Path) -> None:
    (tmp_path / "tied.py").write_text(FACTORY)
    out = cli(f"{tmp_path / 'tied.py'}:make", "--num_processes", "1", "3", "--bytes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(f"{tmp_path / 'tied.py'}:make: {P:,} parameters")
    rows = [line.split() for line in out.stdout.splitlines()[3:]]
    assert len(rows) == 2 * 3 * 5
    for world_s, dtype, engine, params, grads, opt, total in rows:
        expected = hand(int(world_s), dtype)[engine]
        assert (int(params), int(grads), int(opt)) == expected, (world_s, dtype, engine)
        assert int(total) == sum(expected)


def test_json_config_passes_the_factory_arguments(tmp_path: Path) -> None:
    (tmp_path / "tied.py").write_text(FACTORY)
    sys.path.insert(0, str(tmp_path))
    config = tmp_path / "model.json"
    config.write_text(json.dumps({"factory": "tied:make", "kwargs": {"vocab": 10, "dim": 4}}))
    out = subprocess.run([sys.executable, "-m", "overdrive.commands.cli", "estimate-memory", str(config),
                          "--num_processes", "2", "--dtypes", "bf16", "--bytes"], capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    sys.path.remove(str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{config}: {10 * 4 + 16 + 4:,} parameters")


def test_bad_model_names_are_clear_errors(tmp_path: Path) -> None:
    bad = cli("no_such_module_here:make")
    assert bad.returncode == 2 and "cannot import 'no_such_module_here'" in bad.stderr
    needs_args = cli("torch.nn:Linear")
    assert needs_args.returncode == 2 and "building 'torch.nn:Linear' failed" in needs_args.stderr
    assert '"kwargs"' in needs_args.stderr
    with pytest.raises(ValueError, match="dtype='fp8'"):
        estimate(10, 1, "fp8")


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from overdrive.commands.cli import main\n"
            "try:\n    main(['estimate-memory', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False"
