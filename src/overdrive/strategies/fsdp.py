"""Fully sharded data parallelism with FSDP2: torch's ``fully_shard`` on a one-dimensional ``DeviceMesh``.

Each rank keeps 1/world of every parameter, gradient and optimizer state (as ``DTensor`` shards). Forward and
backward all-gather a block's parameters just before it runs and free them afterwards; backward reduce-scatters
(averages) the gradients, so every rank ends up with the averaged gradient of its own shard.

The model is transformed in this order (see :meth:`FSDP2Strategy.wrap`):

1. choose the blocks with the plugin's auto-wrap policy (transformer layer classes, size, or none);
2. activation checkpointing: ``checkpoint_wrapper`` around each block (before sharding, so the recomputation
   sees the sharded block's all-gather hooks);
3. ``fully_shard`` each block, bottom-up (one all-gather / reduce-scatter group per block);
4. ``fully_shard`` the root (what is left: embeddings, heads, loose parameters).

The precision policy becomes ``MixedPrecisionPolicy(param_dtype=bf16/fp16, reduce_dtype=fp32)``; the sharded
parameters and the optimizer state stay fp32. Works with gloo on CPU and nccl on GPU; with one process the strategy
forms a private one-rank process group, because ``fully_shard`` always needs a mesh.

Example:
    >>> FSDP2Strategy.__name__
    'FSDP2Strategy'
"""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..precision import Precision
from ..state import PartialState
from ..utils.dataclasses import DistributedDataParallelKwargs, DistributedType, FullyShardedDataParallelPlugin
from .base import Strategy, unwrap_compiled

__all__ = ["FSDP2Strategy", "MODEL_DIR", "OPTIMIZER_DIR"]

MODEL_DIR = "pytorch_model_fsdp"  # Accelerate's sharded-model folder stem: pytorch_model_fsdp_0/
OPTIMIZER_DIR = "optimizer"  # Accelerate's sharded-optimizer folder stem: optimizer_0/


def _indexed(stem: str, index: int, ext: str = "") -> str:
    """Accelerate's file naming: the first object has no index (``optimizer.bin``), the others ``_1``, ``_2``...

    Example:
        >>> _indexed("optimizer", 0, ".bin"), _indexed("optimizer", 1, ".bin")
        ('optimizer.bin', 'optimizer_1.bin')
    """
    return f"{stem}{ext}" if index == 0 else f"{stem}_{index}{ext}"


class FSDP2Strategy(Strategy):
    """Shards models with ``torch.distributed.fsdp.fully_shard`` as the :class:`FullyShardedDataParallelPlugin` says.

    ``owns_checkpoint_files`` tells checkpointing that this strategy saves and loads the model and
    optimizer files itself (:meth:`save_checkpoint_files`, :meth:`load_checkpoint_files`): a sharded
    ``torch.distributed.checkpoint`` folder per model and optimizer, or full files gathered to rank 0.

    Example:
        >>> from overdrive.precision import Precision
        >>> from overdrive.state import PartialState
        >>> strategy = FSDP2Strategy(PartialState(), Precision(), fsdp_plugin=FullyShardedDataParallelPlugin())
        >>> strategy.distributed_type, strategy.owns_checkpoint_files
        (<DistributedType.FSDP: 'FSDP'>, True)
    """

    is_fsdp2 = True

    owns_checkpoint_files = True

    def __init__(
        self,
        state: PartialState,
        precision: Precision,
        ddp_kwargs: DistributedDataParallelKwargs | None = None,
        fsdp_plugin: FullyShardedDataParallelPlugin | None = None,
    ) -> None:
        super().__init__(state, precision, ddp_kwargs)
        if fsdp_plugin is not None and not isinstance(fsdp_plugin, FullyShardedDataParallelPlugin):
            raise TypeError(f"fsdp_plugin must be a FullyShardedDataParallelPlugin, got {type(fsdp_plugin).__name__}")
        self.plugin = fsdp_plugin if fsdp_plugin is not None else FullyShardedDataParallelPlugin()
        self._mesh: Any = None
        # id(original parameter) -> (weak reference to it, its sharded replacement): lets optimizers built on the
        # original parameters be re-pointed at the shards, without keeping the full-size originals alive.
        self._replacements: dict[int, tuple[weakref.ref[torch.Tensor], torch.nn.Parameter]] = {}

    @property
    def distributed_type(self) -> DistributedType:  # type: ignore[override]
        return DistributedType.FSDP

    @property
    def gradient_average_divisor(self) -> int:
        """The reduce-scatter averages gradients over all ranks."""
        return self.state.num_processes

    # -- the mesh -----------------------------------------------------------------------------------------------

    @property
    def mesh(self) -> Any:
        """The one-dimensional ``DeviceMesh`` over all ranks (formed on first use)."""
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            if not dist.is_initialized():
                _form_single_process_group(self.state.device)
            self._mesh = init_device_mesh(self.state.device.type, (dist.get_world_size(),))
        return self._mesh

    # -- wrapping -------------------------------------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Checkpoint (optionally) and shard the chosen blocks bottom-up, then shard the root; returns ``model``."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(unwrap_compiled(model), FSDPModule):
            return model  # prepared twice
        inner = unwrap_compiled(model)
        originals = list(inner.parameters())
        # cpu_ram_efficient_loading: rank 0's weights are the ones that count; the others' are overwritten below.
        rank0_weights = self._rank0_weights(inner) if self.plugin.cpu_ram_efficient_loading else None
        blocks = self.blocks(inner)
        if self.plugin.activation_checkpointing:
            blocks = self._checkpoint(inner, blocks)
        kwargs: dict[str, Any] = {
            "mesh": self.mesh,
            "reshard_after_forward": self.plugin.reshard_after_forward,
            "mp_policy": self.mixed_precision_policy(),
            "offload_policy": self.offload_policy(),
        }
        ignored = self._ignored_params(inner)
        if ignored:
            kwargs["ignored_params"] = ignored
        for block in blocks:
            fully_shard(block, **kwargs)
        # None = torch's rule for the root: keep its parameters after forward, backward starts with them anyway.
        fully_shard(inner, **{**kwargs, "reshard_after_forward": None if blocks else kwargs["reshard_after_forward"]})
        if rank0_weights is not None:
            self._broadcast_rank0_weights(inner, rank0_weights)
        sharded = list(inner.parameters())
        if len(sharded) != len(originals):
            raise RuntimeError(f"fully_shard changed the parameter count from {len(originals)} to {len(sharded)}")
        for old, new in zip(originals, sharded):  # same modules, same order: map by position
            if tuple(old.shape) != tuple(new.shape):
                raise RuntimeError(f"parameter order changed while sharding: {tuple(old.shape)} vs {tuple(new.shape)}")
            self._replacements[id(old)] = (weakref.ref(old), new)
        return model

    def _rank0_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return dict(model.state_dict()) if self.state.is_main_process else {}

    def _broadcast_rank0_weights(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Scatter rank 0's full weights into every rank's shards (what ``sync_module_states`` did for FSDP1)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, weights, options=options)  # type: ignore[arg-type]

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The submodules that get their own ``fully_shard`` call, children before parents (the root excluded).

        Example:
            >>> from overdrive.precision import Precision
            >>> plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="size_based_wrap", min_num_params=10)
            >>> s = FSDP2Strategy(PartialState(), Precision(), fsdp_plugin=plugin)
            >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
            >>> [type(b).__name__ for b in s.blocks(m)]
            ['Linear']
        """
        policy = self.plugin.auto_wrap_policy
        if policy is None:
            return []
        # Every submodule, children first, the root (last) dropped; containers without a forward (ModuleList,
        # ModuleDict) cannot be sharded on their own: their members can.
        candidates = [m for m in _bottom_up(model)[:-1] if type(m).forward is not torch.nn.Module.forward]
        if policy == "size_based_wrap":
            limit = int(self.plugin.min_num_params or 0)
            return [m for m in candidates if sum(p.numel() for p in m.parameters()) > limit]
        if policy == "transformer_based_wrap":
            classes = self._layer_classes(model)
            return [m for m in candidates if isinstance(m, classes)]
        return [m for m in candidates if policy(m)]  # type: ignore[operator]

    def _layer_classes(self, model: torch.nn.Module) -> tuple[type, ...]:
        names = self.plugin.transformer_cls_names_to_wrap
        if not names:
            names = list(getattr(model, "_no_split_modules", None) or [])
        present = sorted({type(m).__name__ for m in model.modules()})
        if not names:
            raise ValueError(
                "FullyShardedDataParallelPlugin(auto_wrap_policy='transformer_based_wrap') needs the block class names: "
                "set transformer_cls_names_to_wrap (or FSDP_TRANSFORMER_CLS_TO_WRAP); the model's module classes are "
                f"{present}"
            )
        classes = []
        for name in names:
            found = [type(m) for m in model.modules() if type(m).__name__ == name]
            if not found:
                raise ValueError(
                    f"transformer_cls_names_to_wrap: the model has no module of class {name!r}; its module classes "
                    f"are {present}"
                )
            classes.append(found[0])
        return tuple(classes)

    def _checkpoint(self, model: torch.nn.Module, blocks: list[torch.nn.Module]) -> list[torch.nn.Module]:
        """Wrap each block in torch's non-reentrant ``checkpoint_wrapper`` in place; return the wrappers."""
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper, offload_wrapper

        if not blocks:
            raise ValueError(
                "FullyShardedDataParallelPlugin(activation_checkpointing=True) checkpoints the wrapped blocks, but the "
                "auto-wrap policy chose none; set auto_wrap_policy='transformer_based_wrap' (with "
                "transformer_cls_names_to_wrap) or 'size_based_wrap'"
            )
        names = {id(m): name for name, m in model.named_modules()}
        wrapped = []
        for block in blocks:
            # Nested blocks: only the outermost are wrapped, the inner ones are recomputed inside them anyway.
            if any(block is not other and _contains(other, block) for other in blocks):
                continue
            wrapper = checkpoint_wrapper(block, preserve_rng_state=False)
            if self.plugin.activation_checkpointing_offload:
                wrapper = offload_wrapper(wrapper)  # saved inputs go to host memory
            model.set_submodule(names[id(block)], wrapper)
            wrapped.append(wrapper)
        return wrapped

    def _ignored_params(self, model: torch.nn.Module) -> set[torch.nn.Parameter]:
        ignored = self.plugin.ignored_modules
        if ignored is None:
            return set()
        if isinstance(ignored, str):
            import re

            modules = [m for name, m in model.named_modules() if name and re.fullmatch(ignored, name)]
        else:
            modules = list(ignored)
        return {p for m in modules for p in m.parameters()}

    def mixed_precision_policy(self) -> Any:
        """The plugin's ``MixedPrecisionPolicy``, else one from the precision policy (low-precision compute,
        fp32 reduction).

        Example:
            >>> from overdrive.precision import make_precision
            >>> s = FSDP2Strategy(PartialState(), make_precision("bf16", torch.device("cpu")))
            >>> s.mixed_precision_policy().param_dtype, s.mixed_precision_policy().reduce_dtype
            (torch.bfloat16, torch.float32)
        """
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.plugin.mixed_precision_policy is not None:
            return self.plugin.mixed_precision_policy
        if self.precision.dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=self.precision.dtype, reduce_dtype=torch.float32)

    def offload_policy(self) -> Any:
        """The plugin's offload policy; pinned host memory is switched off where no accelerator exists."""
        from torch.distributed.fsdp import CPUOffloadPolicy

        policy = self.plugin.cpu_offload
        if isinstance(policy, CPUOffloadPolicy) and policy.pin_memory and self.state.device.type == "cpu":
            # Pinning needs an accelerator: "Cannot access accelerator device when none is available".
            return CPUOffloadPolicy(pin_memory=False)
        return policy

    # -- optimizers -------------------------------------------------------------------------------------------------

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Point ``optimizer``'s parameter groups at the sharded parameters that replaced the ones it was built on.

        Optimizers are created on the user's model before :meth:`wrap`; ``fully_shard`` replaces every parameter by a
        ``DTensor`` shard, so without this the optimizer would step tensors the model no longer uses.

        Example:
            >>> from overdrive.precision import Precision
            >>> s = FSDP2Strategy(PartialState(), Precision())
            >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
            >>> s.prepare_optimizer(opt) is opt
            True
        """
        for group in optimizer.param_groups:
            swapped = []
            for p in group["params"]:
                entry = self._replacements.get(id(p))
                if entry is not None and entry[0]() is p:
                    if p in optimizer.state:
                        raise ValueError(
                            "prepare(): the optimizer already holds state (it has stepped) for parameters that FSDP2 "
                            "now shards; create the optimizer, prepare it with the model, and only then train"
                        )
                    swapped.append(entry[1])
                else:
                    swapped.append(p)
            group["params"] = swapped
        return optimizer

    # -- synchronisation and clipping -------------------------------------------------------------------------

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Micro-steps keep local unsharded gradients; the next synchronised backward reduce-scatters their sum."""
        return _gradient_sync_off(unwrap_compiled(model))

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 adds no wrapper: the sharded module is the user's module."""
        return model

    def clip_grad_norm_(
        self, parameters: Iterable[torch.nn.Parameter] | torch.Tensor, max_norm: float, norm_type: float = 2.0
    ) -> torch.Tensor:
        """Clip by the norm of the full (all shards) gradient; return that norm as a plain tensor on every rank."""
        from torch.distributed.tensor import DTensor

        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        with_grads = [p for p in params if p.grad is not None]
        if not any(isinstance(p.grad, DTensor) for p in with_grads):
            return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
        by_mesh: dict[Any, list[torch.Tensor]] = {}
        plain: list[torch.Tensor] = []
        for p in with_grads:
            by_mesh.setdefault(p.grad.device_mesh, []).append(p) if isinstance(p.grad, DTensor) else plain.append(p)
        norms = []
        for group in by_mesh.values():
            norm = torch.nn.utils.get_total_norm([p.grad for p in group if p.grad is not None], norm_type)
            # The norm over local shards is a partial result; full_tensor() completes it over the mesh.
            norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        if plain:
            plain_grads = [p.grad for p in plain if p.grad is not None]
            norms.append(torch.nn.utils.get_total_norm(plain_grads, norm_type).to(norms[0].device))
        total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
        for mesh, group in by_mesh.items():
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, DTensor.from_local(total, mesh))
        if plain:
            torch.nn.utils.clip_grads_with_norm_(plain, max_norm, total)
        return total

    # -- state dicts and checkpoints ----------------------------------------------------------------------------------

    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict, gathered on CPU on rank 0 (an empty dict on the other ranks). Every rank must call.

        Example:
            >>> from overdrive.precision import Precision
            >>> s = FSDP2Strategy(PartialState(), Precision())
            >>> sorted(s.model_state_dict(torch.nn.Linear(1, 1)))
            ['bias', 'weight']
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        inner = unwrap_compiled(model)
        if not isinstance(inner, FSDPModule):
            return inner.state_dict()  # an evaluation model that was never sharded
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(inner, options=options)  # type: ignore[return-value]

    def save_checkpoint_files(
        self, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer], folder: str | os.PathLike[str],
        safe_serialization: bool = True, **kwargs: Any,
    ) -> None:
        """Write the models and optimizers into ``folder`` (every rank calls; ``folder`` exists, shared by the ranks).

        ``SHARDED_STATE_DICT``: ``pytorch_model_fsdp_{i}/`` and ``optimizer_{i}/``, ``torch.distributed.checkpoint``
        folders each rank writes its shards into (loadable at any world size). ``FULL_STATE_DICT``: rank 0 writes
        ``model.safetensors`` and ``optimizer.bin`` (``_1``, ``_2``... for further objects), keyed by parameter name.
        Pass the torch optimizers (``AcceleratedOptimizer.optimizer``), not the wrappers.
        """
        if kwargs:
            raise TypeError(f"FSDP2 checkpoints take no extra options; got {sorted(kwargs)}")
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        root = Path(folder)
        sharded = self.plugin.state_dict_type.name == "SHARDED_STATE_DICT"
        options = StateDictOptions(full_state_dict=not sharded, cpu_offload=not sharded)
        models = [unwrap_compiled(m) for m in models]
        for i, model in enumerate(models):
            state: dict[str, Any] = get_model_state_dict(model, options=options)
            if sharded:
                _dcp_save({"model": state}, root / f"{MODEL_DIR}_{i}")
            elif self.state.is_main_process:
                _write_full_model(state, root, i, safe_serialization)
        for i, opt in enumerate(optimizers):
            ostate: Any = get_optimizer_state_dict(_owner(models, opt, i), opt, options=options)
            if sharded:
                _dcp_save({"optimizer": ostate}, root / f"{OPTIMIZER_DIR}_{i}")
            elif self.state.is_main_process:
                torch.save(ostate, root / _indexed("optimizer", i, ".bin"))
        if dist.is_initialized():
            dist.barrier()  # every rank's shards are on disk before anyone reports success

    def check_checkpoint_files(self, folder: str | os.PathLike[str], num_models: int, num_optimizers: int) -> None:
        """Raise ``CheckpointError`` naming the path when ``folder`` lacks a model/optimizer file or a shard.

        Checks what :meth:`load_checkpoint_files` will read (no process group needed), so that a bad checkpoint
        fails before any training state changes.
        """
        from ..checkpoint_state import CheckpointError

        root = Path(folder)
        for kind, stem, count, full_names in (
            ("model", MODEL_DIR, num_models, lambda i: [_indexed("model", i, ".safetensors"), _indexed("model", i, ".bin"),
                                                        _indexed("pytorch_model", i, ".bin")]),
            ("optimizer", OPTIMIZER_DIR, num_optimizers, lambda i: [_indexed("optimizer", i, ".bin")]),
        ):
            for i in range(count):
                shard_dir = root / f"{stem}_{i}"
                if shard_dir.is_dir():
                    _check_dcp_folder(shard_dir, CheckpointError)
                elif not any((root / name).is_file() for name in full_names(i)):
                    raise CheckpointError(
                        f"{str(root)!r} has no {kind} {i}: expected the sharded folder {shard_dir.name!r}/ or "
                        f"{full_names(i)[0]!r}; was it saved with {count} prepared {kind}s?"
                    )

    def load_checkpoint_files(
        self, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer], folder: str | os.PathLike[str],
        strict: bool = True, **kwargs: Any,
    ) -> None:
        """Restore what :meth:`save_checkpoint_files` wrote, at any world size (every rank calls).

        Sharded folders are read with ``torch.distributed.checkpoint`` (each rank reads the pieces of its own shards);
        full files are read by every rank and scattered into the shards.
        """
        if kwargs:
            raise TypeError(f"FSDP2 checkpoints take no extra options; got {sorted(kwargs)}")
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        root = Path(folder)
        self.check_checkpoint_files(root, len(models), len(optimizers))
        models = [unwrap_compiled(m) for m in models]
        for i, model in enumerate(models):
            shard_dir = root / f"{MODEL_DIR}_{i}"
            if shard_dir.is_dir():
                state = {"model": get_model_state_dict(model)}
                _dcp_load(state, shard_dir)
                set_model_state_dict(model, state["model"], options=StateDictOptions(strict=strict))
            else:
                full: dict[str, Any] = dict(_read_full_model(root, i))
                set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, strict=strict))
        for i, opt in enumerate(optimizers):
            owner = _owner(models, opt, i)
            shard_dir = root / f"{OPTIMIZER_DIR}_{i}"
            if shard_dir.is_dir():
                ostate = {"optimizer": get_optimizer_state_dict(owner, opt)}
                _dcp_load(ostate, shard_dir)
                set_optimizer_state_dict(owner, opt, ostate["optimizer"])
            else:
                saved = torch.load(root / _indexed("optimizer", i, ".bin"), map_location="cpu", weights_only=True)
                set_optimizer_state_dict(owner, opt, saved, options=StateDictOptions(full_state_dict=True))


# -- helpers ------------------------------------------------------------------------------------------------------


def _form_single_process_group(device: torch.device) -> None:
    """One process still needs a process group for the mesh: form a private one-rank group (in-memory store)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **kwargs)
    atexit.register(_destroy_if_initialized)


def _destroy_if_initialized() -> None:
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def _gradient_sync_off(model: torch.nn.Module) -> Iterator[None]:
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield  # an evaluation model that was never sharded
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _bottom_up(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every module once, children before their parents, ``model`` last."""
    order: list[torch.nn.Module] = []
    seen: set[int] = set()

    def visit(module: torch.nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for child in module.children():
            visit(child)
        order.append(module)

    visit(model)
    return order


def _contains(outer: torch.nn.Module, inner: torch.nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _owner(models: Sequence[torch.nn.Module], optimizer: torch.optim.Optimizer, index: int) -> torch.nn.Module:
    """The model whose parameters ``optimizer`` steps (state dicts are keyed by that model's parameter names)."""
    mine = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for model in models:
        if any(id(p) in mine for p in model.parameters()):
            return model
    if not models:
        raise ValueError("saving or loading an optimizer under FSDP2 needs its prepared model")
    return models[min(index, len(models) - 1)]


def _dcp_save(state: dict[str, Any], path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=str(path))


def _dcp_load(state: dict[str, Any], path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.load(state, checkpoint_id=str(path))


def _check_dcp_folder(path: Path, error: type[Exception]) -> None:
    """Every file the folder's ``.metadata`` points at exists and is long enough (a missing shard fails here)."""
    from torch.distributed.checkpoint import FileSystemReader

    if not (path / ".metadata").is_file():
        raise error(f"{str(path)!r} is not a complete sharded checkpoint: its '.metadata' file is missing")
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as err:
        raise error(f"{str(path / '.metadata')!r} is unreadable ({type(err).__name__}: {err})") from err
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = path / name
        if not file.is_file():
            raise error(f"{str(path)!r} is missing the shard file {name!r} (listed in its .metadata)")
        if file.stat().st_size < size:
            raise error(f"{str(file)!r} is truncated: {file.stat().st_size} bytes, the metadata needs {size}")


def _write_full_model(state: dict[str, torch.Tensor], root: Path, index: int, safe: bool) -> None:
    from ..checkpointing import _dedupe_shared

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if safe:
        from safetensors.torch import save_file

        save_file(_dedupe_shared(tensors), str(root / _indexed("model", index, ".safetensors")), metadata={"format": "pt"})
    else:
        torch.save(tensors, root / _indexed("pytorch_model", index, ".bin"))


def _read_full_model(root: Path, index: int) -> dict[str, torch.Tensor]:
    safe = root / _indexed("model", index, ".safetensors")
    if safe.is_file():
        from safetensors.torch import load_file

        return load_file(str(safe))
    for name in (_indexed("model", index, ".bin"), _indexed("pytorch_model", index, ".bin")):
        if (root / name).is_file():
            loaded: dict[str, torch.Tensor] = torch.load(root / name, map_location="cpu", weights_only=True)
            return loaded
    raise FileNotFoundError(f"{str(root)!r} has no full weights for model {index}")
