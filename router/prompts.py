"""Prompts as clients send them (text, token ids, chat messages) turned into token ids."""

from __future__ import annotations

from collections.abc import Sequence

from engine.sampling_params import InvalidRequestError
from router.backend import Tokenizer


def prompt_token_ids(tokenizer: Tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """Tokenize text, or check a token-id list; the backend checks lengths and the vocabulary."""
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt is empty")
        return tokenizer.encode(prompt)
    ids = list(prompt)
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise InvalidRequestError("prompt token ids must be integers")
    return ids


def chat_prompt_token_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Render messages with the model's chat template and tokenize the result.

    Templates that write the BOS token themselves would get a second one from the
    tokenizer; the duplicate is dropped.
    """
    if not messages:
        raise InvalidRequestError("messages must contain at least one message")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    ids = prompt_token_ids(tokenizer, text)
    bos = tokenizer.bos_token_id
    return ids[1:] if bos is not None and ids[:2] == [bos, bos] else ids
