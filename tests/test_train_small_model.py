"""benchmarks/train_small_model.py on the CPU: a few steps of the tiny preset, then the saved
checkpoint in our engine and in transformers (identical greedy tokens), the training model's
math against transformers', and the recall task's generator and evaluator (which can fail)."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from benchmarks import multi_agent_task as task
from benchmarks.small_llama import load_checkpoint
from benchmarks.small_model_training import prepare_data, sample_batch, train
from benchmarks.train_small_model import PRESETS, main
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from tests.engine.conftest import make_engine
from tests.hf_checkpoints import HFCheckpoint

STEPS = 20


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tensors are tiny, and on a busy machine two threads spin-wait
    (the smoke run took 85 s with two, 27 s with one, here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("small-model")
    metrics = main(["--preset", "tiny", "--steps", str(STEPS), "--device", "cpu", "--out", str(out),
                    "--recall-examples", "8"])
    return out, metrics


def test_training_writes_a_checkpoint_metrics_and_a_plot(trained):
    out, metrics = trained
    ckpt = out / "checkpoint"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "model.safetensors"):
        assert (ckpt / name).is_file(), name
    assert (out / "loss.png").stat().st_size > 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == STEPS == metrics["steps"]
    config = json.loads((ckpt / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["num_key_value_heads"] < config["num_attention_heads"]
    history = metrics["history"]
    assert history["eval_tokens"][0] == 0 and history["eval_tokens"][-1] == metrics["tokens_seen"]
    # training lowered the held-out loss from its start near ln(vocab)
    assert abs(history["heldout_loss"][0] - math.log(config["vocab_size"])) < 0.3
    assert metrics["heldout_lm_loss"] < history["heldout_loss"][0] - 0.3
    assert 0.0 <= metrics["recall_exact_match"] <= 1.0 and 0.0 <= metrics["recall_teacher_forced"] <= 1.0
    assert metrics["transformers_greedy"]["identical"] == metrics["transformers_greedy"]["prompts"] == 4


def test_checkpoint_gives_identical_greedy_tokens_in_engine_and_transformers(trained):
    ckpt = trained[0] / "checkpoint"
    tokenizer = Tokenizer(ckpt)
    prompts = [tokenizer.encode(e.prompt) for e in task.examples(3, "heldout", config=PRESETS["tiny"].task)]
    prompts.append(tokenizer.encode("def main(argv=None):\n    parser = argparse."))
    reference = HFCheckpoint(ckpt, eos_token_id=tokenizer.eos_token_id)
    engine = make_engine(ckpt, dtype="float32")
    results = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    for prompt, ours in zip(prompts, results):
        assert ours.token_ids == reference.greedy(prompt, 12, stop_on_eos=False)


def test_training_model_logits_equal_transformers(trained):
    """The plain-torch model trained is transformers' Llama: same logits on the saved weights."""
    import transformers
    ckpt = trained[0] / "checkpoint"
    ids = torch.tensor([Tokenizer(ckpt).encode(task.example(0).prompt)])
    ours = load_checkpoint(ckpt).eval()(ids)
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(ids).logits
    assert torch.allclose(ours.detach(), ref, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_data():
    return prepare_data(PRESETS["tiny"], seed=0)


def test_task_rows_start_at_an_example_and_text_rows_anywhere(tiny_data):
    bos = tiny_data.tokenizer.token_to_id("<|begin_of_text|>")
    rows = sample_batch(torch.Generator().manual_seed(0), tiny_data,
                        dataclasses.replace(PRESETS["tiny"], task_fraction=1.0, batch_size=64), torch.device("cpu"))
    assert (rows[:, 0] == bos).all() and len({tuple(r) for r in rows[:, :32].tolist()}) > 32
    text = sample_batch(torch.Generator().manual_seed(0), tiny_data,
                        dataclasses.replace(PRESETS["tiny"], task_fraction=0.0, batch_size=64), torch.device("cpu"))
    assert (text[:, 0] != bos).sum() > 32
    windows = tiny_data.train.long().unfold(0, text.shape[1], 1)
    assert all((windows == row).all(1).any() for row in text[:4])


def test_cpu_training_is_deterministic(tiny_data):
    preset = dataclasses.replace(PRESETS["tiny"], eval_every=0)
    data = tiny_data
    assert prepare_data(preset, seed=0).tokenizer.to_str() == data.tokenizer.to_str()

    def weights(seed: int) -> dict:
        from types import SimpleNamespace

        from benchmarks.small_llama import SmallLlama
        from engine.model_config import ModelConfig
        from engine.tiny_model import hf_config
        torch.manual_seed(seed)
        model = SmallLlama(ModelConfig.from_dict(hf_config(preset.spec(), 0, 1)))
        model.init_weights()
        train(model, data, preset, SimpleNamespace(seed=seed, steps=3, minutes=5, compile=False), torch.device("cpu"))
        return model.state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_recall_evaluator_scores_an_oracle_one_and_a_wrong_answer_zero():
    items = task.examples(20, "heldout")
    assert task.evaluate_recall(items, lambda prompts: [e.answer + "\nmore text" for e in items]) == 1.0
    assert task.evaluate_recall(items, lambda prompts: [e.answer + "0" for e in items]) == 0.0
    assert task.evaluate_recall(items, lambda prompts: ["" for _ in items]) == 0.0
    half = task.evaluate_recall(items, lambda prompts: [e.answer if i % 2 else "?" for i, e in enumerate(items)])
    assert half == 0.5
    with pytest.raises(ValueError):
        task.recall_exact_match(items, ["x"])


def test_task_is_deterministic_answerable_only_from_the_segment_and_shares_segments():
    assert task.examples(5, "train", seed=3) == task.examples(5, "train", seed=3)
    assert task.examples(5, "train", seed=3) != task.examples(5, "train", seed=4)
    assert not set(task.examples(50, "train")) & set(task.examples(50, "heldout"))
    values_of: dict[str, set[str]] = {}
    for split in task.SPLITS:
        for e in task.examples(100, split):
            facts = _facts(e.segment)
            assert len({v.split()[0] for v in facts.values()}) == len(facts) >= task.TaskConfig().min_facts
            assert [k for k in facts if re.search(rf" {k}\b", e.question)] == [e.key]
            assert facts[e.key] == e.answer and not re.search(rf" ({e.key}|{e.answer.split()[0]})\b", e.prefix)
            values_of.setdefault(e.key, set()).add(e.answer)
    assert max(map(len, values_of.values())) > 1  # a key's value is not something to remember
    episode = task.episode(7, 4, "heldout")
    assert len({e.segment for e in episode}) == 1 and len({e.prefix for e in episode}) > 1
    assert episode[0] == task.example(7, "heldout")


def test_training_text_answers_more_questions_about_the_same_segment():
    followups = 0
    for i in range(20):
        e, text = task.example(i), task.training_text(i)
        facts = _facts(e.segment)
        answered = re.findall(r"### answer\n- (\S+): ([^\n]+)\n", text)
        assert text.startswith(e.text) and answered[0] == (e.key, e.answer)
        assert all(facts[k] == v for k, v in answered) and len({k for k, _ in answered}) == len(answered)
        followups += len(answered) - 1
    assert 10 < followups <= 20 * task.TaskConfig().max_followups


def test_parts_tokenize_as_the_whole_example_and_keys_as_the_same_tokens(trained):
    """Segments can be tokenized (and their KV computed) alone; a key asked for is the same tokens
    in the question as in the segment, and the answer the same tokens as the value it copies."""
    tokenizer = Tokenizer(trained[0] / "checkpoint")
    for e in task.examples(20, "heldout"):
        parts = [tokenizer.encode(x, add_special_tokens=False) for x in (e.prefix, e.segment, e.question,
                                                                          e.completion)]
        assert tokenizer.encode(e.text) == [tokenizer.bos_token_id] + sum(parts, [])
        assert _contains(parts[1], tokenizer.encode(f" {e.key}: {e.answer}", add_special_tokens=False))
        assert _contains(parts[2], tokenizer.encode(f" {e.key}", add_special_tokens=False))
        assert _contains(parts[3], tokenizer.encode(f" {e.answer}", add_special_tokens=False))


def _facts(segment: str) -> dict[str, str]:
    return dict(line[2:].split(": ", 1) for line in segment.splitlines() if line.startswith("- "))


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))
