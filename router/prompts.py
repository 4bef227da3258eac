"""Prompts as clients send them (text, token ids, chat messages) turned into token ids,
off the event loop.

Both servers share one event loop, so request work done on it stalls every stream and
health check: tokenizing a 2 MB prompt on the loop froze it for 6 s. `PromptWork` runs
body parsing, chat templating and tokenization in a few worker threads (the tokenizer
releases the GIL while it encodes); small inputs stay inline, where a thread hop would cost
more than the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from engine.sampling_params import InvalidRequestError
from router.backend import Tokenizer

T = TypeVar("T")
INLINE_CHARS = 4096   # inputs up to this size are handled on the loop (well under a millisecond)
THREADS = 4


def prompt_token_ids(tokenizer: Tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """Tokenize text, or check a token-id list; the backend checks the vocabulary."""
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


def check_length(ids: list[int], max_model_len: int) -> list[int]:
    """Refuse a prompt with no room for output here, before it is copied towards the backend."""
    if len(ids) >= max_model_len:
        raise InvalidRequestError(f"prompt has {len(ids)} tokens; max_model_len is {max_model_len}, "
                                  "which leaves no room for output")
    return ids


class PromptWork:
    """Request preparation in worker threads: parse, template, tokenize."""

    def __init__(self, tokenizer: Tokenizer, max_model_len: int, threads: int = THREADS):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="router-prep")

    async def run(self, size: int, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)``, in a worker thread when ``size`` (characters, bytes or items) is large."""
        if size <= INLINE_CHARS:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def prompt(self, prompt: str | Sequence[int]) -> list[int]:
        return await self.run(len(prompt), self._prompt, prompt)

    async def chat(self, messages: list[dict[str, str]]) -> list[int]:
        size = sum(len(m["content"]) + len(m["role"]) for m in messages)
        return await self.run(size, self._chat, messages)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _prompt(self, prompt: str | Sequence[int]) -> list[int]:
        return check_length(prompt_token_ids(self.tokenizer, prompt), self.max_model_len)

    def _chat(self, messages: list[dict[str, str]]) -> list[int]:
        return check_length(chat_prompt_token_ids(self.tokenizer, messages), self.max_model_len)
