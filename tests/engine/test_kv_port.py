"""The engine's KV port (engine/kv_port.py) over two engines of this process, with a block
transport (kvstore/transport.py) that copies between their caches: what a prefill and a decode
worker do, without Ray or a network."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest
import torch

from engine.async_engine import AsyncLLMEngine
from engine.block_pool import BlockEvents
from engine.kv_port import KVPort
from engine.outputs import Reservation
from engine.sampling_params import SamplingParams
from kvstore.transport import BlockTransport, Peer
from tests.engine.conftest import make_engine

PROMPT = [0, 42, 385, 81, 14, 349, 400, 3] * 5
SEEDED = SamplingParams(max_tokens=12, temperature=0.8, top_k=50, seed=11, ignore_eos=True)


class Mailbox:
    """``BlockTransport[Peer]`` over one cache: send leaves a copy of the blocks for the request,
    receive takes it into this cache."""

    def __init__(self, kv: torch.Tensor, box: dict[str, torch.Tensor]):
        self.kv, self.box = kv, box

    async def send(self, block_ids: Sequence[int], to: Peer) -> int:
        self.box[to.request_id] = self.kv[:, :, list(block_ids)].clone()
        return self.box[to.request_id].numel() * self.kv.element_size()

    async def receive(self, block_ids: Sequence[int], source: Peer) -> int:
        blocks = self.box.pop(source.request_id)
        self.kv[:, :, list(block_ids)] = blocks
        return blocks.numel() * self.kv.element_size()


@pytest.fixture
def pair(tiny_model):
    engines = [AsyncLLMEngine(make_engine(tiny_model, num_blocks=32, prefix_caching=True, detokenize=False))
               for _ in range(2)]
    yield engines
    for e in engines:
        e.shutdown()


async def handoff(prefill: KVPort, decode: KVPort, rid: str, params: SamplingParams,
                  compute_here: bool = False) -> tuple[list[int], Reservation | None]:
    """The prefill and decode workers' calls: hold, export, import, send, receive, release, arrived."""
    box: dict[str, torch.Tensor] = {}
    sender: BlockTransport[Peer] = Mailbox(prefill.cache, box)
    receiver: BlockTransport[Peer] = Mailbox(decode.cache, box)
    first = [t async for d in prefill.hold(rid, PROMPT, dataclasses.replace(params, max_tokens=1))
             for t in d.new_token_ids]
    held = await prefill.export_blocks(rid)
    assert held.block_ids and held.num_prompt_tokens == len(PROMPT)
    reservation = await decode.import_blocks(rid, PROMPT, first, params, held.generator_state,
                                             compute_here=compute_here)
    assert reservation is not None
    if reservation.block_ids:
        skip = reservation.num_cached_blocks
        await sender.send(held.block_ids[skip:skip + len(reservation.block_ids)], Peer("decode", rid))
        await receiver.receive(reservation.block_ids, Peer("prefill", rid))
    prefill.release(rid)
    sink: asyncio.Queue = asyncio.Queue()
    await decode.arrived(rid, sink)
    tokens = list(first)
    while True:
        delta = await sink.get()
        tokens += delta.new_token_ids
        if delta.finished:
            return tokens, reservation


@pytest.mark.parametrize("compute_here", [False, True], ids=["kv-sent", "computed-here"])
def test_prefill_here_decode_there_through_the_port(tiny_model, pair, compute_here):
    expected = make_engine(tiny_model).generate([PROMPT], SEEDED)[0].token_ids
    prefill, decode = (e.kv_port for e in pair)
    tokens, reservation = asyncio.run(handoff(prefill, decode, "r1", SEEDED, compute_here))
    assert tokens == expected
    assert (reservation == Reservation([], 0)) == compute_here
    for engine in pair:
        stats = engine.stats()
        assert stats.num_free_blocks == stats.num_blocks and stats.num_kv_handoffs == 0


def test_a_released_prompt_exports_nothing_and_prefix_blocks_go_back(pair):
    port = pair[0].kv_port

    async def run():
        with pytest.raises(KeyError):
            await port.export_blocks("never-held")
        blocks = await port.reserve_prefix(3)
        assert blocks is not None and len(blocks) == 3 and pair[0].stats().num_free_blocks == 29
        await port.free_prefix(blocks)
        assert pair[0].stats().num_free_blocks == 32
    asyncio.run(run())


def test_events_of_a_held_prompt_are_drained_once(pair):
    port = pair[0].kv_port
    greedy = SamplingParams(max_tokens=1, temperature=0)

    async def run():
        async for _ in port.hold("r1", PROMPT, greedy):
            pass
    port.drain_events()
    asyncio.run(run())
    events = port.drain_events()
    assert len(events) == 1 and isinstance(events[0], BlockEvents)
    assert len(events[0].stored) == len(PROMPT) // port.block_size
    assert port.drain_events() == []
    port.release("r1")
