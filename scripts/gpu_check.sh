#!/usr/bin/env bash
# Prove the GPU paths on whatever GPU this machine has: bash scripts/gpu_check.sh [OUT_DIR]
#
# Runs the tests marked `gpu` (tests/test_gpu.py: bf16/fp16 with the fp32 lr column, fp16 overflow skipped
# without advancing the schedule, no host-device sync on updates that do not log, compile on and off,
# bit-identical resume with deterministic kernels; with 2+ GPUs NCCL runs, the lr column of 1 GPU, SIGTERM
# agreement, FSDP2 sharding (one GPU: bf16 + resume, tokens/s against DDP; two GPUs);
# tests/test_micro_batch.py: `auto` under a memory cap), prints one PASS/FAIL line per check and a summary, writes
# OUT_DIR/gpu_check.json (default runs/gpu_check), exits non-zero on any failure. Then, time allowing, a few
# dozen updates of configs/gpt2_small.yaml as shipped (bf16, compile, fused AdamW, 0.5M-token batches) on
# random tokens of its vocabulary, whose tokens/s and MFU go into gpu_check.json (`gpt2_small`), and the
# benchmark on the GPU (trainer vs hand-written loops, tokens/s and MFU for the GPT) into the same dir.
# Budget: about 8 minutes on one GPU. On a machine without CUDA it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${1:-runs/gpu_check}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device on this machine (torch.cuda.is_available() is false): nothing checked"
    exit 0
fi
mkdir -p "$OUT"
"$PY" -c "import torch; print('gpu_check:', torch.cuda.device_count(), 'x', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

WORKERS="${GPU_CHECK_WORKERS:-0}"  # several pytest workers share the GPU well (the tests' models are small)
DIST=(); [ "$WORKERS" != "0" ] && DIST=(--dist load)
timeout "${GPU_CHECK_TEST_S:-420}" "$PY" -m pytest -m gpu tests/test_gpu.py tests/test_micro_batch.py -n "$WORKERS" "${DIST[@]}" -p no:cacheprovider \
    -q -rA --junitxml="$OUT/junit.xml" > "$OUT/pytest.log" 2>&1
status=$?

"$PY" - "$OUT" "$status" <<'PYEOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
import torch

out, status = Path(sys.argv[1]), int(sys.argv[2])
checks = []
junit = out / "junit.xml"
if junit.exists():
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "PASS"
        for kind, label in (("failure", "FAIL"), ("error", "FAIL"), ("skipped", "SKIP")):
            node = case.find(kind)
            if node is not None:
                outcome = label
                reason = (node.get("message") or "").splitlines()[0][:160] if node.get("message") else ""
                break
        else:
            reason = ""
        measured = {p.get("name"): p.get("value") for p in case.iter("property")}  # record_property's numbers
        checks.append({"check": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                       "reason": reason, **({"measured": measured} if measured else {})})
for c in checks:
    print(f"{c['outcome']} {c['check']} ({c['seconds']:.1f} s){' - ' + c['reason'] if c['reason'] else ''}"
          f"{' ' + json.dumps(c['measured']) if c.get('measured') else ''}")
counts = {k: sum(c["outcome"] == k for c in checks) for k in ("PASS", "FAIL", "SKIP")}
timed_out = status == 124
ok = status in (0, 5) and counts["FAIL"] == 0 and counts["PASS"] > 0 and not timed_out
report = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
          "cuda": torch.version.cuda, "pytest_status": status, "timed_out": timed_out, "counts": counts,
          "checks": checks, "ok": ok}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(f"gpu_check: {'PASS' if ok else 'FAIL'}: {counts['PASS']} passed, {counts['FAIL']} failed, "
      f"{counts['SKIP']} skipped{' (timed out)' if timed_out else ''}; report {out / 'gpu_check.json'}, "
      f"log {out / 'pytest.log'}")
sys.exit(0 if ok else 1)
PYEOF
result=$?

if [ "${GPU_CHECK_GPT2:-1}" = "1" ]; then
    # GPT-2 small as shipped, GPU_CHECK_GPT2_STEPS updates (the first compiles; the rows after it are timed)
    STEPS="${GPU_CHECK_GPT2_STEPS:-30}"
    "$PY" -c "import json, sys, numpy as np; from pathlib import Path
d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
ids = np.random.default_rng(0).integers(0, 50257, size=1 << 24, dtype=np.uint16)
ids.tofile(d / 'train.bin'); ids[: 1 << 20].tofile(d / 'val.bin')
(d / 'meta.json').write_text(json.dumps({'dtype': 'uint16', 'vocab_size': 50257}))" "$OUT/gpt2_tokens"
    timeout "${GPU_CHECK_GPT2_S:-240}" "$PY" scripts/train.py --config configs/gpt2_small.yaml \
        data.kwargs.dir="$OUT/gpt2_tokens" output_dir="$OUT/gpt2_small" train.resume=none train.max_steps="$STEPS" \
        scheduler.kwargs.warmup_steps=5 train.log_every=5 train.eval_every=0 train.checkpoint_every=0 \
        tracking.wandb=false train.plots=false train.progress=false > "$OUT/gpt2_small.log" 2>&1
    gpt2_status=$?
    "$PY" - "$OUT" "$gpt2_status" <<'PYEOF'
import json, statistics, sys
from pathlib import Path

out, status = Path(sys.argv[1]), int(sys.argv[2])
metrics = out / "gpt2_small" / "metrics.jsonl"
rows = [json.loads(line) for line in metrics.read_text().splitlines() if line] if metrics.exists() else []
rows = [r for r in rows if "tokens_per_s" in r][1:]  # the first row's window holds the compile
result = {"status": status, "updates": rows[-1]["step"] if rows else 0}
if rows:
    result["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in rows)
    result["mfu"] = statistics.median(r["mfu"] for r in rows) if all("mfu" in r for r in rows) else None
    result["loss"] = rows[-1]["loss"]
    result["max_allocated_gb"] = max(r.get("memory/max_allocated_gb", 0.0) for r in rows)
report = out / "gpu_check.json"
data = json.loads(report.read_text()) if report.exists() else {}
data["gpt2_small"] = result
report.write_text(json.dumps(data, indent=2) + "\n")
if status == 0 and rows:
    mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ""
    print(f"gpu_check: GPT-2 small (configs/gpt2_small.yaml, 124M, vocab 50,304, bf16, compile, fused AdamW): "
          f"{result['tokens_per_s']:,.0f} tokens/s{mfu} over updates {rows[0]['step']}-{rows[-1]['step']}, "
          f"peak memory {result['max_allocated_gb']:.1f} GB")
else:
    print(f"gpu_check: GPT-2 small did not finish (status {status}; see {out / 'gpt2_small.log'})")
PYEOF
fi

if [ "${GPU_CHECK_BENCH:-1}" = "1" ]; then
    timeout "${GPU_CHECK_BENCH_S:-240}" "$PY" scripts/benchmark.py --device cuda ${GPU_CHECK_BENCH_ARGS:---quick} --out "$OUT/bench.json" \
        > "$OUT/bench.log" 2>&1 && echo "gpu_check: benchmark written to $OUT/bench.json" \
        || echo "gpu_check: benchmark did not finish (see $OUT/bench.log); the checks above stand"
fi
exit $result
