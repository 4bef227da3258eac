"""A router process for tests: follows a cluster's KV event stream (IndexFollower) and routes
with the fleet router, driven by JSON lines on stdin (one answer line each on stdout).

  python -m tests.cluster.router_process REDIS_URL KEY_PREFIX ROUTER_ID RATIO SLACK_TOKENS SLACK_REQUESTS

Commands: {"cmd": "restore"}, {"cmd": "sync", "until": ID}, {"cmd": "snapshot"},
{"cmd": "route", "replicas": [...], "loads": [...], "inflight": [...], "prompts": [[id, ...], ...],
"block_size": N}, {"cmd": "exit"}. Imports neither torch nor Ray.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import redis

from cluster.fleet_router import Balance, FleetRouter
from cluster.index.index_follower import IndexFollower, stream_id
from kvstore.keys import RedisKeys
from kvstore.kv_events import KVEventSubscriber


def main(url: str, prefix: str, router_id: str, ratio: str, slack_tokens: str, slack_requests: str) -> None:
    client = redis.Redis.from_url(url)
    follower = IndexFollower(KVEventSubscriber(client, RedisKeys(prefix)), snapshot_interval_s=3600,
                             router_id=router_id)
    balance = Balance(float(ratio), float(slack_tokens), int(slack_requests))
    for line in sys.stdin:
        ask = json.loads(line)
        if ask["cmd"] == "restore":
            restored = follower.restore()
            answer = {"restored": None if restored is None else restored.__dict__}
        elif ask["cmd"] == "sync":
            while stream_id(follower.position) < stream_id(ask["until"]):
                follower.poll(block_ms=1000)
            answer = {"position": follower.position, "events": follower.applied_events,
                      "blocks": follower.applied_blocks, "indexed": len(follower.index)}
        elif ask["cmd"] == "snapshot":
            answer = {"written": follower.write_snapshot(*follower.export())}
        elif ask["cmd"] == "route":
            router = FleetRouter(ask["replicas"], follower.index, ask["block_size"], balance=balance)
            router.loads[:], router.inflight[:] = ask["loads"], ask["inflight"]
            prompts = [np.array(p, np.uint64) for p in ask["prompts"]]
            answer = {"choices": [router.route(p, len(p) * ask["block_size"]) for p in prompts],
                      "matches": [follower.index.matched_blocks(p) for p in prompts]}
        else:
            return
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:7])
