"""The model worker's runner: every operator but attention here, attention on the attention worker.

``OffloadedRunner`` is an engine ``StepRunner`` (engine.model_runner): the engine keeps its
scheduler, block accounting, prefix hashes and sampler, and its block ids name blocks of the
attention worker's cache. Each step splits the batch into up to ``micro_batches`` micro-batches
of about equal tokens, sends the control message, and runs the split layer loop
(engine.model.split_forward) with ``RemoteAttention``: each micro-batch's packed q/k/v go up as
soon as its pre-attention half is done, with the receive of its output already posted, and the
next micro-batch's dense work runs while it is away.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

import numpy as np
import torch

from attention_offload.control import Kind, StepControl
from attention_offload.link import Link, LinkError, layer_tag
from attention_offload.tables import TableSender
from engine.batch import ModelInput
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.llama import LlamaForCausalLM
from engine.model.split_forward import forward_split, micro_batch_bounds
from engine.model_runner import KVCacheLost

if TYPE_CHECKING:
    from torch.distributed.distributed_c10d import Work


def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v as one [T, q_size + 2 kv_size] tensor: the qkv projection's own buffer when they
    are still its views (CUDA rotates in place), else a concatenation."""
    tokens = q.shape[0]
    width = q[0].numel() + k[0].numel() + v[0].numel()
    es = q.element_size()
    views = all(t.stride(0) == width and t[0].is_contiguous() for t in (q, k, v))
    if (views and k.data_ptr() == q.data_ptr() + q[0].numel() * es
            and v.data_ptr() == k.data_ptr() + k[0].numel() * es and q.dtype == k.dtype == v.dtype):
        return torch.as_strided(q, (tokens, width), (width, 1))
    return torch.cat([q.reshape(tokens, -1), k.reshape(tokens, -1), v.reshape(tokens, -1)], dim=1)


class RemoteAttention:
    """A split-loop executor whose attention runs across ``link`` (one step's worth)."""

    def __init__(self, link: Link, row_bounds: list[int], q_size: int, dtype: torch.dtype, device: torch.device):
        """``device``: the model's. A link on another device (gloo to a CPU attention worker from
        a GPU) gets host copies of q/k/v, and its outputs are copied back."""
        self.link, self.q_size, self.dtype, self.device = link, q_size, dtype, device
        self.sizes = [hi - lo for lo, hi in zip(row_bounds, row_bounds[1:])]
        self.sent: list = []
        self.receiving: dict[tuple[int, int], tuple[torch.Tensor, Work]] = {}

    def start(self, layer: int, micro_batch: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        packed = pack_qkv(q, k, v).to(self.link.device)
        out = torch.empty(self.sizes[micro_batch], self.q_size, dtype=self.dtype, device=self.link.device)
        tag = layer_tag(layer, micro_batch)
        self.receiving[layer, micro_batch] = (out, self.link.recv(self.link.down, out, tag))
        self.sent.append((packed, self.link.send(self.link.up, packed, tag)))

    def finish(self, layer: int, micro_batch: int) -> torch.Tensor:
        out, work = self.receiving.pop((layer, micro_batch))
        self.link.wait(work, f"receiving layer {layer}'s attention")
        return out.to(self.device)

    def close(self) -> None:
        """Wait for what was sent (its buffers are held until then)."""
        for _, work in self.sent:
            self.link.wait(work, "sending q/k/v")
        self.sent.clear()


class OffloadedRunner:
    """A StepRunner over ``link``; ``num_blocks`` is the attention worker's cache size."""

    last_graphed = False

    def __init__(self, model: LlamaForCausalLM, link: Link, num_blocks: int, micro_batches: int = 2,
                 reattach: Callable[[], Link] | None = None):
        """``reattach``: called when the link breaks; returns a link to a (restarted) attention
        worker of the same cache size, or raises. Without it a broken link stops the engine."""
        if not 1 <= micro_batches <= 8:
            raise ValueError(f"micro_batches must be in 1..8, got {micro_batches}")
        weight = model.model.embed_tokens.weight
        self.model, self.link, self.num_blocks = model, link, num_blocks
        self.micro_batches = micro_batches
        self.device, self.dtype = weight.device, weight.dtype
        self.q_size = model.config.q_size
        self.tables = TableSender()
        self.reattach = reattach
        self.num_reattached = 0
        self._reattaching: Future | None = None
        self._reattacher: ThreadPoolExecutor | None = None
        self.last_control: StepControl | None = None
        self.steps_by_micro_batches: collections.Counter[int] = collections.Counter()

    @torch.inference_mode()
    def execute(self, inp: ModelInput) -> torch.Tensor:
        host = inp.host
        if host is None:
            raise ValueError("an offloaded step needs the host batch (engine.batch.build_model_input)")
        self._await_reattached()
        starts = host.query_start_loc
        bounds = micro_batch_bounds(np.diff(starts).tolist(), self.micro_batches)
        ctrl = self.last_control = self.tables.step(host, bounds)
        self.steps_by_micro_batches[len(bounds) - 1] += 1
        rows = [int(starts[b]) for b in bounds]
        try:
            held = self.link.send_control(ctrl)
            executor = RemoteAttention(self.link, rows, self.q_size, self.dtype, self.device)
            hidden = forward_split(self.model, inp.input_ids, inp.positions, rows, executor)
            executor.close()
            for _, work in held:
                self.link.wait(work, "sending the control message")
        except LinkError as exc:
            if self.reattach is None:
                raise
            if self._reattacher is None:
                self._reattacher = ThreadPoolExecutor(1, thread_name_prefix="reattach")
            self._reattaching = self._reattacher.submit(self.reattach)
            raise KVCacheLost(f"the attention worker's cache is gone ({exc}); every request recomputes") from exc
        return self.model.compute_logits(hidden[inp.sample_rows])

    def _await_reattached(self, wait_s: float = 0.25) -> None:
        """While a re-attachment runs (on its own thread), wait a moment for it and raise KVCacheLost
        if it is not done: the engine's step returns, and its thread answers commands (load pings)
        between the attempts instead of hanging until the attention worker is back. A re-attachment
        that failed raises its error (the engine stops)."""
        if self._reattaching is None:
            return
        try:
            link = self._reattaching.result(timeout=wait_s)
        except FutureTimeout:
            raise KVCacheLost("re-attaching to the attention worker") from None
        self._reattaching = None
        self.link, self.tables = link, TableSender()
        self.num_reattached += 1

    def release_shared(self) -> None:
        """The engine went idle: the attention worker forgets the last step's tables too (else
        they would stay until the next step)."""
        if self.tables.holding and not self.link.broken:
            try:
                self.reset()
            except LinkError:
                pass  # the next step finds the link broken and re-attaches

    def detach(self) -> None:
        """End the session: the attention worker stops serving this link."""
        for _, work in self.link.send_control(StepControl(Kind.STOP, -1)):
            self.link.wait(work, "sending a stop")

    def reset(self) -> None:
        """Tell the attention worker to forget every block table (after re-attaching)."""
        for _, work in self.link.send_control(self.tables.reset()):
            self.link.wait(work, "sending a reset")


def offloaded_engine(config: EngineConfig, link: Link, num_blocks: int, micro_batches: int = 2,
                     reattach: Callable[[], Link] | None = None,
                     build: Callable[..., LLMEngine] = LLMEngine) -> LLMEngine:
    """An engine whose attention and KV cache are on the attention worker at the other end of
    ``link`` (``num_blocks`` blocks there). Shared-prefix attention and CUDA graphs are the
    local runner's and are off here."""
    config = dataclasses.replace(config, shared_prefix_attention=False, cuda_graphs=False,
                                 cache=dataclasses.replace(config.cache, num_blocks=num_blocks))
    return build(config, runner_factory=lambda model: OffloadedRunner(model, link, num_blocks, micro_batches,
                                                                      reattach))
