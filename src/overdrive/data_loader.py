"""Data loaders that shard batches across processes (the ``accelerate.data_loader`` module of overdrive).

:func:`prepare_data_loader` turns a user's :class:`torch.utils.data.DataLoader` into one of two real ``DataLoader``
subclasses that move batches to the device and tell the shared :class:`~overdrive.state.GradientState` when they
yield their last batch and how many samples of the last global batch are real (``remainder``), so gradient
accumulation and ``gather_for_metrics`` behave as in Accelerate:

* :class:`DataLoaderShard` (every rank loads its own batches): a map-style dataset gets a :class:`BatchSamplerShard`
  (rank ``r`` of ``n`` takes its share of every round of batches); an ``IterableDataset`` gets wrapped in an
  :class:`IterableDatasetShard` (every rank reads the stream and keeps its own samples of each global batch).
* :class:`DataLoaderDispatcher` (``dispatch_batches=True``; Accelerate's default for an ``IterableDataset`` when
  batches are put on the device): only rank 0 iterates the loader; it broadcasts each global batch and every rank
  keeps its slice.

How ranks agree on the shuffle order (documented choice):

* With ``use_seedable_sampler=True`` (the :class:`~overdrive.utils.DataLoaderConfiguration` default in overdrive) a
  ``RandomSampler`` becomes a :class:`SeedableRandomSampler`, whose order is a pure function of ``(seed, epoch)``:
  ``seed = data_seed``, or when that is ``None`` rank 0's ``torch.initial_seed()``, broadcast at the start of each
  epoch so every rank uses the same one.
* Otherwise any sampler with a ``generator`` attribute (``RandomSampler``, ``SubsetRandomSampler``, ...) gets a
  ``torch.Generator`` when it has none (seeded from the global torch RNG, as Accelerate does), and at the start of
  every epoch rank 0's generator state is broadcast to all ranks. Accelerate does this only when ``rng_types``
  contains ``"generator"``; overdrive always does it for a sharded loader (and for any loader prepared with a
  ``torch_device_mesh``, whose tp/cp ranks must see the same batches), because without it ranks draw different
  permutations and see overlapping samples. ``rng_types`` additionally synchronises ``"torch"`` / ``"cuda"`` RNGs.

Both agreements are collectives: every rank must start iterating a sharded loader together (as in Accelerate), and
a dispatched loader is a collective at every step. Without a process group (one process, or rank ``r`` of ``n``
simulated in a test) nothing is broadcast.

DataLoader workers (``num_workers > 0``), what overdrive guarantees:

* map-style and dispatched loaders: the same batches in the same order as with ``num_workers=0`` (workers only
  load; a dispatched loader runs its workers on rank 0 only, and its dataset follows torch's worker contract).
* ``IterableDataset`` with ``dispatch_batches=False``: as in Accelerate and torch, every worker holds a copy of the
  dataset, so the dataset must split its stream among workers (``torch.utils.data.get_worker_info()``); then every
  sample reaches exactly one rank, apart from the padding that completes each worker's last incomplete round
  (``drop_last=False``). Because that padding is not only at the end of the epoch, ``remainder`` is -1 (unknown)
  for such loaders. Use ``dispatch_batches=True`` for exactly-once with trimmable padding.

Resuming mid-epoch: ``use_stateful_dataloader=True`` builds the loader on torchdata's ``StatefulDataLoader``; its
``state_dict()`` captures the position and the shuffle state (sampler seed and epoch, or the generator state at
the start of the pass), so ``load_state_dict`` in a fresh process continues with exactly the remaining batches.
Without it, :func:`skip_first_batches` skips a known number of batches. Every prepared loader counts the batches
handed out in the current pass (skipped ones included, also through a loader made by :func:`skip_first_batches`),
so ``save_state`` records ``(iteration, batches_done)``; a loader whose position ``load_state`` restored refuses to
be skipped a second time (see :func:`skip_first_batches`).

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader
    >>> dl = prepare_data_loader(DataLoader(list(range(10)), batch_size=2), num_processes=2, process_index=1)
    >>> [b.tolist() for b in dl]
    [[2, 3], [6, 7], [0, 1]]
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, Sampler

from .state import GradientState, PartialState
from .utils.dataclasses import RNGType
from .utils.operations import (
    concatenate,
    find_batch_size,
    get_data_structure,
    initialize_tensors,
    recursively_apply,
    send_to_device,
    slice_tensors,
)

__all__ = [
    "BatchSamplerShard",
    "DataLoaderDispatcher",
    "DataLoaderShard",
    "DataLoaderStateMixin",
    "IterableDatasetShard",
    "SeedableRandomSampler",
    "SkipBatchSampler",
    "SkipDataLoader",
    "get_sampler",
    "prepare_data_loader",
    "skip_first_batches",
]

_U64 = 2**64


def _check_rank(num_processes: Any, process_index: Any) -> None:
    """Raise a ``ValueError`` unless ``process_index`` is a valid rank of ``num_processes`` processes."""
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes={num_processes!r} must be a positive int")
    if not isinstance(process_index, int) or not 0 <= process_index < num_processes:
        raise ValueError(
            f"process_index={process_index!r} must be an int in 0..{num_processes - 1} (num_processes - 1)"
        )


# -- samplers ---------------------------------------------------------------------------------------------------------


class SeedableRandomSampler(RandomSampler):
    """A ``RandomSampler`` whose order depends only on ``(seed, epoch)``: the same on every rank, new each epoch.

    At the start of each pass the generator is re-seeded with ``initial_seed + epoch``; the pass itself is
    ``RandomSampler``'s (so the order equals Accelerate's for the same seed and epoch). After a full pass ``epoch``
    advances by one; :meth:`set_epoch` sets it explicitly (prepared loaders call it at every epoch start).

    Args:
        data_source, replacement, num_samples, generator: as for ``torch.utils.data.RandomSampler``.
        data_seed: the seed; ``None`` means ``torch.initial_seed()`` (what ``set_seed`` sets). A prepared sharded
            loader replaces it with rank 0's value so that ranks agree even without ``set_seed``.

    Example:
        >>> s = SeedableRandomSampler(range(5), data_seed=7)
        >>> list(s) == list(SeedableRandomSampler(range(5), data_seed=7))
        True
        >>> s.set_epoch(1); list(s) != list(SeedableRandomSampler(range(5), data_seed=7))
        True
    """

    def __init__(
        self,
        data_source: Sized,
        replacement: bool = False,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        data_seed: int | None = None,
    ) -> None:
        super().__init__(data_source, replacement=replacement, num_samples=num_samples, generator=generator)
        self.data_seed = data_seed
        self.initial_seed: int = data_seed if data_seed is not None else torch.initial_seed()
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        if self.generator is None:
            self.generator = torch.Generator(device=torch.get_default_device())
        # Modulo 2**64: manual_seed takes any 64-bit value, and seed + epoch must not overflow it.
        self.generator.manual_seed((self.initial_seed + self.epoch) % _U64)
        yield from super().__iter__()
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass.

        Example:
            >>> s = SeedableRandomSampler(range(3), data_seed=0); s.set_epoch(2); s.epoch
            2
        """
        self.epoch = epoch


class _WrapsBatchSampler:
    """What :class:`BatchSamplerShard` and :class:`SkipBatchSampler` read through to the batch sampler they wrap."""

    batch_sampler: Iterable[list[int]]

    @property
    def sampler(self) -> Any:
        """The index sampler of the wrapped batch sampler (``None`` if it has none)."""
        return getattr(self.batch_sampler, "sampler", None)

    @sampler.setter
    def sampler(self, sampler: Any) -> None:
        self.batch_sampler.sampler = sampler  # type: ignore[attr-defined]

    @property
    def total_length(self) -> int:
        """Number of batches of the wrapped sampler (over all ranks for a shard; skipped ones included for a skip)."""
        return len(self.batch_sampler)  # type: ignore[arg-type]


class BatchSamplerShard(_WrapsBatchSampler, BatchSampler):
    """Wrap a batch sampler so that rank ``process_index`` of ``num_processes`` gets only its batches.

    Without ``split_batches`` the wrapped batches are dealt out in rounds of ``num_processes``: rank ``r`` gets the
    ``r``-th batch of each round. With ``split_batches`` every rank gets the ``r``-th slice of every batch (the batch
    size must divide by ``num_processes``). The last, incomplete round (or the short last batch) is handled like
    Accelerate:

    * the wrapped sampler drops its last batch (``drop_last=True``): an incomplete round is dropped;
    * ``even_batches=True``: it is completed with indices from the start of the data, so every rank gets the same
      number of batches of the same size (a few samples are seen twice);
    * ``even_batches=False``: ranks that have data get it as is, the others get nothing more.

    The index lists equal those of ``accelerate.data_loader.BatchSamplerShard`` for batch samplers whose only short
    batch is the last one (torch's ``BatchSampler``) and for samplers without a ``batch_size``.

    Example:
        >>> from torch.utils.data import BatchSampler, SequentialSampler
        >>> bs = BatchSampler(SequentialSampler(range(10)), batch_size=3, drop_last=False)
        >>> list(BatchSamplerShard(bs, num_processes=2, process_index=1))
        [[3, 4, 5], [9, 0, 1]]
    """

    def __init__(
        self,
        batch_sampler: Iterable[list[int]],
        num_processes: int = 1,
        process_index: int = 0,
        split_batches: bool = False,
        even_batches: bool = True,
    ) -> None:
        # BatchSampler.__init__ is not called on purpose: it validates a sampler we do not have.
        _check_rank(num_processes, process_index)
        self.batch_sampler = batch_sampler
        self.num_processes = num_processes
        self.process_index = process_index
        self.split_batches = split_batches
        self.even_batches = even_batches
        # torch types BatchSampler.batch_size as int, but a wrapped sampler without a batch_size gives None here
        self.batch_size: int | None = getattr(batch_sampler, "batch_size", None)  # type: ignore[assignment]
        self.drop_last: bool = bool(getattr(batch_sampler, "drop_last", False))
        if split_batches and (self.batch_size is None or self.batch_size % num_processes != 0):
            raise ValueError(
                f"split_batches=True needs a batch size that divides by num_processes={num_processes}, but the batch "
                f"sampler's batch_size is {self.batch_size}; use a batch size that is a multiple of {num_processes} "
                "or split_batches=False"
            )

    def __len__(self) -> int:
        total = len(self.batch_sampler)  # type: ignore[arg-type]
        if self.split_batches:
            return total  # every rank gets a slice of every batch
        rounds, leftover = divmod(total, self.num_processes)
        if leftover == 0 or self.drop_last:
            return rounds
        if self.even_batches:
            return rounds + 1  # the incomplete round is completed for everyone
        return rounds + (1 if self.process_index < leftover else 0)

    def __iter__(self) -> Iterator[list[int]]:
        return self._iter_split() if self.split_batches else self._iter_whole_batches()

    def _is_full(self, batch: list[int]) -> bool:
        # Without a batch_size, batches have no expected size: every batch counts as full.
        return self.batch_size is None or len(batch) == self.batch_size

    def _iter_whole_batches(self) -> Iterator[list[int]]:
        n, rank = self.num_processes, self.process_index
        head: list[list[int]] = []  # the first n batches: the wrap-around source for the last round
        round_: list[list[int]] = []  # batches of the round being collected
        for batch in self.batch_sampler:
            if len(round_) == n:
                round_ = []  # a complete round ending on a short batch is only kept if it is the last one
            if not self.drop_last and len(head) < n:
                head.append(batch)
            round_.append(batch)
            # Hand out a round only once every rank has a batch in it and none is short, so ranks stay in step.
            if len(round_) == n and self._is_full(batch):
                yield round_[rank]
                round_ = []
        if self.drop_last or not head:
            return
        tail = round_  # the last, incomplete round (or a complete one whose last batch is short)
        if not tail:
            return  # the data ended on a complete round: every rank already has the same number of batches
        if not self.even_batches:
            if rank < len(tail):
                yield tail[rank]
            return
        # even_batches: complete the short batch and the round with data from the start, in order.
        if self.batch_size is None:
            whole_batches = itertools.cycle(head)
            for position in range(n):
                batch = tail[position] if position < len(tail) else next(whole_batches)
                if position == rank:
                    yield batch
            return
        start_indices = itertools.cycle([index for batch in head for index in batch])
        for position in range(n):
            batch = list(tail[position]) if position < len(tail) else []
            batch += itertools.islice(start_indices, self.batch_size - len(batch))
            if position == rank:
                yield batch

    def _iter_split(self) -> Iterator[list[int]]:
        assert self.batch_size is not None  # checked in __init__
        per_rank = self.batch_size // self.num_processes
        mine = slice(per_rank * self.process_index, per_rank * (self.process_index + 1))
        first: list[int] | None = None
        last: list[int] = []
        for batch in self.batch_sampler:
            if first is None:
                first = batch
            last = batch
            if len(batch) == self.batch_size:
                yield batch[mine]
        if self.drop_last or not first or len(last) >= self.batch_size:
            return
        if not self.even_batches:
            if len(last) > mine.start:  # ranks past the end of the short batch get nothing
                yield last[mine]
            return
        # Complete the short last batch with indices from the start of the data (the first batch, repeated).
        filler = itertools.islice(itertools.cycle(first), self.batch_size - len(last))
        yield (list(last) + list(filler))[mine]


class SkipBatchSampler(_WrapsBatchSampler, BatchSampler):
    """Yield the batches of ``batch_sampler`` after the first ``skip_batches`` (to resume mid-epoch).

    ``batch_size``, ``drop_last``, ``sampler``, ``num_processes`` and ``split_batches`` read through to the wrapped
    sampler, so a loader built on it still knows its total batch size and shuffling sampler.

    Example:
        >>> from torch.utils.data import BatchSampler, SequentialSampler
        >>> bs = BatchSampler(SequentialSampler(range(6)), batch_size=2, drop_last=False)
        >>> list(SkipBatchSampler(bs, skip_batches=2))
        [[4, 5]]
    """

    def __init__(self, batch_sampler: Iterable[list[int]], skip_batches: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip_batches, None)

    @property
    def batch_size(self) -> int | None:  # type: ignore[override]
        """Batch size of the wrapped sampler."""
        return getattr(self.batch_sampler, "batch_size", None)

    @property
    def drop_last(self) -> bool:  # type: ignore[override]
        """Whether the wrapped sampler drops its last short batch."""
        return bool(getattr(self.batch_sampler, "drop_last", False))

    @property
    def num_processes(self) -> int:
        """Ranks the wrapped sampler is sharded over (1 if it is not sharded)."""
        return int(getattr(self.batch_sampler, "num_processes", 1))

    @property
    def split_batches(self) -> bool:
        """Whether the wrapped sampler splits each batch across ranks."""
        return bool(getattr(self.batch_sampler, "split_batches", False))

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip_batches)  # type: ignore[arg-type]


class IterableDatasetShard(IterableDataset):
    """Wrap an ``IterableDataset`` so that rank ``process_index`` of ``num_processes`` yields only its samples.

    The stream is cut into global batches (``batch_size * num_processes`` samples, or ``batch_size`` with
    ``split_batches``) and each rank yields its consecutive piece of every global batch, so ranks get distinct
    samples and whole batches. The last, incomplete global batch is dropped (``drop_last=True``) or completed by
    cycling the samples of the first global batch, so every rank yields the same number of samples. Every rank reads
    the whole stream (as in Accelerate), and the samples are those of ``accelerate.data_loader.IterableDatasetShard``.

    Under DataLoader workers each worker wraps its own copy: the dataset must split its stream among workers
    (``torch.utils.data.get_worker_info()``), as torch requires of any ``IterableDataset``.

    Args:
        dataset: the stream to shard.
        batch_size: samples per rank per step, or with ``split_batches`` per global batch (then a multiple of
            ``num_processes``).
        drop_last: drop the last incomplete global batch instead of completing it.
        num_processes, process_index: the number of ranks and this rank.
        split_batches: whether ``batch_size`` is the global batch (split across ranks) or each rank's.

    Example:
        >>> shard = IterableDatasetShard(range(10), batch_size=2, num_processes=2, process_index=1)
        >>> list(shard)
        [2, 3, 6, 7, 0, 1]
    """

    def __init__(
        self,
        dataset: IterableDataset,
        batch_size: int = 1,
        drop_last: bool = False,
        num_processes: int = 1,
        process_index: int = 0,
        split_batches: bool = False,
    ) -> None:
        _check_rank(num_processes, process_index)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive int (samples per batch)")
        if split_batches and batch_size % num_processes != 0:
            # Accelerate accepts batch_size=1 here and then yields nothing on any rank; overdrive refuses it.
            raise ValueError(
                f"split_batches=True needs a batch_size that divides by num_processes={num_processes}, got "
                f"batch_size={batch_size}; use a multiple of {num_processes} or split_batches=False"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_processes = num_processes
        self.process_index = process_index
        self.split_batches = split_batches
        self.epoch = 0

    @property
    def _global_batch_size(self) -> int:
        return self.batch_size if self.split_batches else self.batch_size * self.num_processes

    @property
    def _per_rank(self) -> int:
        return self.batch_size // self.num_processes if self.split_batches else self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Record ``epoch`` and pass it on to the wrapped dataset when it has ``set_epoch``.

        Example:
            >>> shard = IterableDatasetShard(range(4)); shard.set_epoch(2); shard.epoch
            2
        """
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        """Samples this rank yields in one pass (needs a sized dataset; a ``TypeError`` otherwise).

        Accelerate's formula ignores ``split_batches``; this one counts what ``__iter__`` actually yields.
        """
        total = len(self.dataset)  # type: ignore[arg-type]  # raises TypeError for unsized streams, as wanted
        rounds = total // self._global_batch_size if self.drop_last else math.ceil(total / self._global_batch_size)
        return rounds * self._per_rank

    def __iter__(self) -> Iterator[Any]:
        generator = getattr(self.dataset, "generator", None)
        if not hasattr(self.dataset, "set_epoch") and isinstance(generator, torch.Generator):
            # A dataset that shuffles with its own generator but has no set_epoch: reseed it per epoch (as Accelerate).
            generator.manual_seed(self.epoch)
        size, per_rank = self._global_batch_size, self._per_rank
        mine = slice(self.process_index * per_rank, (self.process_index + 1) * per_rank)
        first: list[Any] | None = None
        current: list[Any] = []
        for sample in self.dataset:
            current.append(sample)
            if len(current) == size:
                yield from current[mine]
                if first is None:
                    first = current
                current = []
        if self.drop_last or not current:
            return
        # Complete the last global batch by cycling the first one (or the short batch itself if it is the only one).
        filler = itertools.cycle(first if first is not None else list(current))
        current.extend(itertools.islice(filler, size - len(current)))
        yield from current[mine]


# -- loaders ----------------------------------------------------------------------------------------------------------


class DataLoaderStateMixin:
    """What a prepared loader tells :class:`~overdrive.state.GradientState` while it is iterated.

    ``end_of_dataloader`` becomes True just before the last batch is yielded; ``remainder`` is the number of real
    samples in the last global batch (``len(dataset) % total_batch_size``; -1 when unknown or when the last batch is
    dropped). :meth:`begin` registers the loader as the active one and :meth:`end` removes it.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> dl = prepare_data_loader(DataLoader(list(range(5)), batch_size=2), num_processes=1, process_index=0)
        >>> isinstance(dl, DataLoaderStateMixin), dl.end_of_dataloader
        (True, False)
    """

    end_of_dataloader: bool = False
    remainder: int = -1
    gradient_state: GradientState

    def reset(self) -> None:
        """Forget the state of the previous pass.

        Example:
            >>> from torch.utils.data import DataLoader
            >>> dl = SkipDataLoader(list(range(3))); dl.reset(); dl.remainder
            -1
        """
        self.end_of_dataloader = False
        self.remainder = -1

    def begin(self) -> None:
        """Reset, compute ``remainder`` and register as the active loader.

        Example:
            >>> dl = SkipDataLoader(list(range(3))); dl.begin(); dl.gradient_state.active_dataloader is dl
            True
            >>> dl.end()
        """
        self.reset()
        self.remainder = self._last_batch_remainder()
        self.gradient_state._add_dataloader(self)

    def end(self) -> None:
        """Unregister from the gradient state.

        Example:
            >>> dl = SkipDataLoader(list(range(3))); dl.begin(); dl.end(); dl.gradient_state.in_dataloader
            False
        """
        self.gradient_state._remove_dataloader(self)

    def _last_batch_remainder(self) -> int:
        return -1

    def _pass_started(self) -> None:
        """Hook: a pass is about to draw its first batch (stateful loaders record the shuffle state here)."""

    def _snapshot_state(self) -> None:
        """Hook: every batch handed out so far is consumed (stateful loaders record their position here)."""

    def _batch_yielded(self, last: bool) -> None:
        """Hook: a batch is about to be handed out (``last``: it ends the pass); prepared loaders count them."""

    def _reads_data(self) -> bool:
        """Whether this process iterates the wrapped loader itself."""
        return True

    def _tracked(
        self,
        batches: Iterator[Any],
        skip_batches: int = 0,
        device: torch.device | str | int | None = None,
        non_blocking: bool = False,
    ) -> Iterator[Any]:
        """Yield ``batches`` after the first ``skip_batches``, one batch ahead so the last one is known in advance."""
        self.begin()
        try:
            try:
                current = next(batches)
            except StopIteration:
                return
            index = 0
            while True:
                if device is not None and index >= skip_batches:
                    # Moved before fetching the next batch, so the copy overlaps the loading of the next one.
                    current = send_to_device(current, device, non_blocking=non_blocking)
                # Taken before the look-ahead fetch, so a saved state resumes right after `current`.
                self._snapshot_state()
                try:
                    upcoming = next(batches)
                except StopIteration:
                    self.end_of_dataloader = True  # set before the last batch so the training step sees it
                    if index >= skip_batches:
                        self._batch_yielded(True)
                        yield current
                    return
                if index >= skip_batches:
                    self._batch_yielded(False)
                    yield current
                index += 1
                current = upcoming
        finally:
            # Also runs when the loop over the loader is abandoned (break, exception): the generator is closed.
            self.end()


@functools.cache
def _dataloader_settings() -> dict[str, Any]:
    """``DataLoader.__init__`` keyword defaults that sharding does not replace (read once, for this torch)."""
    replaced = {"self", "dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"}
    params = inspect.signature(DataLoader.__init__).parameters
    return {name: p.default for name, p in params.items() if name not in replaced}


def _loader_kwargs(dataloader: DataLoader) -> dict[str, Any]:
    """The settings of ``dataloader`` (workers, collate_fn, pin_memory, ...) to build an equivalent loader."""
    return {name: getattr(dataloader, name, default) for name, default in _dataloader_settings().items()}


def _batch_sampler_of(dataloader: DataLoader) -> Any:
    """The batch sampler ``dataloader`` uses: its ``sampler`` when that is a ``BatchSampler``, else ``batch_sampler``."""
    return dataloader.sampler if isinstance(dataloader.sampler, BatchSampler) else dataloader.batch_sampler


def _batching(dataloader: DataLoader, batch_sampler: Any) -> dict[str, Any]:
    """``DataLoader`` keywords that batch like ``dataloader`` does, with ``batch_sampler`` in place of its own."""
    if isinstance(dataloader.dataset, IterableDataset):
        return {"batch_size": dataloader.batch_size, "drop_last": dataloader.drop_last}
    if batch_sampler is None:  # batch_size=None: samples one by one, as the user asked
        return {"sampler": dataloader.sampler, "batch_size": None}
    if isinstance(dataloader.sampler, BatchSampler):  # a BatchSampler given as the sampler stays in that place
        return {"sampler": batch_sampler, "batch_size": dataloader.batch_size}
    return {"batch_sampler": batch_sampler}


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _broadcast_from_rank0(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (a CPU tensor of the same dtype)."""
    if dist.get_backend() == "nccl":
        # nccl only moves CUDA tensors; the result goes back to the CPU where RNG states live.
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.broadcast(on_gpu, src=0)
        return on_gpu.cpu()
    dist.broadcast(tensor, src=0)
    return tensor


def _normalise_rng_types(rng_types: Iterable[str | RNGType] | None) -> list[str] | None:
    if rng_types is None:
        return None
    allowed = [t.value for t in RNGType]
    names = []
    for rng in rng_types:
        name = str(getattr(rng, "value", rng))
        if name not in allowed:
            raise ValueError(f"rng_types contains {rng!r}; allowed values are {allowed}")
        names.append(name)
    return names


# -- stateful loaders (torchdata's StatefulDataLoader, imported only when asked for) -----------------------------------


def _import_stateful_dataloader() -> type:
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader  # type: ignore[import-untyped,import-not-found]
    except ImportError as err:
        raise ImportError(
            "use_stateful_dataloader=True needs torchdata>=0.8 (its StatefulDataLoader), which is not installed; "
            "install it with `pip install torchdata` or set use_stateful_dataloader=False"
        ) from err
    return StatefulDataLoader  # type: ignore[no-any-return]


class _StatefulLoaderMixin:
    """``state_dict`` / ``load_state_dict`` for a prepared loader built on torchdata's ``StatefulDataLoader``.

    The state is torchdata's (the position, taken one batch behind the look-ahead so it matches what the caller
    received) plus an ``"_overdrive"`` entry: the pass counter and the shuffle state the pass started from (the
    :class:`SeedableRandomSampler` seed and epoch, and the sampler's generator state). Restoring that shuffle state
    is what lets torchdata's fast-forward over the sampler reproduce the interrupted pass in a fresh process.
    """

    _position: dict[str, Any] | None = None
    _pass_start: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        accepted = inspect.signature(_import_stateful_dataloader()).parameters
        # Older torchdata lacks some newer DataLoader arguments (e.g. in_order before 0.11): leave them out.
        kwargs = {k: v for k, v in kwargs.items() if k in accepted or k not in _dataloader_settings()}
        with warnings.catch_warnings():
            # torchdata calls torch.set_vital, deprecated in recent torch: a warning no user can act on.
            warnings.filterwarnings("ignore", message=".*set_vital.*is deprecated", category=UserWarning)
            super().__init__(*args, **kwargs)

    def _shuffle_generator(self) -> torch.Generator | None:
        generator = getattr(self, "synchronized_generator", None)
        if generator is None:
            generator = getattr(get_sampler(self), "generator", None)  # type: ignore[arg-type]
        return generator if isinstance(generator, torch.Generator) else None

    def _shuffle_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"iteration": int(getattr(self, "iteration", 0))}
        sampler = get_sampler(self)  # type: ignore[arg-type]
        if isinstance(sampler, SeedableRandomSampler):
            state["sampler_seed"] = sampler.initial_seed
            state["sampler_epoch"] = sampler.epoch
        generator = self._shuffle_generator()
        if generator is not None:
            state["generator"] = generator.get_state().clone()
        return state

    def _pass_started(self) -> None:
        self._pass_start = self._shuffle_state()
        self._position = None

    def _snapshot_state(self) -> None:
        # Ranks that never read data (a dispatcher's receivers) have no torchdata position, only the metadata.
        reads_data = cast(DataLoaderStateMixin, self)._reads_data()
        self._position = super().state_dict() if reads_data else {}  # type: ignore[misc]

    def state_dict(self) -> dict[str, Any]:
        """The position in the current pass and the shuffle state, to resume with :meth:`load_state_dict`.

        Example:
            >>> from torch.utils.data import DataLoader
            >>> dl = prepare_data_loader(DataLoader(list(range(6)), batch_size=2, shuffle=True),
            ...                          num_processes=1, process_index=0, use_stateful_dataloader=True)
            >>> for step, batch in enumerate(dl):
            ...     if step == 0:
            ...         state = dl.state_dict()  # after the first batch
            >>> state["_overdrive"]["iteration"]
            0
        """
        finished = self._position is not None and bool(getattr(self, "end_of_dataloader", False))
        if finished:
            # The pass is complete: resume at the start of the next one, from the shuffle state reached by now.
            meta = self._shuffle_state()
            meta["iteration"] = (self._pass_start or meta)["iteration"] + 1
            return {"_overdrive": meta}
        if self._pass_start is None or self._position is None:
            return {"_overdrive": self._shuffle_state()}  # nothing consumed yet: start a pass from the beginning
        meta = dict(self._pass_start)
        # Batches handed out in this pass: lets skip_first_batches tell a repeated skip from a different one.
        meta["batches_done"] = int(getattr(self, "_pass_batches", 0))
        first_samples = getattr(self, "_first_samples", None)
        if first_samples is not None:
            meta["first_samples"] = first_samples  # a dispatcher pads its last batch with these
        return {**self._position, "_overdrive": meta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` at the next iteration (also in a fresh process).

        A state without the ``"_overdrive"`` entry (a bare torchdata state) is handed to torchdata as is.

        Example:
            >>> from torch.utils.data import DataLoader
            >>> dl = prepare_data_loader(DataLoader(list(range(6)), batch_size=2),
            ...                          num_processes=1, process_index=0, use_stateful_dataloader=True)
            >>> it = iter(dl); first = next(it); state = dl.state_dict(); it.close()
            >>> dl.load_state_dict(state); [b.tolist() for b in dl]
            [[2, 3], [4, 5]]
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"load_state_dict needs the dict returned by state_dict(), got {type(state_dict).__name__}")
        position = dict(state_dict)
        meta = position.pop("_overdrive", None)
        if meta is not None:
            self.iteration = int(meta["iteration"])
            sampler = get_sampler(self)  # type: ignore[arg-type]
            if isinstance(sampler, SeedableRandomSampler) and "sampler_seed" in meta:
                sampler.initial_seed = int(meta["sampler_seed"])
                sampler.set_epoch(int(meta.get("sampler_epoch", self.iteration)))
            generator = self._shuffle_generator()
            if generator is not None and meta.get("generator") is not None:
                generator.set_state(meta["generator"])
            self._restored_first_samples = meta.get("first_samples")
        self._position, self._pass_start = None, None
        # The next pass resumes here; skip_first_batches must not skip these batches again.
        restored: int | None = None  # None: unknown (a bare torchdata state), so skip_first_batches cannot check
        if meta is not None and not position:
            restored = 0  # a state between passes: the next pass starts at its first batch
        elif meta is not None and "batches_done" in meta:
            restored = int(meta["batches_done"])
        prepared = cast(_PreparedLoader, self)
        prepared._restored_position, prepared._pass_epoch = restored, None
        super().load_state_dict(position)  # type: ignore[misc]


_STATEFUL_VARIANTS: dict[type, type] = {}


def _stateful_variant(cls: type) -> type:
    """``cls`` rebuilt on torchdata's ``StatefulDataLoader`` (still an instance of ``cls`` and of ``DataLoader``)."""
    if cls in _STATEFUL_VARIANTS:
        return _STATEFUL_VARIANTS[cls]
    base = _import_stateful_dataloader()
    name = f"Stateful{cls.__name__}"
    doc = f"A {cls.__name__} built on torchdata's StatefulDataLoader (``use_stateful_dataloader=True``)."
    variant = type(name, (_StatefulLoaderMixin, cls, base), {"__module__": __name__, "__doc__": doc})
    variant.__qualname__ = name
    globals()[name] = variant  # reachable by name, so pickle finds it
    _STATEFUL_VARIANTS[cls] = variant
    return variant


class _StatefulSwitch:
    """Constructing with ``use_stateful_dataloader=True`` gives the class's StatefulDataLoader-based variant."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("use_stateful_dataloader") and not issubclass(cls, _StatefulLoaderMixin):
            cls = _stateful_variant(cls)
        return super().__new__(cls)


# -- the prepared loaders ---------------------------------------------------------------------------------------------


class _SkippingLoader(_StatefulSwitch, DataLoaderStateMixin, DataLoader):
    """What every loader of this module shares: ``skip_batches``, the stateful switch and the gradient state."""

    def __init__(
        self, dataset: Any, skip_batches: int = 0, use_stateful_dataloader: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.skip_batches = skip_batches
        self.use_stateful_dataloader = use_stateful_dataloader
        self.gradient_state = GradientState()

    def _steps_per_pass(self) -> int:
        """Steps in a whole pass, skipped ones included: one per batch of the underlying ``DataLoader``."""
        return super().__len__()

    def __len__(self) -> int:
        return max(0, self._steps_per_pass() - self.skip_batches)


class _PreparedLoader(_SkippingLoader):
    """What :class:`DataLoaderShard` and :class:`DataLoaderDispatcher` share: epochs, samplers, dataset length."""

    def __init__(
        self,
        dataset: Any,
        skip_batches: int = 0,
        use_stateful_dataloader: bool = False,
        _drop_last: bool = False,
        _non_blocking: bool = False,
        torch_device_mesh: Any = None,
        iteration: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, skip_batches=skip_batches, use_stateful_dataloader=use_stateful_dataloader, **kwargs)
        self.torch_device_mesh = torch_device_mesh
        self.iteration = iteration
        self._drop_last = _drop_last
        self._non_blocking = _non_blocking
        # Progress of the pass in progress, read by save_state: its epoch (None between passes), the batches handed
        # out (skipped or restored ones included) and whether the last one was. A loader made by skip_first_batches
        # reports to the loader it was made from (`_resume_origin`), which is the one the Accelerator saves.
        self._resume_origin: _PreparedLoader | None = None
        self._resume_offset = 0
        self._pass_epoch: int | None = None
        self._pass_batches = 0
        self._pass_last = False
        # Position within `iteration` restored by load_state_dict and not yet resumed (None: nothing restored).
        self._restored_position: int | None = None
        # Set by load_state when the checkpoint came from another world size or global batch (_remap_position):
        # batches the next pass skips by itself (stateful loaders), or the only skip_first_batches count that
        # continues the saved stream (plain loaders, whose position is the script's own skip).
        self._pending_skip = 0
        self._expected_skip: int | None = None

    def _progress_owner(self) -> _PreparedLoader:
        return self._resume_origin if self._resume_origin is not None else self

    def _begin_pass_progress(self) -> None:
        """Start counting a pass at its absolute position: after the skipped or the restored batches."""
        restored, self._restored_position = self._restored_position or 0, None
        owner = self._progress_owner()
        owner._pass_epoch, owner._pass_batches, owner._pass_last = self.iteration, self._resume_offset + restored, False
        owner._restored_position, owner._expected_skip = None, None

    def _take_pending_skip(self) -> int:
        """Batches the pass about to start skips on top of ``skip_batches`` (once, after a remapped resume)."""
        pending, self._pending_skip = self._pending_skip, 0
        return pending

    def _start_batches(self, make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        """``make()``, but a resumed pass leaves the global torch RNG untouched.

        Creating a ``DataLoader`` iterator draws a base seed from the global RNG; the interrupted pass drew it before
        the checkpoint saved the RNG state, so drawing again would shift every later random number (dropout...).
        """
        if not (self._resume_offset or self._restored_position):
            return make()
        state = torch.get_rng_state()
        try:
            return make()
        finally:
            torch.set_rng_state(state)

    def _batch_yielded(self, last: bool) -> None:
        owner = self._progress_owner()
        owner._pass_batches += 1
        owner._pass_last = last

    def _end_pass_progress(self) -> None:
        """A pass completed (``iteration`` already advanced): the loader it was made from is in the next epoch too."""
        owner = self._progress_owner()
        owner._pass_epoch = None
        owner.iteration = self.iteration

    def _resume_position(self) -> tuple[int, int]:
        """``(iteration, batches_done)``: the epoch to resume and how many of its batches were handed out.

        A pass whose last batch was handed out counts as done: resume at batch 0 of the next epoch.
        """
        if self._pass_epoch is None:
            return self.iteration, self._restored_position or 0
        if self._pass_last:
            return self._pass_epoch + 1, 0
        return self._pass_epoch, self._pass_batches

    def _restore_position(self, iteration: int) -> None:
        """Continue at the start of pass ``iteration`` (load_state; the batch position is the user's skip's)."""
        self.iteration = iteration
        self._pass_epoch, self._pass_last = None, False
        sampler = self.get_sampler()
        if isinstance(sampler, SeedableRandomSampler):
            sampler.set_epoch(iteration)

    def _remap_position(self, iteration: int, batches: int, self_positioned: bool) -> None:
        """Continue pass ``iteration`` after ``batches`` batches of *this* loader's size (load_state, after the
        saved position was converted from another world size or global batch).

        ``self_positioned`` (stateful loaders): the next pass skips those batches itself, and
        ``skip_first_batches(dl, batches)`` returns the loader unchanged. Otherwise the script's own skip positions
        the loader, as for a plain loader, and any other count than ``batches`` is refused.
        """
        self._restore_position(iteration)
        if self_positioned:
            self._restored_position, self._pending_skip = batches, batches
        else:
            self._expected_skip = batches if batches else None

    def _carried_settings(self) -> dict[str, Any]:
        """The keywords that give a rebuilt loader (:func:`skip_first_batches`) this loader's own settings."""
        return {
            "iteration": self.iteration,
            "_drop_last": self._drop_last,
            "_non_blocking": self._non_blocking,
            "torch_device_mesh": self.torch_device_mesh,
        }

    def _index_batch_sampler(self) -> Any:
        """The batch sampler in use: ``sampler`` when the user passed a ``BatchSampler`` as the sampler."""
        return _batch_sampler_of(self)

    @property
    def total_batch_size(self) -> int | None:
        """Samples per step over all ranks; ``None`` if unknown (each prepared loader says how it counts them)."""
        raise NotImplementedError

    def _last_batch_remainder(self) -> int:
        total = self.total_batch_size
        if self._drop_last or not total:
            return -1
        try:
            return self.total_dataset_length % total
        except (TypeError, NotImplementedError, AttributeError):  # datasets without a length: unknown until the end
            return -1

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch on this loader (``iteration``), its samplers and, if they do not reshuffle, the dataset.

        Example:
            >>> from torch.utils.data import DataLoader
            >>> dl = prepare_data_loader(DataLoader(list(range(4)), shuffle=True), use_seedable_sampler=True)
            >>> dl.set_epoch(3); dl.iteration, dl.get_sampler().epoch
            (3, 3)
        """
        self.iteration = epoch
        batch_sampler = self._index_batch_sampler()
        called: set[int] = set()
        for obj in (batch_sampler, getattr(batch_sampler, "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch") and id(obj) not in called:
                obj.set_epoch(epoch)
                called.add(id(obj))
        inner = getattr(getattr(batch_sampler, "batch_sampler", None), "sampler", None)
        if inner is not None and hasattr(inner, "set_epoch"):
            if id(inner) not in called:
                inner.set_epoch(epoch)
        elif hasattr(self.dataset, "set_epoch"):
            # As in Accelerate: datasets that shuffle themselves (e.g. HF streaming datasets) follow the epoch too.
            self.dataset.set_epoch(epoch)

    @property
    def total_dataset_length(self) -> int:
        """Number of samples in the dataset over all ranks.

        Example:
            >>> from torch.utils.data import DataLoader
            >>> prepare_data_loader(DataLoader(list(range(8))), num_processes=1, process_index=0).total_dataset_length
            8
        """
        dataset = self.dataset
        if isinstance(dataset, IterableDatasetShard):
            dataset = dataset.dataset  # the whole stream, not this rank's padded share
        if hasattr(dataset, "total_length"):
            return int(dataset.total_length)
        if not isinstance(dataset, Sized):  # torch's Dataset does not promise __len__ (e.g. iterable datasets)
            raise TypeError(
                f"object of type {type(dataset).__name__!r} has no len(): the dataset defines neither __len__ nor "
                "total_length, so its length is unknown"
            )
        return len(dataset)

    def get_sampler(self) -> Any:
        """The index sampler (e.g. the ``RandomSampler``) behind the batch sampler.

        Example:
            >>> from torch.utils.data import DataLoader, SequentialSampler
            >>> dl = prepare_data_loader(DataLoader(list(range(4))), num_processes=1, process_index=0)
            >>> isinstance(dl.get_sampler(), SequentialSampler)
            True
        """
        return get_sampler(self)

    def set_sampler(self, sampler: Sampler[int]) -> None:
        """Replace the index sampler behind the batch sampler (and behind a sharded sampler's wrapped one).

        Example:
            >>> from torch.utils.data import DataLoader, SequentialSampler
            >>> dl = prepare_data_loader(DataLoader(list(range(4))), num_processes=1, process_index=0)
            >>> dl.set_sampler(SequentialSampler(range(2))); len(list(dl))
            2
        """
        batch_sampler = self._index_batch_sampler()
        batch_sampler.sampler = sampler
        inner = getattr(batch_sampler, "batch_sampler", None)
        if inner is not None and hasattr(inner, "sampler"):
            inner.sampler = sampler


class DataLoaderShard(_PreparedLoader):
    """A ``DataLoader`` that yields this rank's batches on ``device`` and reports its progress to the gradient state.

    Built by :func:`prepare_data_loader`; the keyword arguments not listed below go to ``DataLoader``. At the start
    of each pass it agrees with the other ranks on the shuffle order (see the module docstring), calls
    :meth:`set_epoch` with :attr:`iteration`, and registers itself with :class:`~overdrive.state.GradientState`
    until the pass ends or is abandoned. ``iteration`` counts completed passes, so a new pass reshuffles even
    without an explicit ``set_epoch``.

    Args:
        dataset: the dataset (an :class:`IterableDatasetShard` for a sharded stream).
        device: where to move each batch (``None``: leave batches where the collate function made them).
        rng_types: RNGs to copy from rank 0 at each pass start (``"torch"``, ``"cuda"``, ``"generator"``).
        synchronized_generator: the sampler's generator, copied from rank 0 at each pass start.
        skip_batches: batches to skip at the start of every pass.
        use_stateful_dataloader: build on torchdata's ``StatefulDataLoader`` and offer ``state_dict()`` /
            ``load_state_dict()`` (needs ``pip install torchdata``).
        iteration: the pass counter to start from.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> dl = prepare_data_loader(DataLoader(list(range(6)), batch_size=2), num_processes=2, process_index=0)
        >>> len(dl), dl.total_batch_size, [b.tolist() for b in dl]
        (2, 4, [[0, 1], [4, 5]])
    """

    def __init__(
        self,
        dataset: Any,
        device: torch.device | str | int | None = None,
        rng_types: list[str | RNGType] | None = None,
        synchronized_generator: torch.Generator | None = None,
        skip_batches: int = 0,
        use_stateful_dataloader: bool = False,
        _drop_last: bool = False,
        _non_blocking: bool = False,
        torch_device_mesh: Any = None,
        iteration: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dataset,
            skip_batches=skip_batches,
            use_stateful_dataloader=use_stateful_dataloader,
            _drop_last=_drop_last,
            _non_blocking=_non_blocking,
            torch_device_mesh=torch_device_mesh,
            iteration=iteration,
            **kwargs,
        )
        self.device = device
        self.rng_types = _normalise_rng_types(rng_types)
        self.synchronized_generator = synchronized_generator

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._agree_on_randomness()
        self.set_epoch(self.iteration)
        self._pass_started()
        batches = self._start_batches(super().__iter__)
        skip = self.skip_batches + self._take_pending_skip()
        self._begin_pass_progress()
        yield from self._tracked(batches, skip, self.device, self._non_blocking)
        self.iteration += 1  # only after a complete pass: an abandoned pass does not count as an epoch
        self._end_pass_progress()

    def _agree_on_randomness(self) -> None:
        """Copy rank 0's shuffle state to every rank (a collective; nothing without a multi-process group)."""
        if _world_size() == 1:
            return
        kinds = list(self.rng_types or [])
        if "torch" in kinds:
            torch.set_rng_state(_broadcast_from_rank0(torch.get_rng_state()))
        if "cuda" in kinds and torch.cuda.is_available():
            torch.cuda.set_rng_state(_broadcast_from_rank0(torch.cuda.get_rng_state()))
        if self.synchronized_generator is not None:
            # Always, not only for rng_types=["generator"]: ranks with different permutations would overlap.
            state = _broadcast_from_rank0(self.synchronized_generator.get_state())
            self.synchronized_generator.set_state(state)
        sampler = self.get_sampler()
        sharded = getattr(self._index_batch_sampler(), "num_processes", 1) > 1
        agree = sharded or self.torch_device_mesh is not None  # tp/cp ranks need the same order too
        if isinstance(sampler, SeedableRandomSampler) and sampler.data_seed is None and agree:
            # torch.initial_seed() differs between ranks unless set_seed was called; use rank 0's.
            signed = sampler.initial_seed - _U64 if sampler.initial_seed >= 2**63 else sampler.initial_seed
            agreed = _broadcast_from_rank0(torch.tensor([signed], dtype=torch.int64))
            sampler.initial_seed = int(agreed.item()) % _U64

    def _last_batch_remainder(self) -> int:
        if isinstance(self.dataset, IterableDataset) and self.num_workers > 0:
            return -1  # each worker pads (or cuts short) its own stream: the real count of the last batch is unknown
        return super()._last_batch_remainder()

    @property
    def total_batch_size(self) -> int | None:
        """Samples per step over all ranks (the loader's batch size with ``split_batches``); ``None`` if unknown.

        Example:
            >>> from torch.utils.data import DataLoader
            >>> prepare_data_loader(DataLoader(list(range(8)), batch_size=2), num_processes=2,
            ...                     process_index=0).total_batch_size
            4
        """
        if isinstance(self.dataset, IterableDatasetShard):
            # Accelerate reports the per-rank batch size here; the global batch is what remainder is relative to.
            return self.dataset._global_batch_size
        batch_sampler = self._index_batch_sampler()
        if batch_sampler is None:  # batch_size=None (no automatic batching, one process): one sample per step
            return 1
        size = getattr(batch_sampler, "batch_size", None)
        if size is None:
            return None
        if getattr(batch_sampler, "split_batches", False):
            return int(size)
        return int(size) * int(getattr(batch_sampler, "num_processes", 1))


class DataLoaderDispatcher(_PreparedLoader):
    """A ``DataLoader`` iterated on rank 0 only, which broadcasts each global batch so every rank takes its slice.

    Built by :func:`prepare_data_loader` for ``dispatch_batches=True``. Each step rank 0 draws ``num_processes``
    batches of the wrapped loader and concatenates them (one batch with ``split_batches``), broadcasts the structure
    and the tensors, and rank ``r`` keeps the ``r``-th equal slice (cut by ``slice_fn``). When the data ends on an
    incomplete global batch, it is completed with the first samples of the epoch so every rank gets the same number
    of samples; ``remainder`` then tells how many of the last global batch are real. A dataset is only read on rank
    0, so DataLoader workers run there only. Every step is a collective: all ranks iterate together.

    Args:
        dataset: the dataset of the wrapped loader.
        split_batches: whether each loader batch is one global batch (split) or each rank's share.
        skip_batches: steps to skip at the start of every pass.
        use_stateful_dataloader: build on torchdata's ``StatefulDataLoader`` (its state lives on rank 0).
        slice_fn: ``slice_fn(batch, slice, process_index=, num_processes=)``; :func:`~overdrive.utils.slice_tensors`
            by default.
        torch_device_mesh: ranks that differ only along its "tp"/"cp" dimensions get the same slice.
        iteration: the pass counter to start from.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader
        >>> dl = prepare_data_loader(DataLoader(list(range(5)), batch_size=2), put_on_device=True,
        ...                          device=torch.device("cpu"), dispatch_batches=True)
        >>> [b.tolist() for b in dl], dl.remainder
        ([[0, 1], [2, 3], [4]], 1)
    """

    def __init__(
        self,
        dataset: Any,
        split_batches: bool = False,
        skip_batches: int = 0,
        use_stateful_dataloader: bool = False,
        _drop_last: bool = False,
        _non_blocking: bool = False,
        slice_fn: Callable[..., Any] | None = None,
        torch_device_mesh: Any = None,
        iteration: int = 0,
        **kwargs: Any,
    ) -> None:
        # Private keywords (Accelerate's signature has no place for them): the data-parallel coordinates and device,
        # so prepare_data_loader can pass what it resolved and tests can simulate rank r of n without a group.
        num_processes = kwargs.pop("_num_processes", None)
        process_index = kwargs.pop("_process_index", None)
        device = kwargs.pop("_device", None)
        super().__init__(
            dataset,
            skip_batches=skip_batches,
            use_stateful_dataloader=use_stateful_dataloader,
            _drop_last=_drop_last,
            _non_blocking=_non_blocking,
            torch_device_mesh=torch_device_mesh,
            iteration=iteration,
            **kwargs,
        )
        state = PartialState()
        if num_processes is None:
            num_processes, process_index = state.num_processes, state.process_index
            if torch_device_mesh is not None:
                num_processes, process_index = _data_parallel_coordinates(torch_device_mesh, num_processes,
                                                                          state.process_index)
        self.num_processes: int = int(num_processes)
        self.process_index: int = int(process_index or 0)
        self.device = device if device is not None else state.device
        self.split_batches = split_batches
        self.slice_fn = slice_tensors if slice_fn is None else slice_fn

    _first_samples: Any = None  # the first samples of the pass, which complete an uneven last global batch
    _restored_first_samples: Any = None

    @staticmethod
    def _is_source() -> bool:
        # Without a process group every process is its own source (one process, or a simulated rank in a test).
        return _world_size() == 1 or dist.get_rank() == 0

    def _reads_data(self) -> bool:
        return self._is_source()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self.set_epoch(self.iteration)
        source = self._is_source()
        self._pass_started()
        # Only the source reads data; torch's DataPipes also need the iterator (a seed collective) on every rank.
        from torch.utils.data import IterDataPipe

        make_iter = source or isinstance(self.dataset, IterDataPipe)
        batches = self._start_batches(super().__iter__) if make_iter else None
        skip = self.skip_batches + self._take_pending_skip()
        self._begin_pass_progress()
        n, rank = self.num_processes, self.process_index
        self.begin()
        try:
            # A resumed pass no longer sees its first batch: a stateful loader restores those samples.
            first: Any = self._restored_first_samples
            self._restored_first_samples = None
            self._first_samples = first
            current, observed = self._next_global_batch(batches, step=0)
            index = 0
            while current is not None:
                self._snapshot_state()  # before the look-ahead fetch: a saved state resumes after `current`
                upcoming, upcoming_size = self._next_global_batch(batches, step=index + 1)
                last = upcoming is None
                if first is None and not self._drop_last:
                    # The first samples of the epoch complete an uneven last global batch.
                    first = self.slice_fn(current, slice(0, n), process_index=rank, num_processes=n)
                    self._first_samples = first
                per_rank, extra = divmod(observed, n)
                if extra and not last:
                    raise ValueError(
                        f"dispatch_batches: global batch {index} has {observed} samples, which does not divide by "
                        f"num_processes={n}; only the last batch of an epoch may be uneven. Use batches of a constant "
                        "size (a multiple of the number of processes with split_batches=True)"
                    )
                if extra and not self._drop_last:
                    current = concatenate([current, first], dim=0)
                    per_rank += 1
                mine = self.slice_fn(
                    current, slice(rank * per_rank, (rank + 1) * per_rank), process_index=rank, num_processes=n
                )
                if last:
                    self.end_of_dataloader = True
                    self.remainder = observed  # real samples in the last global batch (as Accelerate reports it)
                if index >= skip:
                    self._batch_yielded(last)
                    yield mine
                index += 1
                current, observed = upcoming, upcoming_size
            self.iteration += 1  # only after a complete pass
            self._end_pass_progress()
        finally:
            self.end()

    def _next_global_batch(self, batches: Iterator[Any] | None, step: int) -> tuple[Any, int]:
        """The next global batch on every rank (broadcast from the source) and its size; ``(None, 0)`` at the end."""
        batch: Any = None
        if self._is_source():
            assert batches is not None
            group: list[Any] = []
            for _ in range(1 if self.split_batches else self.num_processes):
                try:
                    group.append(next(batches))
                except StopIteration:
                    break
            if group and not self.split_batches and len(group) < self.num_processes and self._drop_last:
                group = []  # drop_last: an incomplete round is dropped, as the wrapped loader drops its short batch
            if group:
                try:
                    batch = concatenate(group, dim=0) if len(group) > 1 else group[0]
                except (RuntimeError, TypeError) as err:
                    raise RuntimeError(
                        f"dispatch_batches=True could not join the {len(group)} batches of step {step} into one "
                        f"global batch ({err}); batches must have the same structure and shapes past dim 0. Use "
                        "dispatch_batches=False (each process loads its own batches) or split_batches=True (one "
                        "loader batch is split across processes)"
                    ) from err
            info: list[Any] = [get_data_structure(batch) if batch is not None else None, batch is not None]
        else:
            info = [None, False]
        if _world_size() > 1:
            dist.broadcast_object_list(info, src=0)
        if not info[1]:
            return None, 0
        if not self._is_source():
            batch = initialize_tensors(info[0])
        batch = send_to_device(batch, self.device, non_blocking=self._non_blocking)
        if _world_size() > 1:
            batch = recursively_apply(_broadcast_leaf, batch)
        return batch, find_batch_size(batch)

    def _steps_per_pass(self) -> int:
        whole = super()._steps_per_pass()
        if self.split_batches:
            return whole
        return whole // self.num_processes if self._drop_last else math.ceil(whole / self.num_processes)

    @property
    def total_batch_size(self) -> int | None:
        """Samples per step over all ranks: the loader's batch size with ``split_batches``, else times the ranks.

        Example:
            >>> import torch
            >>> from torch.utils.data import DataLoader
            >>> prepare_data_loader(DataLoader(list(range(8)), batch_size=2), put_on_device=True,
            ...                     device=torch.device("cpu"), dispatch_batches=True).total_batch_size
            2
        """
        batch_sampler = self._index_batch_sampler()
        size = self.batch_size if self.batch_size is not None else getattr(batch_sampler, "batch_size", None)
        if size is None:
            return None
        return int(size) if self.split_batches else int(size) * self.num_processes


def _broadcast_leaf(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's values in ``tensor`` on every rank (collectives need contiguous memory)."""
    tensor = tensor.contiguous()
    dist.broadcast(tensor, src=0)
    return tensor


class SkipDataLoader(_SkippingLoader):
    """A ``DataLoader`` that skips its first ``skip_batches`` batches in every pass (used for iterable datasets).

    Example:
        >>> [b.tolist() for b in SkipDataLoader(list(range(6)), skip_batches=1, batch_size=2)]
        [[2, 3], [4, 5]]
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._pass_started()
        yield from self._tracked(super().__iter__(), self.skip_batches)


def get_sampler(dataloader: DataLoader) -> Any:
    """The index sampler of ``dataloader`` (the one inside its batch sampler), or ``None``.

    Example:
        >>> from torch.utils.data import DataLoader, RandomSampler
        >>> isinstance(get_sampler(DataLoader(list(range(4)), shuffle=True)), RandomSampler)
        True
    """
    return getattr(_batch_sampler_of(dataloader), "sampler", None)


# -- preparation ------------------------------------------------------------------------------------------------------


def _with_sampler(batch_sampler: Any, sampler: Sampler[int]) -> Any:
    """A batch sampler like ``batch_sampler`` over ``sampler``, leaving the user's objects untouched."""
    if type(batch_sampler) is BatchSampler:
        return BatchSampler(sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    replaced = copy.copy(batch_sampler)  # custom batch samplers: same settings, new index sampler
    replaced.sampler = sampler
    return replaced


def _data_parallel_coordinates(mesh: Any, num_processes: int, process_index: int) -> tuple[int, int]:
    """Data-parallel (size, rank) on a device mesh: ranks that differ only along "tp"/"cp" get the same batches.

    The data-parallel size is the product of the "dp_replicate"/"dp_shard" dimensions when the mesh names them
    (FSDP/DDP meshes), else the processes divided by the tp * cp group size (e.g. a DeepSpeed ("dp", "tp") mesh).
    Read from the mesh's names only, so no strategy check is needed here.
    """
    names = tuple(mesh.mesh_dim_names or ())

    def size(name: str) -> int:
        return int(mesh[name].size()) if name in names else 1

    same_batch_group = size("tp") * size("cp")
    if "dp_replicate" in names or "dp_shard" in names:
        return size("dp_replicate") * size("dp_shard"), process_index // same_batch_group
    return max(1, num_processes // same_batch_group), process_index // same_batch_group


def prepare_data_loader(
    dataloader: DataLoader,
    device: torch.device | None = None,
    num_processes: int | None = None,
    process_index: int | None = None,
    split_batches: bool = False,
    put_on_device: bool = False,
    rng_types: list[str | RNGType] | None = None,
    dispatch_batches: bool | None = None,
    even_batches: bool = True,
    slice_fn_for_dispatch: Callable[..., Any] | None = None,
    use_seedable_sampler: bool = False,
    data_seed: int | None = None,
    non_blocking: bool = False,
    use_stateful_dataloader: bool = False,
    torch_device_mesh: Any = None,
) -> DataLoader:
    """Return a loader that yields this process's share of ``dataloader``'s batches.

    Same signature and meaning as ``accelerate.data_loader.prepare_data_loader``. Without ``split_batches`` each
    rank gets whole batches (the global batch is ``batch_size * num_processes``); with it each batch is split
    (``batch_size`` must divide by ``num_processes``). ``even_batches`` completes the last round with samples from
    the start so all ranks take the same number of steps. ``num_processes`` / ``process_index`` default to
    :class:`~overdrive.state.PartialState`'s. The user's loader and samplers are not modified.

    The result is a :class:`DataLoaderShard` (a map-style dataset gets a :class:`BatchSamplerShard`, an
    ``IterableDataset`` an :class:`IterableDatasetShard`), or a :class:`DataLoaderDispatcher` when
    ``dispatch_batches`` is True (by default: batches put on the device from an ``IterableDataset``). With
    ``use_stateful_dataloader=True`` it is built on torchdata's ``StatefulDataLoader`` and has ``state_dict()`` /
    ``load_state_dict()``; a ``RandomSampler`` without a generator then gets one, so its state can be saved.

    Raises:
        ValueError: ``split_batches`` with a batch size that does not divide by ``num_processes``;
            ``dispatch_batches=True`` without ``put_on_device``; a bad ``process_index`` or ``rng_types``.
        ImportError: ``use_stateful_dataloader=True`` without torchdata installed.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> dl = prepare_data_loader(DataLoader(list(range(8)), batch_size=4), num_processes=2, process_index=1,
        ...                          split_batches=True)
        >>> [b.tolist() for b in dl]
        [[2, 3], [6, 7]]
    """
    if not isinstance(dataloader, DataLoader):
        raise TypeError(f"prepare_data_loader needs a torch.utils.data.DataLoader, got {type(dataloader).__name__}")
    dataset = dataloader.dataset
    is_iterable = isinstance(dataset, IterableDataset)
    if dispatch_batches is None:
        dispatch_batches = put_on_device and is_iterable  # Accelerate's default
    if dispatch_batches and not put_on_device:
        raise ValueError("dispatch_batches=True needs put_on_device=True; pass both or neither")
    if use_stateful_dataloader:
        _import_stateful_dataloader()  # fail here, with the install hint, rather than at the first batch
    state = PartialState()
    num_processes = state.num_processes if num_processes is None else num_processes
    process_index = state.process_index if process_index is None else process_index
    if torch_device_mesh is not None:
        num_processes, process_index = _data_parallel_coordinates(torch_device_mesh, num_processes, process_index)
    _check_rank(num_processes, process_index)
    rng_names = _normalise_rng_types(rng_types)  # also copies: the caller's list is never modified
    sharded = num_processes > 1
    # Ranks that load their own batches must agree on the order; a dispatched loader samples on rank 0 only.
    agree = (sharded or torch_device_mesh is not None) and not dispatch_batches

    batch_sampler = _batch_sampler_of(dataloader)
    if sharded and batch_sampler is None and not is_iterable and not dispatch_batches:
        raise ValueError(
            "DataLoader(batch_size=None) has no batch sampler to shard across processes; give the DataLoader a "
            "batch_size or a batch_sampler"
        )
    if split_batches and sharded:
        size = getattr(batch_sampler, "batch_size", None)
        if size is None or size % num_processes != 0:
            raise ValueError(
                f"split_batches=True needs the DataLoader's batch size to be a multiple of num_processes="
                f"{num_processes}, got batch_size={size}; use a batch size divisible by {num_processes} or "
                "split_batches=False"
            )

    synchronized_generator = None
    if not is_iterable and batch_sampler is not None:
        sampler = get_sampler(dataloader)
        if use_seedable_sampler and isinstance(sampler, RandomSampler):
            seedable = SeedableRandomSampler(
                sampler.data_source,
                replacement=sampler.replacement,
                num_samples=sampler._num_samples,
                generator=sampler.generator,
                data_seed=data_seed,
            )
            batch_sampler = _with_sampler(batch_sampler, seedable)
        elif (agree or use_stateful_dataloader) and hasattr(sampler, "generator"):
            # With a mesh, ranks along tp/cp must also shuffle alike even when the data-parallel size is 1.
            if sampler.generator is None:
                # Its own generator: its state is copied from rank 0 at each epoch start, and saved by state_dict().
                sampler = copy.copy(sampler)
                sampler.generator = torch.Generator(device=torch.get_default_device())
                sampler.generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
                batch_sampler = _with_sampler(batch_sampler, sampler)
            if agree:
                synchronized_generator = sampler.generator
        if sharded and not dispatch_batches:
            batch_sampler = BatchSamplerShard(
                batch_sampler,
                num_processes=num_processes,
                process_index=process_index,
                split_batches=split_batches,
                even_batches=even_batches,
            )

    # What both kinds of prepared loader take: the user's loader settings and the prepared loader's own.
    common: dict[str, Any] = {
        "_drop_last": bool(dataloader.drop_last or getattr(batch_sampler, "drop_last", False)),
        "_non_blocking": non_blocking,
        "use_stateful_dataloader": use_stateful_dataloader,
        "torch_device_mesh": torch_device_mesh,
        **_loader_kwargs(dataloader),
    }
    if dispatch_batches:
        return DataLoaderDispatcher(
            dataset,
            split_batches=split_batches,
            slice_fn=slice_fn_for_dispatch,
            _num_processes=num_processes,
            _process_index=process_index,
            _device=device,
            **_batching(dataloader, batch_sampler),
            **common,
        )

    common.update(
        device=device if put_on_device else None, rng_types=rng_names, synchronized_generator=synchronized_generator
    )
    if is_iterable:
        batch_size = dataloader.batch_size
        if sharded:
            stream_generator = getattr(dataset, "generator", None)
            if isinstance(stream_generator, torch.Generator):
                common["synchronized_generator"] = stream_generator  # a stream that shuffles: same order everywhere
            dataset = IterableDatasetShard(
                cast(IterableDataset, dataset),
                # batch_size=None (the stream yields ready batches): deal them out one by one.
                batch_size=1 if batch_size is None else batch_size,
                drop_last=dataloader.drop_last,
                num_processes=num_processes,
                process_index=process_index,
                split_batches=split_batches,
            )
            if batch_size is not None and split_batches:
                batch_size //= num_processes
        return DataLoaderShard(dataset, batch_size=batch_size, drop_last=dataloader.drop_last, **common)
    return DataLoaderShard(dataset, **_batching(dataloader, batch_sampler), **common)


def skip_first_batches(dataloader: DataLoader, num_batches: int = 0) -> DataLoader:
    """A loader like ``dataloader`` whose passes start after ``num_batches`` batches (to resume mid-epoch).

    A :class:`DataLoaderShard` gives a :class:`DataLoaderShard` with the same device, RNG agreement and
    ``iteration``; a :class:`DataLoaderDispatcher` one that skips ``num_batches`` dispatched steps; a plain
    ``DataLoader`` gives a plain ``DataLoader`` over a :class:`SkipBatchSampler`
    (a :class:`SkipDataLoader` for iterable datasets). A prepared loader's progress is reported to ``dataloader``
    (so ``save_state`` sees it) and finishing the pass moves ``dataloader`` to the next epoch.

    Never skipping twice: if ``load_state`` (``use_stateful_dataloader=True``) already restored ``dataloader`` to
    batch ``p`` of its epoch, ``num_batches`` is read as that absolute position: equal to ``p`` returns
    ``dataloader`` itself (it continues from there), anything else raises ``ValueError``.
    After a resume at another world size or global batch, a plain loader accepts only the converted count
    (``accelerator.maybe_resume().batches``); any other raises ``ValueError`` naming it.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> [b.tolist() for b in skip_first_batches(DataLoader(list(range(6)), batch_size=2), num_batches=2)]
        [[4, 5]]
    """
    if not isinstance(num_batches, int) or num_batches < 0:
        raise ValueError(f"num_batches={num_batches!r} must be an int >= 0 (the number of batches to skip)")
    restored = dataloader._restored_position if isinstance(dataloader, _PreparedLoader) else None
    if isinstance(dataloader, _PreparedLoader) and restored is not None:
        if num_batches != restored:
            raise ValueError(
                f"skip_first_batches(num_batches={num_batches}): load_state already restored this loader to batch "
                f"{restored} of epoch {dataloader.iteration} (use_stateful_dataloader=True), so skipping again would "
                f"lose or repeat batches; pass num_batches={restored}, or iterate the loader without "
                "skip_first_batches"
            )
        return dataloader  # already positioned: it continues from the restored batch
    expected = dataloader._expected_skip if isinstance(dataloader, _PreparedLoader) else None
    if expected is not None and num_batches != expected:
        raise ValueError(
            f"skip_first_batches(num_batches={num_batches}): load_state converted the checkpoint's position to "
            f"{expected} batches of {getattr(dataloader, 'total_batch_size', None)} samples at this world size "
            f"(epoch {getattr(dataloader, 'iteration', 0)}); skipping {num_batches} would lose or repeat samples. Pass "
            f"num_batches={expected} (e.g. from accelerator.maybe_resume(), or samples done // total_batch_size)"
        )
    dataset = dataloader.dataset
    kwargs = _loader_kwargs(dataloader)
    batch_sampler = _batch_sampler_of(dataloader)
    if isinstance(dataloader, DataLoaderDispatcher):
        # Skip whole dispatched steps (each is num_processes loader batches): every rank still takes part.
        return _resuming(dataloader, num_batches, DataLoaderDispatcher(
            dataset,
            split_batches=dataloader.split_batches,
            skip_batches=num_batches,
            slice_fn=dataloader.slice_fn,
            _num_processes=dataloader.num_processes,
            _process_index=dataloader.process_index,
            _device=dataloader.device,
            **dataloader._carried_settings(),
            **_batching(dataloader, batch_sampler),
            **kwargs,
        ))
    is_shard = isinstance(dataloader, DataLoaderShard)
    if isinstance(dataloader, DataLoaderShard):  # not `if is_shard`: mypy narrows only on the isinstance itself
        kwargs.update(
            device=dataloader.device,
            rng_types=dataloader.rng_types,
            synchronized_generator=dataloader.synchronized_generator,
            **dataloader._carried_settings(),
        )
    if isinstance(dataset, IterableDataset) or batch_sampler is None:
        # No batch sampler to skip in: skip while iterating instead.
        kwargs.update(_batching(dataloader, batch_sampler), skip_batches=num_batches)
        if is_shard:
            return _resuming(dataloader, num_batches, DataLoaderShard(dataset, **kwargs))
        return SkipDataLoader(dataset, **kwargs)
    kwargs.update(_batching(dataloader, SkipBatchSampler(batch_sampler, skip_batches=num_batches)))
    if is_shard:
        return _resuming(dataloader, num_batches, DataLoaderShard(dataset, **kwargs))
    return DataLoader(dataset, **kwargs)


def _resuming(origin: DataLoader, num_batches: int, loader: _PreparedLoader) -> _PreparedLoader:
    """Link a loader made by :func:`skip_first_batches` to ``origin``: it reports its progress there."""
    loader._resume_origin = cast(_PreparedLoader, origin)._progress_owner()
    loader._resume_offset = num_batches
    return loader
