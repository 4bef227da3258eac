"""The engine on CUDA (Triton attention, CUDA graphs) against the CPU engine and `transformers`."""

from __future__ import annotations

import pytest
import torch
import transformers

from engine.sampling_params import SamplingParams
from engine.tiny_model import TinyModelSpec
from tests.engine.conftest import make_engine
from tests.engine.test_prefilled_requests import PROMPTS, disaggregated

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True, logprobs=5)


def cuda_engine(model, **kwargs):
    """An engine on CUDA with a fixed, small cache (engines of earlier tests may still hold memory)."""
    return make_engine(model, device="cuda", **{"num_blocks": 1024, **kwargs})


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 500, (int(torch.randint(1, 90, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.fixture(autouse=True)
def no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.mark.parametrize("spec", [TinyModelSpec(), TinyModelSpec(num_kv_heads=4, hidden_size=128),
                                  TinyModelSpec(architecture="qwen2")], ids=["llama-gqa", "llama-mha-d32", "qwen2"])
def test_cuda_fp32_tokens_equal_cpu_and_transformers(spec, tiny_model_factory):
    model = tiny_model_factory(spec)
    ps = prompts(6)
    cpu = make_engine(model).generate(ps, GREEDY)
    gpu_engine = cuda_engine(model)
    assert gpu_engine.runner.graphs is not None and gpu_engine.runner.backend.name == "triton"
    gpu = gpu_engine.generate(ps, GREEDY)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).cuda()
    for p, c, g in zip(ps, cpu, gpu):
        assert g.token_ids == c.token_ids
        ids = torch.tensor([p], device="cuda")
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                          eos_token_id=None, pad_token_id=2)[0, len(p):].tolist()
        assert g.token_ids == ref
        for a, b in zip(c.logprobs, g.logprobs):
            assert abs(a.logprob - b.logprob) < 1e-3


def test_cuda_graphs_equal_eager(tiny_model):
    ps = prompts(20, seed=1)
    graphs = cuda_engine(tiny_model).generate(ps, GREEDY)
    eager = cuda_engine(tiny_model, cuda_graphs=False).generate(ps, GREEDY)
    assert [r.token_ids for r in graphs] == [r.token_ids for r in eager]


def test_bf16_triton_close_to_torch_backend(tiny_model):
    ps = prompts(8, seed=2)
    params = SamplingParams(max_tokens=1, temperature=0, logprobs=10)
    triton = cuda_engine(tiny_model, dtype="bfloat16").generate(ps, params)
    ref = cuda_engine(tiny_model, dtype="bfloat16", attention_backend="torch",
                      cuda_graphs=False).generate(ps, params)
    for a, b in zip(triton, ref):
        top_a = dict(a.logprobs[0].top)
        for token, lp in b.logprobs[0].top[:5]:
            assert abs(top_a.get(token, -1e9) - lp) < 5e-2


def test_preemption_and_chunked_prefill_on_cuda_stay_exact(tiny_model):
    ps = prompts(8, seed=3)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    alone = [cuda_engine(tiny_model).generate([p], params)[0].token_ids for p in ps]
    tight = cuda_engine(tiny_model, num_blocks=24, block_size=8, max_num_batched_tokens=32)
    assert [r.token_ids for r in tight.generate(ps, params)] == alone
    assert tight.num_preemptions > 0
    assert tight.kv.num_free_blocks == 24


def test_handoff_hooks_on_cuda(tiny_model):
    params = SamplingParams(max_tokens=20, temperature=0.7, seed=3, ignore_eos=True)
    single = cuda_engine(tiny_model)
    prefill = cuda_engine(tiny_model, detokenize=False)
    decode = cuda_engine(tiny_model, detokenize=False)
    for p in PROMPTS:
        assert disaggregated(prefill, decode, p, params) == single.generate([p], params)[0].token_ids


def compiled_variants(kernel) -> int:
    """Kernels Triton has compiled for ``kernel`` on any device (its per-device kernel caches)."""
    return sum(len(caches[0]) for caches in kernel.device_caches.values())


def test_new_batch_shapes_compile_nothing_new(tiny_model):
    """Once the engine has started (its warm-up step and graph captures), requests of any batch
    size and length reuse the compiled kernels: counts, tile counts and table widths are not
    specialized (a compile costs some request seconds of latency)."""
    from engine.attention import triton_decode, triton_merge, triton_prefill
    kernels = (triton_prefill._prefill_kernel, triton_decode._decode_split_kernel, triton_merge._merge_kernel)
    engine = cuda_engine(tiny_model)
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    before = [compiled_variants(k) for k in kernels]
    for n, seed in ((2, 5), (1, 6), (4, 7), (16, 8), (3, 9), (33, 10)):
        engine.generate(prompts(n, seed), params)
    assert [compiled_variants(k) for k in kernels] == before
