"""A checkpoint's tokenizer (tokenizer.json through `tokenizers`) and its chat template.

A checkpoint without tokenizer.json still serves token ids: `load_tokenizer` gives it a
`NoTokenizer`, which refuses text and chat with a client error and decodes to "" (vLLM's
``--skip-tokenizer-init``). A tokenizer.json that is there but unreadable is a CheckpointError.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from engine.model_config import CheckpointError
from engine.sampling_params import InvalidRequestError

log = logging.getLogger(__name__)

NO_TOKENIZER = "this model was loaded without a tokenizer: send the prompt as token ids"
NO_TOKENIZER_CHAT = ("this model was loaded without a tokenizer: chat requests need one; "
                     "send a completion with the prompt as token ids")

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class Tokenizer:
    has_vocab = True

    def __init__(self, path: str | Path):
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise CheckpointError(f"{path} has no tokenizer.json")
        try:
            self._tok = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises bare Exception subclasses
            raise CheckpointError(f"cannot load {file}: {e}") from None
        cfg_file = path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        self.bos_token_id = self._special_id(cfg.get("bos_token"))
        self.eos_token_id = self._special_id(cfg.get("eos_token"))
        self.chat_template: str = cfg.get("chat_template") or DEFAULT_CHAT_TEMPLATE
        self._bos_text = _token_text(cfg.get("bos_token")) or ""

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # The batch call releases the GIL while it runs; `encode` holds it throughout (a 4 MB
        # prompt: ~12 s in which no other thread of the process, the engine's included, ran).
        return self._tok.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_string(self, token_id: int) -> str:
        """One token as text, special tokens included (logprobs' token strings)."""
        return self.decode([token_id], skip_special_tokens=False)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render chat messages to a prompt string with the checkpoint's Jinja template."""
        import jinja2
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            template = env.from_string(self.chat_template)
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=self._bos_text)
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template failed: {e}") from None

    def _special_id(self, token) -> int | None:
        text = _token_text(token)
        return None if text is None else self._tok.token_to_id(text)


class NoTokenizer:
    """Stands in for a checkpoint's missing tokenizer: token ids in, token ids out.

    Text prompts and chat are refused (InvalidRequestError), outputs decode to "", and a
    token's string is ``token_id:N`` (vLLM's ``return_tokens_as_token_ids`` form). End of
    sequence then comes from config.json and generation_config.json alone.
    """

    has_vocab = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise InvalidRequestError(NO_TOKENIZER)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""

    def token_string(self, token_id: int) -> str:
        return f"token_id:{token_id}"

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        raise InvalidRequestError(NO_TOKENIZER_CHAT)


AnyTokenizer = Tokenizer | NoTokenizer


def load_tokenizer(path: str | Path) -> AnyTokenizer:
    """The checkpoint's tokenizer, or a NoTokenizer if it has no tokenizer.json."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist")
    if not (path / "tokenizer.json").is_file():
        log.info("%s has no tokenizer.json: serving token-id prompts only, outputs carry no text", path)
        return NoTokenizer()
    return Tokenizer(path)


def check_stop_strings(tokenizer: AnyTokenizer, stop: tuple[str, ...]) -> None:
    """Stop strings are matched in decoded text: refuse them when there is none."""
    if stop and not tokenizer.has_vocab:
        raise InvalidRequestError("this model was loaded without a tokenizer: stop strings cannot be "
                                  "matched; use stop token ids")


def _token_text(token) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token
