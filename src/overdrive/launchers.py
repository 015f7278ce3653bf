"""Start a training function on several processes from Python: ``notebook_launcher`` and ``debug_launcher``.

Same names and signatures as Accelerate's. Both run ``function(*args)`` on every process through torchrun's
elastic agent (``torch.distributed.launcher.elastic_launch``) with the ``fork`` start method, so a function defined
in a notebook cell works without being importable. Unlike Accelerate's, ``notebook_launcher`` honours
``num_processes`` on a machine without GPUs too (CPU processes, gloo); ``debug_launcher`` always uses CPU.

Example:
    >>> def hello(name):
    ...     print(f"hello {name}")
    >>> notebook_launcher(hello, ("world",), num_processes=1)  # one process: runs here, no agent
    hello world
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .commands.launch import _environ  # forked workers inherit the patched environment
from .settings import SETTINGS

__all__ = ["debug_launcher", "notebook_launcher"]

JOIN_TIMEOUT_S = 60  # as `overdrive launch`: a missing node fails in a minute, not torch's 600-900 s


def _settings_env(mixed_precision: str, cpu: bool) -> dict[str, str]:
    value = SETTINGS["mixed_precision"].parse_text(mixed_precision, "mixed_precision")
    env = {var: value for var in SETTINGS["mixed_precision"].env}
    if cpu:
        env.update({var: "true" for var in SETTINGS["cpu"].env})
    return env


def _check_parent() -> None:
    """Forked workers cannot share this process's group or CUDA context: refuse before forking."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise RuntimeError("a process group already exists in this process (an Accelerator or PartialState was "
                           "created here); create them only inside the launched function, and restart the notebook "
                           "kernel to start over")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised in this process before launching, and forked processes cannot use "
                           "it; move every CUDA call into the launched function and restart the notebook kernel")


def _launch(function: Callable[..., Any], args: tuple[Any, ...], nproc: int, num_nodes: int, node_rank: int,
            endpoint: str, rdzv_backend: str, rdzv_conf: Mapping[str, Any] | None, rdzv_id: str, max_restarts: int,
            monitor_interval: float, log_line_prefix_template: str | None, env: Mapping[str, str]) -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .commands.preflight import check_port_free

    host, _, port = endpoint.rpartition(":")
    if num_nodes == 1 and rdzv_backend == "static" and port.isdigit():
        check_port_free(int(port), host or "localhost", node_rank)  # fail now, not after the store's long wait
    conf: dict[str, Any] = dict(rdzv_conf or {})
    conf.setdefault("timeout" if rdzv_backend == "static" else "join_timeout", JOIN_TIMEOUT_S)
    if rdzv_backend == "static":
        conf.setdefault("rank", node_rank)  # the static rendezvous learns this machine's rank from its config
    config = LaunchConfig(
        min_nodes=num_nodes,
        max_nodes=num_nodes,
        nproc_per_node=nproc,
        run_id=rdzv_id,
        rdzv_endpoint=endpoint,
        rdzv_backend=rdzv_backend,
        rdzv_configs=conf,
        max_restarts=max_restarts,
        monitor_interval=monitor_interval,
        start_method="fork",  # a function from a notebook cell cannot be pickled for "spawn"
        log_line_prefix_template=log_line_prefix_template,
    )
    with _environ(env):
        elastic_launch(config=config, entrypoint=function)(*args)


def notebook_launcher(
    function: Callable[..., Any],
    args: tuple[Any, ...] = (),
    num_processes: int | None = None,
    mixed_precision: str = "no",
    use_port: str = "29500",
    master_addr: str = "127.0.0.1",
    node_rank: int = 0,
    num_nodes: int = 1,
    rdzv_backend: str = "static",
    rdzv_endpoint: str = "",
    rdzv_conf: dict[str, Any] | None = None,
    rdzv_id: str = "none",
    max_restarts: int = 0,
    monitor_interval: float = 0.1,
    log_line_prefix_template: str | None = None,
) -> None:
    """Run ``function(*args)`` on ``num_processes`` processes per node (default: one per GPU, else one).

    Create the ``Accelerator`` inside ``function``. With one process on one node the function runs in this
    process. A failing rank raises torchrun's ``ChildFailedError`` naming it; a busy ``use_port`` fails at once.

    Example:
        >>> notebook_launcher(lambda: None, num_processes=1)
    """
    import torch

    if num_processes is None:
        num_processes = torch.cuda.device_count() or 1
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes={num_processes!r} must be a positive integer, e.g. 2")
    cpu = not torch.cuda.is_available()
    env = _settings_env(mixed_precision, cpu)
    if num_processes == 1 and num_nodes == 1:
        with _environ(env):
            function(*args)
        return
    _check_parent()
    endpoint = rdzv_endpoint or f"{master_addr}:{use_port}"
    _launch(function, tuple(args), num_processes, num_nodes, node_rank, endpoint, rdzv_backend, rdzv_conf, rdzv_id,
            max_restarts, monitor_interval, log_line_prefix_template, env)


def debug_launcher(function: Callable[..., Any], args: tuple[Any, ...] = (), num_processes: int = 2) -> None:
    """Run ``function(*args)`` on ``num_processes`` CPU processes on this machine (a free port), to debug
    distributed code without GPUs.

    Example:
        >>> debug_launcher(lambda: None, num_processes=1)
    """
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes={num_processes!r} must be a positive integer, e.g. 2")
    env = _settings_env("no", cpu=True)
    if num_processes == 1:
        with _environ(env):
            function(*args)
        return
    _check_parent()
    from .commands.preflight import free_port

    _launch(function, tuple(args), num_processes, 1, 0, f"127.0.0.1:{free_port()}", "static", None, "none", 0, 0.1,
            None, env)
