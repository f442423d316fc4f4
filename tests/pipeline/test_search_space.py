"""The recipe search space (pipeline/grids.py): expansion, validation through pico.Recipe, skipped combinations;
the search's argmax (pipeline/search.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pico import Recipe
from pipeline import grids, search

REPO = Path(__file__).resolve().parents[2]


def test_one_plain_recipe_is_one_candidate():
    space = grids.expand({"method": "ties", "space": "full", "lam": 2.0, "params": {"density": 0.7},
                           "weights": [1, 2]})
    assert space.single and len(space.candidates) == 1 and not space.skipped
    c = space.candidates[0]
    assert c.recipe == Recipe(method="ties", space="full", lam=2.0, params={"density": 0.7}, weights=[1, 2]).to_dict()
    assert c.label == "ties/full lam=2 density=0.7 w=1,2"


def test_lists_expand_to_their_product_and_method_params_follow_their_methods():
    space = grids.expand({"method": ["ta", "ties"], "space": "core", "lam": [0.5, 1.0],
                           "params": {"density": [0.5, 0.7]}})
    labels = [c.label for c in space.candidates]
    # TA has no density: its two lambdas once each; TIES: 2 lambdas x 2 densities
    assert labels == ["ta/core lam=0.5", "ta/core lam=1", "ties/core lam=0.5 density=0.5",
                      "ties/core lam=0.5 density=0.7", "ties/core lam=1 density=0.5", "ties/core lam=1 density=0.7"]
    assert not space.single
    assert len({c.recipe_obj().hash() for c in space.candidates}) == 6


def test_invalid_combinations_are_skipped_with_the_recipe_reason():
    space = grids.expand({"search": [
        {"method": ["ties", "iso"], "space": ["knots", "core"]},       # iso does not run in knots space
        {"method": "ties", "params": {"density": [0.5, 1.5]}},          # density out of range
        {"method": "ta", "calibrate": "pico", "rescale": ["post", "pre"], "lam": [0.8, 1.0]},
    ]})
    reasons = [s["reason"] for s in space.skipped]
    # each reason is pico's own message (the Recipe validated it), not a copy of its rules
    for raw in ({"method": "iso", "space": "knots"}, {"method": "ties", "params": {"density": 1.5}}):
        with pytest.raises(ValueError) as exc:
            Recipe.from_dict(raw)
        assert str(exc.value) in reasons
    assert any("rescale=post" in r for r in reasons)  # lam 0.8 under post: the same bytes as lam 1
    labels = [c.label for c in space.candidates]
    assert "iso/core lam=1" in labels and "ties/knots lam=1 density=0.7" in labels
    assert "ta/core +pico (post)" in labels and "ta/core +pico (pre) lam=0.8" in labels
    assert [c.index for c in space.candidates] == list(range(len(labels)))
    assert "skipped" in space.describe()


def test_errors_name_the_key():
    with pytest.raises(grids.SearchError, match="unknown recipe keys lamda"):
        grids.expand({"method": "ta", "lamda": [1, 2]})
    with pytest.raises(grids.SearchError, match="max_candidates 3"):
        grids.expand({"search": [{"method": "ta", "lam": [0.1, 0.2, 0.3, 0.4]}], "max_candidates": 3})
    with pytest.raises(grids.SearchError, match="no valid candidate"):
        grids.expand({"method": "nope", "lam": [1, 2]})
    with pytest.raises(grids.SearchError, match="beside search"):
        grids.expand({"search": [{"method": "ta"}], "method": "ties"})


def test_best_is_the_argmax_with_ties_to_the_earlier_candidate():
    space = grids.expand({"method": "ta", "lam": [0.5, 1.0, 2.0]})
    a, b, c = space.candidates
    chosen, score, margin = search.best([(a, 0.7), (b, 0.8), (c, 0.8)])
    assert chosen is b and score == 0.8 and margin == 0.0
    chosen, _, margin = search.best([(a, 0.9), (b, 0.8)])
    assert chosen is a and margin == pytest.approx(0.1)


def test_the_default_search_of_params_yaml():
    merge = yaml.safe_load((REPO / "params.yaml").read_text())["merge"]
    space = grids.expand(merge)
    labels = [c.label for c in space.candidates]
    assert 10 <= len(labels) <= 24 and not space.skipped
    # what the suite report found best (TIES in full space at lambda 2, TSV, TA with lambda on validation) and Pico
    assert "ties/full lam=2 density=0.7" in labels and "tsv/core lam=0.8" in labels and "ta/core lam=0.6" in labels
    assert sum("+pico" in lb for lb in labels) >= 3
    from pipeline.settings import load_settings

    settings = load_settings(REPO)  # the committed params.yaml loads (every key typed and known)
    assert settings.search and settings.pipeline.notify.events == ["failure", "promotion"]
    # the default suite is SmolLM2: its space ends with the learned merge (the defaults' seed only; no rank/weights)
    assert settings.pipeline.suite == "smollm2" and settings.catalog.path.name == "adapters-smollm2.yaml"
    last = settings.space.candidates[-1]
    assert last.kind == "learned" and last.recipe == {"method": "tara", "seed": 0, "objective": "teacher",
                                                      "init": "tsv/core lam=0.5", "steps": 20}
    assert all(c.kind == "merge" for c in settings.space.candidates[:-1])
    assert load_settings(REPO, overrides={"suite": "skills"}).catalog.path.name == "adapters.yaml"


def test_the_suite_switch_applies_a_preset_and_set_still_wins(tmp_path):
    """pipeline.suite picks a preset of the top-level `suites:` (catalog, scorer, screening, registry model, merge);
    --set overrides win over the preset; an unknown suite names the file and the known presets."""
    from pipeline.settings import ConfigError, load_settings

    (tmp_path / "cat-a.yaml").write_text("adapters:\n  - {name: a, source: ./a}\n")
    (tmp_path / "cat-b.yaml").write_text("adapters:\n  - {name: b1, source: ./b1}\n  - {name: b2, source: ./b2}\n")
    params = {"merge": {"method": "ta", "space": "core"},
              "suites": {"small": {}, "big": {"catalog": "cat-b.yaml", "search": {"limit": 10, "finalists": 3},
                                              "mlflow": {"model_name": "big-merged"},
                                              "merge": {"method": "ties", "space": "full"}}},
              "pipeline": {"suite": "small", "catalog": "cat-a.yaml"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    small = load_settings(tmp_path)
    assert [a.name for a in small.catalog.adapters] == ["a"] and small.space.candidates[0].recipe["method"] == "ta"
    assert small.pipeline.mlflow.model_name == "pico-merged" and small.pipeline.search.limit is None
    big = load_settings(tmp_path, overrides={"suite": "big", "search": {"finalists": 2}})
    assert [a.name for a in big.catalog.adapters] == ["b1", "b2"] and big.space.candidates[0].recipe["method"] == "ties"
    assert big.pipeline.mlflow.model_name == "big-merged"
    assert (big.pipeline.search.limit, big.pipeline.search.finalists) == (10, 2)  # --set wins over the preset
    with pytest.raises(ConfigError, match=r"params.yaml: pipeline.suite: no preset 'huge'.*\['big', 'small'\]"):
        load_settings(tmp_path, overrides={"suite": "huge"})


def test_the_smollm2_preset_of_params_yaml():
    from pipeline.settings import load_settings

    s = load_settings(REPO, overrides={"suite": "smollm2"})
    skills = load_settings(REPO, overrides={"suite": "skills"})
    assert s.pipeline.catalog == "adapters-smollm2.yaml" and s.pipeline.eval.callable == "skills.smollm2.scorer:suite"
    assert s.pipeline.mlflow.model_name != skills.pipeline.mlflow.model_name  # its own registry model
    space = s.space  # its own search space (from its report), every candidate valid
    assert s.search and not space.skipped and {c.recipe["method"] for c in space.candidates} >= {"tsv", "ties", "tara"}
    assert s.merge != skills.merge and s.path("merged") != skills.path("merged")  # its own DVC stage outputs


def test_the_suite_build_includes_the_prompts_a_learned_merge_reads(tmp_path):
    """The one-off build (pipeline/build.py) builds what the night reads: the adapters and the base, and the catalog's
    `dvc://` prompts (the first SmolLM2 night once failed at fetch: the calibration split was never built)."""
    from pipeline.build import missing_inputs
    from pipeline.settings import load_settings

    (tmp_path / "cat.yaml").write_text(yaml.safe_dump({"adapters": [
        {"name": "a", "source": "dvc://build/ad/a", "prompts": "dvc://build/cal/a.jsonl"},
        {"name": "b", "source": "dvc://build/ad/b", "prompts": "prompts/b.jsonl"}]}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"merge": {"method": "ta", "space": "core"}, "pipeline": {
        "catalog": "cat.yaml", "eval": {"suite": "callable", "callable": "json:dumps"}}}))
    assert missing_inputs(load_settings(tmp_path)) == ["build/ad/a", "build/ad/b", "build/cal/a.jsonl"]
