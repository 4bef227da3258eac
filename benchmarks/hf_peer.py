"""`transformers` as the decode benchmark's peer, in the best configuration that runs on the device.

  TransformersPeer.time(prompts, n)   generate's seconds per decode step (prefill excluded: the
                                      time with n new tokens less the time with n/4, over the
                                      steps between) and its end-to-end tokens/s with n
  hf_continuous(...)                  continuous batching (generate_batch), end to end
Configurations, best first: a static KV cache with generate's own torch.compile of the decode
forward, the static cache eager, the dynamic cache; one that fails is reported and skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class PeerTiming:
    """transformers' generate at one batch size: seconds per decode step (prefill excluded) and
    end-to-end tokens/s (prefill included), in the configuration named by ``config``."""

    config: str
    step_s: float
    e2e_tok_s: float


def hf_model(path: Path, device: torch.device, dtype: torch.dtype):
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(path)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


class TransformersPeer:
    """transformers' ``generate`` over ``hf`` in the best configuration that runs on its device.

    ``compile`` puts generate's own torch.compile of the decode forward first (transformers' default
    compile config: mode reduce-overhead, i.e. CUDA graphs). A configuration that raises is dropped
    with a printed note, for this and every later batch size, and the next is tried."""

    def __init__(self, hf, device: torch.device, compile: bool, repeats: int = 2) -> None:
        self.hf, self.device, self.repeats = hf, device, repeats
        static = {"cache_implementation": "static"}
        self.configs: list[tuple[str, dict]] = [
            *([("static cache + torch.compile", {**static, **_compile_kwargs(device)})] if compile else []),
            ("static cache, eager", {**static, "disable_compile": True}),
            ("dynamic cache, eager", {"disable_compile": True})]

    def time(self, prompts: list[list[int]], new_tokens: int) -> PeerTiming | None:
        for name, kwargs in list(self.configs):
            try:
                return self._time(name, kwargs, prompts, new_tokens)
            except Exception as e:  # noqa: BLE001 — a configuration that fails here is reported, then skipped
                print(f"note: transformers generate with {name} failed; falling back to the next configuration "
                      f"({type(e).__name__}: {str(e)[:400]})", flush=True)
                self.configs.remove((name, kwargs))
                torch._dynamo.reset()
        return None

    def _time(self, name: str, kwargs: dict, prompts: list[list[int]], new_tokens: int) -> PeerTiming:
        ids = torch.tensor(prompts, device=self.device)
        short = max(1, new_tokens // 4)
        self._generate(ids, new_tokens, kwargs)  # warm-up: compiles, and sizes the static cache for the longest call
        if "compile_config" in kwargs or kwargs.get("disable_compile") is False:
            if getattr(self.hf, "_compiled_call", None) is None:
                name = "static cache (generate did not compile)"
        long = min(self._generate(ids, new_tokens, kwargs) for _ in range(self.repeats))
        brief = min(self._generate(ids, short, kwargs) for _ in range(self.repeats))
        return PeerTiming(name, (long - brief) / (new_tokens - short), len(prompts) * new_tokens / long)

    def _generate(self, ids: torch.Tensor, new_tokens: int, kwargs: dict) -> float:
        """Seconds of one generate call of exactly ``new_tokens`` tokens per sequence."""
        _sync(self.device)
        start = time.perf_counter()
        out = self.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=2, **kwargs)
        _sync(self.device)
        seconds = time.perf_counter() - start
        if out.shape != (ids.shape[0], ids.shape[1] + new_tokens):
            raise RuntimeError(f"generate returned {tuple(out.shape)}, expected {new_tokens} new tokens per sequence")
        return seconds


def _compile_kwargs(device: torch.device) -> dict:
    """generate's arguments for its own compile of the decode forward; off the accelerators
    transformers compiles only when the compile config says so."""
    if device.type == "cuda":
        return {"disable_compile": False}
    from transformers import CompileConfig
    config = CompileConfig()
    config._compile_all_devices = True
    return {"disable_compile": False, "compile_config": config}


def hf_continuous(hf, prompts: list[list[int]], new_tokens: int, device: torch.device) -> float | None:
    """End-to-end tokens/s of transformers' continuous batching (generate_batch), if it runs."""
    if not hasattr(hf, "generate_batch"):
        return None
    from transformers import GenerationConfig
    gen = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           eos_token_id=-1, pad_token_id=2)
    try:
        hf.generate_batch(inputs=[p[:8] for p in prompts[:2]], generation_config=gen)
        _sync(device)
        start = time.perf_counter()
        hf.generate_batch(inputs=prompts, generation_config=gen)
        _sync(device)
    except Exception as e:  # noqa: BLE001 — an API that changed between versions is reported, not fatal
        print(f"transformers generate_batch failed: {e!r}")
        return None
    return len(prompts) * new_tokens / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
