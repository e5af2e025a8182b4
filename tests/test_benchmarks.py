"""The benchmark scripts besides bench_lm (tests/test_bench_lm.py) run as documented, at tiny sizes, and print
finite, positive figures. Their timings are not checked."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def numbers(pattern: str, text: str) -> list[float]:
    found = [float(m) for m in re.findall(pattern, text)]
    assert found, f"{pattern!r} not in:\n{text}"
    assert all(math.isfinite(v) and v > 0 for v in found), found
    return found


def test_bench_regen_prints_both_draw_versions_and_their_ratio():
    out = run("bench_regen.py", "--params", "2e5", "--v1-params", "1e5", "--layer", "128", "--devices", "cpu",
              "--threads", "1")
    rows = re.findall(r"^cpu\s+([12])\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"], out
    assert float(rows[1][1]) == pytest.approx(12 * 128**2, rel=1e-2)  # round(2e5 / 128^2) layers of (128, 128)
    numbers(r"version 2 / version 1: (\S+)x", out)


@pytest.mark.parametrize("args", [["--width", "32", "--depth", "2", "--batch", "16"],
                                  ["--conv", "--channels", "4", "--convs", "2", "--batch", "2"]])
def test_bench_step_prints_three_variants_against_full_training(args):
    out = run("bench_step.py", *args, "--rank", "2", "--steps", "1", "--rounds", "1", "--threads", "1",
              "--device", "cpu")
    ratios = numbers(r"([\d.]+)x full training", out)
    assert len(ratios) == 3 and ratios[0] == 1.0, out


def test_bench_spectra_agrees_with_sklearn():
    out = run("bench_spectra.py", "--n", "3000", "--d", "16", "--batch", "1000")
    numbers(r"ratio \(sklearn / ours\):\s+(\S+)", out)
    (diff,) = [float(m) for m in re.findall(r"difference\|: (\S+)", out)]
    assert diff < 1e-5


@pytest.mark.slow
def test_bench_distributed_counts_fewer_bytes_for_lottalora():
    out = run("bench_distributed.py", "--models", "mlp", "--steps", "1", "--batch", "8")
    ratios = [float(m) for m in re.findall(r"^mlp\s+\S+\s+[\d,]+\s+[\d,]+\s+([\d.]+)", out, re.M)]
    assert len(ratios) == 2 and ratios[0] == 1.0 and 0 < ratios[1] < 0.2, out


def test_bench_threads_prints_both_thread_counts_and_their_ratio():
    out = run("bench_threads.py", "--ranks", "0", "--seeds", "0", "--epochs", "1", "--busy", "1",
              "--before-threads", "2")
    assert re.search(r"before: torch default\s+threads=2\s+runs=3 ", out) and re.search(r"after: one per run\s+threads=1\s+runs=3 ", out), out
    numbers(r"before / after: (\S+)x", out)
