"""Multi-process aware logging: log once (on the main process), on every process, or on every process in rank order.

Needs a :class:`~overdrive.PartialState` (or an ``Accelerator``) to exist before the first log call, because it asks
it which rank this is. No ``Accelerator`` is required.

Example:
    >>> from overdrive import PartialState
    >>> from overdrive.logging import get_logger
    >>> _ = PartialState()
    >>> logger = get_logger(__name__, log_level="INFO")
    >>> logger.info("printed once, by rank 0")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from .settings import resolve
from .state import PartialState

__all__ = ["MultiProcessAdapter", "get_logger"]

# OVERDRIVE_ name first, then Accelerate's, so either spelling configures the level.
_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")


class MultiProcessAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A ``LoggerAdapter`` whose calls take ``main_process_only`` (default True) and ``in_order`` (default False).

    Messages are prefixed with ``[RANK i]``. ``main_process_only=False`` logs on every rank; ``in_order=True`` logs
    on every rank one after another (rank 0 first, with a barrier between ranks, so every rank must make the call),
    ignoring ``main_process_only``.

    Example:
        >>> from overdrive import PartialState
        >>> _ = PartialState()
        >>> log = get_logger("train")
        >>> log.warning("every rank says this", main_process_only=False)
    """

    @staticmethod
    def _should_log(main_process_only: bool) -> bool:
        """Whether this rank logs a message that is (or is not) for the main process only."""
        return not main_process_only or PartialState().is_main_process

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Prefix the message with this process's rank."""
        msg, kwargs = super().process(msg, kwargs)
        # stacklevel 2 skips this module's frame, so records point at the caller's line (unless the caller chose).
        kwargs.setdefault("stacklevel", 2)
        return f"[RANK {PartialState().process_index}] {msg}", kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log ``msg`` at ``level`` subject to ``main_process_only`` and ``in_order`` (see the class docstring).

        Example:
            >>> from overdrive import PartialState
            >>> _ = PartialState()
            >>> get_logger("train").log(logging.INFO, "step %d", 3, main_process_only=False)
        """
        if not PartialState._shared_state:
            raise RuntimeError(
                "overdrive's logger needs the process state to know which rank this is: create `PartialState()` or "
                "`Accelerator()` before the first log call"
            )
        main_process_only = kwargs.pop("main_process_only", True)
        in_order = kwargs.pop("in_order", False)
        if not self.isEnabledFor(level):
            return
        msg, log_kwargs = self.process(msg, kwargs)
        if in_order:
            state = PartialState()
            for rank in range(state.num_processes):
                if rank == state.process_index:
                    self.logger.log(level, msg, *args, **log_kwargs)
                state.wait_for_everyone()  # rank r+1 writes only after rank r has
        elif self._should_log(main_process_only):
            self.logger.log(level, msg, *args, **log_kwargs)

    def warning_once(self, *args: Any, **kwargs: Any) -> None:
        """``warning(...)`` that emits each distinct call (same arguments) only once per adapter.

        Example:
            >>> from overdrive import PartialState
            >>> _ = PartialState()
            >>> log = get_logger("train")
            >>> for _ in range(3):
            ...     log.warning_once("deprecated option")  # logged once
        """
        key = (args, _freeze(kwargs))
        seen: set[Any] = self.__dict__.setdefault("_warned_once", set())
        try:
            if key in seen:
                return
            seen.add(key)
        except TypeError:  # unhashable arguments: cannot remember them, so just warn
            pass
        self.warning(*args, **kwargs)


def _freeze(kwargs: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kwargs.items()))


def get_logger(name: str, log_level: str | int | None = None) -> MultiProcessAdapter:
    """Return a :class:`MultiProcessAdapter` for the logger ``name``.

    The level comes from ``log_level``, else ``OVERDRIVE_LOG_LEVEL`` / ``ACCELERATE_LOG_LEVEL``; when one is given it
    is set on this logger and on the root logger (as Accelerate does). Otherwise levels are left alone.

    Example:
        >>> logger = get_logger(__name__, log_level="DEBUG")
        >>> logger.logger.level == logging.DEBUG
        True
    """
    origin = "log_level"
    if log_level is None:
        log_level, origin = resolve("log_level")  # OVERDRIVE_LOG_LEVEL, then ACCELERATE_LOG_LEVEL
    logger = logging.getLogger(name)
    if isinstance(log_level, int) and not isinstance(log_level, bool):
        logger.setLevel(log_level)  # a numeric level (logging.DEBUG) is accepted as is
        logger.root.setLevel(log_level)
    elif log_level is not None:
        level = str(log_level).strip().upper()
        if level not in _LEVELS:
            raise ValueError(f"{origin}={log_level!r} is not a logging level; use one of {', '.join(_LEVELS)}")
        logger.setLevel(level)
        logger.root.setLevel(level)
    return MultiProcessAdapter(logger, {})
