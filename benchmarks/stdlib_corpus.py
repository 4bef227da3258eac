"""Text every machine has: the Python standard library's ``.py`` sources (and, on request,
installed packages'), split into train and held-out files by a hash of each file's path.

Files are named ``<root>/<path inside it>`` (``stdlib/json/decoder.py``), so the split does not
depend on where Python is installed; it does depend on the Python version (3.11 and 3.12 ship
different files), which ``Corpus.describe`` records with a digest of the texts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SKIP_PARTS = {"site-packages", "dist-packages", "__pycache__"}
MAX_FILE_BYTES = 1 << 20  # a few generated tables in the test suite are larger


@dataclass(frozen=True)
class SourceFile:
    name: str  # "<root>/<relative path>"
    text: str


@dataclass(frozen=True)
class Corpus:
    train: tuple[SourceFile, ...]
    heldout: tuple[SourceFile, ...]

    def describe(self) -> dict:
        digest = hashlib.sha256()
        for f in self.train + self.heldout:
            digest.update(f.name.encode() + b"\0" + f.text.encode() + b"\0")
        return {"python": sys.version.split()[0], "train_files": len(self.train),
                "heldout_files": len(self.heldout), "train_chars": sum(len(f.text) for f in self.train),
                "heldout_chars": sum(len(f.text) for f in self.heldout), "sha256": digest.hexdigest()}


def source_roots(packages: tuple[str, ...] = ()) -> dict[str, Path]:
    """The standard library's directory, and each named installed package's."""
    roots = {"stdlib": Path(sysconfig.get_paths()["stdlib"])}
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"{name!r} is not an installed package")
        roots[name] = Path(next(iter(spec.submodule_search_locations)))
    return roots


def heldout_name(name: str, percent: float) -> bool:
    """Whether a file belongs to the held-out split (a hash of its name, not its position)."""
    return _hash(name) % 10000 < percent * 100


def read_corpus(roots: dict[str, Path], heldout_percent: float = 3.0,
                max_chars: int | None = None) -> Corpus:
    """Every readable UTF-8 ``.py`` file under ``roots``, in the order of their names' hashes (so a
    ``max_chars`` cap takes a spread of the library, not its first packages alphabetically, and
    reads only what it takes); the held-out side is capped at ``heldout_percent`` of ``max_chars``
    (at least one file)."""
    paths = sorted(_iter_paths(roots), key=lambda item: (_hash(item[0]), item[0]))
    split = {False: [], True: []}
    for name, path in paths:
        split[heldout_name(name, heldout_percent)].append((name, path))
    caps = (None, None) if max_chars is None else (max_chars, int(max_chars * heldout_percent / 100))
    return Corpus(*(tuple(take_chars(_read(split[side]), cap)) for side, cap in zip((False, True), caps)))


def _iter_paths(roots: dict[str, Path]):
    for root_name, root in sorted(roots.items()):
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIP_PARTS]  # prune: never walk site-packages
            for file in files:
                path = Path(folder, file)
                if file.endswith(".py") and path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                    yield f"{root_name}/{path.relative_to(root).as_posix()}", path


def _read(paths: list[tuple[str, Path]]):
    for name, path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield SourceFile(name, text)


def take_chars(files, max_chars: int | None) -> list[SourceFile]:
    """Files from the start of ``files`` until the next would pass ``max_chars`` (at least one)."""
    out, total = [], 0
    for f in files:
        if max_chars is not None and out and total + len(f.text) > max_chars:
            break
        out.append(f)
        total += len(f.text)
    return out


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
