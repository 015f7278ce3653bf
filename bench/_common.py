"""Helpers shared by the bench/ scripts: statistics, versions, the child environment, fragment writing.

Example:
    >>> summary([3.0, 1.0, 2.0])["median"]
    2.0
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAGMENTS = ROOT / "docs" / "benchmarks.d"


def summary(xs: list[float]) -> dict[str, float]:
    """Median, min, max and interquartile range of a list of measurements (any unit)."""
    qs = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "iqr": qs[2] - qs[0], "n": len(xs)}


def median_ci(xs: list[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (95 % by default): the order statistics whose ranks are
    ``n/2 -+ z*sqrt(n)/2`` (normal approximation of the binomial; needs no assumption on the distribution).

    Example:
        >>> median_ci([float(i) for i in range(100)])
        (40.0, 60.0)
    """
    xs = sorted(xs)
    n = len(xs)
    half = z * n ** 0.5 / 2
    lo = max(int(n / 2 - half), 0)
    hi = min(int(n / 2 + half + 0.999999), n - 1)
    return xs[lo], xs[hi]


def ratio(a: dict[str, float] | None, base: dict[str, float] | None) -> str:
    """``a``'s median over ``base``'s, as text; ``n/a`` when either is missing."""
    return "n/a" if a is None or base is None else f"{a['median'] / base['median']:.3g}x"


def versions() -> dict[str, str]:
    """Versions of the things measured, read without importing them here."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("torch", "overdrive", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def child_env() -> dict[str, str]:
    """Environment for a measured child: one thread (as a launched worker), never joining a caller's group."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def write_fragment(text: str, path: Path) -> Path:
    """Replace a benchmark's fragment atomically (write a temp file, then rename over the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
