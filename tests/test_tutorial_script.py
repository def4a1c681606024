"""`scripts/tutorial.py`: the tutorial walked through with the template's components, every number checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, clean_env

pytestmark = pytest.mark.e2e
SCRIPT = ROOT / "scripts" / "tutorial.py"


def run_tutorial(*args: str, cwd=ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=clean_env(MPLBACKEND="Agg"),
                          capture_output=True, text=True, timeout=120)


def test_tutorial_script_matches_every_number_and_plots(tmp_path):
    out = tmp_path / "tutorial_theta.png"  # the default --out, in the working directory
    proc = run_tutorial(cwd=tmp_path)  # any cwd: the script finds the template itself
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checked = [line for line in proc.stdout.splitlines() if line.lstrip().startswith(("✓", "✗"))]
    assert checked and all(line.lstrip().startswith("✓") for line in checked), proc.stdout
    # every tutorial number is there: step 1 to 3, and the trajectory lines for each of the four strategies
    for text in ("350.0", "76.0", "42.0", "90.4", "46.8"):
        assert f"tutorial {text}" in proc.stdout
    for theta in ("0.9900000095367432", "0.9100000858306885", "0.9000000953674316", "0.8950001001358032",
                  "0.8500001430511475", "0.8475001454353333"):
        assert proc.stdout.count(f"(tutorial: {theta})") == 4, theta
    assert "lr USED BY update i" in proc.stdout  # the logged-lr vs printed-lr explanation
    assert "41/41 lines match" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_tutorial_script_exits_nonzero_on_a_mismatch(tmp_path):
    # the same script with one of the tutorial's numbers falsified must report ✗ and fail
    tampered = tmp_path / "tutorial.py"
    source = SCRIPT.read_text(encoding="utf-8")
    assert "9: (0.1, 0.9100000858306885)" in source
    tampered.write_text(source.replace("9: (0.1, 0.9100000858306885)", "9: (0.1, 0.91)").replace(
        "Path(__file__).resolve().parent.parent", repr(str(ROOT))), encoding="utf-8")
    out = tmp_path / "plots" / "theta.png"
    proc = subprocess.run([sys.executable, str(tampered), "--out", str(out)], cwd=tmp_path,
                          env=clean_env(MPLBACKEND="Agg"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert out.is_file()  # --out, parent created; the plot is still drawn when a number is off
    assert sum(line.lstrip().startswith("✗") for line in proc.stdout.splitlines()) == 4  # once per strategy
