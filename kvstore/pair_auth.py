"""Proofs that both ends of a pair group hold the cluster's transport secret.

Forming a group is a challenge-response in two steps (kvstore.pair_groups): rank 0 signs
the rendezvous record it publishes (epoch, address and a fresh nonce); rank 1 checks
that signature, then answers rank 0's nonce with its own proof and a nonce of its own
through the pair's store; rank 0 checks it and answers rank 1's nonce. Every proof is an
HMAC-SHA256 over the pair, the epoch, the step and the nonce it answers, so none can be
replayed for another pair, formation or step. Without a secret (allowed on loopback only)
the key is empty: two such workers still pair, and a worker with a secret refuses them.

This authenticates the peer; it does not encrypt the KV bytes (run the transport on the
cluster's private network).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket

from kvstore.config import SECRET_ENV

REFUSED = "refused"
_DOMAIN = "tierserve-kv-pair/1"


def new_nonce() -> str:
    return secrets.token_hex(16)


def proof(secret: str | None, *parts: str) -> str:
    message = "\x00".join((_DOMAIN, *parts)).encode()
    return hmac.new((secret or "").encode(), message, hashlib.sha256).hexdigest()


def check(secret: str | None, given: object, *parts: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), proof(secret, *parts).encode())


def refusal(who: str, pair: str, secret: str | None) -> str:
    """The error text for a failed proof, naming who failed it and what to fix."""
    mine = "" if secret is not None else " (this worker has none)"
    return (f"pair group {pair} refused: {who} did not prove it holds this worker's KV transport "
            f"secret{mine}; every worker of a cluster needs the same TransportConfig.secret (e.g. from "
            f"${SECRET_ENV})")


def refused_by(peer: str, pair: str) -> str:
    """The error text for a proof of ours that ``peer`` refused."""
    return (f"pair group {pair} refused by {peer!r}: this worker's KV transport secret differs from "
            f"{peer!r}'s (TransportConfig.secret, e.g. from ${SECRET_ENV})")


def require_secret_off_loopback(secret: str | None, host: str) -> None:
    """A pair group may form without a secret only where no other machine can reach it."""
    if secret is None and not is_loopback(host):
        raise ValueError(f"TransportConfig.secret is required: pair groups listen on {host!r}, which is not "
                         f"a loopback address (set ${SECRET_ENV} or TransportConfig.secret alike on every "
                         f"worker, or advertise 127.0.0.1 for a cluster on one machine)")


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
