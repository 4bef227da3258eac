"""kvstore configuration: frozen dataclasses, validated where they are built."""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field

_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]+$")
# How host-tier blocks are stored (kvstore/kv_codec.py): raw bytes, or KIVI-style 4-/2-bit codes.
HOST_TIER_CODECS = ("exact", "kivi4", "kivi2")


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class KVStoreConfig:
    """Redis-backed index and host tier.

    redis_url: ``redis://host:port/db`` (``rediss://`` and ``unix://`` work too).
    key_prefix: every Redis key the store writes starts with ``<key_prefix>:``.
    host_tier_bytes: payload bytes the host tier may keep before evicting (LRU); the one default
    of this knob (the cluster config's ``kvstore.host_tier_bytes`` takes it).
    lease_ttl_s: how long a reader's pin on blocks lasts unless released or renewed.
    host_tier_codec: how this worker stores blocks in the host tier: 'exact' (raw bytes, the
    default), 'kivi4' or 'kivi2' (lossy, about 3.1x / 5.1x fewer bytes for Llama-3 shapes;
    kvstore/kv_codec.py). Reads decode whatever a block was stored with.
    host_tier_codec_residual_tokens: with a lossy codec, the last this many tokens (whole blocks)
    of each put stay exact: KIVI's full-precision residual, the tokens nearest the text that
    follows, which attention weighs most. 64 keeps kivi4 at >= 3x fewer bytes on a 4K-token
    prefix and took identical 128-token greedy continuations from 50% to 70% on the trained
    checkpoint (BENCHMARKS.md, KV codec); 0 compresses every full block.
    """

    redis_url: str
    key_prefix: str = "tierserve"
    host_tier_bytes: int = 1 << 30
    lease_ttl_s: float = 30.0
    connect_timeout_s: float = 5.0
    host_tier_codec: str = "exact"
    host_tier_codec_residual_tokens: int = 64

    def __post_init__(self) -> None:
        check_host_tier_codec(self.host_tier_codec, "KVStoreConfig")
        check_residual_tokens(self.host_tier_codec_residual_tokens, "KVStoreConfig")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"KVStoreConfig.redis_url must start with redis://, rediss:// or unix://, "
                             f"got {self.redis_url!r}")
        if not _PREFIX.match(self.key_prefix):
            raise ValueError(f"KVStoreConfig.key_prefix may hold only letters, digits and _.:-, "
                             f"got {self.key_prefix!r}")
        _positive("KVStoreConfig", host_tier_bytes=self.host_tier_bytes,
                  lease_ttl_s=self.lease_ttl_s, connect_timeout_s=self.connect_timeout_s)


def check_host_tier_codec(codec: str, owner: str = "") -> None:
    if codec not in HOST_TIER_CODECS:
        raise ValueError(f"{owner + '.' if owner else ''}host_tier_codec must be one of "
                         f"{', '.join(HOST_TIER_CODECS)}, got {codec!r}")


def check_residual_tokens(tokens: int, owner: str = "") -> None:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"{owner + '.' if owner else ''}host_tier_codec_residual_tokens must be an "
                         f"integer >= 0, got {tokens!r}")


SECRET_ENV = "TIERSERVE_KV_SECRET"


@dataclass(frozen=True)
class TransportConfig:
    """Pairwise KV transfer between workers.

    advertise_host: the address this worker's rendezvous store and gloo listen on and
    that peers connect to (the cluster's interface; a Ray pool passes its node IP, a
    local cluster loopback); None resolves this machine's hostname.
    secret: shared by every worker of a cluster; both ends of a pair group prove they
    hold it before the group forms (kvstore.pair_auth). None is allowed only when
    advertise_host is a loopback address. Never printed (repr=False).
    layers_per_chunk: a handoff moves this many layers per message so that gathering,
    sending and scattering of consecutive chunks overlap.
    """

    advertise_host: str | None = None
    rendezvous_timeout_s: float = 30.0
    transfer_timeout_s: float = 60.0
    layers_per_chunk: int = 4
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def for_cluster(cls, local: bool) -> TransportConfig:
        """What a cluster driver hands every replica: loopback for a cluster on this
        machine (None lets each replica advertise its node IP), and the secret from
        ``$TIERSERVE_KV_SECRET`` or a fresh random one (the specs carry it to the replicas)."""
        return cls(advertise_host="127.0.0.1" if local else None,
                   secret=os.environ.get(SECRET_ENV) or secrets.token_hex(32))

    def __post_init__(self) -> None:
        _positive("TransportConfig", rendezvous_timeout_s=self.rendezvous_timeout_s,
                  transfer_timeout_s=self.transfer_timeout_s)
        if not isinstance(self.layers_per_chunk, int) or self.layers_per_chunk < 1:
            raise ValueError(f"TransportConfig.layers_per_chunk must be an int >= 1, "
                             f"got {self.layers_per_chunk!r}")
        if self.advertise_host is not None and not self.advertise_host.strip():
            raise ValueError("TransportConfig.advertise_host must be None or a host name / IP")
        if self.secret is not None and (not isinstance(self.secret, str) or len(self.secret) < 16):
            raise ValueError("TransportConfig.secret must be None or a string of at least 16 characters")
