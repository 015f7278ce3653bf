"""Worker: ``overdrive launch --dynamo_backend aot_eager`` compiles the model inside DDP, and the graph really runs.

Run with 2 processes. Every rank trains a hand-written eager DDP reference and the overdrive (compiled) run on the
same per-rank batches with accumulation 2, checks that dynamo captured frames without graph breaks, that the backward
ran through the compiled graph, that the weights match the eager reference, and that ``get_state_dict`` has plain keys.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from overdrive import Accelerator, InitProcessGroupKwargs
from overdrive.utils import DynamoBackend

N, B, ACCUM = 48, 4, 2
RANK = int(os.environ.get("RANK", "0"))


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))


def make_dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(N, 6, generator=g), torch.randn(N, 3, generator=g))


def reference() -> dict[str, torch.Tensor]:
    world, rank = dist.get_world_size(), dist.get_rank()
    model = DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = list(DataLoader(make_dataset(), batch_size=B))[rank::world]
    for i, (x, y) in enumerate(batches):
        sync = (i + 1) % ACCUM == 0 or i == len(batches) - 1
        with contextlib.nullcontext() if sync else model.no_sync():
            (F.mse_loss(model(x), y) / ACCUM).backward()
        if sync:
            opt.step()
            opt.zero_grad()
    state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    del model
    gc.collect()
    return state


def main() -> None:
    acc = Accelerator(gradient_accumulation_steps=ACCUM,
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
    assert acc.state.dynamo_plugin.backend == DynamoBackend.AOT_EAGER, acc.state.dynamo_plugin
    assert acc.num_processes == 2
    ref = reference()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, loader = acc.prepare(model, opt, DataLoader(make_dataset(), batch_size=B))
    assert isinstance(model, DistributedDataParallel), type(model)  # DDP outside, the compiled module inside
    counters.clear()
    grad_fns = set()
    for x, y in loader:
        with acc.accumulate(model):
            out = model(x)
            grad_fns.add(type(out.grad_fn).__name__)
            acc.backward(F.mse_loss(out, y))
            opt.step()
            opt.zero_grad()
    frames_ok = counters["frames"]["ok"]
    breaks = sum(counters["graph_break"].values())
    assert frames_ok >= 1 and counters["stats"]["unique_graphs"] >= 1, dict(counters["frames"])
    assert breaks == 0, dict(counters["graph_break"])
    assert grad_fns == {"CompiledFunctionBackward"}, grad_fns  # every forward ran the compiled graph
    got = acc.get_state_dict(model)
    assert list(got) == list(ref), f"keys {list(got)} (no _orig_mod./module. prefix expected)"
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"rank {RANK} {k}: {m}")
    say(f"COMPILED DDP OK rank={RANK} frames_ok={frames_ok} graph_breaks={breaks} "
        f"unique_graphs={counters['stats']['unique_graphs']}")
    del model, opt
    gc.collect()
    acc.end_training()
    say(f"ALL OK rank={RANK}")


if __name__ == "__main__":
    main()
