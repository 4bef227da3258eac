"""Payload checksums, tagged with their algorithm so any reader can verify them.

xxh3-64 (about 10 GB/s) where the ``xxhash`` package is installed, zlib's crc32
(about 2 GB/s) otherwise. The stored form is ``<tag>:<hex digest>`` as bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from kvstore.errors import ChecksumMismatchError

Buffer = bytes | bytearray | memoryview

try:
    import xxhash
except ImportError:  # pragma: no cover - depends on the environment
    xxhash = None  # type: ignore[assignment]  # crc32 then

_ALGORITHMS: dict[bytes, Callable[[Buffer], int]] = {b"crc32": zlib.crc32}
if xxhash is not None:
    _ALGORITHMS[b"xxh3"] = xxhash.xxh3_64_intdigest
PREFERRED = b"xxh3" if xxhash is not None else b"crc32"


def checksum(data: Buffer, algorithm: bytes = PREFERRED) -> bytes:
    """The tagged checksum of ``data``."""
    return algorithm + b":" + format(_ALGORITHMS[algorithm](data), "x").encode()


def verify(data: Buffer, stored: bytes, what: str) -> None:
    """Raise ChecksumMismatchError unless ``stored`` is the checksum of ``data``."""
    algorithm, _, _ = stored.partition(b":")
    if algorithm not in _ALGORITHMS:
        raise ChecksumMismatchError(f"{what}: checksum algorithm {algorithm.decode(errors='replace')!r} "
                                    f"is not available here (install xxhash)")
    actual = checksum(data, algorithm)
    if actual != stored:
        raise ChecksumMismatchError(f"{what}: checksum mismatch (stored {stored.decode(errors='replace')}, "
                                    f"computed {actual.decode()}); the payload is corrupt")
