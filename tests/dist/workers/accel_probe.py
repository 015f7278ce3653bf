"""Worker: what an Accelerate-style script sees under `overdrive launch` / torchrun.

Options: --cpu_true (construct Accelerator(cpu=True), Accelerate's CPU incantation), --expect_mp M (the
Accelerator's mixed_precision must be M), --world N (expected number of processes).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from overdrive import Accelerator, DistributedDataParallelKwargs, PartialState


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu_true", action="store_true")
    parser.add_argument("--expect_mp", default="no")
    parser.add_argument("--world", type=int, default=2)
    args = parser.parse_args()

    accelerator = Accelerator(cpu=True) if args.cpu_true else Accelerator()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    assert (accelerator.process_index, accelerator.num_processes) == (rank, world) == (rank, args.world)
    assert accelerator.distributed_type == "MULTI_CPU" and accelerator.use_distributed
    assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == world
    gathered = accelerator.gather(torch.tensor([rank * 10 + 1]))
    assert gathered.tolist() == [r * 10 + 1 for r in range(world)], gathered
    assert accelerator.mixed_precision == args.expect_mp, accelerator.mixed_precision
    # A DDP model trains one step: the all-reduce makes both ranks' weights identical.
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    accelerator.backward(model(torch.full((2, 3), float(rank + 1))).sum())
    opt.step()
    weights = accelerator.gather(accelerator.unwrap_model(model).weight.detach().reshape(1, -1))
    assert torch.equal(weights[0], weights[-1]), weights
    check_process_helpers(accelerator, rank, world)
    check_ddp_kwargs(rank)
    print(f"ACCEL OK rank={rank} world={world} mp={accelerator.mixed_precision} gathered={gathered.tolist()}",
          flush=True)



def check_process_helpers(accelerator: Accelerator, rank: int, world: int) -> None:
    """split_between_processes, on_* decorators and main_process_first, against hand-computed expectations."""
    with accelerator.split_between_processes(list(range(5))) as mine:
        assert mine == [[0, 1, 2], [3, 4]][rank], mine
    with accelerator.split_between_processes(list(range(5)), apply_padding=True) as mine:
        assert mine == [[0, 1, 2], [3, 4, 4]][rank], mine
    with accelerator.split_between_processes({"a": torch.arange(4), "b": ["w", "x", "y", "z"]}) as mine:
        assert mine["a"].tolist() == [[0, 1], [2, 3]][rank] and mine["b"] == [["w", "x"], ["y", "z"]][rank], mine
    ran = []
    accelerator.on_main_process(lambda: ran.append("main"))()
    accelerator.on_last_process(lambda: ran.append("last"))()
    accelerator.on_process(lambda: ran.append("p1"), process_index=1)()
    accelerator.on_local_main_process(lambda: ran.append("local"))()
    assert ran == [["main", "local"], ["last", "p1"]][rank], ran
    # main_process_first: rank 0 finishes the block before any other rank enters it (same host: one wall clock).
    with accelerator.main_process_first():
        entered = time.time()
        if rank == 0:
            time.sleep(0.3)
        left = time.time()
    stamps = accelerator.gather(torch.tensor([[entered, left]], dtype=torch.float64))
    assert all(stamps[r, 0] >= stamps[0, 1] for r in range(1, world)), stamps
    assert PartialState().num_processes == world and PartialState().process_index == rank


class WithUnused(torch.nn.Module):
    """`unused` gets no gradient: DDP needs find_unused_parameters=True for this model."""

    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Linear(3, 1)
        self.unused = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def check_ddp_kwargs(rank: int) -> None:
    """DistributedDataParallelKwargs reach DDP; a fp16 compression hook trains to identical weights on all ranks."""
    acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, comm_hook="fp16")])
    model = WithUnused()
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert model.find_unused_parameters
    acc.backward(model(torch.full((2, 3), float(rank + 1))).sum())
    opt.step()
    w = acc.gather(acc.unwrap_model(model).used.weight.detach().reshape(1, -1))
    assert torch.equal(w[0], w[-1]), w


if __name__ == "__main__":
    main()
