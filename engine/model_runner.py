"""Runs the model for one scheduled step: owns the weights, the KV cache and CUDA graphs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from engine.attention import AttentionBackend, AttentionMetadata
from engine.batch import ModelInput
from engine.cuda_graphs import DecodeGraphs
from engine.model.llama import ForwardContext, LlamaForCausalLM
from engine.prefill_graphs import PrefillGraphs
from engine.shared_step_graph import SharedStepGraph


class KVCacheLost(RuntimeError):
    """Raised by a runner whose cache's contents are gone (its attention worker restarted):
    the engine drops the step and every request recomputes its KV, as after preemption."""


class StepRunner(Protocol):
    """What the engine needs of a runner: logits of a step's sampling rows. ``ModelRunner``
    holds the KV cache itself; a runner whose attention (and KV) live elsewhere implements the
    same (attention_offload.runner): the engine's block ids then name blocks of that cache."""

    @property
    def num_blocks(self) -> int:
        """Blocks of the KV cache the engine allocates from."""

    last_graphed: bool

    def execute(self, inp: ModelInput) -> torch.Tensor:
        """fp32 logits [num_samples, vocab] for the rows that sample this step."""

    def release_shared(self) -> None:
        """Nothing is running: drop per-batch state (graphs, plans)."""


# builds the runner around the engine's loaded model (LLMEngine's ``runner_factory``)
RunnerFactory = Callable[[LlamaForCausalLM], StepRunner]


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, backend: AttentionBackend, num_blocks: int,
                 block_size: int):
        cfg = model.config
        weight = model.model.embed_tokens.weight
        self.model, self.backend = model, backend
        self.device, self.dtype = weight.device, weight.dtype
        self.block_size = block_size
        self.kv_cache = torch.zeros(cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads,
                                    cfg.head_dim, dtype=self.dtype, device=self.device)
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self.shared_graph: SharedStepGraph | None = None
        self.shared_prefix_steps = 0
        self.last_graphed = False  # whether the last step replayed a CUDA graph

    @property
    def num_blocks(self) -> int:
        return self.kv_cache.shape[2]

    def capture_graphs(self, max_num_seqs: int, max_model_len: int, max_num_batched_tokens: int) -> None:
        self.graphs = DecodeGraphs(self.model, self.kv_cache, self.backend, max_num_seqs,
                                   max_model_len, self.block_size)
        self.graphs.capture()
        self.shared_graph = SharedStepGraph(self.graphs)
        self.prefill_graphs = PrefillGraphs(self.model, self.kv_cache, self.backend, max_num_batched_tokens,
                                            self.graphs.pool)
        self.prefill_graphs.capture()

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Run one small mixed step (a 9-token prompt beside a decode row, no KV written) so the
        first request does not wait for the prefill kernels to compile; their integer arguments
        are not specialized, so this one variant serves every later batch shape."""
        q_lens, seq_lens = (9, 1), (9, 10)
        width = -(-seq_lens[1] // self.block_size)
        ints = dict(dtype=torch.int32, device=self.device)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor([0, q_lens[0], sum(q_lens)], **ints),
            seq_lens=torch.tensor(seq_lens, **ints),
            block_tables=torch.zeros(2, width, **ints),  # block 0, read but never written
            slot_mapping=torch.full((sum(q_lens),), -1, dtype=torch.int64, device=self.device),
            max_query_len=q_lens[0], max_seq_len=seq_lens[1], decode_only=False)
        positions = torch.tensor([*range(seq_lens[0]), seq_lens[1] - 1], dtype=torch.int64, device=self.device)
        self.model(torch.zeros_like(positions), positions, ForwardContext(self.kv_cache, meta, self.backend))

    def release_shared(self) -> None:
        """Let go of the shared-prefix graph and layout (nothing is running)."""
        if self.shared_graph is not None:
            self.shared_graph.release()

    @torch.inference_mode()
    def execute(self, inp: ModelInput) -> torch.Tensor:
        """fp32 logits [num_samples, vocab] for the rows that sample this step."""
        meta = inp.meta
        self.shared_prefix_steps += meta.shared is not None
        hidden, self.last_graphed = None, False
        if (self.graphs is not None and meta.decode_only
                and self.graphs.can_run(meta.num_seqs, meta.max_seq_len)):
            if meta.shared is None:
                self.shared_graph.release()  # no shared batch: its graph and layout can go
                hidden, self.last_graphed = self.graphs.run(inp.input_ids, inp.positions, meta), True
            else:  # replayed, captured (after the batch kept its plan a few steps) or None: eager
                hidden, self.last_graphed = self.shared_graph.run(inp.input_ids, inp.positions, meta)
        elif self.graphs is not None and meta.shared is None:  # a step with prefill rows
            hidden = self.graphs.run_token_rows(inp.input_ids, inp.positions, meta)
            if hidden is None and self.prefill_graphs is not None:
                hidden = self.prefill_graphs.run(inp.input_ids, inp.positions, meta)
            self.last_graphed = hidden is not None
        if hidden is None:
            ctx = ForwardContext(self.kv_cache, meta, self.backend)
            hidden = self.model(inp.input_ids, inp.positions, ctx)
        return self.model.compute_logits(hidden[inp.sample_rows])
