"""Host-to-device copies of small step inputs that never wait for the device's queue.

A blocking ``.to(device)`` first waits for every kernel already queued: under overlapped
scheduling that is the step still running, so the host would stop overlapping it. A
non-blocking copy from pageable memory is staged by CUDA before the call returns, so the
host tensor may be changed or freed right after.
"""

from __future__ import annotations

import torch


def upload(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` (a host tensor) on ``device``, queued behind the kernels already there."""
    return values.to(device, non_blocking=True)
