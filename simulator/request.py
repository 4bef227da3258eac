"""A request's state while it moves through the simulated cluster (plain slots, for speed)."""

from __future__ import annotations


class Request:
    """Times are absolute simulated seconds; -1.0 means not reached."""

    __slots__ = ("index", "arrival", "prompt", "output", "hash_ids", "cached", "remaining", "computed",
                 "reserved", "prefill_start", "ttft_at", "first_decode_at", "first_step_s", "finish_at",
                 "k_join", "prefill_replica", "decode_replica", "shared_runs", "generated", "batch_seq",
                 "last_token_at", "preemptions", "shared_kv")

    def __init__(self, index: int, arrival: float, prompt: int, output: int, hash_ids: tuple[int, ...] | None):
        self.index, self.arrival, self.prompt, self.output, self.hash_ids = index, arrival, prompt, output, hash_ids
        self.cached = 0          # prompt tokens found in the prefix cache
        self.remaining = prompt  # prompt tokens still to compute
        self.computed = 0        # prompt tokens whose KV exists (cached or computed)
        self.reserved = 0        # KV tokens reserved on the replica that holds the request
        self.prefill_start = -1.0
        self.ttft_at = -1.0
        self.first_decode_at = -1.0
        self.first_step_s = 0.0
        self.finish_at = -1.0
        self.k_join = 0
        self.prefill_replica = None
        self.decode_replica = None
        self.shared_runs = ()    # runs of prompt blocks other requests also hold (shared_prefix.py)
        self.generated = 0       # tokens made so far (as of joining a decode batch, or of a preemption)
        self.batch_seq = -1      # its entry in a decode batch; -1 when not running there
        self.last_token_at = -1.0  # when its last token came, as of a preemption
        self.preemptions = 0
        self.shared_kv = 0       # of its KV, tokens in prefix-cache blocks it uses, stored once (paged on demand)
