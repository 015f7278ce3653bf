"""Every user-facing setting, declared once, with one precedence.

Precedence (highest first), applied by :func:`resolve` and nowhere else::

    explicit argument (``Accelerator(mixed_precision=...)``)
    > environment (``OVERDRIVE_*``, then the ``ACCELERATE_*`` alias)
    > default

``overdrive launch`` passes its flags to the workers through the ``OVERDRIVE_*`` variables, so a launch flag sits
at the "environment" level for the script and overrides a variable the user exported only under the
``ACCELERATE_*`` name. This module imports only the standard library: the CLI reads it without importing torch.

Example:
    >>> import os
    >>> resolve("mixed_precision", None, {"ACCELERATE_MIXED_PRECISION": "bf16"})
    ('bf16', 'env ACCELERATE_MIXED_PRECISION')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SETTINGS", "Setting", "parse_bool", "resolve", "resolve_value"]


def parse_bool(text: str) -> bool:
    """Parse the truthy/falsy spellings Accelerate accepts in its environment variables.

    Example:
        >>> parse_bool("yes"), parse_bool("0")
        (True, False)
    """
    low = text.strip().lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not a positive integer")
    return value


@dataclass(frozen=True)
class Setting:
    """One setting: its type, default, allowed values, environment names and help.

    Example:
        >>> SETTINGS["cpu"].env
        ('OVERDRIVE_USE_CPU', 'ACCELERATE_USE_CPU')
    """

    name: str
    parse: Callable[[str], Any]
    default: Any
    env: tuple[str, ...]
    help: str
    choices: tuple[Any, ...] | None = None
    flag: str | None = None  # the `overdrive launch` flag that sets it, if any

    def check(self, value: Any, origin: str) -> Any:
        """Validate ``value`` (already parsed) against ``choices``; ``origin`` names where it came from."""
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices if c is not None)
            raise ValueError(f"{self.name}={value!r} (from {origin}) is not one of {allowed}")
        return value


def _mixed_precision(text: str) -> str:
    return text.strip().lower()


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "mixed_precision",
            _mixed_precision,
            "no",
            ("OVERDRIVE_MIXED_PRECISION", "ACCELERATE_MIXED_PRECISION"),
            "Autocast and loss-scaling policy: 'no' (fp32), 'fp16' (autocast + GradScaler) or 'bf16' (autocast).",
            choices=("no", "fp16", "bf16", "fp8"),
            flag="--mixed_precision",
        ),
        Setting(
            "cpu",
            parse_bool,
            False,
            ("OVERDRIVE_USE_CPU", "ACCELERATE_USE_CPU"),
            "Run on CPU even when a GPU is present (gloo process group).",
            flag="--cpu",
        ),
        Setting(
            "gradient_accumulation_steps",
            _positive_int,
            1,
            ("OVERDRIVE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
            "Micro-batches accumulated before each optimizer step (a positive integer).",
            flag="--gradient_accumulation_steps",
        ),
        Setting(
            "dynamo_backend",
            lambda t: t.strip().lower(),
            "no",
            ("OVERDRIVE_DYNAMO_BACKEND", "ACCELERATE_DYNAMO_BACKEND"),
            "torch.compile backend ('no' disables compilation).",
            flag="--dynamo_backend",
        ),
        Setting(
            "debug",
            parse_bool,
            False,
            ("OVERDRIVE_DEBUG", "ACCELERATE_DEBUG_MODE"),
            "Extra cross-rank checks of collectives.",
            flag="--debug",
        ),
        Setting(
            "log_level",
            lambda t: t.strip().upper(),
            None,
            ("OVERDRIVE_LOG_LEVEL", "ACCELERATE_LOG_LEVEL"),
            "Level set by get_logger() on its logger and the root logger (DEBUG, INFO, WARNING, ERROR, CRITICAL).",
            choices=(None, "CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET"),
        ),
        Setting(
            "use_fsdp",
            parse_bool,
            False,
            ("OVERDRIVE_USE_FSDP", "ACCELERATE_USE_FSDP"),
            "Shard the model with FSDP2.",
        ),
        Setting(
            "use_deepspeed",
            parse_bool,
            False,
            ("OVERDRIVE_USE_DEEPSPEED", "ACCELERATE_USE_DEEPSPEED"),
            "Train with DeepSpeed ZeRO.",
        ),
    )
}


def resolve(name: str, explicit: Any = None, environ: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """Return ``(value, source)`` for setting ``name``; ``explicit=None`` means "not given".

    Example:
        >>> resolve("gradient_accumulation_steps", 4, {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"})
        (4, 'argument')
    """
    setting = SETTINGS[name]
    env = os.environ if environ is None else environ
    if explicit is not None:
        return setting.check(explicit, "argument"), "argument"
    for var in setting.env:
        raw = env.get(var)
        if raw is not None and raw != "":
            try:
                value = setting.parse(raw)
            except ValueError as err:
                raise ValueError(f"environment variable {var}={raw!r} is invalid for {name}: {err}") from None
            return setting.check(value, f"env {var}={raw!r}"), f"env {var}"
    return setting.default, "default"


def resolve_value(name: str, explicit: Any = None, environ: Mapping[str, str] | None = None) -> Any:
    """Like :func:`resolve` but returns only the value.

    Example:
        >>> resolve_value("cpu", None, {})
        False
    """
    return resolve(name, explicit, environ)[0]
