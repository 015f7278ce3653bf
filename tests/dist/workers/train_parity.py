"""Worker: overdrive training against a hand-written single-process loop over the same global batches.

Run under torchrun with 1 or 2 processes. Every rank computes the pure-PyTorch reference itself (no process group
involved) and compares; each check prints an OK line, any mismatch raises (non-zero exit).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from overdrive import Accelerator, GradientAccumulationPlugin, InitProcessGroupKwargs

N, B, STEPS = 56, 4, 20  # per-rank loader length 14 (world 1) or 7 (world 2): not divisible by 4
RANK = int(os.environ.get("RANK", "0"))
HANDLERS = [InitProcessGroupKwargs(timeout=timedelta(seconds=60))]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 6, generator=g), torch.randn(N, 3, generator=g)


def reference(accum: int, clip: float | None, world: int) -> tuple[list[torch.Tensor], list[float]]:
    """Plain PyTorch: micro-step j uses global batch j (B * world samples); windows of `accum`, last one shorter."""
    x, y = make_data()
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gb = B * world
    micro = [(x[j * gb : (j + 1) * gb], y[j * gb : (j + 1) * gb]) for j in range(N // gb)]
    steps, norms = 0, []
    while steps < STEPS:
        for start in range(0, len(micro), accum):
            for xb, yb in micro[start : start + accum]:
                # Accelerate's semantics: each micro-batch loss divided by the accumulation steps.
                (F.mse_loss(model(xb), yb) / accum).backward()
            if clip is not None:
                norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
            opt.step()
            opt.zero_grad()
            steps += 1
            if steps == STEPS:
                break
    return [p.detach().clone() for p in model.parameters()], norms


def train(
    accum: int, clip: float | None, each_batch: bool = False
) -> tuple[list[torch.Tensor], list[float], list[tuple[bool, int]], int]:
    plugin = GradientAccumulationPlugin(num_steps=accum, sync_each_batch=each_batch)
    acc = Accelerator(gradient_accumulation_plugin=plugin, kwargs_handlers=HANDLERS)
    x, y = make_data()
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=B)
    model, opt, dl, sched = acc.prepare(model, opt, dl, sched)
    calls = [0]
    if acc.num_processes > 1:
        # No annotations: DDP inspects them at run time and string annotations (PEP 563) fail its check.
        def counting_hook(state, bucket):  # type: ignore[no-untyped-def]
            calls[0] += 1
            return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]

        model.register_comm_hook(None, counting_hook)
    steps, norms, log = 0, [], []
    while steps < STEPS:
        for xb, yb in dl:
            before = calls[0]
            with acc.accumulate(model):
                acc.backward(F.mse_loss(model(xb), yb))
                if acc.sync_gradients and clip is not None:
                    norms.append(float(acc.clip_grad_norm_(model.parameters(), clip)))
                opt.step()
                sched.step()
                opt.zero_grad()
            log.append((acc.sync_gradients, calls[0] - before))
            steps += acc.sync_gradients
            if steps == STEPS:
                break
    params = [p.detach().clone() for p in acc.unwrap_model(model).parameters()]
    assert sched.scheduler.last_epoch == STEPS * acc.num_processes, (sched.scheduler.last_epoch, acc.num_processes)
    return params, norms, log, acc.num_processes


def check_parity() -> int:
    world = 1
    for accum, clip, each_batch in ((1, None, False), (2, None, False), (4, None, False), (2, 0.05, False),
                                    (4, None, True)):
        params, norms, log, world = train(accum, clip, each_batch)
        ref_params, ref_norms = reference(accum, clip, world)
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
        if clip is not None:
            assert len(norms) == STEPS and norms[0] > clip, norms[:3]
            torch.testing.assert_close(torch.tensor(norms), torch.tensor(ref_norms), rtol=1e-5, atol=0)
        if world > 1 and each_batch:
            # sync_each_batch: gradients are all-reduced on every micro-step (memory over communication).
            assert all(n >= 1 for _, n in log), log
        elif world > 1:
            # No all-reduce on accumulation micro-steps; at least one bucket on every sync step.
            assert all(n == 0 for synced, n in log if not synced), log
            assert all(n >= 1 for synced, n in log if synced), log
            assert sum(not s for s, _ in log) > 0 or accum == 1
        print(f"PARITY OK rank={RANK} world={world} accum={accum} clip={clip} each_batch={each_batch} "
              f"micro_steps={len(log)}", flush=True)
    return world


def check_gather_for_metrics(world: int) -> None:
    acc = Accelerator(kwargs_handlers=HANDLERS)
    values = torch.arange(101, dtype=torch.float32)
    targets = torch.sin(values)
    dl = acc.prepare(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(values, targets), batch_size=8))
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(-0.25)
    seen, errors, names = [], [], []
    for xb, yb in dl:
        with torch.no_grad():
            err = (model(xb[:, None]).squeeze(1) - yb) ** 2
        nested = acc.gather_for_metrics({"x": xb, "more": [err, {"idx": xb.long()}]})
        gathered_x, gathered_err = nested["x"], nested["more"][0]
        assert torch.equal(nested["more"][1]["idx"], gathered_x.long())
        seen.append(gathered_x)
        errors.append(gathered_err)
        names.extend(acc.gather_for_metrics([f"s{int(v)}" for v in xb]))
    seen_t = torch.cat(seen)
    assert torch.equal(seen_t, values), seen_t.tolist()
    assert names == [f"s{i}" for i in range(101)], names[-10:]
    with torch.no_grad():
        ref_mse = ((model(values[:, None]).squeeze(1) - targets) ** 2).mean()
    torch.testing.assert_close(torch.cat(errors).mean(), ref_mse, rtol=1e-6, atol=0)
    print(f"GATHER_FOR_METRICS OK rank={RANK} world={world} n={seen_t.numel()}", flush=True)


if __name__ == "__main__":
    world = check_parity()
    check_gather_for_metrics(world)
    print(f"ALL OK rank={RANK}", flush=True)
