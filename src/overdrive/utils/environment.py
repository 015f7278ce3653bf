"""Environment-variable helpers at Accelerate's names (``accelerate.utils.environment``).

Example:
    >>> from overdrive.utils import patch_environment, parse_flag_from_env
    >>> with patch_environment(my_flag="yes"):
    ...     parse_flag_from_env("MY_FLAG")
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")


def str_to_bool(value: Any, to_bool: bool = False) -> int | bool:
    """``1`` for y/yes/t/true/on/1, ``0`` for n/no/f/false/off/0 (any case); ``bool`` with ``to_bool``.

    Example:
        >>> str_to_bool("Yes"), str_to_bool("off", to_bool=True)
        (1, False)
    """
    text = str(value).strip().lower()
    if text in _TRUE:
        return True if to_bool else 1
    if text in _FALSE:
        return False if to_bool else 0
    raise ValueError(f"invalid truth value {value!r}: use one of {', '.join(_TRUE)} or {', '.join(_FALSE)}")


def parse_flag_from_env(key: str, default: bool = False) -> bool:
    """The boolean value of environment variable ``key`` (``default`` when unset).

    Example:
        >>> parse_flag_from_env("SURELY_NOT_SET_VARIABLE", default=True)
        True
    """
    return str_to_bool(os.environ.get(key, str(default))) == 1


def parse_choice_from_env(key: str, default: str = "no") -> str:
    """The value of environment variable ``key`` as text (``default`` when unset).

    Example:
        >>> parse_choice_from_env("SURELY_NOT_SET_VARIABLE")
        'no'
    """
    return os.environ.get(key, str(default))


def get_int_from_env(env_keys: Iterable[str], default: int) -> int:
    """The first of ``env_keys`` that holds a non-negative integer, else ``default``.

    Example:
        >>> with patch_environment(local_rank="3"):
        ...     get_int_from_env(["NOT_SET_EITHER", "LOCAL_RANK"], 0)
        3
    """
    for key in env_keys:
        value = int(os.environ.get(key, -1))
        if value >= 0:
            return value
    return default


@contextlib.contextmanager
def patch_environment(**kwargs: Any) -> Iterator[None]:
    """Set environment variables (names upper-cased, values as text) inside the block; restore them afterwards.

    Example:
        >>> with patch_environment(world_size=2):
        ...     os.environ["WORLD_SIZE"]
        '2'
    """
    saved: dict[str, str | None] = {}
    for name, value in kwargs.items():
        key = name.upper()
        saved.setdefault(key, os.environ.get(key))
        os.environ[key] = str(value)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def clear_environment() -> Iterator[None]:
    """Run the block with an empty ``os.environ``; everything (changes inside included) is restored afterwards.

    Example:
        >>> with clear_environment():
        ...     len(os.environ)
        0
    """
    saved = dict(os.environ)
    os.environ.clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
