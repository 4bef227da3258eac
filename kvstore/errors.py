"""Errors the kvstore raises; each message names what failed and where."""

from __future__ import annotations


class KVStoreError(RuntimeError):
    """Base class of every kvstore failure."""


class RedisUnavailableError(KVStoreError):
    """Redis could not be reached at the configured URL."""


class LayoutMismatchError(KVStoreError, ValueError):
    """A KV cache tensor or a peer's layout differs from the expected one."""


class ChecksumMismatchError(KVStoreError):
    """A host-tier payload read back does not match the checksum stored with it."""


class MissingBlocksError(KVStoreError, KeyError):
    """Blocks asked for are not (or no longer) held by the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CapacityError(KVStoreError):
    """The host tier cannot make room: the rest of it is pinned by leases."""


class RendezvousTimeoutError(KVStoreError, TimeoutError):
    """A peer did not show up to form a pair group in time."""


class PeerAuthError(KVStoreError):
    """A pair group was refused: one end did not prove it holds the cluster's transport secret."""


class HandoffError(KVStoreError):
    """A KV handoff was rejected or failed; the message says by whom and why."""


class HandoffTimeoutError(HandoffError, TimeoutError):
    """A KV handoff did not complete within the transfer timeout."""


class HandoffCancelledError(HandoffError):
    """The sender gave up on a KV handoff in flight (its receiver failed); the group was dropped."""
