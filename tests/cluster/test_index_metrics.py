"""/metrics reports the router's prefix index: its size, memory, pending predictions and the
KV event blocks applied (issue 22)."""

from __future__ import annotations

from cluster.cluster_view import ClusterView
from cluster.pool_handles import Pools, Replica
from engine.block_hash import hash_blocks
from kvstore.kv_events import EventKind, KVEvent
from router.backend import BackendHealth, BackendStats
from router.metrics import RouterMetrics


class IndexBackend:
    """What the dispatcher reports of its view (Dispatcher.stats), without a cluster."""

    model_name, tokenizer, max_model_len = "m", None, 128

    def __init__(self, view: ClusterView):
        self.view = view

    def stats(self) -> BackendStats:
        size = self.view.index_size()
        return BackendStats(prefix_index_blocks=size.blocks, prefix_index_bytes=size.nbytes,
                            prefix_index_predicted=size.predicted, kv_event_blocks=7)

    def health(self) -> BackendHealth:
        return BackendHealth({})


def sample(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_metrics_report_the_prefix_index():
    view = ClusterView(Pools(), 4, None)
    hashes = hash_blocks(list(range(24)), 4)
    view.prefixes.apply(KVEvent("p0", EventKind.STORED, hashes=tuple(hashes[:4]), parents=(0, *hashes[:3])))
    view.routed(Replica("p1", "prefill", None), view.shape(list(range(24)), None))
    text = RouterMetrics(IndexBackend(view)).exposition().decode()
    assert sample(text, "tierserve_router_prefix_index_blocks") == 6
    assert sample(text, "tierserve_router_prefix_index_predicted") == 6
    assert 0 < sample(text, "tierserve_router_prefix_index_bytes") < 1e6
    assert sample(text, "tierserve_router_kv_event_blocks_total") == 7
