"""The format of a compressed KV block (kvstore/kv_codec.py compresses): what encoder and
decoders share, without torch.

Payload of one compressed block: a 32-byte header (magic, version, bits, dtype, geometry,
groups; it describes the payload, so any reader decodes it whatever its own setting),
then one record per (layer, kv head), in that order: K codes [block_size, head_dim / per
byte], V codes (same), K minimum [head_dim] and K scale [head_dim] (fp16), V minimum
[block_size, groups] and V scale (fp16). A raw block is exactly ``bytes_per_block`` long,
a compressed one never is: the length tells them apart.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvstore.config import HOST_TIER_CODECS
from kvstore.errors import LayoutMismatchError
from kvstore.layout import KV_DTYPES, KVLayout

CODEC_BITS: dict[str, int] = {"kivi4": 4, "kivi2": 2}  # names as in kvstore.config.HOST_TIER_CODECS
assert set(CODEC_BITS) | {"exact"} == set(HOST_TIER_CODECS)
MAGIC, VERSION, SCHEME_KIVI = b"TSKV", 1, 1
HEADER_BYTES = 32
_HEADER = struct.Struct("<4sBBBBHHHHHH")  # magic, version, scheme, bits, dtype, L, block, heads, dim, groups
_DTYPE_CODE = {name: code for code, name in enumerate(KV_DTYPES)}
CODEC_DTYPES = ("float32", "bfloat16", "float16")
MAX_VALUE_GROUP = 128


def value_group(head_dim: int) -> int:
    """Channels per value group: the largest power of two dividing head_dim, at most 128."""
    return min(head_dim & -head_dim, MAX_VALUE_GROUP)


@dataclass(frozen=True)
class CodecFormat:
    """The compressed form of blocks of one layout; ``payload_bytes`` per block."""

    layout: KVLayout
    bits: int
    group: int  # value group (channels); the key group is the block

    @classmethod
    def of(cls, layout: KVLayout, codec: str) -> CodecFormat | None:
        """The format ``codec`` gives ``layout``; None for 'exact' or where it cannot save bytes."""
        if codec == "exact":
            return None
        fmt = cls(layout, CODEC_BITS[codec], value_group(layout.head_dim))
        return fmt if fmt.usable else None

    @property
    def per_byte(self) -> int:
        return 8 // self.bits

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    @property
    def groups(self) -> int:
        return self.layout.head_dim // self.group

    @property
    def code_bytes(self) -> int:
        """Bytes of K (or V) codes in one (layer, head) record."""
        return self.layout.block_size * self.layout.head_dim // self.per_byte

    @property
    def record_bytes(self) -> int:
        """One (layer, kv head): K and V codes, K min/scale per channel, V min/scale per token group."""
        return 2 * self.code_bytes + 4 * self.layout.head_dim + 4 * self.layout.block_size * self.groups

    @property
    def payload_bytes(self) -> int:
        return HEADER_BYTES + self.layout.num_layers * self.layout.num_kv_heads * self.record_bytes

    @property
    def usable(self) -> bool:
        lay = self.layout
        return (lay.dtype in CODEC_DTYPES and lay.head_dim % 8 == 0 and lay.block_size < 1 << 16
                and self.payload_bytes < lay.bytes_per_block)

    def header(self) -> bytes:
        lay = self.layout
        packed = _HEADER.pack(MAGIC, VERSION, SCHEME_KIVI, self.bits, _DTYPE_CODE[lay.dtype], lay.num_layers,
                              lay.block_size, lay.num_kv_heads, lay.head_dim, self.groups, lay.block_size)
        return packed.ljust(HEADER_BYTES, b"\0")

    @classmethod
    def parse(cls, payload: bytes | memoryview, layout: KVLayout, what: str) -> CodecFormat:
        """The format a compressed payload's header names, checked against the reader's layout."""
        if len(payload) < HEADER_BYTES:
            raise LayoutMismatchError(f"{what}: {len(payload)} bytes is neither a raw {layout.tag} block "
                                      f"({layout.bytes_per_block} bytes) nor a compressed one")
        magic, version, scheme, bits, dtype, *dims, groups, key_group = _HEADER.unpack_from(payload)
        if magic != MAGIC or version != VERSION or scheme != SCHEME_KIVI or bits not in (2, 4):
            raise LayoutMismatchError(f"{what}: not a payload this version can decode (magic {magic!r}, "
                                      f"version {version}, scheme {scheme}, bits {bits})")
        names = list(KV_DTYPES)
        num_layers, block_size, num_kv_heads, head_dim = dims
        stored = KVLayout(num_layers, block_size, num_kv_heads, head_dim, names[dtype]) if dtype < len(names) else None
        if stored != layout or key_group != layout.block_size:
            raise LayoutMismatchError(f"{what}: compressed for layout {stored.tag if stored else dtype}, "
                                      f"cache is {layout.tag}")
        group = layout.head_dim // groups if groups and layout.head_dim % groups == 0 else 0
        fmt = cls(layout, bits, group)
        if group & (group - 1) or not group or group % fmt.per_byte or len(payload) != fmt.payload_bytes:
            raise LayoutMismatchError(f"{what}: {len(payload)} bytes with {groups} value groups do not make "
                                      f"a {bits}-bit {layout.tag} payload")
        return fmt
