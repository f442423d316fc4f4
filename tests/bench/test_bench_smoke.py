"""Smoke run of the issue-6 benchmark (bench/merge_8b.py) on tiny shapes, so it never rots.

Every part runs (workload generation, floor, pico core Pico + TA/TIES/TSV, KnOTS space, determinism, the float64
reference check, full-space TIES, official full-space KnOTS, PEFT add_weighted_adapter), in-process, in seconds.
mergekit needs its own virtualenv and is left out. The speed and memory goals are meaningless at these shapes;
the correctness and determinism goals must hold.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke(tmp_path):
    results = tmp_path / "RESULTS.md"
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "merge_8b.py"), "--smoke", "--cache",
                           str(tmp_path / "cache"), "--results", str(results)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    for heading in ("## Whole model", "## Per layer", "## Growth with T and r", "## Correctness", "## Goals"):
        assert heading in text, heading
    assert "| **pico core, Pico + TIES** |" in text
    assert "PEFT add_weighted_adapter `ties_svd`" in text
    assert "full-space KnOTS-TIES" in text
    raw = json.loads(results.with_suffix(".json").read_text())
    goals = raw["goals"]
    assert goals["equals_reference"]["holds"], goals["equals_reference"]
    assert goals["equals_reference"]["modules"] == 14  # every module of the 2-layer model
    assert goals["deterministic"]["holds"]
    comp = raw["configs"][0]["competitors"]
    assert comp["peft"]["ties_svd"]["out_ranks"] == [12]  # PEFT at the same output rank R = T r = 3 * 4
    assert comp["peft"]["cat"]["out_ranks"] == [12]
    assert "[x] equal to the float64 reference" in proc.stdout
    assert elapsed < 120, f"smoke run took {elapsed:.0f} s"
