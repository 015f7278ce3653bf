"""Version comparisons at Accelerate's names (``accelerate.utils.versions``).

Example:
    >>> from overdrive.utils import is_torch_version
    >>> is_torch_version(">=", "2.0")
    True
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

_OPERATIONS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<=": operator.le, "<": operator.lt,
}


def compare_versions(library_or_version: Any, operation: str, requirement_version: str) -> bool:
    """Compare an installed library's version (by distribution name) or a version with ``requirement_version``.

    Example:
        >>> compare_versions("2.13.0", "<", "2.14")
        True
    """
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version, parse

    if operation not in _OPERATIONS:
        raise ValueError(f"compare_versions: operation {operation!r} is not one of {list(_OPERATIONS)}")
    if isinstance(library_or_version, str):
        try:
            library_or_version = parse(version(library_or_version))
        except PackageNotFoundError:
            library_or_version = parse(library_or_version)  # a version string, not an installed library
    elif not isinstance(library_or_version, Version):
        raise TypeError(f"compare_versions: expected a library name or a version, got {library_or_version!r}")
    return _OPERATIONS[operation](library_or_version, parse(requirement_version))


def is_torch_version(operation: str, version: str) -> bool:
    """Compare the running torch's version (local tag such as ``+cpu`` ignored) with ``version``.

    Example:
        >>> is_torch_version("<", "99.0")
        True
    """
    import torch
    from packaging.version import parse

    return compare_versions(parse(parse(torch.__version__).base_version), operation, version)
