"""The token ids that end a generation, from every checkpoint file that names them.

config.json's eos_token_id (ModelConfig), generation_config.json's (chat checkpoints often
list their end-of-turn tokens only there; transformers' generate reads it) and the
tokenizer's eos_token from tokenizer_config.json. A checkpoint without a tokenizer keeps
the first two.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.model_config import CheckpointError, ModelConfig
from engine.tokenizer import AnyTokenizer


def eos_token_ids(path: str | Path, model_config: ModelConfig, tokenizer: AnyTokenizer) -> tuple[int, ...]:
    eos = set(model_config.eos_token_ids) | set(generation_config_eos(path))
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return tuple(sorted(eos))


def generation_config_eos(path: str | Path) -> tuple[int, ...]:
    """generation_config.json's eos_token_id (an id or a list of ids); () without the file."""
    file = Path(path) / "generation_config.json"
    if not file.is_file():
        return ()
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None
    eos = raw.get("eos_token_id") if isinstance(raw, dict) else None
    ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"{file}: eos_token_id must be a token id or a list of them, got {eos!r}")
    return tuple(ids)
