"""CUDA: FSDP2 with a bf16 MixedPrecisionPolicy on nccl, one process, against a plain PyTorch bf16-autocast loop.

Runs in a torchrun subprocess (one process): the strategy forms its own one-rank nccl group, which must not leak
into the other GPU tests of this pytest process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import sys
import torch, torch.distributed as dist, torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from overdrive import Accelerator, FullyShardedDataParallelPlugin

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)
    def forward(self, x):
        return x + torch.nn.functional.gelu(self.fc(x))

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), Block(), Block(), nn.Linear(64, 4))

g = torch.Generator().manual_seed(1)
batches = [(torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)) for _ in range(12)]

ref = model().cuda()
opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
ref_losses = []
for x, y in batches:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = ref(x.cuda())
    loss = F.mse_loss(out.float(), y.cuda())
    loss.backward(); opt.step(); opt.zero_grad()
    ref_losses.append(loss.item())

plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["Block"])
acc = Accelerator(mixed_precision="bf16", fsdp_plugin=plugin)
m = model()
o = torch.optim.Adam(m.parameters(), lr=1e-3)
m, o = acc.prepare(m, o)
assert dist.get_backend() == "nccl" and acc.distributed_type == "FSDP"
assert isinstance(m, FSDPModule) and all(isinstance(p, DTensor) and p.device.type == "cuda" for p in m.parameters())
seen = []
m[1].fc.register_forward_pre_hook(lambda mod, args: seen.append(mod.weight.dtype))
losses = []
for x, y in batches:
    loss = F.mse_loss(m(x.to(acc.device)), y.to(acc.device))
    acc.backward(loss); o.step(); o.zero_grad()
    losses.append(loss.item())
assert set(seen) == {torch.bfloat16}, seen
assert all(p.dtype == torch.float32 for grp in o.param_groups for p in grp["params"])
worst = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
assert worst <= 2e-2, (losses, ref_losses)
sys.stdout.write(f"FSDP2 BF16 GPU OK worst_rel={worst:.2e}\n")
'''


def test_fsdp2_bf16_one_gpu_nccl(tmp_path: Path) -> None:
    assert torch.cuda.is_available()
    script = tmp_path / "fsdp_gpu_probe.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", str(script)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FSDP2 BF16 GPU OK" in proc.stdout, proc.stdout + proc.stderr
