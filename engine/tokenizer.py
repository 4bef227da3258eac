"""A checkpoint's tokenizer (tokenizer.json through `tokenizers`) and its chat template."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from engine.model_config import CheckpointError

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class Tokenizer:
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
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

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


def _token_text(token) -> str | None:
    if isinstance(token, dict):
        return token.get("content")
    return token
