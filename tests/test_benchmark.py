"""scripts/benchmark.py --quick end to end: it runs and its JSON holds every section's numbers (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, clean_env

pytestmark = pytest.mark.e2e
BENCHMARK = ROOT / "scripts" / "benchmark.py"


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_quick_benchmark_writes_every_number(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--out", str(out)], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())

    assert results["meta"]["quick"] is True
    assert set(results["meta"]["sections"]) == {"throughput", "optimizer", "overhead", "startup", "gpt"}
    assert "sync" not in results and "wandb" not in results  # the 2-process and W&B runs are left out

    throughput = results["throughput"]
    assert "lightning" not in throughput["loops"]
    assert list(throughput["models"]) == ["small"]
    small = throughput["models"]["small"]
    for loop in ("raw", "raw_tuned", "trainer", "accelerate"):
        assert positive(small["updates_per_s"][loop]["median"])
        assert positive(small["cpu_updates_per_s"][loop]["median"])
        assert positive(small["update_time_us"][loop])
    for key in ("trainer_vs_raw", "trainer_vs_accelerate"):
        assert positive(small["ratios"][key]) and positive(small["cpu_ratios"][key])
        assert positive(results["ratios"][f"small.{key}"])
    assert small["same_params_as_trainer"] is True  # the raw loop really is the same training

    optimizer = results["optimizer"]
    for name in ("random_scaled_sgd", "sgd_foreach", "sgd_for_loop", "tutorial_per_param"):
        assert positive(optimizer["step_ms"][name])
    assert positive(optimizer["ratios"]["random_scaled_sgd_vs_sgd_foreach"])

    overhead = results["overhead"]
    assert overhead["rows"] and all(positive(r["trainer_us"]) for r in overhead["rows"])

    startup = results["startup"]
    lean = startup["commands"]["lean"]
    assert positive(lean["first_row_s"]) and lean["exit_s"] >= lean["first_row_s"]
    assert positive(startup["import"]["import_template_trainer_s"]) and positive(startup["import"]["import_s"])

    gpt = results["gpt"]
    assert list(gpt["modes"]) == ["eager"] and "compile_speedup" not in gpt  # --quick: compile off only
    eager = gpt["modes"]["eager"]
    for loop in ("nanogpt", "nanogpt_tuned", "trainer"):
        assert positive(eager["tokens_per_s"][loop]["median"])
        assert positive(eager["update_time_us"][loop]) and positive(eager["first_update_s"][loop])
    assert positive(eager["ratios"]["trainer_vs_nanogpt"]) and positive(eager["cpu_ratios"]["trainer_vs_nanogpt"])
    assert positive(results["ratios"]["gpt.eager.trainer_vs_nanogpt"])
    assert positive(eager["trainer_logged"]["tokens_per_s"])  # the trainer's own metrics rows carry it
    assert eager["same_params_as_trainer"] is True  # the nanoGPT-style loop really is the same training
    spec = gpt["spec"]
    assert positive(gpt["flops_per_token"]) and gpt["tokens_per_update"] == spec["batch"] * spec["block_size"]
    vocab = gpt["vocab"]  # GPT-2's vocabulary on the same shape, the trainer alone
    assert vocab["spec"]["vocab_size"] == 50_304 and vocab["flops_per_token"] > gpt["flops_per_token"]
    assert positive(vocab["modes"]["eager"]["tokens_per_s"])
    assert positive(vocab["modes"]["eager"]["trainer_logged"]["tokens_per_s"])

    names = {t["target"] for t in results["targets"]}
    assert "small: trainer / raw updates/s" in names and "RandomScaledSGD.step / SGD(foreach) step time" in names
    assert "gpt (eager): trainer / nanoGPT loop tokens/s" in names
    assert all(isinstance(t["pass"], bool) for t in results["targets"])
    assert "PASS" in proc.stdout or "FAIL" in proc.stdout
