"""Joining a running Ray cluster by address (``tierserve serve --address``, ``tierserve submit``).

A Ray Client server refuses sessions for a moment after its head starts (its per-client
server cannot start yet), so that failure is retried; a failure that may be token
authentication says how to opt in (cluster/ray_auth.py).
"""

from __future__ import annotations

import os
import time

import ray

from cluster.ray_auth import HINT, token_available
from cluster.registry import NAMESPACE


def connect_ray(address: str, attempts: int = 3, backoff_s: float = 2.0) -> None:
    """Join Ray at ``address`` (``auto``, ``host:port`` or ``ray://host:port``)."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, namespace=NAMESPACE)
            return
        except ConnectionError as e:
            if attempt < attempts and address.startswith("ray://"):
                ray.shutdown()  # drop what the failed session left behind
                time.sleep(backoff_s * attempt)
                continue
            if os.environ.get("RAY_AUTH_MODE") != "token" and token_available():
                raise ConnectionError(f"{e}; {HINT}") from e
            raise
