"""The recipe search space (tasks/search.py): expansion, validation through pico.Recipe, skipped combinations."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pico import Recipe
from tasks import search

REPO = Path(__file__).resolve().parents[2]


def test_one_plain_recipe_is_one_candidate():
    space = search.expand({"method": "ties", "space": "full", "lam": 2.0, "params": {"density": 0.7},
                           "weights": [1, 2]})
    assert space.single and len(space.candidates) == 1 and not space.skipped
    c = space.candidates[0]
    assert c.recipe == Recipe(method="ties", space="full", lam=2.0, params={"density": 0.7}, weights=[1, 2]).to_dict()
    assert c.label == "ties/full lam=2 density=0.7 w=1,2"


def test_lists_expand_to_their_product_and_method_params_follow_their_methods():
    space = search.expand({"method": ["ta", "ties"], "space": "core", "lam": [0.5, 1.0],
                           "params": {"density": [0.5, 0.7]}})
    labels = [c.label for c in space.candidates]
    # TA has no density: its two lambdas once each; TIES: 2 lambdas x 2 densities
    assert labels == ["ta/core lam=0.5", "ta/core lam=1", "ties/core lam=0.5 density=0.5",
                      "ties/core lam=0.5 density=0.7", "ties/core lam=1 density=0.5", "ties/core lam=1 density=0.7"]
    assert not space.single
    assert len({c.key for c in space.candidates}) == 6


def test_invalid_combinations_are_skipped_with_the_recipe_reason():
    space = search.expand({"search": [
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
    with pytest.raises(search.SearchError, match="unknown recipe keys lamda"):
        search.expand({"method": "ta", "lamda": [1, 2]})
    with pytest.raises(search.SearchError, match="max_candidates 3"):
        search.expand({"search": [{"method": "ta", "lam": [0.1, 0.2, 0.3, 0.4]}], "max_candidates": 3})
    with pytest.raises(search.SearchError, match="no valid candidate"):
        search.expand({"method": "nope", "lam": [1, 2]})
    with pytest.raises(search.SearchError, match="beside search"):
        search.expand({"search": [{"method": "ta"}], "method": "ties"})


def test_best_is_the_argmax_with_ties_to_the_earlier_candidate():
    space = search.expand({"method": "ta", "lam": [0.5, 1.0, 2.0]})
    a, b, c = space.candidates
    chosen, score, margin = search.best([(a, 0.7), (b, 0.8), (c, 0.8)])
    assert chosen is b and score == 0.8 and margin == 0.0
    chosen, _, margin = search.best([(a, 0.9), (b, 0.8)])
    assert chosen is a and margin == pytest.approx(0.1)


def test_the_default_search_of_params_yaml():
    merge = yaml.safe_load((REPO / "params.yaml").read_text())["merge"]
    space = search.expand(merge)
    labels = [c.label for c in space.candidates]
    assert 10 <= len(labels) <= 24 and not space.skipped
    # what the suite report found best (TIES in full space at lambda 2, TSV, TA with lambda on validation) and Pico
    assert "ties/full lam=2 density=0.7" in labels and "tsv/core lam=0.8" in labels and "ta/core lam=0.6" in labels
    assert sum("+pico" in lb for lb in labels) >= 3
    from tasks.config import load_settings

    settings = load_settings(REPO)  # the committed params.yaml loads (every key typed and known)
    assert settings.search and settings.pipeline.notify.events == ["failure", "promotion"]
