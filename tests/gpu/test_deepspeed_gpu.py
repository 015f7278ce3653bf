"""CUDA: DeepSpeed ZeRO-2 and ZeRO-3 with fp16 and bf16 on nccl, one process, against a plain fp32 PyTorch loop.

Runs in a torchrun subprocess (one process per GPU machine here): DeepSpeed's engine and its process group must not
leak into the other GPU tests of this pytest process. Skipped without CUDA (tests/gpu/conftest.py) or DeepSpeed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: pip install -e '.[deepspeed]'")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import sys
import torch, torch.nn.functional as F
from torch import nn
from overdrive import Accelerator, DeepSpeedPlugin
from overdrive.state import AcceleratorState, GradientState

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))

g = torch.Generator().manual_seed(1)
x_all, y_all = torch.randn(96, 16, generator=g), torch.randn(96, 4, generator=g)

ref = model().cuda()
opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
ref_losses = []
for j in range(12):
    x, y = x_all[j * 8:(j + 1) * 8].cuda(), y_all[j * 8:(j + 1) * 8].cuda()
    loss = F.mse_loss(ref(x), y)
    loss.backward(); torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0); opt.step(); opt.zero_grad()
    ref_losses.append(loss.item())

for stage in (2, 3):
    for mp, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        AcceleratorState._reset_state(); GradientState._reset_state()
        acc = Accelerator(mixed_precision=mp, deepspeed_plugin=DeepSpeedPlugin(zero_stage=stage, gradient_clipping=1.0))
        m = model()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_all, y_all), batch_size=8)
        m, o, loader = acc.prepare(m, torch.optim.Adam(m.parameters(), lr=1e-3), loader)
        assert acc.device.type == "cuda" and next(m.parameters()).dtype == dtype, (acc.device, next(m.parameters()).dtype)
        assert acc.scaler is None and acc.strategy.config[mp]["enabled"] is True
        losses = []
        for x, y in loader:
            with acc.accumulate(m):
                loss = F.mse_loss(m(x.to(dtype)).float(), y)
                acc.backward(loss); o.step(); o.zero_grad()
                losses.append(loss.item())
        gap = max(abs(a - b) / b for a, b in zip(losses, ref_losses))
        assert gap < 0.05, (stage, mp, losses, ref_losses)
        state = acc.get_state_dict(m)
        assert sorted(state) == sorted(ref.state_dict()), sorted(state)
        sys.stdout.write(f"GPU DEEPSPEED OK zero{stage} {mp} loss_rel_gap={gap:.1e}\n")
'''


def test_zero2_zero3_fp16_bf16_on_cuda(tmp_path: Path) -> None:
    script = tmp_path / "ds_gpu.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in (2, 3):
        for mp in ("fp16", "bf16"):
            assert f"GPU DEEPSPEED OK zero{stage} {mp}" in proc.stdout, proc.stdout
