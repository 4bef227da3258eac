"""Bringing a cluster up from its config: Ray, Redis, the pool actors, the dispatcher.

    with Cluster(load_cluster_config("cluster.yaml")) as dispatcher:
        async for delta in dispatcher.generate(None, prompt_ids, params): ...

``address`` None starts a local Ray instance; "auto" or "ray://host:10001" joins one.
With ``kvstore.redis_url`` unset a private redis-server is started on a free port.
"""

from __future__ import annotations

import os

import ray

from cluster.config import ClusterConfig, PoolConfig
from cluster.cluster_view import ClusterView
from cluster.dispatcher import Dispatcher
from cluster.pool_handles import Pools, Replica
from cluster.redis_server import RedisServer
from cluster.ray_connect import connect_ray
from cluster.registry import NAMESPACE, ClusterInfo, ClusterRegistry, actor_name, registry_name
from cluster.worker_spec import WorkerSpec
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.tokenizer import load_tokenizer
from kvstore.config import KVStoreConfig
from kvstore.keys import RedisKeys
from kvstore.kv_events import KVEventSubscriber
from kvstore.redis_client import connect_redis



class ClusterStartError(RuntimeError):
    """A pool replica could not start; the message carries its cause."""


def engine_config_for(cfg: ClusterConfig, pool: PoolConfig) -> EngineConfig:
    o = pool.engine
    cache = {"block_size": cfg.block_size, "num_blocks": o.num_blocks,
             "enable_prefix_caching": o.enable_prefix_caching}
    if o.memory_fraction is not None:
        cache["memory_fraction"] = o.memory_fraction
    sched = {k: v for k, v in (("max_num_seqs", o.max_num_seqs),
                               ("max_num_batched_tokens", o.max_num_batched_tokens)) if v is not None}
    return EngineConfig(model=cfg.model, dtype=cfg.dtype, load_format=cfg.load_format, cache=CacheConfig(**cache),
                        scheduler=SchedulerConfig(max_model_len=cfg.max_model_len, **sched), detokenize=False,
                        async_scheduling=o.async_scheduling)


class Cluster:
    def __init__(self, config: ClusterConfig, address: str | None = None):
        self.config, self.address = config, address
        self.redis: RedisServer | None = None
        self.kvstore: KVStoreConfig | None = None
        self.pools = Pools()
        self.dispatcher: Dispatcher | None = None
        self.registry = None
        self._started_ray = False

    def start(self) -> Dispatcher:
        try:
            self._start_redis()
            self._start_ray()
            self._start_pools()
            info = ClusterInfo(self.config.name, self.config.model, self.kvstore,
                               {role: tuple(r.worker_id for r in getattr(self.pools, role))
                                for role in self.config.pools}, tuple(self.infos),
                               self.config.kvstore.host_pull_weight, self.config.router.policy)
            self.registry = ClusterRegistry.options(name=registry_name(info.name),
                                                    namespace=NAMESPACE).remote(info)
            self.dispatcher = make_dispatcher(info, self.pools)
        except BaseException:
            self.shutdown()
            raise
        return self.dispatcher

    def _start_redis(self) -> None:
        url = self.config.kvstore.redis_url
        if url is None:
            self.redis = RedisServer()
            url = self.redis.start()
        self.kvstore = KVStoreConfig(redis_url=url, host_capacity_bytes=self.config.kvstore.host_tier_bytes,
                                     key_prefix=f"tierserve-{self.config.name}")
        connect_redis(self.kvstore).close()  # RedisUnavailableError names the URL

    def _start_ray(self) -> None:
        if ray.is_initialized():
            return
        if self.address is None or self.address == "local":
            cpus = sum(p.replicas * p.hardware.num_cpus for p in self.config.pools.values())
            ray.init(num_cpus=max(int(cpus) + 1, os.cpu_count() or 1), namespace=NAMESPACE,
                     include_dashboard=False, log_to_driver=True)
        else:
            connect_ray(self.address)
        self._started_ray = True

    def _start_pools(self) -> None:
        from decode_workers.actor import DecodeActor
        from prefill_workers.actor import PrefillActor
        actor_classes = {"prefill": PrefillActor, "decode": DecodeActor, "colocated": DecodeActor}
        for role, pool in self.config.pools.items():
            engine = engine_config_for(self.config, pool)
            for i in range(pool.replicas):
                worker_id = f"{role}-{i}"
                spec = WorkerSpec(worker_id, role, engine, self.kvstore, use_gpu=pool.hardware.num_gpus > 0,
                                  host_tier_writes=self.config.kvstore.host_tier_writes)
                actor = actor_classes[role].options(name=actor_name(self.config.name, worker_id),
                                                    namespace=NAMESPACE, **_ray_options(pool)).remote(spec)
                getattr(self.pools, role).append(Replica(worker_id, role, actor))
        self.infos = self._wait_ready()

    def _wait_ready(self) -> list:
        infos = []
        for r in self.pools.all:
            try:
                infos.append(ray.get(r.actor.info.remote()))
            except ray.exceptions.RayActorError as e:
                raise ClusterStartError(f"replica {r.worker_id} failed to start: {e}") from None
        return infos

    def shutdown(self) -> None:
        for r in self.pools.all:
            try:
                ray.get(r.actor.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 — a dead replica needs no shutdown
                pass
            ray.kill(r.actor)
        self.pools = Pools()
        if self.registry is not None:
            ray.kill(self.registry)
            self.registry = None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> Dispatcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()


def make_dispatcher(info: ClusterInfo, pools: Pools) -> Dispatcher:
    """A dispatcher over a cluster's replicas (the serving router's, or a batch job's own)."""
    events = KVEventSubscriber(connect_redis(info.kvstore), RedisKeys(info.kvstore.key_prefix))
    view = ClusterView(pools, info.engines[0].block_size, events, host_pull_weight=info.host_pull_weight,
                       policy=info.policy)
    return Dispatcher(view, load_tokenizer(info.model), model_name=os.path.basename(info.model.rstrip("/")),
                      max_model_len=min(e.max_model_len for e in info.engines),
                      vocab_size=info.engines[0].vocab_size, eos_token_ids=info.engines[0].eos_token_ids)


def _ray_options(pool: PoolConfig) -> dict:
    hw = pool.hardware
    options = {"num_cpus": hw.num_cpus, "num_gpus": hw.num_gpus}
    if hw.accelerator_type:
        options["accelerator_type"] = hw.accelerator_type
    if hw.resources:
        options["resources"] = dict(hw.resources)
    return options
