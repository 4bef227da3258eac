"""Single-process mode: the router in front of one AsyncLLMEngine in the same process.

    serve_local("path/to/checkpoint", RouterConfig(http_port=8000, grpc_port=50051))
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from pathlib import Path

from engine.async_engine import AsyncLLMEngine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.segments.spec import SegmentReuse
from router.backend import BackendHealth, BackendStats, HealthState, Tokenizer
from router.config import RouterConfig
from router.server import Router


class LocalEngineBackend:
    """A GenerationBackend over an in-process AsyncLLMEngine (no KV handoff: 0 bytes)."""

    def __init__(self, engine: AsyncLLMEngine, model_name: str | None = None):
        self.engine = engine
        self.model_name = model_name or Path(engine.engine.config.model).name
        self.tokenizer: Tokenizer = engine.tokenizer
        self.max_model_len: int = engine.engine.max_model_len

    @classmethod
    def from_config(cls, config: EngineConfig, model_name: str | None = None) -> LocalEngineBackend:
        """Load the checkpoint and start the engine's stepping thread."""
        return cls(AsyncLLMEngine(LLMEngine(config)), model_name)

    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 cache_salt: str | None, segments: SegmentReuse | None = None
                 ) -> AsyncGenerator[RequestOutput, None]:
        return self.engine.generate(request_id, list(prompt_token_ids), params, cache_salt, segments=segments)

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)

    def stats(self) -> BackendStats:
        s = self.engine.stats()
        return BackendStats(num_waiting=s.num_waiting, num_running=s.num_running,
                            num_blocks_used=s.num_blocks - s.num_free_blocks, num_blocks_total=s.num_blocks,
                            prefix_cache_query_tokens=s.prefix_cache_queries,
                            prefix_cache_hit_tokens=s.prefix_cache_hits, num_preemptions=s.num_preemptions,
                            step_totals=s.step_totals, segments=s.segments)

    def health(self) -> BackendHealth:
        """One pool of one replica: ready while the engine's stepping thread runs."""
        state = HealthState.READY if self.engine.running else HealthState.DOWN
        return BackendHealth({"engine": {"engine": state}})

    def shutdown(self) -> None:
        """Stop the engine's stepping thread."""
        self.engine.shutdown()


def serve_local(model_dir: str | Path, config: RouterConfig, engine_config: EngineConfig | None = None,
                on_started: Callable[[Router], None] | None = None) -> None:
    """Load ``model_dir`` into one engine and serve it over gRPC and HTTP until SIGINT/SIGTERM.

    ``engine_config`` sets cache, scheduler and device options; its ``model`` is replaced.
    ``on_started`` is called with the running Router once its ports are bound.
    """
    base = engine_config or EngineConfig(model=str(model_dir))
    backend = LocalEngineBackend.from_config(replace(base, model=str(model_dir)))
    try:
        Router(backend, config).serve_forever(on_started)
    finally:
        backend.shutdown()
