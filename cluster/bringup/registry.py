"""Finding a running cluster by name: a small named actor that describes it.

`tierserve serve` registers the cluster; `tierserve submit` (possibly through Ray Client,
from another machine) looks it up and reaches the same pool actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import ray

from cluster.config import MAX_PREDICTED
from cluster.pool_handles import Pools, Replica
from kvstore.config import KVStoreConfig
from workers.messages import EngineInfo

NAMESPACE = "tierserve"


@dataclass(frozen=True)
class ClusterInfo:
    name: str
    model: str
    kvstore: KVStoreConfig
    workers: dict[str, tuple[str, ...]]   # role -> worker ids
    engines: tuple[EngineInfo, ...]
    host_pull_weight: float = 0.5
    policy: str = "prefix-aware"
    max_predicted: int = MAX_PREDICTED


def actor_name(cluster: str, worker_id: str) -> str:
    return f"{cluster}:{worker_id}"


def registry_name(cluster: str) -> str:
    return f"{cluster}:registry"


@ray.remote(num_cpus=0)
class ClusterRegistry:
    def __init__(self, info: ClusterInfo):
        self.info = info

    def describe(self) -> ClusterInfo:
        return self.info


class ClusterNotFoundError(LookupError):
    """No cluster of that name is registered in this Ray instance."""


def lookup(cluster: str) -> ClusterInfo:
    try:
        registry = ray.get_actor(registry_name(cluster), namespace=NAMESPACE)
    except ValueError:
        raise ClusterNotFoundError(f"no tierserve cluster named {cluster!r} runs in this Ray instance; "
                                   "start one with `tierserve serve --config ...`") from None
    return cast(ClusterInfo, ray.get(registry.describe.remote()))


def attach(info: ClusterInfo) -> Pools:
    """Handles to every replica of a registered cluster."""
    pools = Pools()
    for role, ids in info.workers.items():
        for worker_id in ids:
            actor = ray.get_actor(actor_name(info.name, worker_id), namespace=NAMESPACE)
            getattr(pools, role).append(Replica(worker_id, role, actor))
    return pools
