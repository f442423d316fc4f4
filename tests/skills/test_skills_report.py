"""Skills suite: the report (table, targets, PNG, ablations) on a miniature suite, end to end through the library."""
from __future__ import annotations

import json

import pytest

from skills.tiny import build_tiny_suite, tiny_params


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    pytest.importorskip("pico")
    from skills.report import run_report

    root = tmp_path_factory.mktemp("rep")
    p = tiny_params()
    p["data"]["skills"] = ["add", "rev"]
    paths = build_tiny_suite(root, p)
    p["paths"] = {"data": paths["data"], "base": paths["base"], "adapters": str(root / "adapters"),
                  "report": str(root / "report")}
    p["report"] = {"lam_grid": [0.5, 1.0]}
    lines = []
    res = run_report(p, root / "report", fast_only=True, ablations=True, methods=("ta", "ties"), log=lines.append)
    return root / "report", res


def test_report_table_rows_and_columns(tiny_report):
    out, res = tiny_report
    names = [r["name"] for r in res["rows"]]
    assert names[:4] == ["base", "adapter add", "adapter rev", "multi-task LoRA (multitask)"]
    merges = [r for r in res["rows"] if r["section"] == "merge"]
    # every method, full and core, Pico off and on
    assert {(r["recipe"]["method"], r["recipe"]["space"], r["recipe"]["calibrate"]) for r in merges} == {
        (m, s, c) for m in ("ta", "ties") for s in ("full", "core") for c in ("none", "pico")}
    for r in res["rows"]:
        assert set(r["acc"]) == {"add", "rev"}
        assert r["avg"] == pytest.approx(sum(r["acc"].values()) / 2)
    assert res["best_merge"] == max(merges, key=lambda r: r["avg"])["name"]
    # an adapter's gain on its own skill is exactly 1 by definition (when it differs from the base)
    add = next(r for r in res["rows"] if r["name"] == "adapter add")
    if res["own_adapter"]["add"] != res["base"]["add"]:
        assert add["gain_per_skill"]["add"] == pytest.approx(1.0)
    for r in merges:  # Pico's post rescale pins the norm: lambda is not tuned there
        if r["recipe"]["rescale"] == "post":
            assert r["lam"] == 1.0
    md = (out / "report.md").read_text()
    assert "| row | add | rev | avg | normalized | gain recovered | lambda |" in md
    assert "(best)" in md
    assert (out / "report.png").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["targets"].keys() >= {"adapters_ge_min", "all_met"}


def test_report_ablations(tiny_report):
    out, res = tiny_report
    groups = res["ablations"]["groups"]
    assert list(groups) == ["1. strength kappa", "1. strength gamma", "2. random-direction control",
                            "3. uniform-shrink control", "4. A-space control", "5. sharing-aware variant",
                            "6. rescaling"]
    rows = {r["name"]: r for r in res["rows"] if r["section"] == "ablation"}
    post = [r for r in rows.values() if r["recipe"]["rescale"] == "post"]
    for r in post:  # post rescaling pins every layer's merged norm to the mean source norm
        assert r["extra"]["norm_ratio"]["mean"] == pytest.approx(1.0, abs=1e-3)
    d = res["ablations"]["diagnostics"]
    assert 0 < d["collision_B"]["max_c_mean"] <= 1 and 0 < d["collision_A"]["max_c_mean"] <= 1
    assert "A-space control" in (out / "ablations.md").read_text()
