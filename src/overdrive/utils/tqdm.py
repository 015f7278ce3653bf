"""``tqdm`` shown on the main process only (``accelerate.utils.tqdm``'s place and signature).

Example:
    >>> from overdrive.utils import tqdm
    >>> list(tqdm(range(3), disable=True))
    [0, 1, 2]
"""

from __future__ import annotations

from typing import Any

__all__ = ["tqdm"]


def tqdm(*args: Any, main_process_only: bool = True, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm`` (a terminal bar, or a widget in notebooks), disabled off the local main process unless
    ``main_process_only=False``. tqdm is imported on the first call.

    Example:
        >>> bar = tqdm(range(3), disable=True); list(bar)
        [0, 1, 2]
    """
    from tqdm.auto import tqdm as _tqdm

    from ..state import PartialState  # here, not at import: overdrive.utils is imported while state.py loads

    if not isinstance(main_process_only, bool):
        raise TypeError(f"tqdm(main_process_only={main_process_only!r}) must be a bool")
    disable = kwargs.pop("disable", False)
    if main_process_only and not PartialState().is_local_main_process:
        disable = True
    return _tqdm(*args, disable=disable, **kwargs)
