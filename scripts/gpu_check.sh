#!/usr/bin/env bash
# Prove the GPU paths on whatever GPU this machine has: bash scripts/gpu_check.sh [OUT_DIR]
#
# Runs the tests marked `gpu` (tests/test_gpu.py: bf16/fp16 with the fp32 lr column, fp16 overflow skipped
# without advancing the schedule, no host-device sync on updates that do not log, compile on and off,
# bit-identical resume with deterministic kernels; with 2+ GPUs NCCL runs, the lr column of 1 GPU, SIGTERM
# agreement, FSDP2 sharding (one GPU: bf16 + resume, tokens/s against DDP; two GPUs);
# tests/test_micro_batch.py: `auto` under a memory cap), prints one PASS/FAIL line per check and a summary, writes
# OUT_DIR/gpu_check.json (default runs/gpu_check), exits non-zero on any failure. Then, time allowing,
# the benchmark on the GPU (trainer vs hand-written loops, tokens/s and MFU for the GPT) into the same dir.
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

if [ "${GPU_CHECK_BENCH:-1}" = "1" ]; then
    timeout "${GPU_CHECK_BENCH_S:-240}" "$PY" scripts/benchmark.py --device cuda ${GPU_CHECK_BENCH_ARGS:---quick} --out "$OUT/bench.json" \
        > "$OUT/bench.log" 2>&1 && echo "gpu_check: benchmark written to $OUT/bench.json" \
        || echo "gpu_check: benchmark did not finish (see $OUT/bench.log); the checks above stand"
fi
exit $result
