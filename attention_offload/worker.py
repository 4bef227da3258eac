"""The attention worker: holds a paged KV cache and runs only attention, for one model worker.

It has no weights. Per step it reads the model worker's control message (block-table deltas
and lengths: ``attention_offload.tables``), then for each layer and micro-batch, in the model
worker's order, receives the packed rotated q/k/v of the new tokens, writes k and v into its
cache (the engine's layout and backend: torch on CPU, Triton on CUDA) and sends the attention
output back. The model worker owns block accounting: block ids name blocks of this cache.

KV computed elsewhere (a prefill worker's handoff) lands in ``kv_cache`` by ``KVHandoff.recv``
into the blocks the model worker reserved.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import torch

from attention_offload.control import Kind, StepControl
from attention_offload.link import Link, LinkError, layer_tag
from attention_offload.tables import TableMirror
from engine.attention import AttentionBackend, AttentionMetadata, default_backend_name, get_backend
from engine.model_config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionShape:
    """What the attention worker must know of the model: its attention geometry."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> AttentionShape:
        return cls(cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def bytes_per_block(self, block_size: int, dtype: torch.dtype) -> int:
        return self.num_layers * 2 * block_size * self.kv_size * dtype.itemsize


@dataclass
class SessionStats:
    steps: int = 0
    tokens: int = 0
    layer_calls: int = 0


class AttentionWorker:
    def __init__(self, shape: AttentionShape, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", backend: AttentionBackend | None = None):
        self.shape, self.block_size, self.dtype = shape, block_size, dtype
        self.device = torch.device(device)
        self.backend = backend or get_backend(default_backend_name(self.device))
        self.kv_cache = torch.zeros(shape.num_layers, 2, num_blocks, block_size, shape.num_kv_heads, shape.head_dim,
                                    dtype=dtype, device=self.device)
        self.scale = shape.head_dim ** -0.5
        self.mirror = TableMirror(block_size, self.device)
        self.stats = SessionStats()

    @property
    def num_blocks(self) -> int:
        return self.kv_cache.shape[2]

    def attend(self, layer: int, meta: AttentionMetadata, qkv: torch.Tensor) -> torch.Tensor:
        """Write the new k, v of packed ``qkv`` [T, q_size + 2 kv_size] into layer ``layer``'s
        cache and attend: [T, q_size]."""
        s = self.shape
        tokens = qkv.shape[0]
        q, k, v = qkv.split((s.q_size, s.kv_size, s.kv_size), dim=-1)
        q = q.view(tokens, s.num_heads, s.head_dim)
        k = k.view(tokens, s.num_kv_heads, s.head_dim)
        v = v.view(tokens, s.num_kv_heads, s.head_dim)
        k_cache, v_cache = self.kv_cache[layer, 0], self.kv_cache[layer, 1]
        self.backend.write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
        return self.backend.forward(q, k_cache, v_cache, meta, self.scale).reshape(tokens, -1)

    @torch.inference_mode()
    def run_step(self, link: Link, ctrl: StepControl, mirror: TableMirror | None = None) -> None:
        """One step's layers: receive, attend, send back, (layer, micro-batch) in order; the
        receive of the next pair is posted before this one's attention runs."""
        metas = (mirror or self.mirror).apply(ctrl)
        sizes = ctrl.micro_batch_tokens()
        width = self.shape.q_size + 2 * self.shape.kv_size
        order = [(layer, j) for layer in range(self.shape.num_layers) for j in range(len(sizes))]

        def post(i: int):
            layer, j = order[i]
            buf = torch.empty(sizes[j], width, dtype=self.dtype, device=link.device)  # the cache's unless staged
            return buf, link.recv(link.up, buf, layer_tag(layer, j))

        self.stats.steps += 1  # counted first: the model side may see the step's last output before it ends here
        self.stats.tokens += int(sum(sizes))
        self.stats.layer_calls += len(order)
        sends: collections.deque = collections.deque()
        pending = post(0)
        for i, (layer, j) in enumerate(order):
            buf, work = pending
            if i + 1 < len(order):
                pending = post(i + 1)
            link.wait(work, f"receiving layer {layer} of step {ctrl.step}")
            out = self.attend(layer, metas[j], buf.to(self.device)).to(link.device)
            sends.append((out, link.send(link.down, out, layer_tag(layer, j))))
            while len(sends) > 2 * len(sizes):
                link.wait(sends.popleft()[1], "sending an attention output")
        while sends:
            link.wait(sends.popleft()[1], "sending an attention output")

    def serve(self, link: Link) -> str:
        """Serve one model worker until it detaches (returns "stopped") or the link breaks
        (returns the reason). Each session has its own tables, starting empty (``mirror`` is the
        latest session's): a session still ending cannot touch its successor's. Block contents
        stay; the model worker's accounting says what they hold."""
        mirror = self.mirror = TableMirror(self.block_size, self.device)
        while True:
            try:
                ctrl = link.recv_control()
                if ctrl.kind is Kind.STOP:
                    mirror.reset()
                    return "stopped"
                if ctrl.kind is Kind.RESET:
                    mirror.reset()
                    continue
                self.run_step(link, ctrl, mirror)
            except LinkError as exc:
                mirror.reset()
                log.warning("attention session ended: %s", exc)
                return str(exc)
            except Exception as exc:  # a bad message or an attention error: the model side must not wait on
                mirror.reset()
                link.abandon()
                log.exception("attention session failed")
                return f"{type(exc).__name__}: {exc}"
