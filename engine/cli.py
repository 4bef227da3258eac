"""`tierserve generate` and `tierserve make-tiny-model`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.config import ConfigError, EngineConfig, SchedulerConfig
from engine.model_config import CheckpointError
from engine.sampling_params import InvalidRequestError, SamplingParams


def add_commands(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate text from one prompt with the single-process engine")
    gen.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-ids", help="prompt token ids, comma separated (the only prompt a checkpoint "
                                          "without tokenizer.json takes; it then prints token ids)")
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--logprobs", type=int, default=None)
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: checkpoint's)")
    gen.add_argument("--max-model-len", type=int, default=None)
    gen.add_argument("--json", action="store_true", help='print {"token_ids": [...], "text": "..."}')
    gen.set_defaults(func=run_generate)

    tiny = sub.add_parser("make-tiny-model", help="write a small random checkpoint with a real tokenizer")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--architecture", default="llama", choices=["llama", "mistral", "qwen2"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=run_make_tiny_model)


def parse_prompt_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidRequestError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None


def run_generate(args: argparse.Namespace) -> int:
    from engine.llm_engine import LLMEngine
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed, stop=tuple(args.stop),
                                ignore_eos=args.ignore_eos, logprobs=args.logprobs)
        prompt = args.prompt if args.prompt is not None else parse_prompt_ids(args.prompt_ids)
        engine = LLMEngine(EngineConfig(model=str(args.model), dtype=args.dtype, device=args.device,
                                        scheduler=SchedulerConfig(max_model_len=args.max_model_len)))
        result = engine.generate([prompt], params)[0]
    except (InvalidRequestError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"token_ids": result.token_ids, "text": result.text,
                          "finish_reason": result.finish_reason and result.finish_reason.value}))
    elif engine.tokenizer.has_vocab:
        print(result.text)
    else:  # no tokenizer, no text: the ids, in --prompt-ids' form
        print(",".join(map(str, result.token_ids)))
    return 0


def run_make_tiny_model(args: argparse.Namespace) -> int:
    from engine.tiny_model import TinyModelSpec, make_tiny_model
    path = make_tiny_model(args.dir, TinyModelSpec(architecture=args.architecture, seed=args.seed))
    print(f"wrote a tiny {args.architecture} checkpoint to {path}")
    return 0
