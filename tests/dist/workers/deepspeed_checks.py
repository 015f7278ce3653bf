"""Worker: DeepSpeed ZeRO through overdrive's Accelerator against a hand-written single-process PyTorch loop.

Modes (argv[1]):
  train FOLDER   (2 processes) ZeRO-1/2/3 fp32 parity with clipping, accumulation 2 driven by accumulate() on each
                 stage, ZeRO-3 selected by ACCELERATE_* variables alone, bf16 (ZeRO-2/3) against the fp32 reference,
                 get_state_dict / save_model into FOLDER/weights.
  save FOLDER    (2 processes) trains ZeRO-2 and ZeRO-3 for 5 steps and save_state's them into FOLDER/zero{2,3}.
  resume FOLDER  (2 processes, fresh) load_state of both, weights equal the reference at step 5, 5 more steps equal
                 the reference at step 10 (the Adam moments came back too).
  offload        (2 processes) ZeRO-2 with the optimizer offloaded to the CPU (DeepSpeedCPUAdam, a JIT-built op).

The data: optimizer step j uses global batch j (GB samples); with a prepared loader of batch size GB/2, rank r gets
rows [j*GB + r*GB/2, ...). Every rank computes the reference itself (no process group involved). Each check prints
one OK line (one write per line: ranks share stdout); a mismatch raises.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from overdrive import Accelerator, DeepSpeedPlugin, GradientAccumulationPlugin, InitProcessGroupKwargs
from overdrive.state import AcceleratorState, GradientState

GB, STEPS, LR, TOL = 8, 10, 1e-2, 1e-5
BF16_TOL = 0.05  # bf16 compute (8-bit mantissa) vs the fp32 reference after 10 Adam steps at lr 1e-2
RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
HANDLERS = [InitProcessGroupKwargs(timeout=timedelta(seconds=60))]


def say(line: str) -> None:
    sys.stdout.write(f"{line} rank={RANK} world={WORLD}\n")
    sys.stdout.flush()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.hidden = nn.Linear(32, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(torch.tanh(self.inp(x)))))


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def data(batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batches * GB, 6, generator=g), torch.randn(batches * GB, 3, generator=g) * 3


def reference(micro_steps: int, accum: int = 1, clip: float = 0.0, stop: int | None = None) -> dict[str, Any]:
    """Plain PyTorch on one process: micro-step j uses global batch j; each loss divided by ``accum``."""
    x, y = data(micro_steps)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    norms, snapshots = [], {}
    for j in range(micro_steps):
        xb, yb = x[j * GB:(j + 1) * GB], y[j * GB:(j + 1) * GB]
        (F.mse_loss(model(xb), yb) / accum).backward()
        if (j + 1) % accum == 0:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf"))))
            opt.step()
            opt.zero_grad()
            snapshots[(j + 1) // accum] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state": snapshots, "norms": norms}


def new_accelerator(stage: int, accum: int = 1, mixed_precision: str = "no", **plugin: Any) -> Accelerator:
    AcceleratorState._reset_state()  # one Accelerator per check in this process (the process group stays)
    GradientState._reset_state()
    plugin.setdefault("gradient_clipping", 0.0)
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum),
        deepspeed_plugin=DeepSpeedPlugin(zero_stage=stage, **plugin) if stage >= 0 else plugin["plugin"],
        kwargs_handlers=HANDLERS,
    )


def prepare(acc: Accelerator, micro_steps: int) -> tuple[Any, Any, Any]:
    x, y = data(micro_steps)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=GB // WORLD)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    return acc.prepare(model, opt, loader)  # type: ignore[no-any-return]


def train(acc: Accelerator, model: Any, opt: Any, loader: Any, skip: int = 0, limit: int | None = None,
          clip: float = 1.0) -> dict[str, Any]:
    """Accelerate's loop, unchanged: accumulate / backward / clip / step / zero_grad."""
    norms, losses = [], []
    dtype = next(model.parameters()).dtype  # under bf16 the engine holds bf16 weights: feed them bf16 inputs
    batches = acc.skip_first_batches(loader, skip) if skip else loader
    for j, (xb, yb) in enumerate(batches):
        if limit is not None and j >= limit:
            break
        with acc.accumulate(model):
            loss = F.mse_loss(model(xb.to(dtype)).float(), yb)
            losses.append(float(acc.reduce(loss.detach(), "mean")))
            acc.backward(loss)
            if acc.sync_gradients:
                norms.append(float(acc.clip_grad_norm_(model.parameters(), clip)))
            opt.step()
            opt.zero_grad()
    return {"norms": norms, "losses": losses}


def assert_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], what: str, tol: float = TOL) -> float:
    assert sorted(ours) == sorted(ref), f"{what}: keys {sorted(ours)} vs {sorted(ref)}"
    worst = max(float((ours[k].detach().float().cpu() - ref[k]).abs().max()) for k in ref)
    assert worst <= tol, f"{what}: max |diff| {worst:.3g} > {tol}"
    return worst


def check_parity(folder: Path) -> None:
    # ZeRO-3 from a config dict (Accelerate's hf_ds_config), partitioning even these small parameters.
    zero3 = {
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": 0.05,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                              "stage3_gather_16bit_weights_on_model_save": "auto"},
    }
    cases: list[tuple[str, int, dict[str, Any], float]] = [
        ("zero1", 1, {"gradient_clipping": "auto"}, 1.0),  # "auto" clipping is Accelerate's 1.0
        ("zero2", 2, {"gradient_clipping": 0.05}, 0.05),  # clipping active on every step
        ("zero3", -1, {"plugin": DeepSpeedPlugin(hf_ds_config=zero3)}, 0.05),
    ]
    for name, stage, plugin, clip in cases:
        ref = reference(STEPS, clip=clip)
        acc = new_accelerator(stage, **plugin)
        model, opt, loader = prepare(acc, STEPS)
        config = acc.strategy.config  # type: ignore[attr-defined]
        assert config["train_micro_batch_size_per_gpu"] == GB // WORLD and config["train_batch_size"] == GB, config
        assert str(acc.distributed_type) == "DEEPSPEED" and type(acc.unwrap_model(model)) is Net
        out = train(acc, model, opt, loader, clip=clip)
        full = acc.get_state_dict(model)  # ZeRO-3: the fp32 master weights, gathered on every rank
        worst = assert_close(full, ref["state"][STEPS], f"{name} fp32 weights")
        norm_diff = max(abs(a - b) for a, b in zip(out["norms"], ref["norms"]))
        assert len(out["norms"]) == STEPS and norm_diff <= 1e-4, (out["norms"], ref["norms"])
        say(f"FP32 PARITY OK {name} max_diff={worst:.2e} norm_diff={norm_diff:.1e}")
        if name == "zero2":
            acc.save_model(model, folder / "weights")
            if acc.is_main_process:
                from safetensors.torch import load_file

                assert_close(load_file(str(folder / "weights" / "model.safetensors")), ref["state"][STEPS], "save_model")
            say("SAVE_MODEL OK zero2")


def check_accumulation() -> None:
    ref = reference(2 * STEPS, accum=2, clip=1.0)
    for stage in (1, 2, 3):
        acc = new_accelerator(stage, accum=2, gradient_clipping=1.0)
        model, opt, loader = prepare(acc, 2 * STEPS)
        out = train(acc, model, opt, loader)
        engine = acc._models[0]
        assert engine.global_steps == STEPS, engine.global_steps  # one engine step per window of 2 micro-batches
        worst = assert_close(acc.get_state_dict(model), ref["state"][STEPS], f"zero{stage} accumulation 2")
        assert len(out["norms"]) == STEPS
        say(f"ACCUM OK zero{stage} steps={engine.global_steps} max_diff={worst:.2e}")


def check_bf16() -> None:
    ref = reference(STEPS, clip=1.0)
    for stage in (2, 3):
        acc = new_accelerator(stage, mixed_precision="bf16", gradient_clipping=1.0)
        model, opt, loader = prepare(acc, STEPS)
        assert acc.strategy.config["bf16"]["enabled"] is True  # type: ignore[attr-defined]
        assert next(model.parameters()).dtype == torch.bfloat16  # compute weights in bf16
        assert acc.scaler is None  # the engine, not a GradScaler, owns precision
        out = train(acc, model, opt, loader)
        full = acc.get_state_dict(model)
        worst = assert_close(full, ref["state"][STEPS], f"zero{stage} bf16 weights", tol=BF16_TOL)
        ref_losses = reference_losses(STEPS)
        loss_gap = max(abs(a - b) / b for a, b in zip(out["losses"], ref_losses))
        assert loss_gap <= 0.02, (out["losses"], ref_losses)
        say(f"BF16 OK zero{stage} max_diff={worst:.2e} loss_rel_gap={loss_gap:.1e}")


def reference_losses(micro_steps: int) -> list[float]:
    x, y = data(micro_steps)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    losses = []
    for j in range(micro_steps):
        loss = F.mse_loss(model(x[j * GB:(j + 1) * GB]), y[j * GB:(j + 1) * GB])
        losses.append(float(loss.detach()))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return losses


def check_env_selection() -> None:
    """ACCELERATE_USE_DEEPSPEED + ACCELERATE_DEEPSPEED_* (what `overdrive launch --use_deepspeed` exports), no plugin."""
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
           "ACCELERATE_GRADIENT_CLIPPING": "1.0"}
    os.environ.update(env)
    try:
        AcceleratorState._reset_state()
        GradientState._reset_state()
        acc = Accelerator(kwargs_handlers=HANDLERS)
    finally:
        for name in env:
            del os.environ[name]
    model, opt, loader = prepare(acc, STEPS)
    assert acc.state.deepspeed_plugin.zero_stage == 3 and acc._models[0].zero_optimization_stage() == 3
    train(acc, model, opt, loader)
    assert_close(acc.get_state_dict(model), reference(STEPS, clip=1.0)["state"][STEPS], "zero3 from env")
    say("ENV OK zero3")


def check_zero3_init() -> None:
    """A model created inside plugin.zero3_init() is partitioned at creation and trains like the reference."""
    acc = new_accelerator(3, gradient_clipping=1.0)
    plugin = acc.state.deepspeed_plugin
    assert plugin.zero3_init_flag
    with plugin.zero3_init():
        model = make_model()
    local = sum(p.numel() for p in model.parameters())
    assert local == 0 and all(hasattr(p, "ds_id") for p in model.parameters()), local  # nothing materialised here
    x, y = data(STEPS)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=GB // WORLD)
    model, opt, loader = acc.prepare(model, torch.optim.Adam(model.parameters(), lr=LR), loader)
    train(acc, model, opt, loader)
    worst = assert_close(acc.get_state_dict(model), reference(STEPS, clip=1.0)["state"][STEPS], "zero3_init")
    say(f"ZERO3_INIT OK max_diff={worst:.2e}")


def check_save(folder: Path) -> None:
    for stage in (2, 3):
        acc = new_accelerator(stage, gradient_clipping=1.0)
        model, opt, loader = prepare(acc, STEPS)
        train(acc, model, opt, loader, limit=5)
        target = acc.save_state(folder / f"zero{stage}")
        assert (Path(target) / "pytorch_model").is_dir(), (
            "save_state wrote no DeepSpeed engine checkpoint: checkpoint_state.save_state must call "
            "strategy.save_checkpoint_files (see docs/deepspeed.md, 'Checkpoints')"
        )
        shards = sorted(p.name for p in (Path(target) / "pytorch_model").iterdir())
        assert any("optim_states" in n for n in shards) and any("model_states" in n for n in shards), shards
        say(f"SAVE OK zero{stage}")


def check_resume(folder: Path) -> None:
    ref = reference(STEPS, clip=1.0)
    for stage in (2, 3):
        acc = new_accelerator(stage, gradient_clipping=1.0)
        model, opt, loader = prepare(acc, STEPS)
        acc.load_state(folder / f"zero{stage}")
        worst = assert_close(acc.get_state_dict(model), ref["state"][5], f"zero{stage} loaded weights")
        train(acc, model, opt, loader, skip=5)
        worst10 = assert_close(acc.get_state_dict(model), ref["state"][STEPS], f"zero{stage} resumed training")
        say(f"RESUME OK zero{stage} step5={worst:.2e} step10={worst10:.2e}")


def check_offload() -> None:
    ref = reference(STEPS, clip=1.0)
    start = time.perf_counter()
    acc = new_accelerator(2, offload_optimizer_device="cpu", gradient_clipping=1.0)
    model, opt, loader = prepare(acc, STEPS)
    built = time.perf_counter() - start
    assert type(opt.optimizer.optimizer).__name__ == "DeepSpeedCPUAdam", type(opt.optimizer.optimizer)
    train(acc, model, opt, loader)
    worst = assert_close(acc.get_state_dict(model), ref["state"][STEPS], "cpu_adam offload")
    say(f"OFFLOAD OK zero2 cpu_adam max_diff={worst:.2e} prepare_s={built:.1f}")


def main() -> None:
    mode = sys.argv[1]
    if mode == "train":
        check_parity(Path(sys.argv[2]))
        check_accumulation()
        check_env_selection()
        check_zero3_init()
        check_bf16()
    elif mode == "save":
        check_save(Path(sys.argv[2]))
    elif mode == "resume":
        check_resume(Path(sys.argv[2]))
    elif mode == "offload":
        check_offload()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    say("ALL OK")


if __name__ == "__main__":
    main()
