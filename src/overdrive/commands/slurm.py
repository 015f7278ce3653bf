"""Scheduler support: derive the launch settings of a multi-machine job from SLURM's variables.

torchrun knows nothing about schedulers, so a SLURM job needs ``--num_machines``, ``--machine_rank`` and
``--main_process_ip`` spelled out per node. Run ``overdrive launch`` once per node (``srun --ntasks-per-node=1``)
and they are derived here instead, at the environment level of the precedence (a flag still wins)::

    num_machines     SLURM_NNODES (or SLURM_JOB_NUM_NODES)
    machine_rank     SLURM_NODEID
    main_process_ip  the first host of SLURM_JOB_NODELIST (parsed here, no `scontrol` needed)
    num_processes    num_machines x GPUs per node (SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE), when there are GPUs
    main_process_port 20000 + SLURM_JOB_ID % 10000: the same on every node, and two jobs sharing a node differ

Example:
    >>> expand_nodelist("node[01-03,07],gpu5")
    ['node01', 'node02', 'node03', 'node07', 'gpu5']
    >>> derived = slurm_settings({"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NNODES": "2",
    ...                           "SLURM_NODEID": "1"})
    >>> derived["main_process_ip"], derived["machine_rank"]
    (('n1', 'env SLURM_JOB_NODELIST'), (1, 'env SLURM_NODEID'))
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

from . import UsageError

__all__ = ["expand_nodelist", "slurm_settings"]


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: ``a[1,2],b`` -> ``['a[1,2]', 'b']``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in node list {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(spec: str, nodelist: str) -> list[str]:
    """``01-03,07`` -> ``['01', '02', '03', '07']``; a range keeps the zero-padding of its start."""
    out: list[str] = []
    for item in spec.split(","):
        item = item.strip()
        if re.fullmatch(r"\d+", item):
            out.append(item)
            continue
        match = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?", item)
        if not match:
            raise ValueError(f"cannot read {item!r} in node list {nodelist!r}; expected N or N-M (e.g. node[01-04])")
        lo, hi, step = match.group(1), match.group(2), int(match.group(3) or 1)
        if int(hi) < int(lo) or step < 1:
            raise ValueError(f"range {item!r} in node list {nodelist!r} runs backwards")
        out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1, step))
    return out


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compact host list (``SLURM_JOB_NODELIST``) into host names, in order.

    Handles comma lists, bracketed ranges with zero-padding, several bracket groups in one name (every
    combination, as SLURM does) and plain names; raises ``ValueError`` naming the part it cannot read.

    Example:
        >>> expand_nodelist("rack[1-2]-n[08-09]")
        ['rack1-n08', 'rack1-n09', 'rack2-n08', 'rack2-n09']
    """
    hosts: list[str] = []
    for part in _split_top_level(nodelist):
        pieces = re.split(r"\[([^\]]*)\]", part)  # names and bracket contents alternate
        options = [[piece] if i % 2 == 0 else _expand_range(piece, nodelist) for i, piece in enumerate(pieces)]
        hosts.extend("".join(combo) for combo in itertools.product(*options))
    if not hosts:
        raise ValueError(f"node list {nodelist!r} names no host")
    return hosts


def _gpus_per_node(environ: Mapping[str, str]) -> tuple[int, str] | None:
    """GPUs SLURM gave this node: ``SLURM_GPUS_ON_NODE=4`` or ``SLURM_GPUS_PER_NODE=a100:4``."""
    for var in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        raw = environ.get(var, "").strip()
        match = re.fullmatch(r"(?:[\w-]+:)?(\d+)(?:\(.*\))?", raw)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)), var
    return None


def slurm_settings(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Launch settings derived from SLURM's variables, as ``{name: (value, source)}``; ``{}`` outside SLURM.

    Raises :class:`~overdrive.commands.UsageError` when this is not the only launcher on its node (``srun``
    started several tasks per node) or the variables contradict each other.

    Example:
        >>> slurm_settings({})
        {}
    """
    nodelist_var = next((v for v in ("SLURM_JOB_NODELIST", "SLURM_NODELIST") if environ.get(v)), None)
    if not environ.get("SLURM_JOB_ID") or nodelist_var is None:
        return {}
    local_id = environ.get("SLURM_LOCALID", "0").strip() or "0"
    if local_id != "0":
        raise UsageError(
            f"SLURM started several tasks on this node (this is SLURM_LOCALID={local_id}); overdrive launch must run "
            "once per node and starts the processes itself: use `srun --ntasks-per-node=1 overdrive launch ...` "
            "(or #SBATCH --ntasks-per-node=1)")
    try:
        hosts = expand_nodelist(environ[nodelist_var])
    except ValueError as err:
        raise UsageError(f"{nodelist_var}: {err}") from None
    out: dict[str, tuple[Any, str]] = {"main_process_ip": (hosts[0], f"env {nodelist_var}")}
    nodes_var = next((v for v in ("SLURM_NNODES", "SLURM_JOB_NUM_NODES") if environ.get(v)), None)
    machines = int(environ[nodes_var]) if nodes_var else len(hosts)
    out["num_machines"] = (machines, f"env {nodes_var}" if nodes_var else f"env {nodelist_var}")
    if machines != len(hosts):
        raise UsageError(f"{nodes_var}={machines} but {nodelist_var} names {len(hosts)} host(s) ({', '.join(hosts)})")
    if environ.get("SLURM_NODEID"):
        rank = int(environ["SLURM_NODEID"])
        out["machine_rank"] = (rank, "env SLURM_NODEID")
        if not 0 <= rank < machines:
            raise UsageError(f"SLURM_NODEID={rank} is outside 0..{machines - 1} ({nodes_var}={machines})")
    gpus = _gpus_per_node(environ)
    if gpus is not None:
        out["num_processes"] = (gpus[0] * machines, f"env {gpus[1]}")
    job_id = environ["SLURM_JOB_ID"].strip()
    if job_id.isdigit():
        out["main_process_port"] = (20000 + int(job_id) % 10000, "env SLURM_JOB_ID")
    return out
