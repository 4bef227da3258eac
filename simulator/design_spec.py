"""Designs from the command line (``prefill=H100x2,decode=L40Sx4@tp2``) or from a cluster config."""

from __future__ import annotations

import re
from pathlib import Path

from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.files import read_yaml
from simulator.hardware import Catalog

POOL = re.compile(r"^(?P<hw>[A-Za-z0-9_.-]+?)x(?P<n>\d+)(?:@tp(?P<tp>\d+))?$")
ROLES = ("colocated", "prefill", "decode", "attention")
CLUSTER_POLICIES = {"prefix_aware": "prefix-aware", "round_robin": "round-robin"}  # ours -> router.policy


def parse_design(text: str, catalog: Catalog, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
                 router: str = "prefix_aware") -> Design:
    """``role=HWxN[@tpK],...`` with roles colocated, prefill, decode, attention."""
    pools = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        role, sep, value = item.partition("=")
        m = POOL.match(value.strip())
        if not sep or role not in ROLES or m is None:
            raise SimInputError(f"design item {item!r} is not ROLE=HWxN[@tpK] with ROLE one of {', '.join(ROLES)}")
        _ = catalog[m["hw"]]  # unknown hardware raises, naming the catalog's entries
        pools[role] = PoolSpec(m["hw"], int(m["n"]), int(m["tp"] or 1), max_num_seqs, max_num_batched_tokens)
    if not pools:
        raise SimInputError("empty design: give e.g. prefill=H100x2,decode=L40Sx4")
    return Design(router=router, **pools)


def design_from_config(path: str | Path, catalog: Catalog) -> Design:
    """The design a cluster config describes; hardware names come from ``plan.hardware`` when the
    planner wrote it, else from each pool's accelerator_type; routing from ``router.policy``."""
    data = read_yaml(path, "cluster config")
    if not isinstance(data, dict) or not isinstance(data.get("pools"), dict):
        raise SimInputError(f"cluster config {path}: no pools mapping")
    names = (data.get("plan") or {}).get("hardware") or {}
    pools = {role: _pool(path, role, pool, names, catalog) for role, pool in data["pools"].items()}
    policy = (data.get("router") or {}).get("policy", CLUSTER_POLICIES["prefix_aware"])
    routers = {v: k for k, v in CLUSTER_POLICIES.items()}
    if policy not in routers:
        raise SimInputError(f"cluster config {path}: router.policy {policy!r} is not one of {sorted(routers)}")
    return Design(router=routers[policy], **pools)


def _pool(path: str | Path, role: str, pool: object, names: dict, catalog: Catalog) -> PoolSpec:
    if role not in ROLES or not isinstance(pool, dict):
        raise SimInputError(f"cluster config {path}: pools.{role} is not a pool ({', '.join(ROLES)})")
    hardware, engine = pool.get("hardware") or {}, pool.get("engine") or {}
    name = names.get(role) or hardware.get("accelerator_type")
    if name is None:
        raise SimInputError(f"cluster config {path}: pools.{role} names no accelerator_type")
    _ = catalog[name]
    tp = max(1, int(hardware.get("num_gpus") or 1))
    return PoolSpec(name, int(pool.get("replicas", 1)), tp, int(engine.get("max_num_seqs") or 256),
                    int(engine.get("max_num_batched_tokens") or 8192))
