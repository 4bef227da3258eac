"""A synthetic multi-agent recall task: one segment of facts under varying agent prefixes.

An example is four parts of plain text::

    prefix    ### system / ### agent X ...   a system prompt and other agents' messages
    segment   ### tool inventory / - key: value lines (a tool result or another agent's message)
    question  ### agent Y / What is key? / ### answer / - key:
    answer    the value, copied from the segment (the completion is " value\n")

The same ``segment`` appears under different prefixes (``episode``): what multi-agent KV reuse
(KVCOMM) computes once and reuses, so quality can be compared against a full prefill. Prefix
messages may quote other keys' facts (distractors); the asked key appears only in the segment.
Every part but the question ends with a newline and the next starts with ``###``, so a byte-level
BPE tokenizes the parts one by one exactly as it tokenizes the whole prompt. A key or value is
always preceded by a space (``- key: value``, ``What is key?``), so it is the same tokens
wherever it appears; the answer line repeats the segment's ``- key:``, so the value is what
followed the same tokens in the segment (what an induction head looks up).

Keys are common words (``- lantern: misty otter``), values an adjective and an animal, drawn
afresh for every example: a key's value differs from example to example, so only the segment can
answer, never memory. Words, not made-up strings: a trained tokenizer makes them single tokens,
and a key of several sub-word tokens that end alike (``pe-fi-di``, ``la-di``) is a harder lookup
than a small model learns in minutes. The held-out split is other draws (``random.Random`` seeded
with the split's name; a str seed is stable across processes and platforms). Recall
exact-match: the completion's first line, stripped, equals the answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SPLITS = ("train", "heldout")
KEYS = tuple("""anchor apple arrow badge banner barrel basket beacon bell bench blanket bottle bucket button
cabin camera candle canyon carpet castle cellar chain chair chalk chest cliff clock cloud coast coin comet
compass copper cotton crane crater crown crystal curtain desert diamond drawer engine feather fence ferry
fiddle forest fossil fountain garden garlic glacier glove goblet granite gravel hammer harbor harvest helmet
hill hollow honey horizon island ivory jacket jungle kettle kite ladder lagoon lantern lemon lever locket
magnet maple marble meadow mirror mountain needle nest oasis ocean orchard oven paddle palace pebble pencil
pepper piano pillow pilot planet pocket pond puzzle pyramid quarry raft ribbon river rocket saddle sailor
satchel scarf shadow shell shovel signal silver sled spoon statue stone storm summit sunset sword temple
timber torch tower tractor trumpet tunnel valley velvet violin volcano wagon walnut whistle willow
window""".split())
ADJECTIVES = tuple("""amber azure bold brave bright calm clever crimson dark eager fancy gentle golden grand
green happy hidden humble icy jolly keen lively lucky mellow misty noble odd olive pale plain proud quick
quiet rapid rosy rusty shy silent sleek slow smooth snowy solid spicy steady stormy sunny swift tame tiny
vivid warm wild wise young""".split())
ANIMALS = tuple("""ant bear bee cat cow crab crow deer dog dove duck eagle eel elk fox frog goat goose hawk
hen horse lamb lion lynx mole moose moth mouse mule newt owl ox panda pig pony puma seal shark sheep slug
snail snake squid stork toad trout wasp wolf worm yak zebra""".split())
ROLES = ("planner", "coder", "reviewer", "tester", "researcher", "scheduler", "critic", "summarizer")
AGENTS = ("ALPHA", "BETA", "GAMMA", "DELTA", "EPSILON", "ZETA", "ETA", "THETA", "IOTA", "KAPPA",
          "LAMBDA", "MU", "NU", "XI", "OMICRON", "PI", "RHO", "SIGMA", "TAU", "UPSILON")
RULES = ("Answer with the value only.", "Be brief and exact.", "Quote values exactly as given.",
         "Use the latest tool result.", "Do not guess; copy what you were told.", "Keep answers short.")
TOOLS = ("inventory", "lookup_table", "config_dump", "search", "registry", "database", "ledger", "scan")
VERBS = ("checked", "rebuilt", "reviewed", "deployed", "profiled", "merged", "restarted", "tested")
OBJECTS = ("the build", "the cache", "the parser", "the scheduler", "the router", "the index",
           "the queue", "the tests", "the migration", "the report")
RESULTS = ("all good", "two failures remain", "it is slower than before", "nothing changed",
           "the logs look clean", "one warning left", "we should retry later", "it needs review")
QUESTIONS = ("What is {key}?", "What is the value of {key}?", "Give me {key}.", "Look up {key}.",
             "Which value does {key} have?")


@dataclass(frozen=True)
class TaskConfig:
    """Sizes of the generated examples (facts per segment, other agents' messages)."""

    min_facts: int = 4
    max_facts: int = 16
    max_messages: int = 3
    distractor_prob: float = 0.5
    max_followups: int = 6  # training text: up to this many more agents asking other keys

    def __post_init__(self) -> None:
        if not 1 <= self.min_facts <= self.max_facts <= len(ADJECTIVES):
            raise ValueError(f"need 1 <= min_facts <= max_facts <= {len(ADJECTIVES)}, "
                             f"got {self.min_facts}, {self.max_facts}")


@dataclass(frozen=True)
class Example:
    """``key``: the fact asked for; ``answer``: its value."""

    prefix: str
    segment: str
    question: str
    answer: str
    key: str

    @property
    def prompt(self) -> str:
        return self.prefix + self.segment + self.question

    @property
    def completion(self) -> str:
        return " " + self.answer + "\n"

    @property
    def text(self) -> str:
        """The whole example as training text (the answer's line included)."""
        return self.prompt + self.completion


def example(index: int, split: str = "train", seed: int = 0, config: TaskConfig = TaskConfig()) -> Example:
    """Example ``index`` of ``split``: deterministic in (index, split, seed, config)."""
    return episode(index, 1, split, seed, config)[0]


def examples(count: int, split: str = "train", seed: int = 0, config: TaskConfig = TaskConfig(),
             start: int = 0) -> list[Example]:
    return [example(i, split, seed, config) for i in range(start, start + count)]


def training_text(index: int, split: str = "train", seed: int = 0, config: TaskConfig = TaskConfig()) -> str:
    """Example ``index``'s text, then 0..max_followups other agents asking for other keys of its
    segment, each answered: more answers to learn from per token. Evaluation asks one question."""
    e = example(index, split, seed, config)
    rng = random.Random(f"multi-agent-followups:{split}:{seed}:{index}")
    others = [kv for kv in _segment_facts(e.segment) if kv[0] != e.key]
    asked = rng.sample(others, min(len(others), rng.randint(0, config.max_followups)))
    return e.text + "".join(_question(rng, rng.choice(AGENTS), k) + f" {v}\n" for k, v in asked)


def episode(index: int, num_prefixes: int, split: str = "train", seed: int = 0,
            config: TaskConfig = TaskConfig()) -> list[Example]:
    """One segment under ``num_prefixes`` different prefixes, each asking about one of its keys."""
    rng = _rng(split, seed, index)
    facts = _facts(rng, rng.randint(config.min_facts, config.max_facts))
    segment = _segment(rng, facts)
    used = {k for k, _ in facts} | {v.split()[0] for _, v in facts}
    out = []
    for _ in range(num_prefixes):
        agent = rng.choice(AGENTS)
        prefix = _prefix(rng, agent, config, used)
        key, value = rng.choice(facts)
        out.append(Example(prefix, segment, _question(rng, agent, key), value, key))
    return out


def exact_match(completion: str, answer: str) -> bool:
    """The completion's first line, stripped, is the answer."""
    return completion.split("\n", 1)[0].strip() == answer


def recall_exact_match(items: Sequence[Example], completions: Sequence[str]) -> float:
    if len(items) != len(completions) or not items:
        raise ValueError(f"{len(items)} examples, {len(completions)} completions")
    return sum(exact_match(c, e.answer) for e, c in zip(items, completions)) / len(items)


def evaluate_recall(items: Sequence[Example], generate: Callable[[list[str]], list[str]]) -> float:
    """Exact-match rate of ``generate`` (prompts -> completions, e.g. greedy decoding)."""
    return recall_exact_match(items, generate([e.prompt for e in items]))


def _rng(split: str, seed: int, index: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return random.Random(f"multi-agent:{split}:{seed}:{index}")


def _facts(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """``count`` distinct keys; values with distinct first words (so copying the second word
    after the first is unambiguous)."""
    keys, adjectives = rng.sample(KEYS, count), rng.sample(ADJECTIVES, count)
    return [(k, f"{a} {rng.choice(ANIMALS)}") for k, a in zip(keys, adjectives)]


def _question(rng: random.Random, agent: str, key: str) -> str:
    return f"### agent {agent}\n{rng.choice(QUESTIONS).format(key=key)}\n### answer\n- {key}:"


def _segment_facts(segment: str) -> list[tuple[str, str]]:
    return [tuple(line[2:].split(": ", 1)) for line in segment.splitlines() if line.startswith("- ")]


def _segment(rng: random.Random, facts: list[tuple[str, str]]) -> str:
    if rng.random() < 0.7:
        head = f"### tool {rng.choice(TOOLS)}\n"
    else:
        head = f"### agent {rng.choice(AGENTS)}\nHere is what I found:\n"
    return head + "".join(f"- {k}: {v}\n" for k, v in facts)


def _prefix(rng: random.Random, agent: str, config: TaskConfig, used: set[str]) -> str:
    parts = [f"### system\nYou are agent {agent}, the {rng.choice(ROLES)}. {rng.choice(RULES)}\n"]
    for _ in range(rng.randint(0, config.max_messages)):
        other = rng.choice([a for a in AGENTS if a != agent])
        line = f"I {rng.choice(VERBS)} {rng.choice(OBJECTS)}; {rng.choice(RESULTS)}."
        if rng.random() < config.distractor_prob:  # a fact of a key and adjective the segment does not use
            key = rng.choice([k for k in KEYS if k not in used])
            adjective = rng.choice([a for a in ADJECTIVES if a not in used])
            line += f" Note {key}: {adjective} {rng.choice(ANIMALS)}."
        parts.append(f"### agent {other}\n{line}\n")
    return "".join(parts)
