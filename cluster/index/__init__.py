"""The router side of the KV index: which replicas hold which prefixes and segments.

Fed by the workers' KV events (kvstore/kv_events.py), asked by the dispatcher's routing
(cluster/cluster_view.py, cluster/fleet_router.py, cluster/prefill_board.py) how many leading
blocks of a prompt each replica holds:

- prefix_index.py: the reference, a radix tree over chained block hashes;
- compact_index.py: the same answers at fleet scale, over prefix_core.py (block ids -> interned
  holder states: block_table.py, holder_states.py; the C core _prefix_core.c, built at install,
  with a numpy fallback);
- index_follower.py: a router's index kept in step with the event stream, from a snapshot;
- segment_index.py: which replicas hold which segments (segment reuse).

It imports only cluster/config.py from the cluster, and kvstore and engine's light modules.
"""
