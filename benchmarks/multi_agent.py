"""Multi-agent KV reuse (issue 18 part 2): a chain of agents that all read the same messages.

Five agents, each with its own template (a system prompt and chatter, the same in every
episode: the prefix cache holds it after the first), all receive the same four messages (tool
results, other agents' notes: the *segments*), then a question of their own. The first agent
prefills the messages; the others see them after another template, where the prefix cache
misses them, and reuse them (engine/segments/). Modes:

    full        no segment reuse (the prefix cache only): the baseline
    exact       segments marked, recompute_ratio 1.0: must equal ``full`` token for token
    r=R         re-rotated KV of the first observation, the first R of each segment recomputed
    anchors     2 agents compute the messages in full (anchors), the others blend them (KVCOMM)
    anchors-off the same compute, without the blend (the base re-rotated): what the blend adds

``--part trained`` runs the trained checkpoint (docs/trained_model.md) on the CPU or GPU: the
messages are the recall task's segments, each question asks a key of one message, and each
agent's turn reports its prefill time (TTFT: request added to first token, one request at a
time), tokens reused, the answer's loss (nats per token, teacher forced on the reused KV) and
exact-match (every answer token the argmax: what greedy decoding writes). ``--part shapes``
runs Llama-3-8B's shapes with random weights (timing only) on CUDA: 512-token templates, four
256-token messages.

    python -m benchmarks.multi_agent --part trained --model .ckpt/checkpoint --episodes 20
    python -m benchmarks.multi_agent --part shapes --device cuda --episodes 6
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.common import machine_info, out_dir
from engine.attention import AttentionMetadata
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.llm_engine import LLMEngine
from engine.model.llama import ForwardContext
from engine.sampling_params import SamplingParams
from engine.segments.spec import SegmentReuse

AGENTS = 5


@dataclass(frozen=True)
class Mode:
    name: str
    reuse: bool = True
    recompute_ratio: float = 0.0
    anchor_offsets: bool = False
    min_anchors: int = 1

    def segments(self, spans: list[tuple[int, int]]) -> SegmentReuse | None:
        if not self.reuse:
            return None
        return SegmentReuse(tuple(spans), self.recompute_ratio, self.anchor_offsets, self.min_anchors)


MODES = {m.name: m for m in [
    Mode("full", reuse=False), Mode("exact", recompute_ratio=1.0), Mode("r=0", 0.0 and True),
    Mode("r=0.1", recompute_ratio=0.1), Mode("r=0.25", recompute_ratio=0.25),
    Mode("anchors", recompute_ratio=0.1, anchor_offsets=True, min_anchors=2),
    Mode("anchors-off", recompute_ratio=0.1, anchor_offsets=False, min_anchors=2),
]}
MODES["r=0"] = Mode("r=0")


@dataclass
class Turn:
    """One agent's request: ``prompt`` = template + messages + question, ``answer`` its tokens."""

    agent: int
    prompt: list[int]
    spans: list[tuple[int, int]]
    answer: list[int] = field(default_factory=list)


@dataclass
class TurnResult:
    episode: int
    agent: int
    prompt_tokens: int
    cached_tokens: int
    reused_tokens: int
    ttft_s: float
    steps: int = 0                    # engine steps from the request's arrival to its first token
    cpu_s: float = 0.0                # this process's CPU time over the same span (the work, on a shared CPU)
    answer_nll: float | None = None   # nats per answer token
    exact_match: bool | None = None
    first_token: int | None = None


# -- episodes -------------------------------------------------------------------------------
def trained_episodes(tokenizer, count: int, template_tokens: int, message_tokens: int, seed: int = 0
                     ) -> list[list[Turn]]:
    """Episodes of the recall task: per agent a fixed template, four messages of segments of
    held-out examples (distinct keys), a question about a key of one message."""
    from benchmarks.multi_agent_task import AGENTS as NAMES
    from benchmarks.multi_agent_task import example
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    templates = [[tokenizer.bos_token_id] + _template(enc, NAMES[i], template_tokens, seed + i) for i in range(AGENTS)]
    episodes, index = [], 0
    rng = random.Random(f"multi-agent-chain:{seed}")
    for _ in range(count):
        messages, facts, keys = [], [], set()
        while len(messages) < AGENTS - 1:
            ids, lines = [], []
            while len(ids) < message_tokens:
                e = example(index, "heldout", seed)
                index += 1
                seg_facts = [tuple(line[2:].split(": ", 1)) for line in e.segment.splitlines() if line.startswith("- ")]
                if keys & {k for k, _ in seg_facts}:
                    continue
                keys |= {k for k, _ in seg_facts}
                ids += enc(e.segment)
                lines += seg_facts
            messages.append(ids)
            facts.append(lines)
        turns = []
        for agent in range(AGENTS):
            which = rng.randrange(len(messages))
            key, value = rng.choice(facts[which])
            question = enc(f"### agent {NAMES[agent]}\nWhat is {key}?\n### answer\n- {key}:")
            prompt, spans = list(templates[agent]), []
            for m in messages:
                spans.append((len(prompt), len(prompt) + len(m)))
                prompt += m
            turns.append(Turn(agent, prompt + question, spans, enc(f" {value}\n")))
        episodes.append(turns)
    return episodes


def _template(enc, name: str, tokens: int, seed: int) -> list[int]:
    from benchmarks.multi_agent_task import AGENTS as NAMES
    from benchmarks.multi_agent_task import OBJECTS, RESULTS, ROLES, RULES, VERBS
    rng = random.Random(f"template:{seed}")
    ids = enc(f"### system\nYou are agent {name}, the {rng.choice(ROLES)}. {rng.choice(RULES)}\n")
    while len(ids) < tokens:
        other = rng.choice([a for a in NAMES if a != name])
        ids += enc(f"### agent {other}\nI {rng.choice(VERBS)} {rng.choice(OBJECTS)}; {rng.choice(RESULTS)}.\n")
    return ids


def shape_episodes(count: int, template_tokens: int, message_tokens: int, vocab: int, seed: int = 0
                   ) -> list[list[Turn]]:
    """Random token ids in the chain's layout (timing only): fixed templates, fresh messages."""
    rng = random.Random(seed)
    draw = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    templates = [draw(template_tokens) for _ in range(AGENTS)]
    episodes = []
    for _ in range(count):
        messages = [draw(message_tokens) for _ in range(AGENTS - 1)]
        turns = []
        for agent in range(AGENTS):
            prompt, spans = list(templates[agent]), []
            for m in messages:
                spans.append((len(prompt), len(prompt) + len(m)))
                prompt += m
            turns.append(Turn(agent, prompt + draw(32), spans))
        episodes.append(turns)
    return episodes


# -- one agent's turn -------------------------------------------------------------------------
def run_turn(engine: LLMEngine, turn: Turn, mode: Mode, episode: int) -> TurnResult:
    """Prefill the turn's prompt (its first token greedy), then score its answer on that KV."""
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    rid = engine.add_request(None, turn.prompt, SamplingParams(max_tokens=1, temperature=0), hold_kv=True,
                             segments=mode.segments(turn.spans))
    last, steps = None, 0
    while engine.has_unfinished():
        steps += 1
        for delta in engine.step():
            last = delta if delta.request_id == rid else last
    sync()
    ttft, cpu = time.perf_counter() - start, time.process_time() - cpu
    result = TurnResult(episode, turn.agent, len(turn.prompt), last.num_cached_tokens,
                        last.num_reused_segment_tokens, ttft, steps, cpu, first_token=last.new_token_ids[0])
    if turn.answer:
        logprobs, argmax = score(engine, rid, turn.prompt[-1], turn.answer)
        result.answer_nll = -sum(logprobs) / len(logprobs)
        result.exact_match = argmax == turn.answer
    engine.release_kv(rid)
    return result


@torch.inference_mode()
def score(engine: LLMEngine, request_id: str, last_prompt_token: int, tokens: list[int]
          ) -> tuple[list[float], list[int]]:
    """Log-probabilities and argmaxes of ``tokens`` after a held request's prompt, teacher forced:
    one forward of the prompt's last token and ``tokens[:-1]`` over the held KV (the last token's
    own KV is written again, identically: it is always computed, never reused)."""
    held = engine.held_kv(request_id)
    n, m = held.num_computed_tokens, len(tokens)
    bs = engine.kv.block_size
    extra = engine.kv.pool.allocate(max(0, -(-(n + m) // bs) - len(held.block_ids)))
    blocks = held.block_ids + extra
    try:
        device, runner = engine.device, engine.runner
        positions = torch.arange(n - 1, n - 1 + m, device=device)
        slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in range(n - 1, n - 1 + m)], device=device)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor([0, m], dtype=torch.int32, device=device),
            seq_lens=torch.tensor([n - 1 + m], dtype=torch.int32, device=device),
            block_tables=torch.tensor([blocks], dtype=torch.int32, device=device),
            slot_mapping=slots, max_query_len=m, max_seq_len=n - 1 + m, decode_only=False)
        ids = torch.tensor([last_prompt_token] + tokens[:-1], device=device)
        hidden = runner.model(ids, positions, ForwardContext(runner.kv_cache, meta, runner.backend))
        logp = torch.log_softmax(runner.model.compute_logits(hidden), dim=-1)
        target = torch.tensor(tokens, device=device)
        return logp.gather(1, target[:, None])[:, 0].tolist(), logp.argmax(-1).tolist()
    finally:
        engine.kv.pool.free(extra)


# -- runs -----------------------------------------------------------------------------------
def run_mode(make_engine, episodes: list[list[Turn]], mode: Mode) -> list[TurnResult]:
    engine = make_engine()
    results = []
    for e, turns in enumerate(episodes):
        for turn in turns:
            results.append(run_turn(engine, turn, mode, e))
    return results


def summarize(results: dict[str, list[TurnResult]], warmup: int) -> dict:
    """Per mode: reuse rate and per-agent TTFT (episodes after ``warmup``), quality (all)."""
    base, base_cpu = _agent_ttft(results["full"], warmup), _agent_median(results["full"], warmup, "cpu_s")
    out = {}
    for name, rs in results.items():
        steady = [r for r in rs if r.episode >= warmup]
        ttft = _agent_ttft(rs, warmup)
        row = {"reuse_rate": sum(r.reused_tokens for r in steady) / sum(r.prompt_tokens for r in steady),
               "cached_rate": sum(r.cached_tokens for r in steady) / sum(r.prompt_tokens for r in steady),
               "ttft_s_by_agent": ttft, "speedup_by_agent": [b / t for b, t in zip(base, ttft)],
               "ttft_s_mean": statistics.mean(r.ttft_s for r in steady),
               "steps_by_agent": [statistics.mean(r.steps for r in steady if r.agent == a) for a in range(AGENTS)],
               "cpu_s_by_agent": (cpu := _agent_median(rs, warmup, "cpu_s")),
               "cpu_speedup_by_agent": [b / max(c, 1e-9) for b, c in zip(base_cpu, cpu)]}
        scored = [r for r in rs if r.answer_nll is not None]
        if scored:
            row["exact_match"] = statistics.mean(r.exact_match for r in scored)
            row["answer_nll"] = statistics.mean(r.answer_nll for r in scored)
            later = [r for r in scored if r.agent > 0]  # the agents that may reuse
            row["exact_match_reusing_agents"] = statistics.mean(r.exact_match for r in later)
            row["answer_nll_reusing_agents"] = statistics.mean(r.answer_nll for r in later)
        full = {(r.episode, r.agent): r.first_token for r in results["full"]}
        row["first_token_agreement"] = statistics.mean(full[(r.episode, r.agent)] == r.first_token for r in rs)
        out[name] = row
    return out


def _agent_ttft(rs: list[TurnResult], warmup: int) -> list[float]:
    return _agent_median(rs, warmup, "ttft_s")


def _agent_median(rs: list[TurnResult], warmup: int, name: str) -> list[float]:
    return [statistics.median(getattr(r, name) for r in rs if r.agent == a and r.episode >= warmup)
            for a in range(AGENTS)]


def trained_engine(model: str, device: str):
    def make() -> LLMEngine:
        return LLMEngine(EngineConfig(
            model=model, device=device, dtype=None if device.startswith("cuda") else "float32",
            cache=CacheConfig(num_blocks=1024, enable_prefix_caching=True),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=4096)))
    return make


def shapes_engine(root: Path, device: str):
    from benchmarks.model_shapes import shape_dir
    path = shape_dir("llama-3-8b", root)

    def make() -> LLMEngine:
        return LLMEngine(EngineConfig(
            model=str(path), device=device, load_format="dummy",
            cache=CacheConfig(num_blocks=4096, enable_prefix_caching=True),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=8192)))
    return make


def plot(summary: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, row in summary.items():
        ax.plot(range(1, AGENTS + 1), [t * 1e3 for t in row["ttft_s_by_agent"]], "o-", label=name)
    ax.set(xlabel="agent", ylabel="TTFT (ms, median)", title="prefill time per agent")
    ax.legend(fontsize=8)
    names = [n for n in summary if "exact_match" in summary[n]]
    if names:
        ax2.bar(names, [summary[n]["reuse_rate"] for n in names], color="lightgray", label="reuse rate")
        ax2.plot(names, [summary[n]["exact_match"] for n in names], "o-", label="recall exact-match")
        ax2.plot(names, [summary[n]["answer_nll"] for n in names], "s--", label="answer loss (nats/token)")
        ax2.set(title="reuse and quality", ylim=(0, max(1.05, max(summary[n]["answer_nll"] for n in names) + 0.1)))
        ax2.tick_params(axis="x", labelrotation=30)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("trained", "shapes"), default="trained")
    ap.add_argument("--model", default=".ckpt/checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1, help="episodes left out of the timings (cold templates)")
    ap.add_argument("--template-tokens", type=int)
    ap.add_argument("--message-tokens", type=int)
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--trained-length", type=int, default=1024,
                    help="--part trained: the checkpoint's training sequence length (small, ci: 1024; cpu: 512)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = out_dir(args.out, "multi-agent")
    if args.part == "trained":
        from engine.tokenizer import load_tokenizer
        tok = load_tokenizer(args.model)
        episodes = trained_episodes(tok, args.episodes, args.template_tokens or 192, args.message_tokens or 160)
        make = trained_engine(args.model, args.device)
        longest = max(len(t.prompt) + len(t.answer) for turns in episodes for t in turns)
        if longest > args.trained_length:
            print(f"warning: prompts of up to {longest} tokens, past the {args.trained_length} the model was "
                  "trained on (--trained-length): its recall and loss there say nothing", flush=True)
    else:
        episodes = shape_episodes(args.episodes, args.template_tokens or 512, args.message_tokens or 256, 128000)
        make = shapes_engine(out / "shapes", args.device)
    modes = ["full"] + [m for m in args.modes if m != "full"]
    results = {}
    for name in modes:
        started = time.perf_counter()
        results[name] = run_mode(make, episodes, MODES[name])
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        summary = summarize(results, args.warmup)
        report = {"machine": asdict(machine_info(torch.device(args.device))), "part": args.part,
                  "episodes": args.episodes, "prompt_tokens": [len(t.prompt) for t in episodes[0]],
                  "segments": [e - s for s, e in episodes[0][0].spans], "summary": summary,
                  "turns": {k: [asdict(r) for r in v] for k, v in results.items()}}
        (out / "multi_agent.json").write_text(json.dumps(report, indent=1))
    for name, row in summary.items():
        quality = (f" EM {row['exact_match']:.3f} loss {row['answer_nll']:.3f}" if "exact_match" in row else "")
        print(f"{name:12s} reuse {row['reuse_rate']:.2f} ttft/agent ms "
              + " ".join(f"{t * 1e3:.0f}" for t in row["ttft_s_by_agent"])
              + " speedup " + " ".join(f"{s:.1f}" for s in row["speedup_by_agent"])
              + " steps " + " ".join(f"{n:.1f}" for n in row["steps_by_agent"])
              + " cpu speedup " + " ".join(f"{s:.1f}" for s in row["cpu_speedup_by_agent"]) + quality
              + f" first-token agreement {row['first_token_agreement']:.2f}")
    plot(summary, out / "multi_agent.png")


if __name__ == "__main__":
    main()
