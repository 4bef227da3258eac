"""The host-memory tier: block payloads kept in Redis, checksummed and LRU-bounded.

Each block is one Redis hash ``<p>:blk:<key>`` with its payload (``d``) and a tagged
checksum of it (``c``). The payload is the block's bytes (the block-major
``[L, 2, block_size, H, D]`` slice of the cache), or with a lossy ``codec`` its
compressed form (kvstore/kv_codec.py: a self-describing header and KIVI codes, never
``bytes_per_block`` long), so a reader decodes each block by what it holds, whatever
its own codec. With a codec, the last ``residual_tokens`` of each put (whole blocks: the
tokens nearest what follows) stay exact, as KIVI keeps its recent tokens. Writes and reads
are pipelined in batches of about ``batch_bytes``. Room
is reserved before writing by a Lua script that evicts unpinned blocks, least recently
used first; the index (holder ``redis-host``, tier host) changes together with the payloads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import redis
import torch

from kvstore import lua
from kvstore.block_codec import (
    block_bytes,
    block_index_tensor,
    block_major_shape,
    gather_block_major,
    scatter_block_major,
)
from kvstore.block_index import BlockIndex
from kvstore.block_key import BlockKey
from kvstore.checksum import checksum, verify
from kvstore.errors import CapacityError, LayoutMismatchError, MissingBlocksError
from kvstore.keys import HOST_WORKER, RedisKeys, Tier, holder_field
from kvstore.kv_codec import CodecFormat, decode, encode
from kvstore.layout import KVLayout
from kvstore.leases import LeaseTable
from kvstore.staging import HostStaging


class HostTier:
    """put/get a request's blocks between a paged KV cache and Redis memory."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, index: BlockIndex, leases: LeaseTable,
                 capacity_bytes: int, *, codec: str, residual_tokens: int, batch_bytes: int = 64 << 20) -> None:
        self._redis, self._keys, self._index, self._leases = client, keys, index, leases
        self.capacity_bytes = capacity_bytes
        self.codec = codec  # how put stores blocks (KVStoreConfig.host_tier_codec)
        self.residual_tokens = residual_tokens  # the put's last tokens kept exact (..._codec_residual_tokens)
        self._batch_bytes = batch_bytes
        self._reserve = client.register_script(lua.RESERVE)
        self._staging = HostStaging()  # raw blocks; its lock guards _coded too
        self._coded = HostStaging()    # compressed payloads

    def put(self, keys: Sequence[BlockKey], kv: torch.Tensor, block_ids: Sequence[int]) -> int:
        """Store the blocks ``kv[:, :, block_ids]`` under ``keys``; returns how many were new.

        Blocks already present are only marked used. Raises CapacityError when the
        unpinned rest of the tier cannot make room. With a codec, the blocks holding the
        last ``residual_tokens`` are stored exact.
        """
        layout, ids = self._check(keys, kv, block_ids)
        fmt = CodecFormat.of(layout, self.codec)  # None: raw bytes
        todo = [i for i, present in enumerate(self.contains(keys)) if not present]
        residual_from = len(keys) - residual_blocks(self.residual_tokens, layout.block_size)
        written = 0
        with self._staging.lock:
            for part in _batches(todo, self._batch_blocks(layout, fmt)):
                if fmt is None:
                    rows = self._raw_rows(kv, ids[part])
                else:
                    rows = self._coded_rows(kv, ids[part], fmt, [i >= residual_from for i in part])
                written += self._write([keys[i] for i in part], rows)
        self._index.touch(HOST_WORKER, Tier.HOST, keys)
        return written

    def get(self, keys: Sequence[BlockKey], kv: torch.Tensor, block_ids: Sequence[int]) -> None:
        """Copy the stored blocks ``keys`` into ``kv[:, :, block_ids]``, verifying checksums.

        Raises MissingBlocksError if any is absent, ChecksumMismatchError if corrupt.
        """
        layout, ids = self._check(keys, kv, block_ids)
        batch = self._batch_blocks(layout, CodecFormat.of(layout, self.codec))
        with self._leases.pinned(keys), self._staging.lock:
            for part in _batches(list(range(len(keys))), batch):
                batch_keys = [keys[i] for i in part]
                self._load(kv, ids[part], batch_keys, self._read(batch_keys), layout)
        self._index.touch(HOST_WORKER, Tier.HOST, keys)

    def contains(self, keys: Sequence[BlockKey]) -> list[bool]:
        """Whether each block's payload is stored (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(self._keys.payload(str(key)))
        return [bool(n) for n in pipe.execute()]

    def used_bytes(self) -> int:
        """Payload bytes held now."""
        return int(self._redis.get(self._keys.host_used) or 0)

    def _check(self, keys: Sequence[BlockKey], kv: torch.Tensor,
               block_ids: Sequence[int]) -> tuple[KVLayout, torch.Tensor]:
        layout = KVLayout.of_cache(kv)
        layout.check_cache(kv)
        if len(keys) != len(block_ids):
            raise ValueError(f"{len(keys)} keys but {len(block_ids)} block ids")
        wrong = next((k for k in keys if k.layout != layout), None)
        if wrong is not None:
            raise LayoutMismatchError(f"block {wrong} has layout {wrong.layout.tag}, cache is {layout.tag}")
        return layout, block_index_tensor(block_ids, kv.shape[2], kv.device)

    def _batch_blocks(self, layout: KVLayout, fmt: CodecFormat | None) -> int:
        return max(1, self._batch_bytes // (fmt.payload_bytes if fmt else layout.bytes_per_block))

    def _raw_rows(self, kv: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
        """Blocks ``ids`` as rows of bytes in the raw staging buffer (hold the lock)."""
        return block_bytes(gather_block_major(kv, ids, self._staging.view(block_major_shape(kv, len(ids)), kv.dtype)))

    def _coded_rows(self, kv: torch.Tensor, ids: torch.Tensor, fmt: CodecFormat,
                    exact: list[bool]) -> list[np.ndarray]:
        """Blocks ``ids`` compressed, as rows in the staging buffers; raw where ``exact`` says so or
        the codec cannot hold one."""
        payloads, raw = encode(kv, ids, fmt)
        raw |= torch.tensor(exact, dtype=torch.bool)
        staging = self._coded.view(tuple(payloads.shape), torch.uint8)
        staging.copy_(payloads)  # from CUDA: synchronous, since pinned staging is reused
        rows = list(staging.numpy())
        if raw.any():
            where = raw.nonzero().flatten()
            for r, row in zip(where.tolist(), self._raw_rows(kv, ids[where.to(ids.device)])):
                rows[r] = row
        return rows

    def _write(self, keys: list[BlockKey], rows: Sequence[np.ndarray]) -> int:
        sizes = [row.nbytes for row in rows]
        need = sum(sizes)
        self._make_room(need)
        pipe = self._redis.pipeline(transaction=False)
        for key, row in zip(keys, rows):
            pipe.hset(self._keys.payload(str(key)), mapping={"d": memoryview(row), "c": checksum(row)})
        try:
            fresh = [added > 0 for added in pipe.execute()]
        except Exception:
            self._redis.incrby(self._keys.host_used, -need)
            raise
        if not all(fresh):  # a concurrent writer stored some first: their room is counted
            self._redis.incrby(self._keys.host_used, -sum(n for n, f in zip(sizes, fresh) if not f))
        new = [k for k, f in zip(keys, fresh) if f]
        self._index.add(HOST_WORKER, Tier.HOST, new, [-1] * len(new))
        return len(new)

    def _make_room(self, need: int) -> None:
        if need > self.capacity_bytes:
            raise CapacityError(f"a batch of {need} bytes exceeds the host tier's capacity "
                                f"of {self.capacity_bytes} bytes")
        reserved, *_ = self._reserve(keys=[self._keys.host_used, self._keys.lru(HOST_WORKER, Tier.HOST)],
                                     args=[need, self.capacity_bytes, self._keys.prefix,
                                           holder_field(HOST_WORKER, Tier.HOST)])
        if not reserved:
            raise CapacityError(f"host tier full: {self.used_bytes()} of {self.capacity_bytes} bytes "
                                f"are pinned by leases, {need} more needed")

    def _read(self, keys: list[BlockKey]) -> list[bytes]:
        """The payloads of ``keys``, checksums verified."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self._keys.payload(str(key)), "d", "c")
        payloads = []
        for key, (data, stored) in zip(keys, pipe.execute()):
            if data is None or stored is None:
                raise MissingBlocksError(f"host tier does not hold block {key}")
            verify(data, stored, f"host block {key}")
            payloads.append(data)
        return payloads

    def _load(self, kv: torch.Tensor, ids: torch.Tensor, keys: list[BlockKey], payloads: list[bytes],
              layout: KVLayout) -> None:
        """Write verified payloads into blocks ``ids``: raw ones as they are, compressed ones decoded."""
        coded: dict[CodecFormat, list[int]] = {}
        raw = []
        for i, data in enumerate(payloads):
            if len(data) == layout.bytes_per_block:
                raw.append(i)
            else:
                coded.setdefault(CodecFormat.parse(data, layout, f"host block {keys[i]}"), []).append(i)
        if raw:
            staging = self._staging.view((len(raw), *layout.block_shape), layout.torch_dtype)
            for row, i in zip(block_bytes(staging), raw):
                row[:] = np.frombuffer(payloads[i], dtype=np.uint8)
            scatter_block_major(kv, ids[raw], staging)
        for fmt, where in coded.items():
            staging = self._coded.view((len(where), fmt.payload_bytes), torch.uint8)
            rows = staging.numpy()
            for row, i in zip(rows, where):
                row[:] = np.frombuffer(payloads[i], dtype=np.uint8)
            decode(kv, ids[where], staging, fmt)


def residual_blocks(residual_tokens: int, block_size: int) -> int:
    """Blocks holding a put's last ``residual_tokens`` (whole blocks), which a codec leaves exact."""
    return -(-residual_tokens // block_size)


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
