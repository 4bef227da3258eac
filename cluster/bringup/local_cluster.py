"""Bringing a cluster up from its config: Ray, Redis, the pool actors, the dispatcher.

    with Cluster(load_cluster_config("cluster.yaml")) as dispatcher:
        async for delta in dispatcher.generate(None, prompt_ids, params): ...

``address`` None starts a local Ray instance; "auto" or "ray://host:10001" joins one.
With ``kvstore.redis_url`` unset a private redis-server is started on a free port. The model
directory is checked before anything starts; a started cluster writes a marker so that
`tierserve submit` on this machine finds it by name (cluster/bringup/ray_connect.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import ray

from cluster.bringup.ray_connect import connect_ray, remove_marker, start_private_ray, write_marker
from cluster.bringup.registry import NAMESPACE, ClusterInfo, ClusterRegistry, actor_name, registry_name
from cluster.cluster_view import ClusterView
from cluster.config import ClusterConfig, PoolConfig
from cluster.dispatcher import Dispatcher
from cluster.pool_handles import Pools, Replica
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SegmentConfig
from engine.model_config import CheckpointError, ModelConfig
from engine.tokenizer import load_tokenizer
from kvstore.config import KVStoreConfig, TransportConfig
from kvstore.keys import RedisKeys
from kvstore.kv_events import KVEventSubscriber
from kvstore.redis_client import connect_redis, redact_url
from kvstore.redis_server import RedisServer, with_password
from workers.messages import EngineInfo
from workers.spec import RESTART_OPTIONS, OffloadSpec, WorkerSpec


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
                        async_scheduling=o.async_scheduling, segments=SegmentConfig(store_bytes=o.segment_store_bytes))


class Cluster:
    """``progress`` gets one short line per bring-up phase (the CLI prints them on stderr); Ray's
    own INFO/WARNING lines and the replicas' output stay out of the driver unless ``verbose``."""

    def __init__(self, config: ClusterConfig, address: str | None = None,
                 progress: Callable[[str], None] | None = None, verbose: bool = False):
        self.config, self.address = config, address
        self.progress = progress or (lambda line: None)
        self.verbose = verbose
        self.redis: RedisServer | None = None
        self.kvstore: KVStoreConfig | None = None
        self.pools = Pools()
        self.attention: list[Replica] = []  # attention replicas: not routed to, paired with decode replicas
        self.dispatcher: Dispatcher | None = None
        self.registry = None
        self._started_ray = False
        self._marker = False

    @property
    def local(self) -> bool:
        """Ray on this machine (started here, or found by ``auto``), so the model is read here too."""
        return self.address in (None, "local", "auto")

    def preflight(self) -> None:
        """Checks that need no Ray: the model directory, when the replicas run on this machine."""
        if self.local:
            try:
                ModelConfig.from_dir(self.config.model)
            except CheckpointError as e:
                raise ClusterStartError(f"{e} (the config's model)") from None

    def start(self) -> Dispatcher:
        self.preflight()
        try:
            self._start_redis()
            self._start_ray()
            self._start_pools()
            info = ClusterInfo(self.config.name, self.config.model, self.kvstore,
                               {role: tuple(r.worker_id for r in getattr(self.pools, role))
                                for role in self.config.pools if role != "attention"}, tuple(self.infos),
                               self.config.kvstore.host_pull_weight, self.config.router.policy,
                               self.config.router.max_predicted)
            self.registry = ClusterRegistry.options(name=registry_name(info.name),
                                                    namespace=NAMESPACE).remote(info)
            self.dispatcher = make_dispatcher(info, self.pools)
            self._write_marker()
        except BaseException:
            self.shutdown()
            raise
        self.progress(f"cluster {self.config.name!r} up; KV pair groups form on each prefill/decode pair's "
                      "first request" + ("; each decode replica's attention runs on its attention replica"
                                         if self.config.offloaded else ""))
        return self.dispatcher

    def _start_redis(self) -> None:
        url = self.config.kvstore.redis_url
        if url is None:
            self.redis = RedisServer()
            self.progress(f"starting redis-server on 127.0.0.1:{self.redis.port}")
            url = self.redis.start()
        else:
            url = with_password(url)  # from $REDIS_PASSWORD unless the URL has one
            self.progress(f"using Redis at {redact_url(url)}")
        self.kvstore = KVStoreConfig(redis_url=url, host_tier_bytes=self.config.kvstore.host_tier_bytes,
                                     key_prefix=f"tierserve-{self.config.name}",
                                     host_tier_codec=self.config.kvstore.host_tier_codec,
                                     host_tier_codec_residual_tokens=self.config.kvstore.host_tier_codec_residual_tokens)
        connect_redis(self.kvstore).close()  # RedisUnavailableError names the URL

    def _start_ray(self) -> None:
        if ray.is_initialized():
            return
        if self.address is None or self.address == "local":
            cpus = max(int(sum(p.replicas * p.hardware.num_cpus for p in self.config.pools.values())) + 1,
                       os.cpu_count() or 1)
            self.progress(f"starting Ray (local, {cpus} CPUs)")
            start_private_ray(cpus, self.verbose)  # never joins $RAY_ADDRESS or another `ray start`
        else:
            self.progress(f"joining Ray at {self.address}")
            connect_ray(self.address, self.config.name, verbose=self.verbose)
        self._started_ray = True

    def _start_pools(self) -> None:
        from decode_workers.actor import DecodeActor
        from prefill_workers.actor import PrefillActor
        actor_classes = {"prefill": PrefillActor, "decode": DecodeActor, "colocated": DecodeActor}
        placed = " + ".join(f"{p.replicas} {role}" for role, p in self.config.pools.items())
        self.progress(f"placing {placed} replica(s) of {self.config.model}")
        transport = self.transport()
        offload = self._start_attention(transport) if self.config.offloaded else {}
        for role, pool in self.config.pools.items():
            if role == "attention":
                continue
            engine = engine_config_for(self.config, pool)
            for i in range(pool.replicas):
                worker_id = f"{role}-{i}"
                spec = WorkerSpec(worker_id, role, engine, self.kvstore, transport, use_gpu=pool.hardware.num_gpus > 0,
                                  host_tier_writes=self.config.kvstore.host_tier_writes, offload=offload.get(worker_id))
                actor = actor_classes[role].options(name=actor_name(self.config.name, worker_id),
                                                    namespace=NAMESPACE, **_ray_options(pool)).remote(spec)
                getattr(self.pools, role).append(Replica(worker_id, role, actor))
        self.infos = self._wait_ready()

    def transport(self) -> TransportConfig:
        """What every replica's KV transport uses: one secret for all, loopback only when Ray was
        started here, the config's ``kvstore.layers_per_chunk``."""
        return dataclasses.replace(TransportConfig.for_cluster(local=self.address in (None, "local")),
                                   layers_per_chunk=self.config.kvstore.layers_per_chunk)

    def _start_attention(self, transport: TransportConfig) -> dict:
        """The attention replicas, each serving the decode replicas i with i mod N = its index;
        returns each decode replica's OffloadSpec."""
        from attention_offload.actor import AttentionActor
        pool, decode = self.config.pools["attention"], self.config.pools["decode"]
        sessions = {a: tuple(f"decode-{d}" for d in range(decode.replicas) if d % pool.replicas == a)
                    for a in range(pool.replicas)}
        idle = [f"attention-{a}" for a, s in sessions.items() if not s]
        if idle:  # one model worker's sequences are not yet sharded over several attention replicas
            self.progress(f"warning: not starting {', '.join(idle)}: more attention replicas than decode replicas")
        gpu = {role: self.config.pools[role].hardware.num_gpus > 0 for role in ("prefill", "decode", "attention")}
        link_device = "cuda" if gpu["decode"] and gpu["attention"] else "cpu"  # NCCL between GPUs, else gloo
        receive_kv = gpu["prefill"] == gpu["attention"]  # else decode replicas recompute prompts
        if not receive_kv:
            self.progress("warning: prefill and attention pools are on different kinds of device: decode replicas "
                          "recompute each prompt instead of receiving its KV")
        engine, specs = engine_config_for(self.config, pool), {}
        for a, served in sessions.items():
            if not served:
                continue
            worker_id, name = f"attention-{a}", actor_name(self.config.name, f"attention-{a}")
            offload = OffloadSpec(worker_id, name, NAMESPACE, decode.engine.micro_batches, link_device, receive_kv)
            spec = WorkerSpec(worker_id, "attention", engine, self.kvstore, transport,
                              use_gpu=gpu["attention"], sessions=served, offload=offload)
            actor = AttentionActor.options(name=name, namespace=NAMESPACE, **_ray_options(pool)).remote(spec)
            self.attention.append(Replica(worker_id, "attention", actor))
            specs.update({d: offload for d in served})
        for replica in self.attention:
            try:
                info = ray.get(replica.actor.info.remote())
            except ray.exceptions.RayActorError as e:
                raise ClusterStartError(f"replica {replica.worker_id} failed to start: "
                                        f"{e if self.verbose else _cause(e)}") from None
            self.progress(f"attention replica {replica.worker_id} ready: {info.num_blocks} blocks of "
                          f"{info.block_size} tokens for each of {', '.join(info.sessions)}")
        return specs

    def _wait_ready(self) -> list:
        """Each replica's EngineInfo, in pool order; a line as each finishes loading the model."""
        replicas = list(self.pools.all)
        self.progress(f"loading the model in {len(replicas)} replicas ({', '.join(r.worker_id for r in replicas)})")
        start = time.monotonic()
        refs = {r.actor.info.remote(): r for r in replicas}
        infos, pending = {}, list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            replica = refs[done[0]]
            try:
                infos[replica.worker_id] = ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                raise ClusterStartError(f"replica {replica.worker_id} failed to start: "
                                        f"{e if self.verbose else _cause(e)}") from None
            self.progress(f"replica {replica.worker_id} ready ({time.monotonic() - start:.1f} s)")
        ready = [infos[r.worker_id] for r in replicas]
        try:
            one_block_size(ready)
        except ValueError as e:
            raise ClusterStartError(str(e)) from None
        return ready

    def _write_marker(self) -> None:
        """So that `tierserve submit` on this machine finds this cluster by name (cluster/bringup/ray_connect.py)."""
        if not ray.util.client.ray.is_connected():
            write_marker(self.config.name, ray.get_runtime_context().gcs_address)
            self._marker = True

    def shutdown(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()  # its loops' pings and readers stop before the actors and Ray go
        if self._marker:
            remove_marker(self.config.name)
            self._marker = False
        for r in self.pools.all + self.attention:
            try:
                ray.get(r.actor.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 — a dead replica needs no shutdown
                pass
            ray.kill(r.actor)
        self.pools, self.attention = Pools(), []
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


def _cause(error: Exception) -> str:
    """The last line of a replica's start-up failure (its exception; all of Ray's text with verbose)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def one_block_size(engines: Sequence[EngineInfo]) -> int:
    """The KV block size every replica uses (block hashes, the prefix index and the handoff all
    count in blocks); ValueError naming the replicas when they differ."""
    sizes = {e.block_size for e in engines}
    if len(sizes) != 1:
        raise ValueError("replicas must share one KV block size, got "
                         + ", ".join(f"{e.worker_id}: {e.block_size}" for e in engines))
    return sizes.pop()


def make_dispatcher(info: ClusterInfo, pools: Pools) -> Dispatcher:
    """A dispatcher over a cluster's replicas (the serving router's, or a batch job's own)."""
    events = KVEventSubscriber(connect_redis(info.kvstore), RedisKeys(info.kvstore.key_prefix))
    view = ClusterView(pools, one_block_size(info.engines), events, host_pull_weight=info.host_pull_weight,
                       policy=info.policy, max_predicted=info.max_predicted)
    return Dispatcher(view, load_tokenizer(info.model), model_name=os.path.basename(info.model.rstrip("/")),
                      max_model_len=min(e.max_model_len for e in info.engines),
                      vocab_size=info.engines[0].vocab_size, eos_token_ids=info.engines[0].eos_token_ids)


def _ray_options(pool: PoolConfig) -> dict:
    hw = pool.hardware
    options = {"num_cpus": hw.num_cpus, "num_gpus": hw.num_gpus, **RESTART_OPTIONS}
    if hw.accelerator_type:
        options["accelerator_type"] = hw.accelerator_type
    if hw.resources:
        options["resources"] = dict(hw.resources)
    return options
