"""The calibration split (skills/calibration.py): unlabeled prompts per skill, seeded, never a validation or test
prompt; the memorisation skill (train == test) gets fresh prompts of its form; the catalog's optional prompts."""

from __future__ import annotations

import json

import pytest

from skills.calibration import write_calibration


def write_split(root, skill, split, prompts):
    (root / skill).mkdir(parents=True, exist_ok=True)
    (root / skill / f"{split}.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": "x"}) + "\n"
                                                         for p in prompts))


def test_smollm2_calibration_is_unlabeled_seeded_and_disjoint_from_validation_and_test(tmp_path):
    from skills.smollm2.data import write_data

    cfg = {"seed": 3, "skills": ["math", "letters"], "n_train": 60, "n_validation": 10, "n_test": 10}
    write_data(cfg, tmp_path / "data")
    counts = write_calibration(tmp_path / "data", tmp_path / "c1", cfg["skills"], 16, 7)
    write_calibration(tmp_path / "data", tmp_path / "c2", cfg["skills"], 16, 7)
    assert counts == {"math": 16, "letters": 16}
    for skill in cfg["skills"]:
        rows = [json.loads(x) for x in (tmp_path / "c1" / f"{skill}.jsonl").read_text().splitlines()]
        assert all(list(r) == ["prompt"] for r in rows) and len({r["prompt"] for r in rows}) == 16
        held = {json.loads(x)["prompt"] for s in ("validation", "test")
                for x in (tmp_path / "data" / skill / f"{s}.jsonl").read_text().splitlines()}
        train = {json.loads(x)["prompt"] for x in (tmp_path / "data" / skill / "train.jsonl").read_text().splitlines()}
        assert not {r["prompt"] for r in rows} & held and {r["prompt"] for r in rows} <= train
        assert (tmp_path / "c1" / f"{skill}.jsonl").read_bytes() == (tmp_path / "c2" / f"{skill}.jsonl").read_bytes()
    other = write_calibration(tmp_path / "data", tmp_path / "c3", ["math"], 16, 8)
    assert other == {"math": 16}
    assert (tmp_path / "c3" / "math.jsonl").read_bytes() != (tmp_path / "c1" / "math.jsonl").read_bytes()


def test_memorisation_skill_gets_fresh_prompts_of_its_form_and_a_skill_without_any_is_refused(tmp_path):
    table = [f"fact {w}=" for w in ("bada", "kelo", "mipu")]
    for split in ("train", "validation", "test"):
        write_split(tmp_path, "fact", split, table)
    write_calibration(tmp_path, tmp_path / "c", ["fact"], 5, 0)
    rows = [json.loads(x)["prompt"] for x in (tmp_path / "c" / "fact.jsonl").read_text().splitlines()]
    assert len(set(rows)) == 5 and not set(rows) & set(table)
    assert all(r.startswith("fact ") and r.endswith("=") for r in rows)
    write_split(tmp_path, "add", "train", ["1+1="])
    write_split(tmp_path, "add", "validation", ["1+1="])
    write_split(tmp_path, "add", "test", ["2+2="])
    with pytest.raises(ValueError, match="add: no calibration prompts disjoint from validation and test"):
        write_calibration(tmp_path, tmp_path / "d", ["add"], 5, 0)


def test_catalog_entries_take_optional_prompts(tmp_path):
    from pipeline.settings import load_catalog

    path = tmp_path / "catalog.yaml"
    path.write_text("adapters:\n  - {name: a, source: ./a, prompts: dvc://build/c/a.jsonl}\n  - {source: ./b}\n")
    catalog = load_catalog(path)
    assert [a.prompts for a in catalog.adapters] == ["dvc://build/c/a.jsonl", None]
