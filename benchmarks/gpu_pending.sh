#!/usr/bin/env bash
# GPU work written or changed since the last device run, in batches that fit the device
# tool's 10-minute calls. On the device machine, from the repo root, after the bundle:
#
#   source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh kernels
#   ... bash benchmarks/gpu_pending.sh engine (or serving, baselines)
#
# State (2026-11-23, session 7): `pair` ran on 2xH200 (BENCHMARKS.md: disaggregated GPU tests, handoff
# before and after this session's protocol change, serve.py 1P+1D vs colocated at 4-32 req/s); the
# kernel, shared-prefix, engine and overlap GPU tests passed on an H200 after load_kv_tile and
# uploads.upload (115 tests). Not re-run on an H100 since those two changes: the `kernels` and
# `overlap` benchmarks (timings), and the step profile's `wait` phase.
#
# Each batch writes its logs and one results.tgz under $OUT (the device tool brings back at
# most 8 files, so the benchmarks' own folders travel as one archive). Expected times are
# for one H100; results go to BENCHMARKS.md with machine and date.
set -uo pipefail
out="${OUT:-out}"
work="$(mktemp -d)"
mkdir -p "$out"
trap 'tar czf "$out/results.tgz" -C "$work" . 2>/dev/null' EXIT
train_small() {  # PRESET MINUTES: benchmarks/train_small_model.py, its log, metrics, plot, checkpoint tar in 15 MiB parts
  local run
  run="$(mktemp -d)"
  trap - EXIT  # no results.tgz: the checkpoint's parts need the device tool's 8 files
  # the checkpoint is saved when training ends (~6.5 min in); the timeout leaves time to pack it
  timeout 520 python -m benchmarks.train_small_model --preset "$1" --minutes "$2" --device cuda --out "$run" 2>&1 \
    | tee "$out/train-$1.log"
  cp "$run/metrics.json" "$run/loss.png" "$out/"
  tar cf - -C "$run" checkpoint | split -b 15m -d - "$out/$1-model.tar.part-"
  ls -l "$out"
}
case "${1:-}" in
  kernels)  # ~6 min: kernel GPU tests, single-split decode, --tune (issue 2's SDPA goal)
    python -m pytest -q -p no:cacheprovider tests/gpu/test_attention_kernels.py 2>&1 \
      | tee "$out/tests.log" | tail -5
    # the one untried config family (docs/kernels.md): one split per (sequence, head), deep lookahead
    python -m benchmarks.attention --batches 16 64 --contexts 4096 32768 --prefill-lengths \
      --decode max_splits=1 block_n=64 num_stages=4 table_lookahead=true --out "$work/attention-single-split" \
      > "$out/attention-single-split.log" 2>&1  # a file, not `| head`: a pipe cut short would kill the run
    grep -v "━" "$out/attention-single-split.log" | head -12
    python -m benchmarks.attention --tune --out "$work/attention" 2>&1 | tee "$out/attention.log" | tail -80
    ;;
  engine)  # ~4 min: Hydragen's whole-model figure (issue 4; last run 2026-11-23 17:04 UTC)
    python -m pytest -q -p no:cacheprovider tests/gpu/test_shared_prefix_kernel.py tests/gpu/test_engine_cuda.py \
      2>&1 | tee "$out/tests.log" | tail -5  # ~2.5 min
    python -m benchmarks.shared_prefix_step --shape llama-3-8b --batch 256 --lockstep --out "$work/shared-prefix-step" \
      2>&1 | tee "$out/shared-prefix-step.log" | tail -12
    ;;
  overlap)  # ~6 min: overlapped scheduling (EngineConfig.async_scheduling), new in session 6
    python -m pytest -q -p no:cacheprovider tests/gpu/test_async_scheduling_cuda.py tests/gpu/test_engine_cuda.py \
      2>&1 | tee "$out/tests.log" | tail -15
    python benchmarks/decode_step.py --shape llama-3-8b --batches 1 4 16 64 --no-hf --out "$work/decode-step" \
      2>&1 | tee "$out/decode-step.log" | tail -6
    python -m benchmarks.shared_prefix_step --shape llama-3-8b --batch 256 \
      --out "$work/shared-prefix-step-async" 2>&1 | tee "$out/shared-prefix-step-async.log" | tail -12
    ;;
  pair)  # ~6 min, nvidia-h200-x2 only (issue 3): disaggregated GPU tests, handoff (+ timeline), 1P+1D vs 2 colocated
    python -m pytest -q -p no:cacheprovider tests/gpu/test_cluster_cuda.py tests/gpu/test_kv_transport.py \
      2>&1 | tee "$out/tests.log" | tail -5  # ~1 min; passed on 2026-11-23 (session 7)
    python -m benchmarks.handoff --parts pair --layers-per-chunk 32 8 4 --out "$work/handoff" 2>&1 \
      | grep "│" | tee "$out/handoff.log"  # ~1 min; 4K 2.10 ms (71% of raw), 16K 86% on 2026-11-23
    python -m benchmarks.handoff_trace --tokens 4096 --out "$work/handoff-trace" > "$out/handoff-trace.log" 2>&1
    gzip "$work"/handoff-trace/*.json
    timeout 400 python benchmarks/serve.py --shape llama-3-8b --gpus --rates 8 16 24 32 --duration 12 \
      --out "$work/serve" > "$out/serve.log" 2>&1  # ~4 min
    grep -v "WARN\|INFO" "$out/serve.log" | tail -15
    # (~1.5 min, issue 17) `tierserve calibrate` with its two-GPU part: the KV handoff GPU0 -> GPU1 (NCCL, the
    # cluster's KVHandoff) and the TP all-reduce; never run on two GPUs yet (CPU/gloo only, tests/simulator)
    python -c "from pathlib import Path; from benchmarks.model_shapes import shape_dir; shape_dir('llama-3-8b', Path('$work/model'))"
    timeout 180 python -m cluster.cli calibrate --model "$work/model/llama-3-8b" --load-format dummy --device cuda \
      --hardware H200 --tokens 512 2048 --batches 1 64 --context 1024 --handoff-tokens 256 1024 4096 16384 \
      --out "$work/calibrate/calibration.json" > "$out/calibrate.log" 2>&1
    grep -v "WARN\|INFO" "$out/calibrate.log" | tail -14
    ;;
  serving)  # ~5 min: prefix-aware routing against round-robin, two replicas sharing the GPU (issue 4)
    # 1. as on 2026-11-23 (48 req/s; TTFT 8-13x lower, throughput 1.06-1.14x), now with the
    #    wall/CPU step profile: is the serving actors' 7-12 ms 'prepare' waiting?
    python benchmarks/prefix_serving.py --shape llama-3-8b --gpus --gpus-per-replica 0.5 --users 256 \
      --requests-per-user 4 --rate 48 --system-tokens 2048 --groups 64 --fewshot-tokens 1024 \
      --question-tokens 64 --output-tokens 64 --blocks-per-replica 3200 --out "$work/prefix-serving-48" \
      > "$out/prefix-serving-48.log" 2>&1
    grep -v "WARN\|INFO" "$out/prefix-serving-48.log" | tail -12
    # 2. the prefill-heavy workload the simulator predicts 3.38x throughput / 11x lower median
    #    TTFT for at 200 req/s (docs/simulator.md): 32 groups of 2K few-shot, 16 output tokens
    python benchmarks/prefix_serving.py --shape llama-3-8b --gpus --gpus-per-replica 0.5 --users 256 \
      --requests-per-user 8 --rate 200 --system-tokens 2048 --groups 32 --fewshot-tokens 2048 \
      --question-tokens 64 --output-tokens 16 --blocks-per-replica 3200 --out "$work/prefix-serving-heavy" \
      > "$out/prefix-serving-heavy.log" 2>&1
    grep -v "WARN\|INFO" "$out/prefix-serving-heavy.log" | tail -12
    ;;
  baselines)  # ~5-7 min (timeouts 2 + 5.5), one H200 (issue 13 point 5): honest ceilings and peers; last run 2026-12-02 01:31 UTC
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh baselines
    # 1. (~1.5 min) the read-only ceiling (benchmarks/ceilings.py: torch.sum and a Triton reduction, 256 MiB-4 GiB)
    #    beside the copy rate, and the decode kernel's % of each on two decode shapes
    timeout 120 python -m benchmarks.attention --batches 16 64 --contexts 4096 32768 --prefill-lengths \
      --out "$work/attention" > "$out/attention.log" 2>&1  # to a file: a pipe cut short by head would kill it
    grep -v "━" "$out/attention.log" | grep "paged decode\|│" | head -8
    # 2. (~3-5 min, most of it transformers' torch.compile at its first two batch sizes) the decode step against
    #    the corrected floor (embedding rows, not the table; copy and read-only rates) and transformers at its
    #    best (static cache + compile): step against step, e2e against e2e. Ours runs all batches first and
    #    every row is written as it finishes, so the timeout keeps what finished; 64 before 16 for the same reason
    timeout 330 python benchmarks/decode_step.py --shape llama-3-8b --batches 1 64 16 --no-hf-cb \
      --out "$work/decode-step" > "$out/decode-step.log" 2>&1
    grep "note\|failed\|Error\|GB/s\|│" "$out/decode-step.log" | tail -12
    ;;
  trained-model)  # ~8 min, one H200 (issue 18 part 1): the `small` preset (26.7M parameters) for 5 minutes.
    # Ran 2026-12-02 for the EARLIER recall task (made-up keys; benchmarks/results/trained-model-h200-2026-12-02/:
    # held-out loss 1.265, recall 1.0); the task changed after (e6a352e): to be run again for the current one
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh trained-model
    # (the bundle is not needed by this batch.) Uses the image's torch, triton, tokenizers, safetensors, matplotlib,
    # and numpy, torch and transformers as sources to train on (transformers also for the agreement check).
    # Phases: data ~0.5-1 min (stdlib + those sources, tokenizer, 100K task examples), training 5 min (compile and
    # evaluations included), evaluation ~1 min. Comes back, 7 files (~55 MB): train-small.log, metrics.json
    # (held-out loss, recall exact-match, agreement with transformers, curves), loss.png and
    # small-model.tar.part-00..03 (the 51 MiB bf16 checkpoint; join: cat small-model.tar.part-* | tar x)
    train_small small 5
    ;;
  trained-model-ci)  # ~6 min, one H200: the `ci` preset (6.5M parameters, 12.4 MiB bf16) for 3 minutes; never run
    # Optional: the copy CPU tests use is the `cpu` preset, trained on a CPU and committed (tests/data/trained-small/).
    # Comes back: train-ci.log, metrics.json, loss.png, ci-model.tar.part-00 (one part: under 15 MiB)
    train_small ci 3
    ;;
  trained-pair)  # ~8.5 min, one H200 (issue 18 part 1): the `small` and `ci` presets trained side by side, 4.5 min each
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh trained-pair
    # (the bundle is not needed). Both small models leave most of the GPU idle, so they share it; each times its own
    # warm-up steps with the other running. The checkpoints stay in .trained/ (git-ignored) for `trained-eval`, the
    # next call while the machine is warm. Comes back: ci-model.tar (checkpoint, metrics.json, loss.png, log; under
    # 16 MiB), small-model.tar.part-00..03 (51 MiB bf16), small-logs.tgz (log, metrics.json, loss.png)
    trap - EXIT
    mkdir -p .trained
    for preset in small ci; do
      timeout 530 python -m benchmarks.train_small_model --preset "$preset" --minutes 4.5 --device cuda \
        --out ".trained/$preset" > ".trained/train-$preset.log" 2>&1 &
    done
    wait
    tail -3 .trained/train-small.log .trained/train-ci.log
    cp .trained/train-ci.log .trained/ci/
    tar cf "$out/ci-model.tar" -C .trained/ci .
    cp .trained/train-small.log .trained/small/
    tar czf "$out/small-logs.tgz" -C .trained/small train-small.log metrics.json loss.png
    tar cf - -C .trained/small checkpoint | split -b 15m -d - "$out/small-model.tar.part-"
    ls -l "$out"
    ;;
  trained-eval)  # ~6 min, one H200, right after trained-pair (its .trained/ checkpoints): quality on the small model
    # 1. the 5-agent chain on the trained model (recall exact-match, loss, TTFT per mode) on the GPU
    timeout 200 python -m benchmarks.multi_agent --part trained --model .trained/small/checkpoint --device cuda \
      --episodes 20 --out "$work/multi-agent-trained" > "$out/multi-agent-trained.log" 2>&1
    grep -v "━" "$out/multi-agent-trained.log" | tail -14
    # 2. KV codec quality: held-out loss within 1%, >= 95% identical 128-token continuations
    timeout 200 python -m benchmarks.kv_codec --parts quality --checkpoint .trained/small/checkpoint \
      --out "$work/kv-codec-quality" > "$out/kv-codec-quality.log" 2>&1
    tail -6 "$out/kv-codec-quality.log"
    # 3. the same chain on the ci copy (what CPU tests use)
    timeout 120 python -m benchmarks.multi_agent --part trained --model .trained/ci/checkpoint --device cuda \
      --episodes 10 --out "$work/multi-agent-trained-ci" > "$out/multi-agent-trained-ci.log" 2>&1
    grep -v "━" "$out/multi-agent-trained-ci.log" | tail -14
    ;;
  token-rows)  # ~7 min, one H200 (issues 18 part 2, 19): small prefill steps replay the decode CUDA graphs as rows
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh token-rows
    # 1. (~3 min) the engine's CUDA tests (tokens equal transformers' through prefill, prefix cache, chunks; now with
    #    small steps as graph rows), async scheduling, segment reuse on the device
    timeout 300 python -m pytest -q -p no:cacheprovider tests/gpu/test_engine_cuda.py tests/gpu/test_segments_cuda.py \
      tests/gpu/test_async_scheduling_cuda.py 2>&1 | tee "$out/tests.log" | tail -8
    # 2. (~0.5 min) the step profile: eager vs graphed small prefill steps at Llama-3-8B shapes
    timeout 120 python benchmarks/prefill_profile.py --tokens 16 48 128 512 --repeats 3 \
      --out "$work/prefill-profile" > "$out/prefill-profile.log" 2>&1
    tail -12 "$out/prefill-profile.log"
    # 3. (~2 min) the 5-agent chain at Llama-3-8B shapes (as `multi-agent`), and on the committed trained copy
    timeout 200 python -m benchmarks.multi_agent --part shapes --device cuda --episodes 4 --warmup 1 \
      --template-tokens 512 --message-tokens 1024 --modes full exact r=0 r=0.1 anchors \
      --out "$work/multi-agent" > "$out/multi-agent.log" 2>&1
    grep -v "━" "$out/multi-agent.log" | tail -8
    timeout 90 python -m benchmarks.multi_agent --part trained --model tests/data/trained-small --device cuda \
      --episodes 10 --out "$work/multi-agent-trained" > "$out/multi-agent-trained.log" 2>&1
    grep -v "━" "$out/multi-agent-trained.log" | tail -8
    ;;
  gpu-tests)  # ~5 min, one H200: every single-GPU test in tests/gpu (two-GPU ones skip), after a session's changes
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh gpu-tests
    timeout 500 python -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/tests.log" | tail -15
    ;;
  kv-codec)  # ~3 min, one H200 (issue 18 part 3): the KV codec's kernels, host tier with it, speed. Ran 2026-12-02
    # (BENCHMARKS.md); again once encode is faster, and the quality part on the retrained `small` checkpoint
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh kv-codec
    # Quality too, given a trained checkpoint (trained-model's small-model.tar.part-*, joined, unpacked and carried):
    #   ... && CKPT=small-model/checkpoint bash benchmarks/gpu_pending.sh kv-codec
    # 1. (~0.5 min) the kernels give the CPU reference's bytes (Llama-3-8B, odd shapes); host tier from/into a GPU cache
    python -m pytest -q -p no:cacheprovider tests/gpu/test_kv_codec_cuda.py tests/kvstore/test_kv_codec.py \
      tests/kvstore/test_host_tier_codec.py 2>&1 | tee "$out/tests.log" | tail -5
    # 2. (~1.5 min, most of it the CPU torch codec and Redis) codec per 4K tokens (goal <= 0.4 ms), bytes ratio, host
    #    tier put/get exact vs kivi4 vs kivi2 (goal: each >= 2.5x faster than exact's 478 / 969 ms on 2xH200)
    timeout 240 python -m benchmarks.kv_codec --parts codec host --cpu-iters 1 --out "$work/kv-codec" \
      > "$out/kv-codec.log" 2>&1
    tail -14 "$out/kv-codec.log"
    if [ -n "${CKPT:-}" ]; then  # 3. (~1-2 min) held-out loss within 1%, >= 95% identical 128-token continuations
      timeout 200 python -m benchmarks.kv_codec --parts quality --checkpoint "$CKPT" --out "$work/kv-codec-quality" \
        > "$out/kv-codec-quality.log" 2>&1
      tail -4 "$out/kv-codec-quality.log"
    fi
    ;;
  offload)  # ~6 min, one H200 (issue 15): attention offload on CUDA; new, never run
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh offload
    # 1. (~4 min) model worker and attention worker (Triton attention, its own process) on the one GPU, linked by
    #    gloo through host memory: greedy tokens equal the CUDA engine's (Triton + CUDA graphs) on 64 prompts x 128
    #    tokens, fp32, m = 1, 2, 3, lockstep and overlapped scheduling (the NCCL variant is in offload-pair)
    timeout 330 python -m pytest -q -p no:cacheprovider tests/gpu/test_attention_offload_cuda.py 2>&1 \
      | tee "$out/tests.log" | tail -8
    # 2. (~1 min) the CPU/gloo sanity numbers on this host's CPUs (tiny model, attention worker in a child process)
    timeout 200 python -m benchmarks.offload_decode --parts cpu --out "$work/attention-offload-cpu" \
      > "$out/attention-offload-cpu.log" 2>&1
    tail -9 "$out/attention-offload-cpu.log"
    ;;
  offload-pair)  # ~8 min, nvidia-h200-x2 only (issue 15): NCCL link, Llama-3-8B offloaded steps, calibrated plan; new
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh offload-pair
    # 1. (~2 min) model on cuda:0, attention on cuda:1, NCCL up/down communicators: tokens equal the CUDA engine's
    timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_attention_offload_cuda.py -k two_gpus 2>&1 \
      | tee "$out/tests.log" | tail -8
    # 2. (~4-5 min) per-layer round trip at B = 64..512 (goal <= 40 us at 256), offloaded vs local step for B in
    #    {32..512} x context {1K, 4K} x m in {1, 2, 3}, E = max(dense, attention, link) / step (goal >= 0.85 at
    #    m = 2, B >= 128), tokens/s of 1 model + 1 attention GPU vs 2 colocated at equal KV (derived from steps);
    #    rows print as they finish, results.json at the end
    timeout 330 python -m benchmarks.offload_decode --parts link step --device cuda \
      --out "$work/attention-offload" > "$out/attention-offload.log" 2>&1
    grep "link B\|step B\|wrote\|Error\|error" "$out/attention-offload.log" | tail -40
    # 3. (~0.5 min) the simulator calibrated by those curves: tokens per dollar, offloaded (attention on H200 and on
    #    H20) vs the best colocated / disaggregated H200 design, 4K prompts, tbt_p99 60 ms (goal >= 1.3x; plot)
    python -m benchmarks.offload_decode --parts plan --results "$work/attention-offload/results.json" \
      --out "$work/attention-offload" 2>&1 | tee "$out/attention-offload-plan.log" | tail -14
    ;;
  soak)  # ~9 min, nvidia-h200-x4: 2P+2D, a GPU each (REPLICAS=1: 1P+1D on nvidia-h200-x2) (issue 14); new, never run
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh soak
    # Llama-3-8B shapes (random bf16 weights), the real router over HTTP, 1024/128-token mean prompts/outputs.
    # Bring-up ~1.5 min; capacity ramp from 8 req/s (x1.5 per 15 s step, p99 TTFT <= 1 s and p99 time per output
    # token <= 50 ms) ~2.5 min; 3 minutes at 80% of it with prefill-0, decode-1 and Redis killed and decode-0
    # stopped for 15 s, one after another; drain, leak check. Comes back: soak.log, and results.tgz holding
    # soak/summary.json, soak/soak.json.gz (every request and RSS sample too) and soak/soak.png
    timeout 570 python -m benchmarks.soak --gpu --replicas "${REPLICAS:-2}" --minutes 3 --ramp-start 8 \
      --ramp-step-s 15 --out "$work/soak" > "$out/soak.log" 2>&1
    grep -v "^request \|(raylet)\|is down\|is ready\|is degraded\|broke" "$out/soak.log" | tail -24
    ;;
  multi-agent)  # ~3 min, one H200 (issue 18 part 2): segment reuse on CUDA, and the 5-agent chain at Llama-3-8B shapes
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh multi-agent
    # tests/gpu/test_segments_cuda.py (~30 s): layer-0 re-rotation within 1e-5 and recompute_ratio 1.0 identical to
    # no reuse on the device, a fill that reuses. Then the chain as the issue sets it (random bf16 weights: timing
    # only): 512-token templates, four 1024-token messages, 4 episodes (1 warm-up), ~1.5 min. Prints per mode the
    # reuse rate, median TTFT per agent (ms) and its speed-up over `full` (no segment reuse). Comes back:
    # tests.log, multi-agent.log, results.tgz (multi-agent/multi_agent.json, .png)
    python -m pytest -q -p no:cacheprovider tests/gpu/test_segments_cuda.py 2>&1 | tee "$out/tests.log" | tail -5
    timeout 240 python -m benchmarks.multi_agent --part shapes --device cuda --episodes 4 --warmup 1 \
      --template-tokens 512 --message-tokens 1024 --modes full exact r=0 r=0.1 anchors \
      --out "$work/multi-agent" > "$out/multi-agent.log" 2>&1
    grep -v "━" "$out/multi-agent.log" | tail -12
    ;;
  sim-fidelity)  # ~6-8 min (timeouts 2 + 1.5 + 5), one H200 (issue 17): a profile of this machine and one colocated
    # engine under Poisson load, each rate twice on the same trace; benchmarks/sim_vs_measured.py --session reads it
    # source .devbundle/setup.sh && export PYTHONPATH=.:$PYTHONPATH && bash benchmarks/gpu_pending.sh sim-fidelity
    # Llama-3-8B shape, random bf16 weights. Comes back: calibrate.log, decode-step.log, serve.log and results.tgz
    # (calibrate/calibration.json, decode-step/decode_step*.json, serve/serve.json with per-run step profiles)
    python -c "from pathlib import Path; from benchmarks.model_shapes import shape_dir; shape_dir('llama-3-8b', Path('$work/model'))"
    # 1. (~1-1.5 min) `tierserve calibrate`: lockstep prefill steps (one prompt), decode steps, mixed steps (a prompt
    #    prefilled beside B decoding sequences of ~1K context: what a colocated engine runs when a request arrives)
    timeout 120 python -m cluster.cli calibrate --model "$work/model/llama-3-8b" --load-format dummy --device cuda --hardware H200 \
      --tokens 16 64 128 256 512 1024 1536 2048 --batches 1 8 32 64 128 --context 1024 \
      --mixed-batches 8 32 64 --mixed-tokens 64 192 512 1024 1536 1984 --repeats 3 \
      --out "$work/calibrate/calibration.json" > "$out/calibrate.log" 2>&1
    grep -v "WARN\|INFO" "$out/calibrate.log" | tail -32
    # 2. (~1 min) decode steps as the serving engine runs them (overlapped scheduling, the CUDA default), ~1K context
    timeout 90 python benchmarks/decode_step.py --shape llama-3-8b --batches 1 8 32 64 128 --prompt-len 1024 \
      --new-tokens 32 --no-hf --out "$work/decode-step" > "$out/decode-step.log" 2>&1
    grep "GB/s\|step \|Error" "$out/decode-step.log" | grep -v "━" | tail -8
    # 3. (~4 min: bring-up ~1 min, 8 runs of 15 s + drain) benchmarks/serve.py, ONE colocated engine, light to near
    #    saturation (the simulator puts this engine's knee at ~28-32 req/s), each rate twice on the same trace
    #    SERVE_DURATION / SERVE_REPEATS (default 15 s, 2) trade repeats for longer runs (less noise per run);
    #    SERVE_RATES (default "4 12 20 28"; keep a low one first: sim_vs_measured takes the launch scale there)
    duration="${SERVE_DURATION:-15}" repeats="${SERVE_REPEATS:-2}" rates="${SERVE_RATES:-4 12 20 28}"
    # shellcheck disable=SC2086  # the rates are words
    timeout $((90 + $(wc -w <<< "$rates") * repeats * (duration + 12))) python benchmarks/serve.py --shape llama-3-8b \
      --gpus --modes colocated --colocated-replicas 1 --rates $rates --repeats "$repeats" --duration "$duration" \
      --step-profiles --out "$work/serve" > "$out/serve.log" 2>&1
    grep -v "WARN\|INFO\|pid=" "$out/serve.log" | tail -10
    ;;
  *)
    echo "usage: $0 kernels|engine|overlap|pair|serving|baselines|trained-model|trained-model-ci|trained-pair|trained-eval|token-rows|gpu-tests|kv-codec|offload|offload-pair|soak|multi-agent|sim-fidelity" >&2
    exit 2
    ;;
esac
