"""CUDA: nccl process group, fp16 with loss scaling, bf16, checked against a plain PyTorch loop on the GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4))


def _batches(n: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)) for _ in range(n)]


def _reference(mp: str) -> list[float]:
    model = _model().cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if mp == "fp16" else None
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp)
    losses = []
    for x, y in _batches():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            out = model(x.cuda())
        loss = F.mse_loss(out.float(), y.cuda())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    from overdrive.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize("mp", ["no", "fp16", "bf16"])
def test_single_gpu_precision_matches_plain_torch(mp: str) -> None:
    from overdrive import Accelerator

    acc = Accelerator(mixed_precision=mp)
    assert acc.device.type == "cuda"
    model = _model()
    model, opt = acc.prepare(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    assert (acc.scaler is not None) == (mp == "fp16")
    losses = []
    for x, y in _batches():
        loss = F.mse_loss(model(x.to(acc.device)), y.to(acc.device))
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    ref = _reference(mp)
    tol = 1e-5 if mp == "no" else 2e-2  # autocast kernels may differ in accumulation order between runs
    assert torch.allclose(torch.tensor(losses), torch.tensor(ref), rtol=tol, atol=tol), (losses, ref)


def test_nccl_group_under_torchrun() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    code = (
        "import torch, torch.distributed as dist\n"
        "from overdrive import Accelerator\n"
        "acc = Accelerator()\n"
        "assert dist.get_backend() == 'nccl', dist.get_backend()\n"
        "assert acc.device.type == 'cuda' and acc.distributed_type == 'MULTI_GPU'\n"
        "print('GATHER', acc.gather(torch.tensor([acc.process_index], device=acc.device)).tolist())\n"
    )
    script = Path(os.environ.get("TMPDIR", "/tmp")) / "overdrive_nccl_probe.py"
    script.write_text(code)
    nproc = torch.cuda.device_count()
    if nproc < 2:
        pytest.skip("a process group of one GPU is not a distributed test; needs 2 GPUs")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(script)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"GATHER {list(range(nproc))}" in proc.stdout
