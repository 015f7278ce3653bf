"""A progress bar with rates, and throughput / straggler statistics gathered every N steps.

:class:`TrainingProgress` wraps the training loop's data and is told when a step ends:

* a tqdm bar (``tqdm.auto``: a terminal bar, or a widget in notebooks) on the main process only, with steps,
  samples/s, tokens/s (when the loop reports tokens) and the ETA;
* every ``stats_every`` steps, one small ``all_gather`` (six numbers per rank) yields a report, the same on every
  rank: global samples/s and tokens/s, MFU when ``flops_per_token`` and ``peak_flops`` are given, the data-loading
  wait, and each rank's own step time with the slowest rank named. Nothing is gathered between reports.

A rank's *own* step time is its wall time per step minus the time spent in ``accelerator.backward``: under data
parallelism the other ranks wait for a slow one inside backward's gradient all-reduce, so wall times are all equal,
while the time outside backward (loading, forward, optimizer, anything else the loop does) shows which rank is slow.

Example:
    >>> from overdrive import Accelerator
    >>> from overdrive.progress import TrainingProgress
    >>> acc = Accelerator()
    >>> progress = TrainingProgress(acc, total=4, stats_every=2, disable=True)
    >>> for batch in progress.wrap(range(4)):
    ...     report = progress.step(samples=8)
    >>> sorted(report)[:3], report["slowest_rank"]
    (['data_wait_s', 'mfu', 'samples'], 0)
    >>> progress.close()
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch

from .logging import get_logger
from .utils.tqdm import tqdm

__all__ = ["TrainingProgress", "tqdm"]

logger = get_logger(__name__)
_T = TypeVar("_T")


class TrainingProgress:
    """Progress bar and periodic throughput / straggler report for a training loop.

    Args:
        accelerator: the run's :class:`~overdrive.Accelerator` (its ranks, its time in ``backward``, its trackers).
        total: number of steps for the bar and the ETA (``None``: unknown).
        stats_every: gather a report every this many steps (``None``: never; the bar still shows local rates).
        flops_per_token: training FLOPs per token (e.g. ``6 * n_params`` for a transformer) for MFU.
        peak_flops: peak FLOP/s of one device, for MFU.
        log_to_trackers: also ``accelerator.log`` each report (prefixed ``perf/``).
        desc, disable: passed to the bar (it is always disabled off the main process).

    Example:
        >>> from overdrive import Accelerator
        >>> progress = TrainingProgress(Accelerator(), total=2, disable=True)
        >>> for _ in progress.wrap([1, 2]):
        ...     _ = progress.step(samples=4, tokens=40)
        >>> progress.steps
        2
    """

    def __init__(self, accelerator: Any, total: int | None = None, stats_every: int | None = None,
                 flops_per_token: float | None = None, peak_flops: float | None = None,
                 log_to_trackers: bool = False, desc: str = "train", disable: bool = False) -> None:
        for name, value in (("total", total), ("stats_every", stats_every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"TrainingProgress({name}={value!r}): pass None or an int >= 1")
        for label, number in (("flops_per_token", flops_per_token), ("peak_flops", peak_flops)):
            if number is not None and not (isinstance(number, (int, float)) and number > 0):
                raise ValueError(f"TrainingProgress({label}={number!r}): pass None or a positive number")
        self.accelerator = accelerator
        self.total, self.stats_every = total, stats_every
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.log_to_trackers = log_to_trackers
        self.steps = 0
        self.last_report: dict[str, Any] | None = None
        self._bar = tqdm(total=total, desc=desc, disable=disable, unit="step", dynamic_ncols=True)
        self._interval = [0.0] * 6  # steps, wall, data wait, backward, samples, tokens since the last report
        self._last_time: float | None = None
        self._last_backward = self._backward_seconds()
        self._wait = 0.0

    def _backward_seconds(self) -> float:
        return float(getattr(self.accelerator, "_backward_seconds", 0.0))

    def wrap(self, iterable: Iterable[_T]) -> Iterator[_T]:
        """Iterate ``iterable``, timing how long each batch takes to arrive (the data-loading wait)."""
        iterator = iter(iterable)
        while True:
            start = time.perf_counter()
            if self._last_time is None:
                self._last_time = start
            try:
                item = next(iterator)
            except StopIteration:
                return
            self._wait += time.perf_counter() - start
            yield item

    def step(self, samples: int | None = None, tokens: int | None = None) -> dict[str, Any] | None:
        """Record that a step ended on this rank (``samples`` / ``tokens``: this rank's count in the step).

        Every ``stats_every`` steps this is a collective (call it on every rank) and returns the report;
        otherwise it returns ``None``.
        """
        now = time.perf_counter()
        backward = self._backward_seconds()
        start = self._last_time if self._last_time is not None else now
        values = (1.0, now - start, self._wait, backward - self._last_backward, float(samples or 0), float(tokens or 0))
        self._interval = [a + b for a, b in zip(self._interval, values)]
        self._last_time, self._last_backward, self._wait = now, backward, 0.0
        self.steps += 1
        self._bar.update(1)
        if self._bar.disable is False and self._interval[1] > 0:
            world = self.accelerator.num_processes
            rates = {"samples/s": f"{self._interval[4] * world / self._interval[1]:.1f}"}
            if self._interval[5]:
                rates["tokens/s"] = f"{self._interval[5] * world / self._interval[1]:.0f}"
            self._bar.set_postfix(rates, refresh=False)
        if self.stats_every is None or self.steps % self.stats_every:
            return None
        report = self._report()
        self._interval = [0.0] * 6
        self.last_report = report
        if self.accelerator.is_main_process:
            logger.info(
                f"step {self.steps}: {report['samples_per_s']:.1f} samples/s, data wait "
                f"{report['data_wait_s'] * 1e3:.1f} ms/step, own step time {report['step_time_min_s'] * 1e3:.1f}-"
                f"{report['step_time_max_s'] * 1e3:.1f} ms, slowest rank {report['slowest_rank']}"
            )
        if self.log_to_trackers:  # scalars only: trackers take numbers, not the per-rank list
            scalars = {f"perf/{k}": v for k, v in report.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(scalars, step=self.steps)
        return report

    def _report(self) -> dict[str, Any]:
        from .utils.operations import gather

        mine = torch.tensor([self._interval], dtype=torch.float64, device=self.accelerator.device)
        rows = gather(mine).cpu().tolist() if self.accelerator.num_processes > 1 else mine.cpu().tolist()
        wall = max(row[1] for row in rows) or float("nan")
        own = [(row[1] - row[3]) / max(row[0], 1.0) for row in rows]  # per step, outside backward
        samples, tokens = sum(row[4] for row in rows), sum(row[5] for row in rows)
        tokens_per_s = tokens / wall
        mfu: float | None = None
        if self.flops_per_token and self.peak_flops and tokens:
            mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * len(rows))
        return {
            "step": self.steps,
            "samples": int(samples),
            "samples_per_s": samples / wall,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "data_wait_s": max(row[2] / max(row[0], 1.0) for row in rows),
            "step_time_s": wall / max(rows[0][0], 1.0),
            "step_time_max_s": max(own),
            "step_time_min_s": min(own),
            "step_time_per_rank_s": own,
            "slowest_rank": max(range(len(own)), key=own.__getitem__),
        }

    def write(self, message: str) -> None:
        """Print ``message`` once (main process) above the bar, without breaking it.

        Example:
            >>> from overdrive import Accelerator
            >>> TrainingProgress(Accelerator(), disable=True).write("epoch 1 done")
            epoch 1 done
        """
        if not self.accelerator.is_main_process:
            return
        if self._bar.disable:
            print(message, flush=True)
        else:
            self._bar.write(message)

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
