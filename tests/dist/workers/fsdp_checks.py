"""Worker: FSDP2 training and sharded checkpoints against a hand-written single-process PyTorch loop.

Modes (argv[1]):
  train FOLDER   (2 processes) fp32 parity, accumulation (+ sync_each_batch), activation checkpointing, CPU offload,
                 clipping, wrap policies, memory per rank, full state dict / save_model, bf16 mixed precision; saves
                 sharded and full checkpoints after step 5 into FOLDER/sharded and FOLDER/full.
  resume FOLDER  (1 or 2 processes, fresh) loads both checkpoints, compares parameters and Adam state with the
                 reference at step 5, trains 5 more steps and compares with the reference at step 10.

The data: optimizer step j uses global batch j (GB samples); rank r of n takes rows [r*GB/n, (r+1)*GB/n). Every rank
computes the reference itself (no process group involved). Each check prints one OK line; a mismatch raises.
"""

from __future__ import annotations

import gc
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from overdrive import Accelerator, FullyShardedDataParallelPlugin, GradientAccumulationPlugin, InitProcessGroupKwargs
from overdrive.state import AcceleratorState

GB, STEPS, LR, TOL = 8, 10, 1e-2, 1e-5
RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
HANDLERS = [InitProcessGroupKwargs(timeout=timedelta(seconds=60))]


def say(line: str) -> None:
    sys.stdout.write(f"{line} rank={RANK} world={WORLD}\n")  # one write per line: ranks share stdout
    sys.stdout.flush()


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.blocks = nn.ModuleList([Block(16) for _ in range(3)])
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def data(micro_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(micro_steps * GB, 6, generator=g), torch.randn(micro_steps * GB, 4, generator=g)


def global_batch(j: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data(total)
    return x[j * GB : (j + 1) * GB], y[j * GB : (j + 1) * GB]


def local_batch(j: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = global_batch(j, total)
    per = GB // WORLD
    return x[RANK * per : (RANK + 1) * per], y[RANK * per : (RANK + 1) * per]


def reference(steps: int, accum: int = 1, clip: float | None = None) -> dict[str, Any]:
    """Plain PyTorch, one process: micro-step j uses global batch j; each loss divided by the accumulation steps."""
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    total = steps * accum
    norms, losses, snapshots = [], [], {}
    for step in range(steps):
        for k in range(accum):
            x, y = global_batch(step * accum + k, total)
            loss = F.mse_loss(model(x), y)
            losses.append(float(loss.detach()))
            (loss / accum).backward()
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        opt.zero_grad()
        snapshots[step + 1] = {
            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "adam": {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in model.named_parameters()},
        }
    return {"params": snapshots[steps]["params"], "norms": norms, "losses": losses, "snapshots": snapshots}


def full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter gathered (collective), named as in the plain model."""
    names = {n.replace("_checkpoint_wrapped_module.", ""): p for n, p in model.named_parameters()}
    return {n: full(p.detach()).float() for n, p in names.items()}


def assert_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], what: str, tol: float = TOL) -> float:
    assert sorted(ours) == sorted(ref), f"{what}: names {sorted(ours)} vs {sorted(ref)}"
    worst = max(float((ours[n].detach() - ref[n]).abs().max()) for n in ref)
    assert worst <= tol, f"{what}: max |diff| {worst:.3g} > {tol}"
    return worst


def new_accelerator(accum: int = 1, each_batch: bool = False, mixed_precision: str | None = None,
                    **plugin_kwargs: Any) -> Accelerator:
    if mixed_precision is not None:
        AcceleratorState._reset_state()  # a new precision in the same process (the process group stays)
    plugin_kwargs.setdefault("auto_wrap_policy", "transformer_based_wrap")
    plugin_kwargs.setdefault("transformer_cls_names_to_wrap", ["Block"])
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum, sync_each_batch=each_batch),
        fsdp_plugin=FullyShardedDataParallelPlugin(**plugin_kwargs),
        kwargs_handlers=HANDLERS,
    )


def train(acc: Accelerator, steps: int, accum: int = 1, clip: float | None = None, start: int = 0,
          total: int | None = None, prepared: tuple[Any, Any] | None = None) -> dict[str, Any]:
    if prepared is None:
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        model, opt = acc.prepare(model, opt)
    else:
        model, opt = prepared
    total = total if total is not None else (start + steps) * accum
    norms, losses, reduced = [], [], []
    for micro in range(start * accum, (start + steps) * accum):
        x, y = local_batch(micro, total)
        with acc.accumulate(model):
            loss = F.mse_loss(model(x), y)
            losses.append(float(acc.reduce(loss.detach(), "mean")))
            acc.backward(loss)
            if not acc.sync_gradients:  # did this micro-step reduce-scatter (sharded .grad filled) or not?
                reduced.append(any(p.grad is not None for p in model.parameters()))
            if acc.sync_gradients and clip is not None:
                norms.append(float(acc.clip_grad_norm_(model.parameters(), clip)))
            opt.step()
            opt.zero_grad()
    return {"model": model, "opt": opt, "norms": norms, "losses": losses, "reduced": reduced}


def optimizer_state(model: nn.Module, opt: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {k: full(v).float().clone() for k, v in opt.state[p].items()} for n, p in model.named_parameters()}


def local_bytes(model: nn.Module, opt: Any) -> tuple[int, int]:
    """(bytes this rank holds, bytes of the whole model) for parameters + optimizer state."""
    from torch.distributed.tensor import DTensor

    def sizes(t: torch.Tensor) -> tuple[int, int]:
        local = t.to_local() if isinstance(t, DTensor) else t
        return local.numel() * local.element_size(), t.numel() * t.element_size()

    mine = whole = 0
    for p in model.parameters():
        for t in [p, *[v for v in opt.state[p].values() if v.dim() > 0]]:
            a, b = sizes(t)
            mine, whole = mine + a, whole + b
    return mine, whole


def check_training(folder: Path) -> None:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    ref = reference(STEPS)
    acc = new_accelerator()
    run = train(acc, STEPS)
    model = run["model"]
    assert isinstance(model, FSDPModule) and all(isinstance(b, FSDPModule) for b in model.blocks)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    assert acc.distributed_type == "FSDP" and acc.unwrap_model(model) is model
    worst = assert_close(full_params(model), ref["params"], "fp32")
    say(f"FP32 PARITY OK max_diff={worst:.2e}")

    mine, whole = local_bytes(model, run["opt"])
    ratio = mine / whole
    assert ratio <= 0.55 if WORLD == 2 else ratio == 1.0, f"per-rank bytes {mine} of {whole} ({ratio:.3f})"
    say(f"MEMORY OK local={mine} ddp={whole} ratio={ratio:.3f}")

    state = acc.get_state_dict(model)  # collective; the full dict lands on rank 0
    if acc.is_main_process:
        assert_close({k: v.float() for k, v in state.items()}, ref["params"], "get_state_dict")
        assert all(v.device.type == "cpu" and not isinstance(v, DTensor) for v in state.values())
    acc.save_model(model, folder / "saved_model")
    if acc.is_main_process:
        from safetensors.torch import load_file

        plain = Net()
        plain.load_state_dict(load_file(str(folder / "saved_model" / "model.safetensors")))
        assert_close(dict(plain.named_parameters()), ref["params"], "save_model")
    say("FULL_STATE_DICT OK")
    del run, model
    gc.collect()

    for each_batch in (False, True):
        ref2 = reference(STEPS, accum=2)
        run = train(new_accelerator(accum=2, each_batch=each_batch), STEPS, accum=2)
        worst = assert_close(full_params(run["model"]), ref2["params"], f"accum 2 sync_each_batch={each_batch}")
        # Without sync_each_batch the first micro-step of each window keeps its gradients local (no reduce-scatter).
        assert run["reduced"] == [each_batch and WORLD > 1] * STEPS, run["reduced"]
        say(f"ACCUM OK sync_each_batch={each_batch} max_diff={worst:.2e}")

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    acc = new_accelerator(activation_checkpointing=True)
    run = train(acc, STEPS)
    assert all(isinstance(b, CheckpointWrapper) for b in run["model"].blocks)
    worst = assert_close(full_params(run["model"]), ref["params"], "activation checkpointing")
    state = acc.get_state_dict(run["model"])
    if acc.is_main_process:
        assert sorted(state) == sorted(ref["params"]), sorted(state)  # no checkpoint-wrapper prefixes
    say(f"ACTIVATION_CHECKPOINTING OK max_diff={worst:.2e}")

    run = train(new_accelerator(cpu_offload=True), STEPS)
    worst = assert_close(full_params(run["model"]), ref["params"], "cpu offload")
    say(f"CPU_OFFLOAD OK max_diff={worst:.2e}")

    # cpu_ram_efficient_loading: rank 0's weights win, whatever the other ranks built.
    acc = new_accelerator(cpu_ram_efficient_loading=True)
    model = make_model()
    if RANK != 0:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    run = train(acc, STEPS, prepared=acc.prepare(model, opt))
    worst = assert_close(full_params(run["model"]), ref["params"], "cpu_ram_efficient_loading")
    say(f"RANK0_WEIGHTS OK max_diff={worst:.2e}")

    for policy, kwargs in (("size_based_wrap", {"min_num_params": 200}), ("no_wrap", {})):
        acc = new_accelerator(auto_wrap_policy=policy, transformer_cls_names_to_wrap=None, **kwargs)
        run = train(acc, STEPS)
        sharded_blocks = [isinstance(b, FSDPModule) for b in run["model"].blocks]
        assert sharded_blocks == [policy == "size_based_wrap"] * 3, sharded_blocks  # Block: 272 params > 200
        worst = assert_close(full_params(run["model"]), ref["params"], policy)
        say(f"WRAP_POLICY OK policy={policy} max_diff={worst:.2e}")

    clip = 0.05
    ref_clip = reference(STEPS, clip=clip)
    assert min(ref_clip["norms"]) > clip  # clipping really happens on every step
    run = train(new_accelerator(), STEPS, clip=clip)
    for ours, theirs in zip(run["norms"], ref_clip["norms"]):
        assert abs(ours - theirs) <= 1e-5 * max(1.0, theirs), (run["norms"], ref_clip["norms"])
    worst = assert_close(full_params(run["model"]), ref_clip["params"], "clipping")
    say(f"CLIP OK norms={len(run['norms'])} max_diff={worst:.2e}")
    del run
    gc.collect()


def check_checkpoints(folder: Path) -> None:
    """Train 5 steps, save sharded and full checkpoints, train 5 more: the saves must not disturb training."""
    ref = reference(STEPS)
    acc = new_accelerator()
    half = train(acc, STEPS // 2, total=STEPS)
    model, opt = half["model"], half["opt"]
    strategy = acc.strategy
    assert strategy.owns_checkpoint_files  # type: ignore[attr-defined]
    for kind in ("sharded", "full"):
        target = folder / kind
        if acc.is_main_process:
            target.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        strategy.plugin.set_state_dict_type("SHARDED_STATE_DICT" if kind == "sharded" else "FULL_STATE_DICT")  # type: ignore[attr-defined]
        strategy.save_checkpoint_files([model], [opt.optimizer], target)  # type: ignore[attr-defined]
    strategy.plugin.set_state_dict_type("SHARDED_STATE_DICT")  # type: ignore[attr-defined]
    acc.save_state(str(folder / "state"))  # the Accelerator's path: shards + Accelerate's other files + the marker
    expected = {"params": full_params(model), "adam": optimizer_state(model, opt)}  # what the files must restore
    names = sorted(p.name for p in (folder / "sharded").iterdir())
    assert names == ["optimizer_0", "pytorch_model_fsdp_0"], names
    assert sorted(p.name for p in (folder / "full").iterdir()) == ["model.safetensors", "optimizer.bin"]
    train(acc, STEPS - STEPS // 2, start=STEPS // 2, total=STEPS, prepared=(model, opt))
    expected["final"] = full_params(model)  # the uninterrupted run, for the resumed runs to meet
    worst = assert_close(expected["final"], ref["params"], "training across the saves")
    if acc.is_main_process:
        torch.save(expected, folder / "expected.pt")
    acc.wait_for_everyone()
    say(f"SAVE OK max_diff={worst:.2e}")


def check_resume(folder: Path) -> None:
    ref = reference(STEPS)
    at_save = ref["snapshots"][STEPS // 2]
    for kind in ("sharded", "full", "state"):
        acc = new_accelerator()
        model = make_model()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # the load must overwrite every value
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        model, opt = acc.prepare(model, opt)
        if kind == "state":
            acc.load_state(str(folder / kind))  # through the Accelerator, at this run's world size
        else:
            acc.strategy.load_checkpoint_files([model], [opt.optimizer], folder / kind)  # type: ignore[attr-defined]
        expected = torch.load(folder / "expected.pt", weights_only=True)
        assert_close(full_params(model), expected["params"], f"{kind} load params", tol=0.0)  # identical
        assert_close(full_params(model), at_save["params"], f"{kind} load params vs reference")
        state = optimizer_state(model, opt)
        for name, ref_state in at_save["adam"].items():
            assert sorted(state[name]) == sorted(ref_state), (state[name].keys(), ref_state.keys())
            for key, value in ref_state.items():
                same = torch.equal(state[name][key], expected["adam"][name][key])
                assert same, f"{kind} optimizer {name}.{key} differs from the saved state: {state[name][key]} vs {expected['adam'][name][key]}"
                diff = float((state[name][key] - value.float()).abs().max())
                assert diff <= TOL, f"{kind} optimizer {name}.{key}: {diff} from the reference"
        train(acc, STEPS - STEPS // 2, start=STEPS // 2, total=STEPS, prepared=(model, opt))
        # Same world size: bit for bit; another world size sums the gradient shards in another order.
        assert_close(full_params(model), expected["final"], f"{kind} resume vs uninterrupted", tol=0.0 if WORLD == 2 else 1e-6)
        worst = assert_close(full_params(model), ref["params"], f"{kind} resume")
        say(f"RESUME OK kind={kind} max_diff={worst:.2e}")


# Real samples per rank in each micro-step (world 2, 4 slots each): the windows have uneven item counts.
ITEMS = [(4, 1), (2, 3), (3, 3), (1, 4), (4, 4), (2, 2)]


def check_exact_loss_and_metrics() -> None:
    """backward(loss_sum, num_items=n) under FSDP2 with accumulation 2 follows the exact mean over every real item of
    the window on every rank; gather_for_metrics returns exactly the dataset's rows, no padding."""
    assert WORLD == 2
    micro = len(ITEMS)
    x_all, y_all = data(micro)
    ref = make_model()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=LR)
    for window in range(micro // 2):
        rows = []
        for m in (2 * window, 2 * window + 1):
            for r in range(WORLD):
                start = m * GB + r * (GB // WORLD)
                rows += list(range(start, start + ITEMS[m][r]))
        per_item = ((ref(x_all[rows]) - y_all[rows]) ** 2).mean(dim=1)
        per_item.sum().div(len(rows)).backward()  # the window's exact mean
        ref_opt.step()
        ref_opt.zero_grad()

    acc = new_accelerator(accum=2)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model, opt = acc.prepare(model, opt)
    for m in range(micro):
        with acc.accumulate(model):
            x, y = local_batch(m, micro)
            k = ITEMS[m][RANK]
            per_item = ((model(x) - y) ** 2).mean(dim=1)[:k]  # padded slots carry no loss
            acc.backward(per_item.sum(), num_items=k)
            opt.step()
            opt.zero_grad()
    worst = assert_close(full_params(model), {n: p.detach() for n, p in ref.named_parameters()}, "exact loss")

    eval_x = torch.randn(10, 6, generator=torch.Generator().manual_seed(3))
    loader = acc.prepare(torch.utils.data.DataLoader(eval_x, batch_size=3))
    outputs = [acc.gather_for_metrics(model(batch).detach()) for batch in loader]
    gathered = torch.cat(outputs)
    assert gathered.shape == (10, 4), gathered.shape  # the duplicates that even the last round are dropped
    with torch.no_grad():
        diff = float((gathered - ref(eval_x)).abs().max())
    assert diff <= TOL, f"gather_for_metrics vs reference outputs: {diff}"
    say(f"EXACT_LOSS OK max_diff={worst:.2e} metrics_diff={diff:.2e}")
    del model, opt, loader
    gc.collect()


def check_bf16() -> None:
    fp32 = train(new_accelerator(), STEPS)["losses"]
    acc = new_accelerator(mixed_precision="bf16")
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model, opt = acc.prepare(model, opt)
    seen: list[torch.dtype] = []
    model.blocks[0].fc.register_forward_pre_hook(lambda m, args: seen.append(m.weight.dtype))
    run = train(acc, STEPS, prepared=(model, opt))
    assert seen and set(seen) == {torch.bfloat16}, seen  # parameters are bf16 while computing
    assert all(p.dtype == torch.float32 for g in opt.param_groups for p in g["params"])  # fp32 master shards
    assert all(v.dtype == torch.float32 for s in opt.state.values() for k, v in s.items() if k != "step")
    worst = max(abs(a - b) / abs(b) for a, b in zip(run["losses"], fp32))
    assert worst <= 0.02, f"bf16 loss drifts {worst:.3%} from fp32 ({run['losses']} vs {fp32})"
    say(f"BF16 OK compute=bfloat16 master=float32 loss_rel_diff={worst:.2e}")


def check_fp16() -> None:
    """fp16 + GradScaler on DTensor gradients: an inf in one rank's shard makes every rank skip the step."""
    acc = new_accelerator(mixed_precision="fp16")
    run = train(acc, 3)  # trains: the scaler unscales sharded gradients
    model, opt = run["model"], run["opt"]
    before = full_params(model)
    x, y = local_batch(0, 1)
    acc.backward(F.mse_loss(model(x), y))
    if RANK == WORLD - 1:
        model.inp.weight.grad.to_local().view(-1)[0] = float("inf")
    scale = acc.scaler.get_scale()
    opt.step()
    opt.zero_grad()
    assert acc.optimizer_step_was_skipped and acc.scaler.get_scale() == scale / 2
    assert_close(full_params(model), before, "skipped fp16 step", tol=0.0)
    say("FP16 OK skipped_on_every_rank=True")


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "train":
        check_training(folder)
        check_checkpoints(folder)
        check_exact_loss_and_metrics()
        check_bf16()  # last: these change the process's precision
        check_fp16()
    elif mode == "resume":
        check_resume(folder)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    say("ALL OK")
    gc.collect()


if __name__ == "__main__":
    main()
