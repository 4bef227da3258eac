"""A CUDA graph of shared-prefix (Hydragen) decode steps, replayed while the batch keeps its plan.

Plain decode steps replay graphs captured per padded batch size (``cuda_graphs``). A shared
step cannot: its launches are sized by the plan's work layout (segments, member tiles, the
partial buffers), which belongs to one batch. But in steady decoding the batch keeps its
plan for many steps (``PlanCache`` hands out the same ``plan.layout`` while every request
keeps its block list), and eager shared steps are bound by launch overhead (BENCHMARKS.md:
~25 ms at 256 x 1K against 17 ms for a plain step under a graph). So once a batch has kept
its layout for ``capture_after`` steps, the step is captured, exactly for that batch, and
replayed until the layout changes. What changes between those steps (ids, positions, slots,
lengths, block tables) goes through the plain graphs' static buffers; the per-step shared
tensors (suffix tables and lengths) are device arithmetic on those buffers, captured in the
graph. Captures use the plain graphs' memory pool (graphs never run at the same time), and
the grid bound is the same ``max_model_len``, so the suffix split count is fixed.

A capture step runs the step eagerly first (its result is the step's; it also builds the
layout for the bound, the only host-to-device copies, which a capture may not contain),
then captures. Capturing 32 layers costs about as much as a few eager steps: ``capture_after``
(default 3) skips batches that change every step or two, as under a stream of arrivals.
Captures happen while serving, so other threads may be using the device (KV handoffs, the
host tier): the capture is thread-local (their calls are not refused), and a capture that
fails anyway leaves that batch to eager steps. The graph and the batch's layout are let go
as soon as a decode step runs without a plan or the engine has nothing to run.
"""

from __future__ import annotations

import logging
from typing import cast

import torch

from engine.attention import AttentionMetadata
from engine.attention.shared_prefix import SharedPrefixPlan
from engine.cuda_graphs import DecodeGraphs

log = logging.getLogger(__name__)


class SharedStepGraph:
    def __init__(self, graphs: DecodeGraphs, capture_after: int = 3):
        if capture_after < 1:
            raise ValueError(f"capture_after must be >= 1, got {capture_after}")
        self.graphs = graphs
        self.capture_after = capture_after
        self.captures = 0
        self.replays = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._output: torch.Tensor | None = None
        self._held: tuple = ()  # the tensors the graph reads, kept alive with it
        # the layout of the last steps and how many in a row; a graph, if any, is captured for it
        self._seen: dict | None = None
        self._streak = 0
        self._failed: dict | None = None  # a layout whose capture failed: eager from then on

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> tuple[torch.Tensor | None, bool]:
        """Hidden states of a shared decode step and whether a graph was replayed; (None, False)
        when the step should run eagerly (the batch has not kept its layout long enough)."""
        plan, n = meta.shared, input_ids.shape[0]
        if plan is None:
            raise ValueError("SharedStepGraph.run needs a step with a shared-prefix plan")
        if self._graph is not None and plan.layout is self._seen and n == cast(torch.Tensor, self._output).shape[0]:
            self.graphs.load(input_ids, positions, meta, n)
            self._graph.replay()
            self.replays += 1
            return self._output, True
        if plan.layout is not self._seen:
            self.drop()  # the batch changed: the graph will not be replayed again
            self._seen, self._streak = plan.layout, 0
        self._streak += 1
        if self._streak < self.capture_after or plan.layout is self._failed:
            return None, False
        return self._capture(input_ids, positions, meta, plan), False

    def release(self) -> None:
        """Let go of the graph and of the last batch's layout (no shared batch is running)."""
        self.drop()
        self._seen = self._failed = None
        self._streak = 0

    @torch.inference_mode()
    def _capture(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                 plan: SharedPrefixPlan) -> torch.Tensor:
        self.drop()
        graphs, n = self.graphs, input_ids.shape[0]
        graphs.load(input_ids, positions, meta, n)

        def forward() -> tuple[torch.Tensor, SharedPrefixPlan]:
            # a fresh plan each time: its per-step tensors are built from the static buffers
            # (inside the capture, the second time); the layout is the batch's, shared
            step_plan = SharedPrefixPlan(plan.segments, plan.suffix_start, layout=plan.layout)
            ctx = graphs.context(n, shared=step_plan)
            return graphs.model(graphs.input_ids[:n], graphs.positions[:n], ctx), step_plan
        hidden, _ = forward()  # this step's result; builds the layout for the graph's bound
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=graphs.pool, capture_error_mode="thread_local"):
                output, captured_plan = forward()
        except RuntimeError as e:  # the step's result stands; this batch stays eager
            log.warning("capturing a shared-prefix step of %d sequences failed (%s); its batch runs "
                        "eagerly", n, e)
            self._failed = plan.layout
            return hidden
        self._graph, self._output = graph, output
        self._held = (captured_plan.tensors, dict(plan.layout))
        self.captures += 1
        return hidden

    def drop(self) -> None:
        """Forget the captured graph (its memory goes back to the shared pool)."""
        self._graph = self._output = None
        self._held = ()
