"""The sample trace shipped with the repository, in the Azure LLM inference trace's CSV format.

The real traces are in https://github.com/Azure/AzurePublicDataset: the 2023 release (collected
on 2023-11-11, the data of the Splitwise paper) is ``data/AzureLLMInferenceTrace_conv.csv`` and
``data/AzureLLMInferenceTrace_code.csv``, e.g.
https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data/AzureLLMInferenceTrace_conv.csv;
the 2024 release (a week in May 2024) has the same columns. `tierserve plan --trace` reads them as
they are.

The sample is not real data: a synthetic conversation workload (log-normal lengths around the
medians Splitwise reports for the 2023 conversation trace, Poisson arrivals at 5.4 req/s, 2000
requests) written in that format, so the README's `plan` example runs from a fresh clone.
``tierserve sample-trace`` rewrites it byte for byte (a test checks that).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from simulator.traces.azure import COLUMNS
from simulator.traces.synthetic import parse_synthetic, synthetic_trace
from simulator.traces.trace import Trace

SAMPLE_PATH = Path(__file__).with_name("azure_conv_sample.csv")
SAMPLE_SPEC = "synthetic:n=2000,rate=5.4,workload=conversation,seed=2023"
START = datetime(2023, 11, 16, 18, 0, 0)


def write_azure_csv(trace: Trace, path: str | Path, start: datetime = START) -> Path:
    """``trace`` as TIMESTAMP,ContextTokens,GeneratedTokens rows (7 fractional digits, as Azure's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [",".join(COLUMNS)]
    for t, prompt, output in zip(trace.arrival_s, trace.prompt_tokens, trace.output_tokens):
        stamp = start + timedelta(microseconds=round(float(t) * 1e6))
        rows.append(f"{stamp:%Y-%m-%d %H:%M:%S.%f}0,{int(prompt)},{int(output)}")
    path.write_text("\n".join(rows) + "\n")
    return path


def write_sample(path: str | Path = SAMPLE_PATH, spec: str = SAMPLE_SPEC) -> Path:
    return write_azure_csv(synthetic_trace(parse_synthetic(spec)), path)
