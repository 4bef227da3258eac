"""Finding and joining the Ray a cluster runs in (``tierserve serve --address``, ``tierserve submit``).

A cluster started here (``tierserve serve --config`` without ``--address``) gets a Ray of its
own (``start_private_ray``): Ray's default, ``ray.init()`` without an address, would join the
Ray named by ``$RAY_ADDRESS`` or the machine's last ``ray start`` (someone else's, perhaps).

Addresses:

* ``local`` (submit's default): the cluster of that name that ``tierserve serve --config``
  started on this machine. A running cluster writes a marker file (its Ray's GCS address and
  its process id) under ``$TMPDIR/tierserve-<uid>/clusters/``, so ``local`` never attaches to
  an unrelated Ray that happens to run on the machine.
* ``auto``: Ray's own lookup, whatever Ray runs on this machine (perhaps someone else's); the
  caller then checks that it holds a tierserve cluster (cluster/batch/runner.py).
* ``host:port`` (a GCS) or ``ray://host:port`` (Ray Client).

An address that cannot be reached fails within seconds (a TCP connect is tried first), not
after Ray Client's own retries (~100 s). A Ray Client server refuses sessions for a moment after
its head starts (its per-client server cannot start yet), so that failure is retried; a failure
that may be token authentication says how to opt in (cluster/bringup/ray_auth.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from cluster.bringup.ray_auth import HINT, token_available
from cluster.bringup.registry import NAMESPACE

CONNECT_TIMEOUT_S = 3.0


class RayUnreachableError(ConnectionError):
    """No Ray at that address, or no local cluster of that name; the message is one line."""


def marker_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"tierserve-{os.getuid()}" / "clusters"


def write_marker(cluster: str, gcs_address: str) -> Path:
    """Record that cluster ``cluster`` runs in the Ray at ``gcs_address``, served by this process."""
    path = marker_dir() / f"{cluster}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"gcs_address": gcs_address, "pid": os.getpid()}))
    return path


def remove_marker(cluster: str) -> None:
    """Remove this process's marker for ``cluster`` (not one a later cluster of that name wrote)."""
    path = marker_dir() / f"{cluster}.json"
    if _read_marker(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def local_clusters() -> dict[str, str]:
    """Cluster name -> GCS address, for the clusters whose serving process still runs."""
    found = {}
    for path in sorted(marker_dir().glob("*.json")):
        marker = _read_marker(path)
        if marker.get("gcs_address") and _alive(marker.get("pid")):
            found[path.stem] = marker["gcs_address"]
    return found


def _read_marker(path: Path) -> dict:
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_address(address: str, cluster: str) -> str:
    """``local`` -> the GCS address of the local cluster named ``cluster``; others unchanged."""
    if address != "local":
        return address
    running = local_clusters()
    if cluster in running:
        return running[cluster]
    others = f"; running here: {', '.join(running)} (pass --cluster NAME)" if running else ""
    raise RayUnreachableError(f"no tierserve cluster named {cluster!r} was started on this machine{others}; "
                              "start it with `tierserve serve --config ...`, or give --address "
                              "(ray://HOST:10001 for a remote head, auto for any Ray here)")


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connect to ``host:port`` or ``ray://host:port`` within ``timeout_s``, else a one-line error."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnreachableError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except socket.gaierror:
        why = f"host {host!r} is not known"
    except TimeoutError:
        why = f"no answer within {timeout_s:g} s"
    except OSError as e:
        why = e.strerror or str(e)
    raise RayUnreachableError(f"cannot reach Ray at {address}: {why}. On this machine leave --address out: "
                              "the cluster `tierserve serve --config` started here is found by its name")


def start_private_ray(num_cpus: int, verbose: bool = False) -> str:
    """Start a Ray instance for this process only and return its GCS address. ``address="local"``
    makes Ray ignore ``$RAY_ADDRESS`` and ``/tmp/ray/ray_current_cluster``; its GCS and node
    ports are picked free, and it writes no ``ray_current_cluster`` of its own, so nobody's
    ``ray.init()`` joins it by accident either. Ray's INFO/WARNING lines are quiet unless
    ``verbose``."""
    quiet = {} if verbose else {"logging_level": logging.ERROR}
    with keeping_sigterm():
        ray.init(address="local", num_cpus=num_cpus, namespace=NAMESPACE, include_dashboard=False,
                 log_to_driver=verbose, **quiet)
    return ray.get_runtime_context().gcs_address


@contextmanager
def keeping_sigterm() -> Iterator[None]:
    """Put the caller's SIGTERM handler back after ``ray.init``, which replaces it: its core
    worker's handler aborts the process (SIGABRT), leaving Ray's processes and ours (a private
    redis-server) behind, where the caller's can stop what it started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def connect_ray(address: str, cluster: str = "default", attempts: int = 3, backoff_s: float = 2.0,
                verbose: bool = False) -> None:
    """Join Ray at ``address`` (``local``, ``auto``, ``host:port`` or ``ray://host:port``);
    Ray's own INFO/WARNING lines are quiet unless ``verbose``."""
    address = resolve_address(address, cluster)
    check_reachable(address)
    quiet = {} if verbose or address.startswith("ray://") else {"logging_level": logging.ERROR,
                                                                 "log_to_driver": False}
    for attempt in range(1, attempts + 1):
        try:
            with keeping_sigterm():
                ray.init(address=address, namespace=NAMESPACE, **quiet)
            return
        except ConnectionError as e:
            if attempt < attempts and address.startswith("ray://"):
                ray.shutdown()  # drop what the failed session left behind
                time.sleep(backoff_s * attempt)
                continue
            if os.environ.get("RAY_AUTH_MODE") != "token" and token_available():
                raise ConnectionError(f"{e}; {HINT}") from e
            if address == "auto":
                raise RayUnreachableError(f"--address auto: no Ray runs on this machine ({e})") from None
            raise
