"""A model worker's engine and its attention worker, linked by gloo pair groups formed through
the test Redis. The attention worker serves on a thread of this process, or in a child process
(a test kills it: a real death, its sockets close)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import torch.multiprocessing as mp

from attention_offload.link import Link, LinkEndpoint
from attention_offload.runner import OffloadedRunner, offloaded_engine
from attention_offload.worker import AttentionShape, AttentionWorker
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, parse_dtype
from engine.model_config import ModelConfig
from kvstore.config import TransportConfig
from kvstore.keys import RedisKeys
from tests.attention_offload.offload_peers import ATTENTION, MODEL, run_model, serve_attention

SECRET = "offload-test-secret-" + "y" * 16


def engine_config(model: Path, *, num_blocks: int = 64, block_size: int = 16, max_num_seqs: int = 64,
                  max_num_batched_tokens: int = 2048, prefix_caching: bool = False) -> EngineConfig:
    return EngineConfig(model=str(model), async_scheduling=False,
                        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks,
                                          enable_prefix_caching=prefix_caching),
                        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs,
                                                  max_num_batched_tokens=max_num_batched_tokens))


def transport(timeout_s: float = 30.0) -> TransportConfig:
    return TransportConfig(advertise_host="127.0.0.1", transfer_timeout_s=timeout_s, rendezvous_timeout_s=20.0,
                           secret=SECRET)


class LocalOffload:
    """``engine``: an LLMEngine whose attention runs on an attention worker.

    restartable: a broken link re-attaches to a new attention worker (``restarts`` counts them).
    attention_process: the attention worker runs in a child process; ``events`` gets its
    session ends ("ended", (reason, tables left)). Else it is ``worker``, serving on a thread.
    with_engine False: no model worker here yet (``attach_model`` makes one).
    """

    def __init__(self, redis_url: str, config: EngineConfig, micro_batches: int, timeout_s: float = 30.0,
                 restartable: bool = False, attention_process: bool = False, with_engine: bool = True):
        self.redis_url, self.redis = redis_url, redis.Redis.from_url(redis_url)
        self.prefix = f"t-{uuid.uuid4().hex[:8]}"
        self.keys = RedisKeys(self.prefix)
        self.config, self.timeout_s, self.micro_batches = config, timeout_s, micro_batches
        self.restartable, self.attention_process = restartable, attention_process
        cfg = ModelConfig.from_dir(config.model)
        self.shape, self.dtype = AttentionShape.of(cfg), parse_dtype(config.dtype or cfg.torch_dtype)
        self.ended: list[str] = []
        self.restarts = 0
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["tests.attention_offload.offload_peers"])  # children fork after torch loads
        self.events = self.ctx.Queue()
        self.process = self.serving = self.engine = None
        self.model_end = LinkEndpoint(MODEL, self.redis, self.keys, transport(timeout_s), "cpu")
        if attention_process:
            self._spawn_attention()
        else:
            self.worker = AttentionWorker(self.shape, config.cache.num_blocks, config.cache.block_size, self.dtype)
            self.attention_end = LinkEndpoint(ATTENTION, self.redis, self.keys, transport(timeout_s), "cpu")
        if with_engine:
            self.attach_model()

    @property
    def runner(self) -> OffloadedRunner:
        return self.engine.runner

    def attach_model(self) -> None:
        """A model worker here (a new engine, empty accounting) attached to the attention worker."""
        self.link = self._connect()
        self.engine = offloaded_engine(self.config, self.link, self.config.cache.num_blocks, self.micro_batches,
                                       reattach=self._restart if self.restartable else None)

    def _connect(self) -> Link:
        if self.attention_process:
            return self.model_end.connect(ATTENTION)
        return self._serve_session(lambda: self.model_end.connect(ATTENTION))

    def _serve_session(self, connect_model) -> Link:
        """Form the link (the model end by ``connect_model``) and serve it on a thread."""
        with ThreadPoolExecutor(1) as pool:
            theirs = pool.submit(self.attention_end.connect, MODEL)
            link = connect_model()
            attention_link = theirs.result(timeout=60)
        worker = self.worker
        self.serving = threading.Thread(target=lambda: self.ended.append(worker.serve(attention_link)), daemon=True)
        self.serving.start()
        return link

    def _spawn_attention(self) -> None:
        self.process = self.ctx.Process(target=serve_attention, daemon=True, args=(
            self.redis_url, self.prefix, self.shape, self.config.cache.num_blocks, self.config.cache.block_size,
            self.dtype, transport(self.timeout_s), self.events))
        self.process.start()

    def _restart(self) -> Link:
        """The reattach hook: a new attention process (an empty cache)."""
        self.restarts += 1
        self._spawn_attention()
        return self.model_end.connect(ATTENTION)

    def kill_attention(self) -> None:
        self.process.kill()
        self.process.join(timeout=30)

    def model_process(self, prompts, params, until_tokens: int):
        """A model worker in a child process that runs ``prompts`` until each has ``until_tokens``
        tokens and then waits to be killed; this side serves it on a thread. Returns the process
        and the number of requests it had running."""
        proc = self.ctx.Process(target=run_model, daemon=True, args=(
            self.redis_url, self.prefix, self.config, self.micro_batches, prompts, params, until_tokens,
            transport(self.timeout_s), self.events))
        proc.start()
        self._serve_session(lambda: None)
        return proc, self.next_event("stepped", timeout_s=120)

    def next_event(self, kind: str, timeout_s: float = 60.0):
        while True:
            got, value = self.events.get(timeout=timeout_s)
            if got == kind:
                return value

    def close(self) -> None:
        if self.engine is not None and not self.runner.link.broken:
            self.runner.detach()
        if self.process is not None:
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()
        if self.serving is not None:
            self.serving.join(timeout=30)
        if not self.attention_process:
            self.attention_end.close_all()
        self.model_end.close_all()
        self.redis.close()
