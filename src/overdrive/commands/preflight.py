"""Pre-flight checks of a multi-machine launch: seconds, before anything is spawned, instead of a 10-minute wait.

torch's rendezvous waits 600-900 s when a machine never shows up, and a wrong address or a mismatched world size
becomes the same silent wait. So before torchrun starts, the launchers meet over a plain TCP connection (standard
library only, no torch import, so machine 0 listens a fraction of a second after it starts):

- machine 0 binds ``main_process_port`` (busy -> fails at once and proposes a free port), waits up to
  ``timeout`` seconds for every other machine, compares what each was told (num_machines, num_processes,
  rendezvous backend, distinct machine ranks) and answers each with OK or the error;
- every other machine connects to ``main_process_ip:main_process_port`` (retrying while nothing listens yet, up to
  ``timeout``), sends its view and waits for the verdict.

Every message names the host and machine rank it concerns and the fix. Machine 0 then closes the port and torchrun's
own store takes it over; the workers' torchrun retries its connection for that moment.

Example:
    >>> port = free_port()
    >>> check_port_free(port, host="node0", machine_rank=0)  # nothing listens there: no error
"""

from __future__ import annotations

import errno
import json
import select
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

__all__ = ["PreflightError", "check_port_free", "free_port", "meet"]

PROTOCOL = "overdrive-preflight/1"
COMPARED = ("num_machines", "num_processes", "rdzv_backend")  # what every machine must agree on


class PreflightError(RuntimeError):
    """A launch that cannot work, found before any process was spawned; the message names host/rank and the fix.

    Example:
        >>> str(PreflightError("machine_rank 1 (host b): ..."))
        'machine_rank 1 (host b): ...'
    """


def free_port() -> int:
    """A TCP port that is free right now (the OS picks it).

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR: a port whose last connections linger in TIME_WAIT is free to reuse; a listening one is not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", port))
    except OSError:
        sock.close()
        raise
    return sock


def _busy_message(port: int, host: str, machine_rank: int, err: OSError) -> str:
    why = "is already in use on this machine" if err.errno == errno.EADDRINUSE else f"cannot be bound ({err})"
    return (f"machine_rank {machine_rank} (host {host}): main_process_port {port} {why} (another job, or a previous "
            f"run still exiting); pass a free port to every machine, e.g. --main_process_port {free_port()}")


def check_port_free(port: int, host: str, machine_rank: int = 0) -> None:
    """Raise :class:`PreflightError` if ``port`` cannot be bound on this machine (e.g. another job holds it).

    Example:
        >>> with socket.socket() as s:
        ...     s.bind(("127.0.0.1", 0)); s.listen()
        ...     check_port_free(s.getsockname()[1], "node0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        overdrive.commands.preflight.PreflightError: machine_rank 0 (host node0): main_process_port ... is already in use...
    """
    try:
        _bind(port).close()
    except OSError as err:
        raise PreflightError(_busy_message(port, host, machine_rank, err)) from None


def _describe(view: Mapping[str, Any]) -> str:
    return " ".join(f"--{key} {view.get(key)}" for key in COMPARED)


def meet(view: Mapping[str, Any], main_ip: str, port: int, timeout: float,
         log: Callable[[str], None] = lambda line: None) -> None:
    """Run the pre-flight meeting for this machine; return when every machine agreed, else raise.

    ``view`` holds this machine's ``machine_rank``, ``host`` and the :data:`COMPARED` settings.

    Example:
        >>> meet({"machine_rank": 0, "host": "h", "num_machines": 1, "num_processes": 1, "rdzv_backend": "static"},
        ...      "127.0.0.1", free_port(), timeout=1.0)
    """
    if int(view["machine_rank"]) == 0:
        _host_meeting(view, port, timeout, log)
    else:
        _join_meeting(view, main_ip, port, timeout, log)


def _send(conn: socket.socket, message: Mapping[str, Any]) -> None:
    try:
        conn.sendall((json.dumps(message) + "\n").encode())
    except OSError:  # the other side already gave up; its own message explains why
        pass


def _read_line(conn: socket.socket, deadline: float) -> str | None:
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(4096)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        data += chunk
        if len(data) > 65536:
            return None
    return data.split(b"\n", 1)[0].decode(errors="replace")


def _host_meeting(view: Mapping[str, Any], port: int, timeout: float, log: Callable[[str], None]) -> None:
    host, machines = str(view["host"]), int(view["num_machines"])
    me = f"machine_rank 0 (host {host})"
    try:
        server = _bind(port)
    except OSError as err:
        raise PreflightError(_busy_message(port, host, 0, err)) from None
    joined: dict[int, tuple[socket.socket, Mapping[str, Any]]] = {}

    def fail(message: str) -> NoReturn:
        for conn, _ in joined.values():
            _send(conn, {"ok": False, "error": message})
            conn.close()
        raise PreflightError(message)

    with server:
        server.listen(64)
        log(f"pre-flight: {me} waits up to {timeout:g} s for machine(s) 1..{machines - 1} on port {port}")
        deadline = time.monotonic() + timeout
        while len(joined) < machines - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [str(r) for r in range(1, machines) if r not in joined]
                fail(f"{me}: machine_rank(s) {', '.join(missing)} did not check in within {timeout:g} s. Start "
                     f"`overdrive launch` on every machine with --main_process_ip pointing at this one and "
                     f"--main_process_port {port} (under SLURM: through srun, once per node); if they start later "
                     "than this, raise --preflight_timeout")
            ready, _, _ = select.select([server], [], [], min(remaining, 0.5))
            if not ready:
                continue
            conn, addr = server.accept()
            line = _read_line(conn, time.monotonic() + 2.0)
            try:
                other = json.loads(line) if line else None
            except ValueError:
                other = None
            if not isinstance(other, dict) or other.get("protocol") != PROTOCOL:
                conn.close()  # not an overdrive launcher (a port scanner, another program): ignore it
                continue
            rank, who = other.get("machine_rank"), f"machine_rank {other.get('machine_rank')} (host {other.get('host')})"
            mismatch = [k for k in COMPARED if other.get(k) != view.get(k)]
            if mismatch:
                joined[-1 - len(joined)] = (conn, other)
                fail(f"{who} was started with {_describe(other)}, but {me} with {_describe(view)}: pass the same "
                     f"{', '.join('--' + k for k in mismatch)} on every machine")
            if not isinstance(rank, int) or not 1 <= rank < machines:
                joined[-1 - len(joined)] = (conn, other)
                fail(f"{who}: machine_rank {rank} is out of range for --num_machines {machines}; number the machines "
                     f"0..{machines - 1}, machine 0 being {host}")
            if rank in joined:
                first = joined[rank][1]
                joined[-1 - len(joined)] = (conn, other)
                fail(f"{who} and host {first.get('host')} both claim machine_rank {rank}; give every machine its own "
                     f"--machine_rank in 0..{machines - 1}")
            joined[rank] = (conn, other)
            log(f"pre-flight: {who} checked in from {addr[0]}")
        for conn, _ in joined.values():
            _send(conn, {"ok": True})
            conn.close()


def _join_meeting(view: Mapping[str, Any], main_ip: str, port: int, timeout: float,
                  log: Callable[[str], None]) -> None:
    me = f"machine_rank {view['machine_rank']} (host {view['host']})"
    target = f"{main_ip}:{port}"
    fix = (f"check that machine 0 runs `overdrive launch` too, that --main_process_ip {main_ip} is its address as "
           f"seen from this machine, and that --main_process_port {port} is the same everywhere")
    start = time.monotonic()
    deadline = start + timeout
    refused = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if refused:
                raise PreflightError(f"{me}: nothing accepts connections at {target} (connection refused for "
                                     f"{timeout:g} s): machine 0 is not running or listens elsewhere; {fix}; if "
                                     "machine 0 starts later than this one, raise --preflight_timeout")
            raise PreflightError(f"{me}: cannot reach the main process at {target} within {timeout:g} s (no answer: "
                                 f"a wrong address, or a firewall dropping the packets); {fix}")
        try:
            conn = socket.create_connection((main_ip, port), timeout=min(remaining, 3.0))
            break
        except socket.gaierror as err:
            raise PreflightError(f"{me}: cannot resolve the main process address {main_ip!r} ({err.strerror}); "
                                 f"{fix}") from None
        except ConnectionRefusedError:
            refused = True
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        except TimeoutError:
            refused = False
        except OSError as err:  # no route, network unreachable: no retry will help
            raise PreflightError(f"{me}: cannot reach the main process at {target} ({err.strerror or err}); "
                                 f"{fix}") from None
    with conn:
        log(f"pre-flight: {me} reached machine 0 at {target} after {time.monotonic() - start:.1f} s")
        _send(conn, {"protocol": PROTOCOL, **view})
        # Machine 0 may still wait for others: allow its whole window plus a margin before giving up on it.
        line = _read_line(conn, time.monotonic() + timeout + 5.0)
    try:
        verdict = json.loads(line) if line else None
    except ValueError:
        verdict = None
    if not isinstance(verdict, dict):
        raise PreflightError(f"{me}: {target} did not answer like `overdrive launch` (is another program using that "
                             f"port, or did machine 0 fail? see its output); {fix}")
    if not verdict.get("ok"):
        raise PreflightError(str(verdict.get("error")))
