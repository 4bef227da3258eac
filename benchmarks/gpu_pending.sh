#!/usr/bin/env bash
# GPU work written on CPU-only days and not yet run on hardware, in batches that fit the device
# tool's 10-minute calls. On the device machine, from the repo root, after the bundle:
#
#   source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh kernels
#   ... bash benchmarks/gpu_pending.sh engine
#   ... bash benchmarks/gpu_pending.sh serving
#
# Each batch writes under $OUT (the device tool brings it back). Expected times are for one
# H100; results go to BENCHMARKS.md with machine and date.
set -uo pipefail
out="${OUT:-out}"
mkdir -p "$out"
case "${1:-}" in
  kernels)  # ~9 min: correctness first, then the two kernel sweeps (issues 2 and 4)
    python -m pytest -q -p no:cacheprovider tests/gpu/test_attention_kernels.py \
      tests/gpu/test_shared_prefix_kernel.py 2>&1 | tee "$out/kernel-tests.log" | tail -5
    python -m benchmarks.attention --tune --out "$out/attention" 2>&1 | tail -40
    # does a larger page close the last few % to SDPA at the goal's sizes? (~1 min)
    python -m benchmarks.attention --batches 16 64 --contexts 4096 32768 --prefill-lengths --block-size 64 \
      --out "$out/attention-block64" 2>&1 | tail -15
    python -m benchmarks.shared_prefix --out "$out/shared-prefix" 2>&1 | tail -40
    ;;
  engine)  # ~6 min: the engine on CUDA, then Hydragen's whole-model figure (issue 4)
    python -m pytest -q -p no:cacheprovider tests/gpu/test_engine_cuda.py 2>&1 | tail -5
    python -m benchmarks.shared_prefix_step --shape llama-3-8b --batch 256 --out "$out/shared-prefix-step" \
      2>&1 | tail -20
    ;;
  serving)  # ~7 min: prefix-aware routing against round-robin, two replicas sharing the GPU (issue 4)
    # 48 req/s, not 24: the simulator (benchmarks/predict_prefix_serving.py, docs/simulator.md)
    # predicts both policies keep up at 24 (1.0x throughput, 1.25x TTFT) and the TTFT ratio is
    # large only between round-robin's capacity (~35 req/s) and the cluster rule's (~55)
    python benchmarks/prefix_serving.py --shape llama-3-8b --gpus --gpus-per-replica 0.5 --users 256 \
      --requests-per-user 4 --rate 48 --system-tokens 2048 --groups 64 --fewshot-tokens 1024 \
      --question-tokens 64 --output-tokens 64 --blocks-per-replica 3200 --engine-baseline \
      --out "$out/prefix-serving" 2>&1 | grep -v "WARN\|INFO" | tail -30
    ;;
  *)
    echo "usage: $0 kernels|engine|serving" >&2
    exit 2
    ;;
esac
