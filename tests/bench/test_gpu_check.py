"""bench/gpu_check.py, the one-command GPU check of issue 26, end to end in its --quick mode (tiny shapes, on this
machine's CPU unless it has a GPU), with annotated_types hidden as on the lent GPU machine (so bench/compat's subset
is what pico's registry uses); and --fold, which records a run in bench/RESULTS.md."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

RUN = """
import sys
sys.modules["annotated_types"] = None  # as on the GPU machine: not installed
sys.path.insert(0, {bench!r})
import gpu_check
assert gpu_check.main(["--quick", "--out", {out!r}]) == 0
import annotated_types, pico
from pico.errors import RecipeError
assert annotated_types.__version__.endswith("compat"), annotated_types.__file__
assert pico.METHODS["ties"].params["density"].allowed() == "(0, 1]"
try:
    pico.Recipe(method="ties", params={{"density": 1.5}})
except RecipeError as exc:
    assert "(0, 1]" in str(exc), exc
else:
    raise AssertionError("density 1.5 accepted")
print("COMPAT OK")
"""


def test_quick_run_measures_checks_and_writes_results(tmp_path):
    out = tmp_path / "out"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", RUN.format(bench=str(BENCH), out=str(out))], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "COMPAT OK" in proc.stdout
    res = json.loads((out / "results-gpu.json").read_text())
    assert res["kind"] == "gpu_check" and res["compat_annotated_types"] and res["checked_gesvda"]
    assert not res.get("skipped") and not res.get("errors")
    for method in ("ta", "ties", "tsv"):
        math = res["math"][method]
        assert len(math["runs"]) == 2 and 0 < math["time_s"] < 60 and math["gram_fast_path"]
        assert len(res["e2e"][method]["runs"]) == 2 and res["e2e"][method]["deterministic"]
        assert res["cpu"][method]["modules"] == 14
        # TSV's per-task SVDs come from the factors on the device (the CPU here, as a dry run of the GPU's route):
        # 14 modules x 3 tasks, in the warm-up and the 2 runs; the CPU merges it is compared with are dense
        assert math["lowrank_svd"]["matrices"] == (3 * 14 * 3 if method == "tsv" else 0)
    assert res["tsv_factor_svd_devices"] == ["cpu", "cuda"]
    dense = res["math"]["tsv_dense"]  # the dense route on the same device, for comparison
    assert len(dense["runs"]) == 1 and dense["lowrank_svd"]["matrices"] == 0 and dense["time_s"] > 0
    goals = res["goals"]
    assert set(goals) == {"math_ta_ties_under_0.1s", "math_tsv_under_0.2s", "e2e_within_2x_floor",
                          "cpu_equals_device", "deterministic", "equals_reference"}
    for name in ("cpu_equals_device", "deterministic", "equals_reference"):
        assert goals[name]["holds"], (name, goals[name])
    assert res["reference"]["modules"] == 14 and res["reference"]["max_rel_diff"] < 1e-5
    assert len(res["e2e"]["floor"]) == 2 and res["e2e"]["floor_s"] > 0
    assert {"hash_inputs_s", "read_to_device_s", "read_math_to_host_s", "write_s"} <= set(res["phases"])
    text = (out / "results-gpu.md").read_text()
    assert "[x] device output equals the CPU output (ta, ties, tsv)" in text
    assert "Pico + TSV (median of 2; per-task SVDs from the factors: 126 matrices; gesvda 0 matrices" in text
    assert "Pico + TSV, per-task SVDs by the dense route (as before) (median of 1; gesvda" in text
    assert "annotated_types was missing there" in text
    assert not (out / "work" / "runs").exists()  # outputs removed unless --keep
    assert "+" in proc.stdout.splitlines()[0] and "s]" in proc.stdout.splitlines()[0]  # time-stamped progress
    assert time.time() - t0 < 200


def test_fold_records_a_run_before_the_earlier_gpu_sections(tmp_path):
    import importlib

    sys.path.insert(0, str(BENCH))
    gpu_check = importlib.import_module("gpu_check")
    for path in [BENCH / "RESULTS.md", BENCH / "RESULTS.json", *BENCH.glob("results-gpu*.json")]:
        shutil.copy(path, tmp_path / path.name)
    gpu_check.fold_sections(tmp_path)  # re-rendering what is recorded changes nothing
    assert (tmp_path / "RESULTS.md").read_bytes() == (BENCH / "RESULTS.md").read_bytes()
    head = (BENCH / "RESULTS.md").read_text().split("\n## GPU")[0]
    run = {"kind": "gpu_check", "started": "2026-12-04 12:00:00 UTC", "device": "cuda", "elapsed_s": 200.0,
           "machine": {"gpu": "NVIDIA H200", "cpu": "x", "cores": 16, "torch": "2.11.0", "python": "3.12.3"},
           "workload": {"layers": 32, "T": 8, "r": 16, "input_bytes": 1342657920},
           "math": {"batches": 5, "read_to_device_s": 1.0,
                    "ties": {"time_s": 0.05, "runs": [0.05] * 5, "gesvda": {"matrices": 10, "fallbacks": 0,
                                                                            "max_error": 1e-14}}},
           "goals": {"math_tsv_under_0.2s": {"holds": True, "tsv_s": 0.15}}}
    src = tmp_path / "run.json"
    src.write_text(json.dumps(run))
    gpu_check.fold(src, tmp_path)
    assert json.loads((tmp_path / "results-gpu.json").read_text()) == run
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith(head + "\n## GPU check: NVIDIA H200")
    assert text.index("## GPU check: NVIDIA H200") < text.index("## GPU: NVIDIA H100")
    assert "| merge math, whole model, Pico + TIES (median of 5; gesvda 10 matrices, 0 re-solved" in text
    assert "[x] merge math, whole model, Pico + TSV < 0.2 s: 150.0 ms" in text


def test_a_failing_step_is_recorded_and_the_run_goes_on(tmp_path):
    sys.path.insert(0, str(BENCH))
    import gpu_check

    run = gpu_check.Run(tmp_path, budget=60)

    def broken():
        raise ValueError("no such thing")

    assert run.guarded("math", broken, default={}) == {}
    assert run.guarded("e2e", lambda x: x + 1, 1) == 2
    saved = json.loads((tmp_path / "results-gpu.json").read_text())
    assert "ValueError: no such thing" in saved["errors"]["math"] and "e2e" not in saved["errors"]
    assert "Step `math` failed" in gpu_check.render({**saved, "goals": {}})
    assert not run.over(10, "x") and run.over(1e6, "a long step")
    assert "a long step" in json.loads((tmp_path / "results-gpu.json").read_text())["skipped"][0]
