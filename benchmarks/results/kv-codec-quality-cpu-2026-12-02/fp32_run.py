import torch, sys
torch.set_num_threads(1)
from pathlib import Path
from dataclasses import asdict
from benchmarks.kv_codec_quality import measure
from engine.config import CacheConfig, EngineConfig
from engine.llm_engine import LLMEngine
ck = Path("tests/data/trained-small")
eng = LLMEngine(EngineConfig(model=str(ck), device="cpu", dtype="float32", cache=CacheConfig(num_blocks=4*64*26, enable_prefix_caching=True)))
toks = eng.tokenizer.encode((ck / "heldout.txt").read_text())
for codec in ("kivi4", "kivi2"):
    r = asdict(measure(eng, toks, codec, 256, 128, 64, 128, residual=0))
    r["divergence_margins"] = sorted(r["divergence_margins"])
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
