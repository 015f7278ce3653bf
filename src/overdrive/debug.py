"""Failures that explain themselves: debug-mode agreement before every collective, and the hang watchdog.

**Debug mode** (``OVERDRIVE_DEBUG=1``, Accelerate's ``ACCELERATE_DEBUG_MODE=1``, or ``overdrive launch --debug``):
before each overdrive collective (``gather``, ``gather_object``, ``reduce``, ``broadcast``,
``broadcast_object_list``, ``pad_across_processes``, ``wait_for_everyone`` and everything built on them) every rank
writes *(operation, shapes and dtypes, the user's call site file:line)* under the call's sequence number into the
process group's key-value store, then reads every other rank's entry, waiting at most ``OVERDRIVE_DEBUG_TIMEOUT``
seconds (default 10). Any disagreement -- a skipped collective, another operation, other shapes, another call site --
raises :class:`~overdrive.utils.operations.DistributedOperationException` on every rank, listing each rank's
operation and call site, instead of a 30-minute hang or corrupt data. The side channel is the store, not the
process group, so a mismatch can never deadlock it. Off by default; when off a collective pays one module
attribute check.

**Hang watchdog** (on by default when more than one process runs): a daemon thread per process counts progress
(overdrive collectives entered and left, optimizer steps, micro-steps of ``accumulate``). When a rank has waited in
one overdrive collective for ``OVERDRIVE_WATCHDOG_TIMEOUT`` seconds (default 600, or 90% of an explicit
process-group timeout; ``0`` disables) it announces a hang in the store; every rank then writes, once, where it is
waiting and the Python stack of each of its threads to stderr, and exits with code :data:`HANG_EXIT_CODE` instead of
waiting for the process-group timeout. Time spent in ``main_process_first()`` blocks does not count (the other ranks
legitimately wait there), and a rank that computes alone for a long time without anyone waiting is not a hang.

Example:
    >>> import overdrive.debug as debug
    >>> debug.TRACKING  # nothing to track in a single process
    False
    >>> with debug.patient():
    ...     pass
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .settings import SETTINGS

__all__ = [
    "DEBUG_TIMEOUT_VAR",
    "HANG_EXIT_CODE",
    "TRACKING",
    "WATCHDOG_TIMEOUT_VAR",
    "call_site",
    "note_progress",
    "patient",
    "tracked",
    "waiting",
]

T = TypeVar("T")

# Declared once, in the settings table (with their `overdrive launch` flags).
DEBUG_TIMEOUT_VAR = SETTINGS["debug_timeout"].env[0]
WATCHDOG_TIMEOUT_VAR = SETTINGS["watchdog_timeout"].env[0]
DEFAULT_DEBUG_TIMEOUT: float = SETTINGS["debug_timeout"].default
DEFAULT_WATCHDOG_TIMEOUT = 600.0
HANG_EXIT_CODE = 86  # what torchrun / `overdrive launch` reports for a rank the watchdog stopped

# Read by every collective: True when there is anything to do around it (watchdog, debug mode, OOM agreement).
# Kept as a plain module global so that the "off" cost is one attribute lookup.
TRACKING = False

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_SKIPPED_FILES = ("contextlib.py", "functools.py")  # decorators and `with` machinery between the user and overdrive


class _Progress:
    """What this process is doing, written by the main thread and read by the watchdog thread."""

    __slots__ = ("count", "frame", "op", "patient")

    def __init__(self) -> None:
        self.count = 0  # bumped on every collective entry/exit and step; the watchdog only compares it
        self.op: str | None = None  # the overdrive collective this process is inside, if any
        self.patient = 0  # > 0 inside a block where long waits are expected (main_process_first)
        self.frame: Any = None  # the frame that entered `op`; its call site is worked out only for a dump


_P = _Progress()
_SYNC_HOOK: Callable[[], None] | None = None  # set by find_executable_batch_size while an attempt runs
_SESSION: _Session | None = None


def _parse_seconds(var: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    raw = env.get(var, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a number of seconds; set it to e.g. {var}={default:g}") from None
    if value < 0 or value != value:
        raise ValueError(f"{var}={raw!r} must be >= 0 seconds (0 disables it); e.g. {var}={default:g}")
    return value


def read_timeouts(pg_timeout: timedelta | None = None, environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """``(debug_timeout, watchdog_timeout)`` in seconds from the environment; raises on a malformed value.

    The watchdog default is 600 s, or 90% of an explicit process-group timeout (so the stacks come out before the
    process group gives up, and a user who allowed long waits is not overruled).

    Example:
        >>> read_timeouts(environ={"OVERDRIVE_WATCHDOG_TIMEOUT": "30"})
        (10.0, 30.0)
        >>> read_timeouts(timedelta(seconds=100), environ={})
        (10.0, 90.0)
    """
    default = DEFAULT_WATCHDOG_TIMEOUT if pg_timeout is None else 0.9 * pg_timeout.total_seconds()
    debug_timeout = _parse_seconds(DEBUG_TIMEOUT_VAR, DEFAULT_DEBUG_TIMEOUT, environ)
    if debug_timeout == 0:
        raise ValueError(f"{DEBUG_TIMEOUT_VAR}=0 would fail every collective; use a positive number of seconds")
    return debug_timeout, _parse_seconds(WATCHDOG_TIMEOUT_VAR, default, environ)


def _refresh() -> None:
    global TRACKING
    session = _SESSION
    TRACKING = _SYNC_HOOK is not None or (session is not None and (session.debug or session.watchdog is not None))


def set_sync_hook(hook: Callable[[], None] | None) -> None:
    """Install (or remove, with ``None``) a function every tracked collective calls first.

    Used by :func:`~overdrive.utils.memory.find_executable_batch_size` to agree on out-of-memory errors.

    Example:
        >>> set_sync_hook(None)
    """
    global _SYNC_HOOK
    _SYNC_HOOK = hook
    _refresh()


def note_progress() -> None:
    """Tell the watchdog this process made progress (a training step, a micro-batch).

    Example:
        >>> note_progress()
    """
    _P.count += 1


@contextlib.contextmanager
def patient() -> Iterator[None]:
    """Block in which long waits are expected: the watchdog does not count its time as a hang.

    Example:
        >>> with patient():
        ...     pass
    """
    _P.patient += 1
    try:
        yield
    finally:
        _P.patient -= 1
        _P.count += 1


@contextlib.contextmanager
def waiting(op: str) -> Iterator[None]:
    """Mark a wait on the other ranks that is not an overdrive collective (watchdog only; no agreement).

    Example:
        >>> with waiting("checkpoint commit"):
        ...     pass
    """
    previous = _P.op, _P.frame
    _P.count += 1
    _P.op, _P.frame = op, sys._getframe(2)  # 2: past contextlib's __enter__
    try:
        yield
    finally:
        _P.count += 1
        _P.op, _P.frame = previous


def call_site(frame: Any = None) -> tuple[str, str]:
    """``("file:line", "overdrive entry point")`` of the first frame outside overdrive, from ``frame`` outwards.

    Example:
        >>> site, via = call_site()
        >>> ":" in site
        True
    """
    f = frame if frame is not None else sys._getframe(1)
    via = ""
    while f is not None:
        name = f.f_code.co_filename
        if name.startswith(_PACKAGE_DIR):
            via = getattr(f.f_code, "co_qualname", f.f_code.co_name)
        elif not name.endswith(_SKIPPED_FILES):
            return f"{_short(name)}:{f.f_lineno}", via
        f = f.f_back
    return "<unknown>:0", via


def _short(path: str) -> str:
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            return rel
    return path


# -- describing a collective's input -------------------------------------------------------------------------------


def _tensors(data: Any, out: list[Any]) -> None:
    if isinstance(data, torch.Tensor):
        out.append(data)
    elif isinstance(data, (list, tuple)):
        for item in data:
            _tensors(item, out)
    elif isinstance(data, Mapping):
        for item in data.values():
            _tensors(item, out)
    else:
        out.append(data)


def _layout(op: str, data: Any, params: str) -> tuple[str, str]:
    """``(compare key, shown text)`` of a collective's input; the key holds what must agree for ``op``."""
    if op in ("gather_object", "wait_for_everyone"):
        return params, "" if data is None else type(data).__name__
    if op == "broadcast_object_list":
        n = len(data) if isinstance(data, list) else -1
        return f"{params} items={n}", f"list of {n}, {params}"
    leaves: list[Any] = []
    _tensors(data, leaves)
    shown_parts, key_parts = [], []
    for t in leaves:
        if not isinstance(t, torch.Tensor):
            shown_parts.append(type(t).__name__)
            key_parts.append(type(t).__name__)
            continue
        dtype = str(t.dtype).replace("torch.", "")
        shape = list(t.shape)
        shown_parts.append(f"{dtype}{shape}")
        if op == "gather":  # dim 0 may differ: each rank's piece keeps its length
            key_parts.append(f"{dtype}[*, {', '.join(map(str, shape[1:]))}]" if shape else f"{dtype}[*]")
        elif op == "pad_across_processes":  # sizes differ by design; the padded dim is in `params`
            key_parts.append(f"{dtype} ndim={t.ndim}")
        else:
            key_parts.append(f"{dtype}{shape}")
    shown = ", ".join(shown_parts + ([params] if params else []))
    return f"{params} {'; '.join(key_parts)}", shown


# -- the session: store clients, sequence numbers, the watchdog thread ---------------------------------------------


class _Session:
    """Per-process state of debug mode and the watchdog, built once the process group exists."""

    def __init__(self, rank: int, world: int, debug: bool, debug_timeout: float, watchdog_timeout: float) -> None:
        self.rank, self.world = rank, world
        self.debug = debug
        self.debug_timeout = debug_timeout
        self.seq = 0
        self.store: Any = None
        self.watchdog: _Watchdog | None = None
        base = _default_store()
        if debug:
            if base is None:
                raise RuntimeError(
                    "debug mode (OVERDRIVE_DEBUG / ACCELERATE_DEBUG_MODE) needs the process group's key-value store, "
                    "which this process group does not expose; start the job with `overdrive launch` or torchrun"
                )
            self.store = dist.PrefixStore("overdrive-debug/", _clone(base))
        if watchdog_timeout > 0 and base is not None:
            self.watchdog = _Watchdog(dist.PrefixStore("overdrive-watchdog/", _clone(base)), rank, world,
                                      watchdog_timeout)

    # -- debug agreement ---------------------------------------------------------------------------------------

    def agree(self, op: str, data: Any, params: str, frame: Any) -> None:
        site, via = call_site(frame)
        key, shown = _layout(op, data, params)
        self.seq += 1
        n = self.seq
        mine = [op, key, shown, site, via, self.rank]
        store = self.store
        store.set(f"{n}/{self.rank}", json.dumps(mine))
        others = [r for r in range(self.world) if r != self.rank]
        try:
            store.wait([f"{n}/{r}" for r in others], timedelta(seconds=self._wait_seconds()))
        except Exception:  # noqa: BLE001 - the store's timeout error type differs across torch versions
            self._raise_missing(n, mine, others)
        entries = {r: json.loads(v) for r, v in zip(others, store.multi_get([f"{n}/{r}" for r in others]))}
        entries[self.rank] = mine
        if n > 1:  # every rank wrote #n, so every rank has read #n-1: this rank's old entry is no longer needed
            with contextlib.suppress(Exception):
                store.delete_key(f"{n - 1}/{self.rank}")
        if len({(e[0], e[1], _site_key(e[3])) for e in entries.values()}) > 1:
            raise _disagreement(n, entries, self.rank)

    def _wait_seconds(self) -> float:
        if _P.patient and self.watchdog is not None:
            return max(self.debug_timeout, self.watchdog.timeout)
        return self.debug_timeout if not _P.patient else max(self.debug_timeout, 1800.0)

    def _raise_missing(self, n: int, mine: list[Any], others: list[int]) -> None:
        store = self.store
        lines = [f"  rank {self.rank}: {_entry_text(mine)}"]
        missing: list[int] = []
        for r in others:
            if store.check([f"{n}/{r}"]):
                lines.append(f"  rank {r}: {_entry_text(json.loads(store.get(f'{n}/{r}')))}")
                continue
            missing.append(r)
            before = f"{n - 1}/{r}"
            last = (f"; its last one was #{n - 1}: {_entry_text(json.loads(store.get(before)))}"
                    if n > 1 and store.check([before]) else "")
            lines.append(f"  rank {r}: did not reach collective #{n} within {self._wait_seconds():g} s{last}")
        from .utils.operations import DistributedOperationException

        raise DistributedOperationException(
            f"debug mode: rank(s) {missing} did not reach collective #{n} ({mine[0]} at {mine[3]}) within "
            f"{self._wait_seconds():g} s:\n" + "\n".join(sorted(lines)) + "\n"
            f"Those ranks skipped this collective, are stuck, or are still computing. If they are only slower, "
            f"raise {DEBUG_TIMEOUT_VAR} (seconds). (rank {self.rank} reporting)"
        )

    def announce_exit(self) -> None:
        """Debug mode: tell ranks still waiting for this one that its script ended (instead of a silent timeout)."""
        if self.store is None:
            return
        with contextlib.suppress(Exception):
            entry = ["<process exit>", "", "", "the script ended (or raised)", "", self.rank]
            self.store.set(f"{self.seq + 1}/{self.rank}", json.dumps(entry))


def _site_key(site: str) -> str:
    """Call sites compare by file name and line: ranks on other machines may install the script elsewhere."""
    path, _, line = site.rpartition(":")
    return f"{os.path.basename(path)}:{line}"


def _entry_text(entry: list[Any]) -> str:
    op, _key, shown, site, via = entry[:5]
    if op == "<process exit>":
        return "no further collective: the script ended (or raised) without calling it"
    what = f"{op}({shown})" if shown else op
    via_text = f" via {via}" if via and not via.endswith(op) else ""
    return f"{what} at {site}{via_text}"


def _disagreement(n: int, entries: dict[int, list[Any]], rank: int) -> Exception:
    from .utils.operations import DistributedOperationException

    ops = {e[0] for e in entries.values()}
    if len(ops) > 1:
        what = "the ranks called different collectives (or one skipped a collective)"
    elif len({_site_key(e[3]) for e in entries.values()}) > 1:
        what = "the ranks called it from different lines (each collective must be reached from the same line)"
    else:
        what = "the ranks passed incompatible shapes or dtypes (or different arguments)"
    lines = "\n".join(f"  rank {r}: {_entry_text(entries[r])}" for r in sorted(entries))
    return DistributedOperationException(
        f"debug mode: collective #{n} does not match across processes: {what}:\n{lines}\n"
        f"Every rank must call the same collectives in the same order with matching shapes. (rank {rank} reporting)"
    )


def _default_store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no group, or a group formed without a store
        return None


def _clone(store: Any) -> Any:
    """A separate client connection, so that one thread's blocking wait never delays another's."""
    try:
        return store.clone()
    except Exception:  # noqa: BLE001 - stores without clone() (FileStore, HashStore) are shared instead
        return store


def tracked(op: str, data: Any, params: str, fn: Callable[..., T], *args: Any) -> T:
    """Run collective ``op`` (``fn(*args)``) with the agreement check (debug mode) and progress marks (watchdog).

    Collectives call this only when :data:`TRACKING` is true.

    Example:
        >>> tracked("wait_for_everyone", None, "", lambda: "done")
        'done'
    """
    hook = _SYNC_HOOK
    if hook is not None:
        hook()
    session = _SESSION
    if session is not None and session.debug:
        session.agree(op, data, params, sys._getframe(1))
    progress = _P
    progress.count += 1
    progress.op, progress.frame = op, sys._getframe(1)
    try:
        return fn(*args)
    finally:
        progress.count += 1
        progress.op = progress.frame = None


# -- the watchdog --------------------------------------------------------------------------------------------------


class _Watchdog(threading.Thread):
    """Daemon thread: declares a hang when this rank waits too long, and answers hangs other ranks declared."""

    def __init__(self, store: Any, rank: int, world: int, timeout: float) -> None:
        super().__init__(name="overdrive-watchdog", daemon=True)
        self.store, self.rank, self.world, self.timeout = store, rank, world, timeout
        self.interval = min(5.0, max(0.1, timeout / 10))  # a tenth of the threshold: the dump comes within 10%
        self.stopped = threading.Event()
        self.store_ok = True
        with contextlib.suppress(Exception):
            store.set_timeout(timedelta(seconds=max(10.0, 2 * self.interval)))  # never block the thread long

    def run(self) -> None:
        last_count, last_change = -1, time.monotonic()
        while not self.stopped.wait(self.interval):
            now = time.monotonic()
            if _P.count != last_count or _P.patient:
                last_count, last_change = _P.count, now
            elif _P.op is not None and now - last_change >= self.timeout:
                self._declare(now - last_change)
                return
            if self.store_ok and self._peer_declared():
                self._respond(now - last_change)
                return

    def _peer_declared(self) -> bool:
        try:
            return bool(self.store.check(["hang"]))
        except Exception:  # noqa: BLE001 - the store's host went away (normal at the end of a job)
            self.store_ok = False
            return False

    def _declare(self, stalled: float) -> None:
        op, site = _P.op or "?", self._site()
        info = {"rank": self.rank, "op": op, "site": site, "stalled": round(stalled, 1)}
        with contextlib.suppress(Exception):
            self.store.set(f"hang/{self.rank}", json.dumps(info))
            self.store.add("hang", 1)
        reason = (f"rank {self.rank} waited {stalled:.1f} s (threshold {self.timeout:g} s) in {op} called at {site} "
                  "without any rank joining it")
        self._dump(reason, stalled)

    def _respond(self, stalled: float) -> None:
        reports = []
        for r in range(self.world):
            with contextlib.suppress(Exception):
                if self.store.check([f"hang/{r}"]):
                    info = json.loads(self.store.get(f"hang/{r}"))
                    reports.append(f"rank {r} waited {info['stalled']} s in {info['op']} called at {info['site']}")
        self._dump("; ".join(reports) or "another rank declared a hang", stalled)

    def _site(self) -> str:
        frame = _P.frame
        return call_site(frame)[0] if frame is not None else "<unknown>"

    def _dump(self, reason: str, stalled: float) -> None:
        where = (f"waiting in {_P.op} called at {self._site()}" if _P.op is not None
                 else "not inside an overdrive collective (computing, or waiting in a collective overdrive does not "
                      "track, e.g. a DDP all-reduce)")
        head = (f"[overdrive watchdog] hang detected: {reason}.\n"
                f"[overdrive watchdog] rank {self.rank}/{self.world}: {where}; no progress for {stalled:.1f} s. "
                f"Python stacks of rank {self.rank} (most recent call last):\n")
        body = []
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue  # this watchdog thread itself
            body.append(f"[rank {self.rank}] Thread {names.get(ident, ident)!s}:\n")
            body += [f"[rank {self.rank}] {line}\n" for chunk in traceback.format_stack(frame)
                     for line in chunk.rstrip("\n").split("\n")]
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        sys.stderr.write(head + "".join(body))  # one write: ranks share stderr
        sys.stderr.flush()
        self._finish()

    def _finish(self) -> None:
        # Wait (bounded) until every rank has written its stacks: the launcher stops the others when one exits.
        deadline = time.monotonic() + max(3.0, 3 * self.interval)
        with contextlib.suppress(Exception):
            self.store.add("dumped", 1)
            while time.monotonic() < deadline and self.store.add("dumped", 0) < self.world:
                time.sleep(0.05)
        sys.stderr.write(
            f"[overdrive watchdog] rank {self.rank}: stopping the job (exit code {HANG_EXIT_CODE}); the stacks above "
            f"show where each rank is. Threshold {self.timeout:g} s, set by {WATCHDOG_TIMEOUT_VAR} (0 disables).\n"
        )
        sys.stderr.flush()
        os._exit(HANG_EXIT_CODE)


# -- lifecycle -----------------------------------------------------------------------------------------------------


def start(rank: int, world: int, debug: bool, debug_timeout: float, watchdog_timeout: float) -> None:
    """Set up debug mode and the watchdog for this process, once its process group exists (``PartialState``).

    Example:
        >>> start(0, 1, False, 10.0, 600.0)  # one process: nothing to watch
    """
    global _SESSION
    if world <= 1 or _SESSION is not None:
        return
    session = _Session(rank, world, debug, debug_timeout, watchdog_timeout)
    _SESSION = session
    _refresh()
    if session.watchdog is not None:
        session.watchdog.start()
    # Every optimizer step is progress, whether or not the optimizer was prepared.
    from torch.optim.optimizer import register_optimizer_step_post_hook

    global _STEP_HOOK
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_on_step)


_STEP_HOOK: Any = None


def _on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    _P.count += 1


def stop() -> None:
    """Stop the watchdog and, in debug mode, announce this process's exit (called at interpreter exit).

    Example:
        >>> stop()
    """
    global _SESSION, _STEP_HOOK
    session = _SESSION
    if session is None:
        return
    if session.watchdog is not None:
        session.watchdog.stopped.set()
    session.announce_exit()
    _SESSION = None
    if _STEP_HOOK is not None:
        _STEP_HOOK.remove()
        _STEP_HOOK = None
    _refresh()
