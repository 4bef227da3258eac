"""What one forward pass tells the attention layers about its batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.shared_prefix import SharedPrefixPlan


@dataclass
class AttentionMetadata:
    """Layout of a flattened mixed prefill/decode batch over a paged KV cache.

    The batch holds ``B`` sequences whose new tokens are concatenated into ``T`` rows.
    Sequence ``i`` owns query rows ``query_start_loc[i]:query_start_loc[i+1]``; those
    tokens sit at positions ``seq_lens[i] - q_len_i .. seq_lens[i] - 1`` of the sequence,
    and each attends causally to every cached key at a position <= its own.

    Attributes:
        query_start_loc: int32 [B + 1], cumulative query lengths, starting at 0.
        seq_lens: int32 [B], tokens in the KV cache for each sequence after this step's
            keys are written (context plus new tokens).
        block_tables: int32 [B, max_blocks], physical block ids of each sequence in order;
            entries past a sequence's last block are undefined (kernels must not read them).
        slot_mapping: int64 [T], flat cache slot (block_id * block_size + offset) for each
            new token's key and value; -1 means "do not write" (padding rows).
        max_query_len: host int, the largest query length in the batch.
        max_seq_len: host int, an upper bound on ``seq_lens`` (kernels may size grids by it;
            under CUDA graphs it is the captured bound, not the live maximum).
        decode_only: host bool, every sequence has exactly one query row.
        shared: for decode-only batches whose sequences share leading blocks, the plan of
            shared segments (engine.attention.shared_prefix); backends may use it to read
            each shared block once for all its sequences. None otherwise.
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    max_query_len: int
    max_seq_len: int
    decode_only: bool
    shared: SharedPrefixPlan | None = None

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens.shape[0])
