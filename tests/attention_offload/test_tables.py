"""The control message and the block tables moved as deltas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attention_offload.control import ControlError, Kind, StepControl
from attention_offload.runner import pack_qkv
from attention_offload.tables import TableMirror, TableSender
from engine.batch import HostBatch


def host(rows: dict[str, list[int]], q_lens: list[int], seq_lens: list[int]) -> HostBatch:
    starts = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    return HostBatch(list(rows), starts, np.asarray(seq_lens, dtype=np.int32),
                     [np.asarray(r, dtype=np.int32) for r in rows.values()])


def roundtrip(ctrl: StepControl) -> StepControl:
    kind, step, b, m, size = StepControl.read_header(ctrl.header())
    payload = ctrl.payload()
    assert (payload is None and size == 0) or len(payload) == size
    return StepControl.decode(kind, step, b, m, None if payload is None else payload.numpy())


def test_decode_steps_send_only_new_blocks():
    sender, mirror = TableSender(), TableMirror(block_size=4, device=torch.device("cpu"))
    first = sender.step(host({"a": [7, 3], "b": [5]}, [6, 2], [6, 2]), [0, 1, 2])
    assert first.new_blocks.tolist() == [7, 3, 5] and first.seqs[:, 3].tolist() == [0, 0]
    mirror.apply(roundtrip(first))
    # a: one more token in its last block; b: a new block
    second = sender.step(host({"a": [7, 3], "b": [5, 9]}, [1, 1], [7, 5]), [0, 2])
    assert second.new_blocks.tolist() == [9]
    assert second.seqs[:, 3].tolist() == [2, 1]        # keep
    assert second.seqs[:, 0].tolist() == first.seqs[:, 0].tolist()  # same handles
    (meta,) = mirror.apply(roundtrip(second))
    assert meta.block_tables.tolist() == [[7, 3], [5, 9]]
    assert meta.slot_mapping.tolist() == [3 * 4 + 2, 9 * 4 + 0]  # position 6 of a, 4 of b
    assert meta.seq_lens.tolist() == [7, 5] and meta.query_start_loc.tolist() == [0, 1, 2]
    assert meta.decode_only


def test_a_replaced_table_goes_whole_and_absent_sequences_are_dropped():
    sender, mirror = TableSender(), TableMirror(block_size=4, device=torch.device("cpu"))
    mirror.apply(roundtrip(sender.step(host({"a": [1, 2], "b": [3]}, [5, 1], [5, 1]), [0, 2])))
    assert len(mirror) == 2
    # a was preempted and restarted on other blocks; b is not in this step
    ctrl = sender.step(host({"a": [4]}, [3], [3]), [0, 1])
    assert ctrl.seqs[0, 3] == 0 and ctrl.new_blocks.tolist() == [4]
    (meta,) = mirror.apply(roundtrip(ctrl))
    assert len(mirror) == 1 and meta.block_tables.tolist() == [[4]]
    # b comes back: sent whole, under a new handle
    back = sender.step(host({"a": [4], "b": [3, 8]}, [1, 1], [4, 5]), [0, 2])
    assert back.seqs[1, 3] == 0 and back.new_blocks.tolist() == [3, 8]
    metas = mirror.apply(roundtrip(back))
    assert metas[0].block_tables.tolist() == [[4, 0], [3, 8]]


def test_micro_batch_metadata_and_sizes():
    sender, mirror = TableSender(), TableMirror(block_size=4, device=torch.device("cpu"))
    ctrl = roundtrip(sender.step(host({"a": [1], "b": [2, 3], "c": [4]}, [3, 6, 1], [3, 6, 1]), [0, 1, 3]))
    assert ctrl.micro_batch_tokens() == [3, 7]
    first, second = mirror.apply(ctrl)
    assert first.slot_mapping.tolist() == [4, 5, 6]
    assert second.query_start_loc.tolist() == [0, 6, 7]
    assert second.slot_mapping.tolist() == [8, 9, 10, 11, 12, 13, 16]
    assert not second.decode_only and second.max_query_len == 6


def test_reset_and_bad_headers():
    sender = TableSender()
    assert roundtrip(sender.reset()).kind is Kind.RESET
    header = sender.step(host({"a": [1]}, [1], [1]), [0, 1]).header()
    header[0] = 12345
    with pytest.raises(ControlError, match="magic"):
        StepControl.read_header(header)


def test_keep_beyond_what_the_mirror_has_is_refused():
    mirror = TableMirror(block_size=4, device=torch.device("cpu"))
    ctrl = StepControl(Kind.STEP, 0, np.array([0, 1]), np.array([[9, 1, 5, 1, 1]]), np.array([3]))
    with pytest.raises(ValueError, match="keeps 1 blocks"):
        mirror.apply(ctrl)


def test_pack_qkv_uses_the_projection_buffer_when_it_can():
    qkv = torch.randn(5, 8 + 4 + 4)
    q, k, v = qkv.split((8, 4, 4), dim=-1)
    q, k, v = q.view(5, 2, 4), k.view(5, 1, 4), v.view(5, 1, 4)
    packed = pack_qkv(q, k, v)
    assert packed.data_ptr() == qkv.data_ptr() and torch.equal(packed, qkv)
    fresh = pack_qkv(q * 1, k * 1, v)  # rotated copies (the CPU path): concatenated
    assert fresh.data_ptr() != qkv.data_ptr() and torch.equal(fresh, qkv)


def test_a_longer_table_with_other_leading_blocks_goes_whole():
    """Same request, as many blocks or more, but not the ones sent: compared by content, not by length."""
    sender, mirror = TableSender(), TableMirror(block_size=4, device=torch.device("cpu"))
    first = sender.step(host({"a": [1, 2], "b": [3, 4]}, [8, 8], [8, 8]), [0, 2])
    mirror.apply(first)
    ctrl = sender.step(host({"a": [5, 6, 7], "b": [3, 4, 9]}, [9, 1], [9, 9]), [0, 1, 2])
    assert ctrl.seqs[:, 3].tolist() == [0, 2] and ctrl.new_blocks.tolist() == [5, 6, 7, 9]
    assert ctrl.seqs[:, 0].tolist() == first.seqs[:, 0].tolist()
    a, b = mirror.apply(roundtrip(ctrl))
    assert a.block_tables.tolist() == [[5, 6, 7]] and b.block_tables.tolist() == [[3, 4, 9]]
