"""`tierserve demo`: the README's main job on the embedded default model."""

from __future__ import annotations

import argparse
import time

DEMO_PROMPTS = (
    "The prefill pool computes the prompt",
    "Hello, world! How are you today?",
    "Once upon a time there was a small model",
    "def f(x): return x * 2",
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run a few requests through tierserve on the embedded tiny model")
    demo.add_argument("--model", default=None, help="checkpoint directory (default: the embedded tiny model)")
    demo.add_argument("--max-tokens", type=int, default=24)
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from engine.config import EngineConfig
    from engine.default_model import default_model_dir
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    console = Console()
    model = args.model or str(default_model_dir())
    t0 = time.perf_counter()
    engine = LLMEngine(EngineConfig(model=model, device=args.device))
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = engine.generate(list(DEMO_PROMPTS), SamplingParams(max_tokens=args.max_tokens, temperature=0))
    t_gen = time.perf_counter() - t0
    table = Table(title=f"tierserve demo — {model}")
    for col in ("prompt", "output", "tokens", "finish"):
        table.add_column(col)
    for prompt, r in zip(DEMO_PROMPTS, results):
        table.add_row(prompt, repr(r.text), str(len(r.token_ids)), r.finish_reason.value)
    console.print(table)
    n = sum(len(r.token_ids) for r in results)
    console.print(f"engine load {t_load:.2f}s; {len(results)} requests, {n} tokens in {t_gen:.2f}s")
    return 0
