"""Exact metrics over a prepared data loader: padding-aware weighted means without gathering every sample.

Why a per-process mean is biased. A prepared loader with ``even_batches=True`` completes its last round with
samples from the start of the data, so that every process gets a batch of the same size (a few samples are seen
twice). :meth:`~overdrive.Accelerator.gather_for_metrics` drops those duplicates, but only from per-sample tensors it
gathers. A value reduced on each process first (a batch mean, a running mean, a loss averaged over tokens) already
contains the duplicated samples, and averaging such means across processes also weighs every process alike although
they hold different numbers of real samples. Example: 7 samples, 2 processes, batch size 4: process 0 holds samples
0-3, process 1 holds 4, 5, 6 and a copy of sample 0; the mean of the two local means counts sample 0 twice and is
not the mean over the 7 samples.

:class:`WeightedMean` fixes both: :meth:`WeightedMean.update` takes per-sample values (and weights, e.g. token
counts), drops this process's padding with :func:`padding_mask`, and adds ``sum(value * weight)`` and
``sum(weight)`` to two float64 running totals on this process (no communication); :meth:`WeightedMean.compute` sums
the totals over all processes in one all-reduce and divides. The result equals the single-process weighted mean
over the dataset, for any dataset size and number of processes, up to float64 rounding of the sums (exactly, when
the values make those sums exact).

Which samples are padding. In the last global batch the gathered order is process 0's local batch, then process
1's, and so on (with ``split_batches`` each process holds a contiguous slice of the global batch), so process ``r``'s
local batch of nominal size ``B`` covers global positions ``[r*B, (r+1)*B)``; the loader's ``remainder`` counts the
real samples at the front of that global batch, so process ``r``'s first ``clamp(remainder - r*B, 0, B)`` samples
are real and the rest are padding. Every other batch (and every batch when ``remainder`` is 0 or -1, or outside a
prepared loader) is all real.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from overdrive import Accelerator
    >>> from overdrive.metrics import WeightedMean
    >>> accelerator = Accelerator()
    >>> data = TensorDataset(torch.arange(7.0), torch.arange(1, 8))  # (value, token count) per sample
    >>> loader = accelerator.prepare(DataLoader(data, batch_size=4))
    >>> metric = WeightedMean()
    >>> for values, tokens in loader:
    ...     metric.update(values, tokens)
    >>> metric.compute()  # sum(v * w) / sum(w) over the 7 samples, on every process
    tensor(4., dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler

from .state import GradientState

__all__ = ["WeightedMean", "padding_mask"]

# How deep to look through wrapping batch samplers (SkipBatchSampler -> BatchSamplerShard -> BatchSampler).
_MAX_SAMPLER_DEPTH = 8


def _loader_geometry(loader: Any) -> tuple[int, int | None, bool]:
    """(process index, nominal local batch size or None, whether the last round is padded) of a prepared loader."""
    batch_sampler = loader.sampler if isinstance(loader.sampler, BatchSampler) else loader.batch_sampler
    shard: Any = batch_sampler
    for _ in range(_MAX_SAMPLER_DEPTH):
        if shard is None or (hasattr(shard, "process_index") and hasattr(shard, "even_batches")):
            break
        shard = getattr(shard, "batch_sampler", None)  # a wrapper (e.g. SkipBatchSampler): look inside
    if shard is None or not hasattr(shard, "process_index"):
        stream = loader.dataset
        if hasattr(stream, "process_index") and hasattr(stream, "num_processes"):
            # A sharded iterable dataset (IterableDatasetShard): it completes the last global batch unless drop_last.
            processes = int(stream.num_processes)
            per_step = int(stream.batch_size)
            local = per_step // processes if getattr(stream, "split_batches", False) else per_step
            padded = processes > 1 and not getattr(stream, "drop_last", False)
            return int(stream.process_index), local, padded
        # Not sharded (one process): the only batch sampler's size is the local batch size.
        size = getattr(batch_sampler, "batch_size", None) if batch_sampler is not None else 1
        return 0, (int(size) if size is not None else None), False
    size = getattr(shard, "batch_size", None)
    processes = int(getattr(shard, "num_processes", 1))
    if size is not None and getattr(shard, "split_batches", False):
        size = int(size) // processes  # each process holds a contiguous slice of every batch
    padded = processes > 1 and bool(shard.even_batches)
    return int(shard.process_index), (int(size) if size is not None else None), padded


def _real_count(batch_len: int) -> int:
    """How many leading samples of this process's current batch of ``batch_len`` samples are real (not padding)."""
    if isinstance(batch_len, bool) or not isinstance(batch_len, int) or batch_len < 0:
        raise ValueError(f"batch_len={batch_len!r} must be an int >= 0: the number of samples in this batch")
    state = GradientState()
    loader = state.active_dataloader
    if loader is None:
        return batch_len  # outside a prepared loader nothing was padded
    rank, nominal, padded = _loader_geometry(loader)
    if nominal is not None and batch_len > nominal:
        raise ValueError(
            f"batch_len={batch_len} is larger than the active prepared loader's batch size on this process "
            f"({nominal}); pass the number of samples in the batch (dim 0 of per-sample values), not e.g. tokens"
        )
    remainder = state.remainder
    if not padded or not state.end_of_dataloader or remainder <= 0 or nominal is None:
        # One process or even_batches=False (nothing is ever padded), not the last batch, or a full last round.
        return batch_len
    if batch_len != nominal:
        raise ValueError(
            f"batch_len={batch_len} does not match the active prepared loader's last batch on process {rank}, "
            f"which has {nominal} samples; pass the length of the batch the loader just yielded"
        )
    return min(max(remainder - rank * nominal, 0), nominal)


def padding_mask(batch_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """This process's real-sample mask for the batch the active prepared loader just yielded.

    All True except on the last batch of a loader that padded its last round (``even_batches=True``), where the
    wrap-around samples are False. Outside a prepared loader, or when its ``remainder`` is unknown (-1), everything
    counts as real. Call it inside the loop over the loader, with the batch's length (dim 0 of per-sample tensors).

    Args:
        batch_len: number of samples in the batch this process holds.
        device: where to create the mask (default: CPU).

    Raises:
        ValueError: ``batch_len`` is negative, larger than the loader's batch size on this process, or (on the
            last batch) not the length of the batch the loader yielded.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader
        >>> from overdrive.data_loader import prepare_data_loader
        >>> dl = prepare_data_loader(DataLoader(list(range(7)), batch_size=4), num_processes=2, process_index=1)
        >>> [(b.tolist(), padding_mask(len(b)).tolist()) for b in dl]  # sample 0 pads process 1's batch
        [([4, 5, 6, 0], [True, True, True, False])]
    """
    real = _real_count(batch_len)
    mask = torch.zeros(batch_len, dtype=torch.bool, device=device)
    mask[:real] = True
    return mask


class WeightedMean:
    """Exact weighted mean of per-sample values over all processes, excluding even-batches padding.

    :meth:`update` accumulates ``sum(value * weight)`` and ``sum(weight)`` of this process's real samples in
    float64 without communicating; :meth:`compute` all-reduces both sums once and divides, so every process gets
    the weighted mean over the whole dataset, the same as one process looping over it. Per-sample values with
    trailing dimensions (``[L, ...]``) are first averaged over those dimensions, one value per sample. Weights should
    be >= 0 (e.g. token counts); ``None`` weighs every sample 1 (a plain mean).

    :meth:`compute` is a collective: every process must call it, also one that saw no samples. When the total
    weight over all processes is 0 (no update anywhere, or all weights 0) it raises ``ValueError`` on every process
    rather than returning nan. With no process group (one process) it communicates nothing. Processes that see the
    same batches (tensor-parallel ranks of a device mesh) scale both sums alike, so the mean is unaffected.

    Args:
        process_group: the group to sum over (default: the default group).

    Example:
        >>> import torch
        >>> m = WeightedMean()
        >>> m.update(torch.tensor([1.0, 3.0]), weights=torch.tensor([3, 1]))
        >>> m.update(torch.tensor([[2.0, 4.0]]))  # one sample with two values: its value is their mean, 3.0
        >>> m.compute()  # (1*3 + 3*1 + 3*1) / (3 + 1 + 1)
        tensor(1.8000, dtype=torch.float64)
    """

    def __init__(self, process_group: Any = None) -> None:
        self.process_group = process_group
        self._totals: torch.Tensor | None = None  # [sum(value * weight), sum(weight)] in float64

    def reset(self) -> None:
        """Forget every update (e.g. before the next evaluation pass).

        Example:
            >>> import torch
            >>> m = WeightedMean(); m.update(torch.ones(2)); m.reset(); m.update(torch.zeros(1)); m.compute()
            tensor(0., dtype=torch.float64)
        """
        self._totals = None

    @torch.no_grad()
    def update(self, values: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add this process's batch: ``values`` of shape ``[L]`` or ``[L, ...]``, ``weights`` of shape ``[L]``.

        ``L`` must be the length of the batch the active prepared loader just yielded; the samples that pad its last
        round are left out. Nothing is communicated and nothing waits for the device.

        Raises:
            TypeError: ``values`` or ``weights`` is not a tensor.
            ValueError: a 0-d ``values`` (an already reduced number), ``weights`` not of shape ``[L]``, or ``L``
                not the length of the loader's batch.

        Example:
            >>> import torch
            >>> m = WeightedMean(); m.update(torch.tensor([0.5, 1.5]), torch.tensor([1, 3])); m.compute()
            tensor(1.2500, dtype=torch.float64)
        """
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"values must be a torch.Tensor of per-sample values, got {type(values).__name__}")
        if values.dim() == 0:
            raise ValueError(
                f"values has shape {tuple(values.shape)} (a single number); pass one value per sample, shape [L] or "
                "[L, ...]: a mean already taken on this process would count even-batches padding"
            )
        length = values.shape[0]
        if weights is not None:
            if not isinstance(weights, torch.Tensor):
                raise TypeError(f"weights must be a torch.Tensor of shape [L] or None, got {type(weights).__name__}")
            if tuple(weights.shape) != (length,):
                raise ValueError(
                    f"weights has shape {tuple(weights.shape)} but values has {length} samples (shape "
                    f"{tuple(values.shape)}); pass one weight per sample, shape [{length}]"
                )
        real = _real_count(length)
        # float64: sums over a whole dataset in float32 lose digits; MPS has no float64, so sum on the CPU there.
        device = values.device if values.device.type != "mps" else torch.device("cpu")
        per_sample = values[:real].detach().to(device=device, dtype=torch.float64)
        if per_sample.dim() > 1:
            per_sample = per_sample.flatten(1).mean(dim=1)
        if weights is None:
            batch = torch.stack([per_sample.sum(), per_sample.new_tensor(float(real))])
        else:
            w = weights[:real].detach().to(device=device, dtype=torch.float64)
            batch = torch.stack([(per_sample * w).sum(), w.sum()])
        self._totals = batch if self._totals is None else self._totals + batch.to(self._totals.device)

    def compute(self) -> torch.Tensor:
        """The weighted mean over every process's real samples (a 0-d float64 tensor, the same on every process).

        One all-reduce of two float64 numbers when a process group of more than one process is initialised.

        Raises:
            ValueError: the total weight over all processes is 0 (raised on every process alike).

        Example:
            >>> import torch
            >>> m = WeightedMean(); m.update(torch.tensor([2.0, 4.0])); m.compute()
            tensor(3., dtype=torch.float64)
        """
        totals = self._totals if self._totals is not None else torch.zeros(2, dtype=torch.float64)
        world = 1
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size(self.process_group)
        if world > 1:
            backend = str(dist.get_backend(self.process_group))
            if "nccl" in backend and "gloo" not in backend:
                totals = totals.to(torch.device("cuda", torch.cuda.current_device()))  # nccl moves GPU tensors only
            else:
                totals = totals.cpu()  # gloo reduces CPU tensors
            totals = totals.clone()  # all_reduce works in place: keep the local running totals intact
            dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=self.process_group)
        weighted_sum, total_weight = totals[0], totals[1]
        if float(total_weight) == 0.0:
            raise ValueError(
                f"WeightedMean.compute(): the total weight over all {world} process(es) is 0 (no update() with a real "
                "sample, or all weights 0), so there is no mean; call update() with at least one weighted sample"
            )
        return weighted_sum / total_weight
