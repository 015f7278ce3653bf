"""Report what `overdrive launch --use_fsdp/--use_deepspeed ...` (or a config file) gave the Accelerator. Run by
tests/dist/test_sharded_launch.py; each rank writes one line: SHARDED {json}."""

from __future__ import annotations

import json
import os
import sys

import torch

from overdrive import Accelerator


def main() -> None:
    acc = Accelerator(cpu=True)  # every sharding setting comes from the launcher's environment
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.randn(16, 16), batch_size=4)
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    for x in loader:
        acc.backward(model(x).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
    record = {"rank": int(os.environ["RANK"]), "type": str(acc.distributed_type.value),
              "mixed_precision": acc.mixed_precision}
    plugin = acc.state.fsdp_plugin if getattr(acc.state, "fsdp_plugin", None) is not None else acc.fsdp_plugin
    if plugin is not None:
        record.update(fsdp_version=plugin.fsdp_version, wrap=str(plugin.auto_wrap_policy),
                      min_num_params=plugin.min_num_params, state_dict_type=str(plugin.state_dict_type),
                      dtensor=type(next(acc.unwrap_model(model).parameters())).__name__)
    if acc.deepspeed_plugin is not None:
        record.update(zero_stage=acc.deepspeed_plugin.zero_stage,
                      clipping=acc.strategy.config.get("gradient_clipping"))  # type: ignore[attr-defined]
    sys.stdout.write("SHARDED " + json.dumps(record) + "\n")
    sys.stdout.flush()
    acc.end_training()


if __name__ == "__main__":
    main()
