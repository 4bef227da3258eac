"""A reusable host staging buffer for host-tier transfers.

Fresh multi-megabyte host tensors cost page faults on first touch (and pinning, with
CUDA); reusing one buffer, pinned when CUDA is present, avoids both after the first use.
Callers hold ``lock`` while they use a view.
"""

from __future__ import annotations

import math
import threading

import torch


class HostStaging:
    """One growable host buffer handing out typed views of its start."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._pinned = torch.cuda.is_available()
        self._buffer = torch.empty(0, dtype=torch.uint8)

    def view(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous ``shape``/``dtype`` view of the buffer, grown if needed (hold ``lock``)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if self._buffer.numel() < nbytes:
            self._buffer = torch.empty(0, dtype=torch.uint8)  # free the old one first
            self._buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._pinned)
        return self._buffer[:nbytes].view(dtype).view(shape)
