"""DeepSpeed configuration: the one place where plugin fields, Accelerator settings and the prepared objects become
the config dict handed to ``deepspeed.initialize``.

The steps, in the order they run (each function below is one of them):

1. :func:`plugin_config` — the plugin's own fields (``zero_stage``, offload devices, ``gradient_clipping``, ...)
   either build a config whose batch sizes are ``"auto"``, or fill the ``"auto"`` entries of the user's
   ``hf_ds_config`` (a JSON file path, a JSON/base64 string or a dict). Explicit values in the user's config win.
2. :func:`set_mixed_precision` — the Accelerator's ``mixed_precision`` turns on ``fp16``/``bf16`` sections (an
   explicit conflicting section is an error).
3. :func:`auto_values` + :func:`fill_auto` — at ``prepare`` time the remaining ``"auto"`` entries are filled from
   the data loaders' batch size, the accumulation steps, the number of processes, the model's
   ``config.hidden_size`` and the :class:`DummyOptim` / :class:`DummyScheduler` hyper-parameters. An ``"auto"`` that
   nothing can fill is an error naming the key.

This module imports no DeepSpeed; :mod:`overdrive.strategies.deepspeed` does, when a run uses it.

Example:
    >>> from overdrive.utils.deepspeed import auto_values, fill_auto, plugin_config, set_mixed_precision
    >>> config = plugin_config(zero_stage=2, gradient_accumulation_steps="auto", gradient_clipping="auto")
    >>> set_mixed_precision(config, "bf16")
    >>> fill_auto(config, auto_values(config, micro_batch_size=4, gradient_accumulation_steps=1, num_processes=2))
    >>> config["train_batch_size"], config["gradient_clipping"], config["bf16"]
    (8, 1.0, {'enabled': True})
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DummyOptim",
    "DummyScheduler",
    "HfDeepSpeedConfig",
    "auto_values",
    "fill_auto",
    "finalize_config",
    "find_auto",
    "get_value",
    "plugin_config",
    "set_mixed_precision",
]

AUTO = "auto"

# Plugin field -> dotted config key it sets (Accelerate's mapping, so either spelling means the same run).
PLUGIN_TO_CONFIG = {
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_clipping": "gradient_clipping",
    "zero_stage": "zero_optimization.stage",
    "offload_optimizer_device": "zero_optimization.offload_optimizer.device",
    "offload_param_device": "zero_optimization.offload_param.device",
    "offload_param_nvme_path": "zero_optimization.offload_param.nvme_path",
    "offload_optimizer_nvme_path": "zero_optimization.offload_optimizer.nvme_path",
    "zero3_save_16bit_model": "zero_optimization.stage3_gather_16bit_weights_on_model_save",
}

# Keys filled from the model's hidden size: bucket sizes that DeepSpeed recommends scaling with it.
HIDDEN_SIZE_KEYS = (
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
)


# -- reading a config ------------------------------------------------------------------------------------------------


def load_config(source: Any) -> dict[str, Any]:
    """A private copy of the user's DeepSpeed config: a dict, a JSON file path, a JSON string or base64 of one.

    Example:
        >>> load_config('{"zero_optimization": {"stage": 1}}')
        {'zero_optimization': {'stage': 1}}
    """
    if isinstance(source, HfDeepSpeedConfig):
        return source.config  # shared on purpose: Accelerate users edit plugin.hf_ds_config.config in place
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))  # the caller may reuse its dict; "auto" entries get overwritten here
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        path = os.fspath(source)
        try:
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"DeepSpeed config file {path!r} is not valid JSON: {err}") from None
        return _check_dict(loaded, repr(path))
    if isinstance(source, str):
        try:
            return _check_dict(json.loads(source), "the JSON string")
        except json.JSONDecodeError:
            pass
        try:
            decoded = base64.urlsafe_b64decode(source.encode()).decode("utf-8")
            return _check_dict(json.loads(decoded), "the base64 string")
        except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, ValueError):
            pass
    raise ValueError(
        f"hf_ds_config={source!r} is neither a dict, an existing JSON file, a JSON string nor base64 of one; pass "
        "the path of your DeepSpeed config file (e.g. ds_config.json) or its contents as a dict"
    )


def _check_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"DeepSpeed config in {what} must be a JSON object, got {type(value).__name__}")
    return value


def _node(config: dict[str, Any], key: str, create: bool = False) -> tuple[dict[str, Any] | None, str]:
    """The dict holding dotted ``key``'s last part (``None`` when a parent is missing and ``create`` is False)."""
    *parents, leaf = key.split(".")
    node: Any = config
    for part in parents:
        child = node.get(part)
        if child is None and create:
            child = node[part] = {}
        if not isinstance(child, dict):
            return None, leaf
        node = child
    return node, leaf


def get_value(config: dict[str, Any], key: str, default: Any = None) -> Any:
    """Value of a dotted ``key`` (``"zero_optimization.stage"``), or ``default`` when absent.

    Example:
        >>> get_value({"zero_optimization": {"stage": 3}}, "zero_optimization.stage")
        3
    """
    node, leaf = _node(config, key)
    return default if node is None else node.get(leaf, default)


def find_auto(config: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose value is still ``"auto"``.

    Example:
        >>> find_auto({"a": "auto", "b": {"c": "auto", "d": 1}})
        ['a', 'b.c']
    """
    found: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict):
            found.extend(find_auto(value, f"{prefix}{key}."))
        elif value == AUTO:
            found.append(prefix + key)
    return found


class HfDeepSpeedConfig:
    """A DeepSpeed config with lookups by dotted key (Accelerate's name; ``plugin.hf_ds_config`` is one).

    Example:
        >>> cfg = HfDeepSpeedConfig({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}})
        >>> cfg.is_zero3(), cfg.is_offload(), cfg.get_value("zero_optimization.stage")
        (True, True, 3)
    """

    def __init__(self, config_file_or_dict: Any) -> None:
        self.config = load_config(config_file_or_dict)

    def get_value(self, ds_key_long: str, default: Any = None) -> Any:
        """Value of a dotted key, or ``default``."""
        return get_value(self.config, ds_key_long, default)

    def is_true(self, ds_key_long: str) -> bool:
        """True only when the key is set to a true value."""
        return bool(self.get_value(ds_key_long) or False)

    def is_false(self, ds_key_long: str) -> bool:
        """True only when the key is set to a false value (not when it is absent)."""
        value = self.get_value(ds_key_long)
        return value is not None and not value

    def is_zero2(self) -> bool:
        """ZeRO stage 2."""
        return self.get_value("zero_optimization.stage", -1) == 2

    def is_zero3(self) -> bool:
        """ZeRO stage 3."""
        return self.get_value("zero_optimization.stage", -1) == 3

    def is_offload(self) -> bool:
        """Optimizer or parameter offload to cpu/nvme under ZeRO-2/3."""
        devices = {
            self.get_value("zero_optimization.offload_optimizer.device"),
            self.get_value("zero_optimization.offload_param.device"),
        }
        return (self.is_zero2() or self.is_zero3()) and bool(devices & {"cpu", "nvme"})


# -- step 1: the plugin's fields -------------------------------------------------------------------------------------


def plugin_config(
    hf_ds_config: Any = None,
    gradient_accumulation_steps: Any = AUTO,
    gradient_clipping: Any = AUTO,
    zero_stage: int = 2,
    offload_optimizer_device: str = "none",
    offload_param_device: str = "none",
    offload_optimizer_nvme_path: str = "none",
    offload_param_nvme_path: str = "none",
    zero3_save_16bit_model: bool = False,
) -> dict[str, Any]:
    """The config a :class:`~overdrive.DeepSpeedPlugin` stands for, before the Accelerator fills its ``"auto"``s.

    Without ``hf_ds_config`` the fields build the whole config. With one, each field fills only entries of the
    user's config that are ``"auto"`` (explicit values in the file win), a missing ``gradient_accumulation_steps``
    becomes 1 and a missing ``zero_optimization`` section is an error, as in Accelerate.

    Example:
        >>> plugin_config(zero_stage=1, gradient_clipping=0.5)["zero_optimization"]["stage"]
        1
        >>> plugin_config({"zero_optimization": {"stage": "auto"}}, zero_stage=3)["zero_optimization"]
        {'stage': 3}
    """
    fields = {
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": gradient_clipping,
        "zero_stage": zero_stage,
        "offload_optimizer_device": offload_optimizer_device,
        "offload_param_device": offload_param_device,
        "offload_optimizer_nvme_path": offload_optimizer_nvme_path,
        "offload_param_nvme_path": offload_param_nvme_path,
        "zero3_save_16bit_model": zero3_save_16bit_model,
    }
    if hf_ds_config is not None:
        config = load_config(hf_ds_config)
        config.setdefault("gradient_accumulation_steps", 1)
        if "zero_optimization" not in config:
            raise ValueError(
                "the DeepSpeed config (hf_ds_config) has no 'zero_optimization' section; add one, e.g. "
                '"zero_optimization": {"stage": 2}'
            )
        fill_auto(config, {PLUGIN_TO_CONFIG[name]: value for name, value in fields.items() if value is not None},
                  strict=False)
    else:
        config = {
            "train_batch_size": AUTO,
            "train_micro_batch_size_per_gpu": AUTO,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "zero_optimization": {
                "stage": zero_stage,
                "offload_optimizer": {
                    "device": offload_optimizer_device,
                    "nvme_path": offload_optimizer_nvme_path if offload_optimizer_device == "nvme" else None,
                },
                "offload_param": {
                    "device": offload_param_device,
                    "nvme_path": offload_param_nvme_path if offload_param_device == "nvme" else None,
                },
                "stage3_gather_16bit_weights_on_model_save": zero3_save_16bit_model,
            },
        }
        if gradient_clipping:  # 0 / None: no clipping section, so DeepSpeed does not clip ("auto" is kept)
            config["gradient_clipping"] = gradient_clipping
    config["steps_per_print"] = float("inf")  # DeepSpeed otherwise prints its own progress lines to stdout
    return config


# -- step 2: mixed precision ---------------------------------------------------------------------------------------


def set_mixed_precision(config: dict[str, Any], mixed_precision: str) -> None:
    """Turn the Accelerator's ``mixed_precision`` ('no', 'fp16', 'bf16', 'fp8') into ``fp16``/``bf16`` sections.

    A section the user wrote keeps its settings; ``"enabled": "auto"`` is filled. Asking for one 16-bit type while
    the config enables the other is an error.

    Example:
        >>> config = {}
        >>> set_mixed_precision(config, "fp16"); config
        {'fp16': {'enabled': True, 'auto_cast': True}, 'bf16': {'enabled': False}}
    """
    if mixed_precision not in ("no", "fp16", "bf16", "fp8"):
        raise ValueError(f"mixed_precision={mixed_precision!r} is not one of 'no', 'fp16', 'bf16', 'fp8'")
    low = "bf16" if mixed_precision in ("bf16", "fp8") else mixed_precision  # fp8 computes its rest in bf16
    if low == "fp16":
        config.setdefault("fp16", {"enabled": True, "auto_cast": True})
    elif low == "bf16":
        config.setdefault("bf16", {"enabled": True})
    if low != "no":
        other = "bf16" if low == "fp16" else "fp16"
        if str(config.get(other, {}).get("enabled", False)).lower() == "true":
            raise ValueError(
                f"mixed_precision={mixed_precision!r} conflicts with the DeepSpeed config, which enables {other}; "
                f"remove the {other!r} section from the config or set mixed_precision={other!r}"
            )
    for dtype in ("fp16", "bf16"):
        config.setdefault(dtype, {"enabled": False})
    fill_auto(config, {"fp16.enabled": low == "fp16", "bf16.enabled": low == "bf16"}, strict=False)


# -- step 3: values known at prepare time --------------------------------------------------------------------------


def hidden_size_of(model: Any) -> int | None:
    """``model.config.hidden_size`` (or the largest of ``hidden_sizes``), ``None`` when the model has neither."""
    model_config = getattr(model, "config", None)
    if model_config is None:
        return None
    size = getattr(model_config, "hidden_size", None)
    if size is None and getattr(model_config, "hidden_sizes", None):
        size = max(model_config.hidden_sizes)
    return int(size) if size is not None else None


def auto_values(
    config: dict[str, Any],
    micro_batch_size: int | None,
    gradient_accumulation_steps: int,
    num_processes: int,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    split_batches: bool = False,
) -> dict[str, Any]:
    """The values that fill ``"auto"`` entries at ``prepare`` time, keyed by dotted config key.

    ``gradient_clipping`` defaults to 1.0 and ``stage3_gather_16bit_weights_on_model_save`` to False (Accelerate's
    choices); ``micro_batch_size`` is the per-process batch (``None`` when no data loader was prepared).

    Example:
        >>> auto_values({}, micro_batch_size=2, gradient_accumulation_steps=4, num_processes=2)["train_batch_size"]
        16
    """
    values: dict[str, Any] = {
        "gradient_clipping": 1.0,
        "zero_optimization.stage3_gather_16bit_weights_on_model_save": False,
    }
    steps = get_value(config, "gradient_accumulation_steps", gradient_accumulation_steps)
    steps = gradient_accumulation_steps if steps == AUTO else steps
    values["gradient_accumulation_steps"] = steps
    if micro_batch_size is not None:
        values["train_micro_batch_size_per_gpu"] = micro_batch_size
        values["train_batch_size"] = micro_batch_size * steps * num_processes
    hidden = hidden_size_of(model)
    if hidden is not None:
        values[HIDDEN_SIZE_KEYS[0]] = hidden * hidden
        values[HIDDEN_SIZE_KEYS[1]] = int(0.9 * hidden * hidden)
        values[HIDDEN_SIZE_KEYS[2]] = 10 * hidden
    if isinstance(optimizer, DummyOptim):
        values["optimizer.params.lr"] = optimizer.lr
        values["optimizer.params.weight_decay"] = optimizer.weight_decay
    if isinstance(scheduler, DummyScheduler) and scheduler.lr_scheduler_callable is None:
        base = scheduler.optimizer
        defaults = getattr(base, "defaults", None)
        values["scheduler.params.warmup_min_lr"] = 0
        values["scheduler.params.warmup_max_lr"] = getattr(base, "lr", None) if defaults is None else defaults["lr"]
        # DeepSpeed 0.19.6+ rejects 0 warm-up steps (earlier versions clamped them).
        values["scheduler.params.warmup_num_steps"] = max(1, scheduler.warmup_num_steps)
        if scheduler.total_num_steps is not None:
            # A schedule counted in single-process steps: each update here consumes num_processes batches.
            total = scheduler.total_num_steps
            values["scheduler.params.total_num_steps"] = total if split_batches else math.ceil(total / num_processes)
    return values


def fill_auto(config: dict[str, Any], values: Mapping[str, Any], strict: bool = True) -> None:
    """Replace ``"auto"`` entries of ``config`` by ``values`` (dotted keys); explicit entries are left alone.

    With ``strict`` an ``"auto"`` left without a value is an error that names the key (DeepSpeed would reject it
    later with a less helpful message).

    Example:
        >>> config = {"train_batch_size": "auto", "zero_optimization": {"stage": 1}}
        >>> fill_auto(config, {"train_batch_size": 8, "zero_optimization.stage": 3}); config
        {'train_batch_size': 8, 'zero_optimization': {'stage': 1}}
    """
    for key in find_auto(config):
        node, leaf = _node(config, key)
        assert node is not None  # find_auto only returns keys whose parents exist
        if key in values:
            node[leaf] = values[key]
        elif strict:
            hints = {
                "train_micro_batch_size_per_gpu": "pass a data loader with an integer batch_size to the same "
                "accelerator.prepare() call as the model",
                "train_batch_size": "pass a data loader with an integer batch_size to the same accelerator.prepare() "
                "call as the model",
            }
            if key in HIDDEN_SIZE_KEYS:
                hint = "the model has no config.hidden_size (or config.hidden_sizes) to derive it from"
            elif key.startswith(("optimizer.", "scheduler.")):
                hint = "pass overdrive.utils.deepspeed.DummyOptim / DummyScheduler to prepare() to provide it"
            else:
                hint = hints.get(key, "nothing in the Accelerator or the prepared objects provides it")
            raise ValueError(
                f"DeepSpeed config entry {key!r} is 'auto' but cannot be filled: {hint}; or write an explicit value "
                "for it in the DeepSpeed config"
            )


def finalize_config(
    plugin: Any,
    mixed_precision: str,
    gradient_accumulation_steps: int,
    num_processes: int,
    batch_sizes: list[int | None],
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    split_batches: bool = False,
) -> tuple[dict[str, Any], int]:
    """Steps 2 and 3 on ``plugin.deepspeed_config`` (in place): the config ``deepspeed.initialize`` gets, and the
    accumulation steps to train with (the DeepSpeed config's explicit value wins over the Accelerator's).

    ``batch_sizes`` are the ``batch_size`` of the (unprepared) data loaders passed to ``prepare``: the smallest is
    the per-process micro-batch (the largest with ``is_train_batch_min=False``), divided by the number of processes
    under ``split_batches``.

    Example:
        >>> from overdrive import DeepSpeedPlugin
        >>> config, steps = finalize_config(DeepSpeedPlugin(zero_stage=1), "no", 2, 2, [4])
        >>> config["train_micro_batch_size_per_gpu"], config["train_batch_size"], steps
        (4, 16, 2)
    """
    config = plugin.deepspeed_config
    set_mixed_precision(config, mixed_precision)
    micro: int | None = None
    if get_value(config, "train_micro_batch_size_per_gpu") == AUTO:
        if any(bs is None for bs in batch_sizes):
            raise ValueError(
                "a data loader passed to prepare() has batch_size=None (a custom batch_sampler); write an integer "
                "train_micro_batch_size_per_gpu into the DeepSpeed config"
            )
        sizes = [int(bs) for bs in batch_sizes if bs is not None]
        if split_batches:
            sizes = [bs // num_processes for bs in sizes]
        if sizes:
            micro = min(sizes) if plugin.is_train_batch_min else max(sizes)
    else:
        micro = get_value(config, "train_micro_batch_size_per_gpu")
    fill_auto(config, {"gradient_accumulation_steps": gradient_accumulation_steps}, strict=False)
    steps = int(get_value(config, "gradient_accumulation_steps", gradient_accumulation_steps))
    if optimizer is not None:
        in_config = "optimizer" in config
        if in_config and not isinstance(optimizer, DummyOptim):
            raise ValueError(
                "the DeepSpeed config defines an 'optimizer' and prepare() got a torch optimizer too; remove one "
                "(with an optimizer in the config, pass overdrive.utils.deepspeed.DummyOptim(params) instead)"
            )
        if not in_config and isinstance(optimizer, DummyOptim):
            raise ValueError("DummyOptim needs an 'optimizer' section in the DeepSpeed config; add one")
        if not isinstance(optimizer, DummyOptim):
            config["zero_allow_untested_optimizer"] = True  # any torch optimizer works under ZeRO
    if scheduler is not None:
        in_config = "scheduler" in config
        if in_config and not isinstance(scheduler, DummyScheduler):
            raise ValueError(
                "the DeepSpeed config defines a 'scheduler' and prepare() got a scheduler too; remove one (with a "
                "scheduler in the config, pass overdrive.utils.deepspeed.DummyScheduler(optimizer) instead)"
            )
        if not in_config and isinstance(scheduler, DummyScheduler) and scheduler.lr_scheduler_callable is None:
            raise ValueError("DummyScheduler needs a 'scheduler' section in the DeepSpeed config or lr_scheduler_callable")
        if isinstance(optimizer, DummyOptim) and not isinstance(scheduler, DummyScheduler):
            raise ValueError("with DummyOptim, the scheduler must be a DummyScheduler too")
    values = auto_values(config, micro, steps, num_processes, model=model, optimizer=optimizer, scheduler=scheduler,
                         split_batches=split_batches)
    fill_auto(config, values)
    return config, steps


# -- placeholders for an optimizer / scheduler defined in the DeepSpeed config ---------------------------------------


class DummyOptim:
    """Stands for the optimizer of the DeepSpeed config's ``"optimizer"`` section in ``prepare()``.

    Its ``lr`` and ``weight_decay`` fill that section's ``"auto"`` params.

    Example:
        >>> import torch
        >>> DummyOptim(torch.nn.Linear(1, 1).parameters(), lr=0.01).lr
        0.01
    """

    def __init__(self, params: Any, lr: float = 0.001, weight_decay: float = 0, **kwargs: Any) -> None:
        self.params = params
        self.lr = lr
        self.weight_decay = weight_decay
        self.kwargs = kwargs


class DummyScheduler:
    """Stands for the scheduler of the DeepSpeed config's ``"scheduler"`` section (or builds one with
    ``lr_scheduler_callable(optimizer)``) in ``prepare()``.

    Example:
        >>> import torch
        >>> opt = DummyOptim(torch.nn.Linear(1, 1).parameters())
        >>> DummyScheduler(opt, total_num_steps=100, warmup_num_steps=10).warmup_num_steps
        10
    """

    def __init__(
        self, optimizer: Any, total_num_steps: int | None = None, warmup_num_steps: int = 0,
        lr_scheduler_callable: Any = None, **kwargs: Any,
    ) -> None:
        self.optimizer = optimizer
        self.total_num_steps = total_num_steps
        self.warmup_num_steps = warmup_num_steps
        self.lr_scheduler_callable = lr_scheduler_callable
        self.kwargs = kwargs
