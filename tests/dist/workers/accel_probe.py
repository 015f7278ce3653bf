"""Worker: what an Accelerate-style script sees under `overdrive launch` / torchrun.

Options: --cpu_true (construct Accelerator(cpu=True), Accelerate's CPU incantation), --expect_mp M (the
Accelerator's mixed_precision must be M), --world N (expected number of processes).
"""

from __future__ import annotations

import argparse
import os

import torch

from overdrive import Accelerator


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
    print(f"ACCEL OK rank={rank} world={world} mp={accelerator.mixed_precision} gathered={gathered.tolist()}",
          flush=True)


if __name__ == "__main__":
    main()
