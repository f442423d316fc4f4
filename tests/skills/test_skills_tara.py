"""TARA inside the embedded skills suite: training reuse, and the report's TARA rows beside the data-free merges."""

from __future__ import annotations

import json
from pathlib import Path


def test_suite_training_reuses_a_matching_output_and_retrains_otherwise(base, adapters, prompt_files, tmp_path):
    from skills.tara_rows import train_suite_tara

    def run(**kw):
        return train_suite_tara(base, adapters, prompt_files, tmp_path, [("tara-a", "none")], device="cpu",
                                log=lambda *_: None, **kw)[0]

    first = run(epochs=1)
    assert first["train_seconds"] is not None and first["dir"] == tmp_path / "tara-a"
    again = run(epochs=1)
    for key in ("seconds", "seconds_prepare", "seconds_train"):  # returned by a training run, not written
        first["manifest"].pop(key)
    assert again["train_seconds"] is None and again["manifest"] == first["manifest"]  # reused, not retrained
    assert run(epochs=2)["train_seconds"] is not None  # another recipe: retrained
    assert run(epochs=2, force=True)["train_seconds"] is not None


def test_skills_report_lists_tara_next_to_the_data_free_merges(tmp_path):
    from skills.report import run_report
    from skills.tiny import build_tiny_suite, tiny_params

    p = tiny_params()
    p["data"]["skills"] = ["add", "rev"]
    paths = build_tiny_suite(tmp_path, p)
    p["paths"] = {"data": paths["data"], "base": paths["base"], "adapters": str(tmp_path / "adapters"),
                  "report": str(tmp_path / "report")}
    p["report"] = {"lam_grid": [1.0]}
    lines: list[str] = []
    res = run_report(p, tmp_path / "report", fast_only=True, ablations=False, methods=("ta",), tara=True,
                     log=lines.append)
    merges = [r for r in res["rows"] if r["section"] == "merge"]
    tara = [r for r in merges if r["recipe"].get("data_free") is False]
    assert [r["name"] for r in tara] == ["tara-a [val prompts]", "tara-a +pico (pre) [val prompts]",
                                         "tara-b [val prompts]", "tara-b +pico (pre) [val prompts]"]
    assert len(merges) == 4 + 4  # ta x {full, core} x {none, pico}, then TARA
    for r in tara:
        assert set(r["acc"]) == {"add", "rev"} and r["lam"] is None
        assert r["extra"]["inputs"] == {"add": 12, "rev": 12} and r["extra"]["steps"] == 10  # 12 prompts: 1 step/epoch
        manifest = json.loads((Path(r["extra"]["dir"]) / "merge_manifest.json").read_text())
        assert manifest["recipe"]["calibrate"] == r["recipe"]["calibrate"]
        assert [x["origin"].split("/")[-2:] for x in manifest["inputs"]] == [["add", "validation.jsonl"],
                                                                          ["rev", "validation.jsonl"]]
    assert "| tara-b +pico (pre) [val prompts] |" in (tmp_path / "report" / "report.md").read_text()
    assert any("not data-free" in line for line in lines)
