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

Keys are pronounceable made-up words; the held-out split uses keys whose hash the train split
never draws, and every example is drawn from its own seeded ``random.Random`` (a str seed:
stable across processes and platforms). Recall exact-match: the completion's first line, stripped,
equals the answer.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SPLITS = ("train", "heldout")
HELDOUT_KEY_MOD = 8  # a key is held-out when crc32(key) % 8 == 0
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
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


@dataclass(frozen=True)
class TaskConfig:
    """Sizes of the generated examples (facts per segment, other agents' messages)."""

    min_facts: int = 4
    max_facts: int = 16
    max_messages: int = 3
    distractor_prob: float = 0.5
    max_followups: int = 3  # training text: up to this many more agents asking other keys

    def __post_init__(self) -> None:
        if not 1 <= self.min_facts <= self.max_facts:
            raise ValueError(f"need 1 <= min_facts <= max_facts, got {self.min_facts}, {self.max_facts}")


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
    facts = _facts(rng, rng.randint(config.min_facts, config.max_facts), split)
    segment = _segment(rng, facts)
    used = {k for k, _ in facts}
    out = []
    for _ in range(num_prefixes):
        agent = rng.choice(AGENTS)
        prefix = _prefix(rng, agent, config, split, used)
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


def is_heldout_key(key: str) -> bool:
    return zlib.crc32(key.encode()) % HELDOUT_KEY_MOD == 0


def _rng(split: str, seed: int, index: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return random.Random(f"multi-agent:{split}:{seed}:{index}")


def _key(rng: random.Random, split: str) -> str:
    while True:
        key = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 3)))
        if rng.random() < 0.3:
            key += f"_{rng.choice(CONSONANTS)}{rng.choice(VOWELS)}{rng.choice(CONSONANTS)}"
        if is_heldout_key(key) == (split == "heldout"):
            return key


def _value(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return str(rng.randint(100, 99999))
    if kind == 1:
        return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(rng.randint(3, 5)))
    return f"{rng.choice(CONSONANTS)}{rng.choice(VOWELS)}{rng.choice(CONSONANTS)}-{rng.randint(1, 99)}"


def _facts(rng: random.Random, count: int, split: str) -> list[tuple[str, str]]:
    facts: dict[str, str] = {}
    while len(facts) < count:
        facts.setdefault(_key(rng, split), _value(rng))
    return list(facts.items())


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


def _prefix(rng: random.Random, agent: str, config: TaskConfig, split: str, used: set[str]) -> str:
    parts = [f"### system\nYou are agent {agent}, the {rng.choice(ROLES)}. {rng.choice(RULES)}\n"]
    for _ in range(rng.randint(0, config.max_messages)):
        other = rng.choice([a for a in AGENTS if a != agent])
        line = f"I {rng.choice(VERBS)} {rng.choice(OBJECTS)}; {rng.choice(RESULTS)}."
        if rng.random() < config.distractor_prob:
            key = _key(rng, split)
            if key not in used:
                line += f" Note {key}: {_value(rng)}."
        parts.append(f"### agent {other}\n{line}\n")
    return "".join(parts)
