"""Process and gradient state shared by every object of a run.

:class:`PartialState` knows who this process is (rank, world size, device) and forms the process group once: under
``torchrun`` / ``overdrive launch`` (``WORLD_SIZE > 1``) it always joins a real group, ``gloo`` on CPU and ``nccl``
on GPU, whether or not ``cpu=True`` was passed. :class:`GradientState` tracks gradient synchronisation and which
prepared data loader is being iterated. Both are shared-state singletons, as in Accelerate: every instance sees
the same attributes.

Example:
    >>> state = PartialState()
    >>> state.num_processes >= 1
    True
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial, wraps
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from . import debug as _debug
from .settings import resolve_value
from .utils.dataclasses import DistributedType, GradientAccumulationPlugin

__all__ = ["AcceleratorState", "GradientState", "PartialState", "is_initialized"]

F = TypeVar("F", bound=Callable[..., Any])

# DDP-like wrappers the library created; a WeakSet so that tracking never keeps a model alive.
_LIVE_WRAPPERS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def register_wrapper(module: torch.nn.Module) -> None:
    """Record a DDP-like wrapper the library created, so that teardown knows communication state exists.

    Tracking is weak: a registered module is forgotten as soon as nothing else refers to it.

    Example:
        >>> import torch
        >>> register_wrapper(torch.nn.Linear(2, 2))
    """
    _LIVE_WRAPPERS.add(module)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _handover_gil() -> None:
    """Give threads waiting for the GIL (gloo's workers) about 40 ms to run, while the interpreter is whole.

    Why: under torch 2.13 a collective launched inside ``backward()`` (every DDP all-reduce) keeps the Python
    context of that backward pass. The gloo worker thread that ran it frees it after the caller has already been
    woken, and freeing needs the GIL. If the main thread reaches interpreter finalisation first, the worker's GIL
    request kills the thread mid-destructor and the process aborts ("terminate called without an active
    exception", exit -6) after training succeeded. Everything here is local, so it cannot hang when a rank died.
    """
    # Cap the spin so that a script with a huge switch interval does not stall its exit.
    spin = min(2.5 * sys.getswitchinterval(), 0.05)
    for _ in range(3):
        time.sleep(0.002)  # frees the GIL and the CPU, so a starved worker thread gets to run
        # Running bytecode past the switch interval makes CPython hand the GIL to a thread that asked for it.
        deadline = time.perf_counter() + spin
        while time.perf_counter() < deadline:
            pass


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _teardown() -> None:
    """At interpreter exit: let gloo finish freeing collectives, release DDP reducers, destroy the process group.

    Dropping the reducers of the wrappers overdrive created (nothing can use them after exit begins) drops their
    references to the process group, so destroying it also stops gloo's worker threads before finalisation.
    A checkpoint still being written in the background is committed first (atexit runs handlers last-in first-out,
    so the order would otherwise depend on which was registered first).
    """
    _debug.stop()  # first: the watchdog must not mistake the exit's waits for a hang
    saves = sys.modules.get("overdrive.checkpoint_state")  # not imported: no async save can be pending
    if saves is not None:
        saves._finish_pending_at_exit()  # file-based and bounded: it never needs the group or a live peer
    _handover_gil()
    for module in list(_LIVE_WRAPPERS):
        with contextlib.suppress(AttributeError):
            del module.reducer  # holds the last all-reduce's work and a reference to the process group
    _LIVE_WRAPPERS.clear()
    gc.collect()
    _destroy_group()


class PartialState:
    """Who this process is and how it talks to the others; forms the process group on first use.

    Args:
        cpu: run on CPU even when CUDA is available (``OVERDRIVE_USE_CPU`` / ``ACCELERATE_USE_CPU``).
        backend: process-group backend; default ``nccl`` on GPU and ``gloo`` on CPU.
        timeout: process-group timeout (a ``timedelta``); torch's default when ``None``.

    Example:
        >>> from overdrive import PartialState
        >>> state = PartialState()
        >>> with state.main_process_first():
        ...     pass
    """

    _shared_state: dict[str, Any] = {}

    def __init__(self, cpu: bool = False, **kwargs: Any) -> None:
        self.__dict__ = self._shared_state
        if self.initialized:
            return
        use_cpu = bool(resolve_value("cpu", True if cpu else None)) or not torch.cuda.is_available()
        self.num_processes = _int_env("WORLD_SIZE", 1)
        self.process_index = _int_env("RANK", 0)
        self.local_process_index = _int_env("LOCAL_RANK", 0)
        self.num_local_processes = _int_env("LOCAL_WORLD_SIZE", 1 if self.num_processes == 1 else self.num_processes)
        if not 0 <= self.process_index < self.num_processes:
            raise ValueError(
                f"RANK={self.process_index} is outside 0..WORLD_SIZE-1={self.num_processes - 1}; "
                "start workers with `overdrive launch` or `torchrun`, which set both"
            )
        if use_cpu:
            self.device = torch.device("cpu")
        else:
            self.device = torch.device("cuda", self.local_process_index)
            torch.cuda.set_device(self.device)
        self.backend: str | None = None
        self.distributed_type = DistributedType.NO
        self.debug = bool(resolve_value("debug"))
        if self.num_processes > 1:
            # Malformed OVERDRIVE_DEBUG_TIMEOUT / OVERDRIVE_WATCHDOG_TIMEOUT fail here, before any process waits.
            debug_timeout, watchdog_timeout = _debug.read_timeouts(kwargs.get("timeout"))
            self._init_process_group(use_cpu, kwargs.get("backend"), kwargs.get("timeout"), kwargs.get("init_method"))
            self.distributed_type = DistributedType.MULTI_CPU if use_cpu else DistributedType.MULTI_GPU
            atexit.register(_teardown)
            _debug.start(self.process_index, self.num_processes, self.debug, debug_timeout, watchdog_timeout)
        self.fork_launched = False

    def _init_process_group(
        self, use_cpu: bool, backend: str | None, timeout: timedelta | None, init_method: str | None
    ) -> None:
        wanted = backend or ("gloo" if use_cpu else "nccl")
        if use_cpu and wanted == "nccl":
            # InitProcessGroupKwargs defaults to nccl (Accelerate's default); nccl cannot run on CPU tensors.
            wanted = "gloo"
        self.backend = wanted
        if dist.is_initialized():  # the user formed the group already: join it as is
            self.backend = dist.get_backend()
            return
        pg_kwargs: dict[str, Any] = {"backend": wanted, "rank": self.process_index, "world_size": self.num_processes}
        if timeout is not None:
            pg_kwargs["timeout"] = timeout
        if init_method is not None:
            pg_kwargs["init_method"] = init_method
        elif os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_ADDR" in os.environ:
            # torchrun's agent hosts the store. Namespacing it per restart attempt stops restarted gloo workers
            # from reading the previous attempt's addresses ("Gloo connectFullMesh failed", pytorch#135712).
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            base = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                is_master=False,
                timeout=timeout or timedelta(seconds=300),
            )
            pg_kwargs["store"] = dist.PrefixStore(f"overdrive/attempt{attempt}", base)
        if wanted == "nccl":
            pg_kwargs["device_id"] = self.device  # binds the communicator to this rank's GPU eagerly
        dist.init_process_group(**pg_kwargs)

    # -- identity -------------------------------------------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        """Whether this shared state was set up already."""
        return "device" in self._shared_state

    @property
    def use_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.num_processes > 1

    @property
    def is_main_process(self) -> bool:
        """True on global rank 0."""
        return self.process_index == 0

    @property
    def is_local_main_process(self) -> bool:
        """True on local rank 0 of each node."""
        return self.local_process_index == 0

    @property
    def is_last_process(self) -> bool:
        """True on the highest global rank."""
        return self.process_index == self.num_processes - 1

    @property
    def default_device(self) -> torch.device:
        """The device this process computes on."""
        return self.device

    def __repr__(self) -> str:
        return (
            f"Distributed environment: {self.distributed_type}  Backend: {self.backend}\n"
            f"Num processes: {self.num_processes}\nProcess index: {self.process_index}\n"
            f"Local process index: {self.local_process_index}\nDevice: {self.device}\n"
        )

    @classmethod
    def _reset_state(cls) -> None:
        """Forget the shared state (tests and notebook relaunches). Does not destroy the process group."""
        cls._shared_state.clear()

    def destroy_process_group(self, group: Any = None) -> None:
        """Destroy the process group (safe to call twice); prepared models stay usable for local inference."""
        _handover_gil()
        _destroy_group()

    # -- coordination ---------------------------------------------------------------------------------------------

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this point (a barrier; nothing at world size 1).

        Example:
            >>> PartialState().wait_for_everyone()
        """
        if self.use_distributed:
            if _debug.TRACKING:
                _debug.tracked("wait_for_everyone", None, "", dist.barrier)
            else:
                dist.barrier()

    @contextlib.contextmanager
    def _goes_first(self, is_first: bool) -> Iterator[None]:
        with _debug.patient():  # the others wait while the first one works (downloads...): not a hang
            if not is_first:
                self.wait_for_everyone()
            yield
            if is_first:
                self.wait_for_everyone()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (e.g. to download or preprocess once).

        Example:
            >>> with PartialState().main_process_first():
            ...     pass
        """
        with self._goes_first(self.is_main_process):
            yield

    @contextlib.contextmanager
    def local_main_process_first(self) -> Iterator[None]:
        """Like :meth:`main_process_first`, per node.

        Example:
            >>> with PartialState().local_main_process_first():
            ...     pass
        """
        with self._goes_first(self.is_local_main_process):
            yield

    def on_process(self, function: F | None = None, process_index: int | None = None) -> F:
        """Decorator: run ``function`` only on global rank ``process_index``.

        Example:
            >>> @PartialState().on_process(process_index=0)
            ... def hello():
            ...     return "hi"
        """
        if function is None:
            return partial(self.on_process, process_index=process_index)  # type: ignore[return-value]
        if process_index is None:
            raise ValueError("on_process needs process_index=<rank>, e.g. @state.on_process(process_index=1)")
        return self._run_if(function, lambda: self.process_index == process_index)

    def on_main_process(self, function: F | None = None) -> F:
        """Decorator: run ``function`` only on the main process (returns ``None`` elsewhere).

        Example:
            >>> @PartialState().on_main_process
            ... def log():
            ...     print("only once")
        """
        if function is None:
            return partial(self.on_main_process)  # type: ignore[return-value]
        return self._run_if(function, lambda: self.is_main_process)

    def on_local_main_process(self, function: F | None = None) -> F:
        """Decorator: run ``function`` only on each node's local main process.

        Example:
            >>> @PartialState().on_local_main_process
            ... def log():
            ...     print("once per node")
        """
        if function is None:
            return partial(self.on_local_main_process)  # type: ignore[return-value]
        return self._run_if(function, lambda: self.is_local_main_process)

    def on_local_process(self, function: F | None = None, local_process_index: int | None = None) -> F:
        """Decorator: run ``function`` only on the process with node-local rank ``local_process_index`` (every node).

        Example:
            >>> @PartialState().on_local_process(local_process_index=0)
            ... def hello():
            ...     return "hi"
        """
        if function is None:
            return partial(self.on_local_process, local_process_index=local_process_index)  # type: ignore[return-value]
        if local_process_index is None:
            raise ValueError(
                "on_local_process needs local_process_index=<local rank>, e.g. @state.on_local_process(local_process_index=1)"
            )
        return self._run_if(function, lambda: self.local_process_index == local_process_index)

    def set_device(self) -> None:
        """Make this process's device the current one of its backend (``torch.cuda.set_device`` on GPUs; nothing to do
        on the CPU). Called for you when the state is created; kept for scripts that call it.

        Example:
            >>> PartialState().set_device()
        """
        device = self.device
        if device.type == "cpu" or device.index is None:
            return
        module = getattr(torch, device.type, None)
        if module is not None and hasattr(module, "set_device"):
            module.set_device(device)

    def on_last_process(self, function: F) -> F:
        """Decorator: run ``function`` only on the last process.

        Example:
            >>> @PartialState().on_last_process
            ... def log():
            ...     print("last")
        """
        return self._run_if(function, lambda: self.is_last_process)

    @staticmethod
    def _run_if(function: F, condition: Callable[[], bool]) -> F:
        @wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if condition():
                return function(*args, **kwargs)
            return None

        return wrapper  # type: ignore[return-value]

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """Yield this process's contiguous share of ``inputs`` (list, tuple, dict of sequences or tensor).

        Earlier ranks get one extra item when the length does not divide. With ``apply_padding``, shorter shares
        are padded with their last item so every rank gets the same count (for a later ``gather``).

        Example:
            >>> with PartialState().split_between_processes(["a", "b", "c"]) as mine:
            ...     isinstance(mine, list)
            True
        """
        yield _split(inputs, self.num_processes, self.process_index, apply_padding)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the local main process only.

        Example:
            >>> PartialState().print("hello")
            hello
        """
        if self.is_local_main_process:
            print(*args, **kwargs)


def _split(inputs: Any, world: int, rank: int, apply_padding: bool) -> Any:
    if isinstance(inputs, dict):
        lengths = {len(v) for v in inputs.values()}
        if len(lengths) > 1:
            raise ValueError(
                f"split_between_processes got a dict whose values have different lengths {sorted(lengths)}; "
                "all values must have the same length"
            )
        return {k: _split(v, world, rank, apply_padding) for k, v in inputs.items()}
    if world == 1:
        return inputs
    length = len(inputs)
    per, extra = divmod(length, world)
    start = rank * per + min(rank, extra)
    end = start + per + (1 if rank < extra else 0)
    share = inputs[start:end]
    if apply_padding and extra and end - start == per and length:
        # Pad with the last element so every rank returns per + 1 items.
        last = inputs[length - 1 : length] if len(share) == 0 else share[-1:]
        if isinstance(share, torch.Tensor):
            share = torch.cat([share, last])
        else:
            share = share + type(share)(last)
    return share


class AcceleratorState:
    """The :class:`PartialState` plus the run-wide training settings (mixed precision, plugins).

    Example:
        >>> from overdrive.state import AcceleratorState
        >>> AcceleratorState().mixed_precision in ("no", "fp16", "bf16")
        True
    """

    _shared_state: dict[str, Any] = {}
    mixed_precision: str
    partial: PartialState

    def __init__(self, mixed_precision: str | None = None, cpu: bool = False, **kwargs: Any) -> None:
        self.__dict__ = self._shared_state
        if "partial" in self._shared_state:
            if mixed_precision is not None and mixed_precision != self.mixed_precision:
                raise ValueError(
                    f"AcceleratorState already uses mixed_precision={self.mixed_precision!r}; it cannot change to "
                    f"{mixed_precision!r} in the same process (create one Accelerator per run)"
                )
            return
        self.partial = PartialState(cpu, **kwargs)
        self.mixed_precision = str(resolve_value("mixed_precision", mixed_precision))
        self.fsdp_plugin = kwargs.get("fsdp_plugin")
        self.deepspeed_plugin = kwargs.get("deepspeed_plugin")
        self.dynamo_plugin = kwargs.get("dynamo_plugin")

    def __getattr__(self, name: str) -> Any:
        # Identity attributes (device, process_index, ...) and helpers live on the PartialState.
        if name.startswith("__") or "partial" not in self._shared_state:
            raise AttributeError(name)
        return getattr(self._shared_state["partial"], name)

    @property
    def initialized(self) -> bool:
        """Whether an Accelerator set this state up already."""
        return "partial" in self._shared_state

    @classmethod
    def _reset_state(cls, reset_partial_state: bool = False) -> None:
        """Forget the shared state (tests); optionally the :class:`PartialState` too."""
        cls._shared_state.clear()
        if reset_partial_state:
            PartialState._reset_state()

    def __repr__(self) -> str:
        return repr(self.partial) + f"Mixed precision type: {self.mixed_precision}\n"


class GradientState:
    """Gradient-synchronisation state and the prepared data loader being iterated (shared singleton).

    ``sync_gradients`` is True on the micro-step where gradients are all-reduced and the optimizer steps.
    ``end_of_dataloader`` and ``remainder`` describe the innermost prepared loader being iterated.

    Example:
        >>> from overdrive.state import GradientState
        >>> GradientState().in_dataloader
        False
    """

    _shared_state: dict[str, Any] = {}

    def __init__(self, gradient_accumulation_plugin: GradientAccumulationPlugin | None = None) -> None:
        self.__dict__ = self._shared_state
        if not self.initialized:
            self.sync_gradients = True
            self.dataloader_references: list[Any] = [None]
            self.plugin_kwargs: dict[str, Any] = (
                gradient_accumulation_plugin.to_kwargs() if gradient_accumulation_plugin is not None else {}
            )
            self._is_xla_gradients_synced = False
        elif gradient_accumulation_plugin is not None:
            self.plugin_kwargs = gradient_accumulation_plugin.to_kwargs()

    @property
    def initialized(self) -> bool:
        """Whether the shared state was set up already."""
        return "sync_gradients" in self._shared_state

    @property
    def num_steps(self) -> int:
        """Micro-steps per optimizer step."""
        return int(self.plugin_kwargs.get("num_steps") or 1)

    @property
    def adjust_scheduler(self) -> bool:
        """Whether scheduler steps are scaled by the accumulation."""
        return bool(self.plugin_kwargs.get("adjust_scheduler", True))

    @property
    def sync_with_dataloader(self) -> bool:
        """Whether the end of a prepared loader forces a sync step."""
        return bool(self.plugin_kwargs.get("sync_with_dataloader", True))

    @property
    def sync_each_batch(self) -> bool:
        """Whether gradients are all-reduced on every micro-batch."""
        return bool(self.plugin_kwargs.get("sync_each_batch", False))

    @property
    def active_dataloader(self) -> Any:
        """The innermost prepared loader being iterated, or ``None``."""
        return self.dataloader_references[-1]

    @property
    def in_dataloader(self) -> bool:
        """True while a prepared loader is being iterated."""
        return self.active_dataloader is not None

    @property
    def end_of_dataloader(self) -> bool:
        """True while the active loader yields its last batch."""
        loader = self.active_dataloader
        return bool(loader is not None and loader.end_of_dataloader)

    @property
    def remainder(self) -> int:
        """Samples in the last global batch that are real (not even-batches padding); -1 when unknown."""
        loader = self.active_dataloader
        return -1 if loader is None else int(loader.remainder)

    def _set_sync_gradients(self, sync_gradients: bool) -> None:
        self.sync_gradients = sync_gradients
        _debug.note_progress()  # called once per micro-batch by accumulate(): progress for the hang watchdog

    def _add_dataloader(self, dataloader: Any) -> None:
        self.dataloader_references.append(dataloader)

    def _remove_dataloader(self, dataloader: Any) -> None:
        # Remove the last occurrence: nested iteration of the same loader unwinds innermost first.
        refs = self.dataloader_references
        for i in range(len(refs) - 1, 0, -1):
            if refs[i] is dataloader:
                del refs[i]
                return

    @classmethod
    def _reset_state(cls) -> None:
        """Forget the shared state (tests)."""
        cls._shared_state.clear()

    def __repr__(self) -> str:
        return (
            f"Sync Gradients: {self.sync_gradients}\nAt end of current dataloader: {self.end_of_dataloader}\n"
            f"Extra samples added: {self.remainder}\nGradient accumulation plugin: {self.plugin_kwargs}\n"
        )


def is_initialized() -> bool:
    """Whether a :class:`PartialState` has been created in this process.

    Example:
        >>> isinstance(is_initialized(), bool)
        True
    """
    return PartialState._shared_state != {}

