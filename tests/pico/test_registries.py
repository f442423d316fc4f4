"""The one extension model: methods, spaces and calibrations are registries, constraints live in the signatures, the
README tables come from the registries, every calibration agrees on the general and the Gram path, every pico
exception is a PicoError, and adapter configs are checked against an allow-list of PEFT fields."""

from __future__ import annotations

import ast
import inspect
import json
import shutil
from pathlib import Path
from typing import Annotated

import pytest
import torch
from annotated_types import Interval

import pico
from pico import factored
from pico.batch import CalibratedBatch
from pico.calibrate import calibrate
from pico.calibrations import CALIBRATIONS, calibration, pico_alphas
from pico.linalg import frob_norm_of_product
from pico.merge import merge_batch
from pico.registry import METHODS, merge_method

ROOT = Path(__file__).resolve().parents[2]


def factors(T=3, m=40, n=36, ranks=(3, 5, 4), L=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(L, m, 4, generator=g, dtype=torch.float64)
    bs, as_ = [], []
    for r in ranks[:T]:
        b = torch.randn(L, m, r, generator=g, dtype=torch.float64) + 2 * common @ torch.randn(L, 4, r, generator=g,
                                                                                              dtype=torch.float64)
        bs.append((b * 0.5 ** torch.arange(r, dtype=torch.float64)).float().double())
        as_.append(torch.randn(L, r, n, generator=g, dtype=torch.float64).float().double())
    return bs, as_


def both_paths(bs, as_, mode, rescale_pre):
    """(fast CalibratedBatch or None, general CalibratedBatch) of the same float64 factors."""
    L, ranks = bs[0].shape[0], tuple(b.shape[-1] for b in bs)
    names = [f"m{i}" for i in range(L)]
    stacked = factored.stack([[(b[i], a[i]) for b, a in zip(bs, as_)] for i in range(L)], torch.device("cpu"))
    fc, norms, diag = factored.calibrate(stacked, mode=mode, rescale_pre=rescale_pre)
    fast = None if fc is None else CalibratedBatch(names, ranks, None, None, norms, diag, factored=fc)
    gnorms = torch.stack([frob_norm_of_product(b, a) for b, a in zip(bs, as_)], dim=-1)
    gb, ga, gdiag = calibrate(bs, as_, mode=mode, rescale_pre=rescale_pre, modules=names)
    return fast, CalibratedBatch(names, ranks, gb, ga, gnorms, gdiag)


def rel(x, y):
    return float((x - y).norm() / y.norm().clamp_min(1e-300))


@pytest.mark.parametrize("name", sorted(CALIBRATIONS))
def test_every_calibration_agrees_on_both_paths_or_says_why_not(name):
    cal = CALIBRATIONS[name]
    bs, as_ = factors()
    if not cal.gram:
        assert len(cal.no_gram) > 20, f"{name}: a calibration without a Gram form must say why"
        with pytest.raises(ValueError, match="has no Gram form"):
            both_paths(bs, as_, name, False)
        return
    for rescale_pre in (False, True):
        fast, general = both_paths(bs, as_, name, rescale_pre)
        assert fast is not None, name
        assert fast.diagnostics.keys() == general.diagnostics.keys(), name
        for key, value in general.diagnostics.items():
            assert torch.allclose(fast.diagnostics[key], value, rtol=1e-6, atol=1e-9), (name, key)
        fb, fa = fast.factored.materialize(torch.float64)
        for t in range(len(bs)):
            assert rel(fb[t] @ fa[t], general.bs[t] @ general.as_[t]) < 1e-10, (name, t)
        recipe = pico.Recipe(method="ties", space="core", calibrate=name, rescale="pre" if rescale_pre else None)
        f, g = merge_batch(fast, recipe), merge_batch(general, recipe)
        delta = lambda res: torch.stack([r.b.double() @ r.a.double() for r in res])  # noqa: E731
        assert rel(delta(f), delta(g)) < 1e-6, name


def test_core_space_takes_the_general_path_for_a_calibration_without_gram_form(adapters):
    aset = pico.load_adapters(adapters)
    batch = pico.plan_batches(aset)[0]
    for name, cal in CALIBRATIONS.items():
        got = pico.calibrate_batch(aset, batch, pico.Recipe(calibrate=name), "cpu")
        assert (got.factored is not None) == cal.gram, name


def test_a_rotating_calibration_without_no_gram_is_refused_on_the_gram_path():
    @calibration("test-rotating", side="B")
    def rotating(spec, *, kappa, gamma):
        """test only"""
        k = spec.share.shape[-1]
        return pico_alphas(spec.share, kappa, gamma), torch.eye(k, dtype=spec.share.dtype).expand(
            spec.share.shape[0], k, k)

    try:
        bs, as_ = factors()
        with pytest.raises(ValueError, match="rotates its basis.*no_gram"):
            both_paths(bs, as_, "test-rotating", False)
    finally:
        del CALIBRATIONS["test-rotating"]


def test_constraints_live_in_the_signature():
    with pytest.raises(pico.RecipeError, match=r"density must be in \(0, 1\], got 1.5 \(fraction of entries"):
        pico.Recipe(method="ties", params={"density": 1.5})
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\), got 1.0"):
        pico.Recipe(method="dare", params={"drop_rate": 1})
    assert pico.Recipe(method="dare_ties", params={"density": "1", "drop_rate": 0}).params == {"density": 1.0,
                                                                                               "drop_rate": 0.0}
    with pytest.raises(pico.RecipeError, match="density='x' is not a float"):
        pico.Recipe(method="ties", params={"density": "x"})


def test_recipe_names_no_method_or_parameter():
    """Validation comes from the registries: recipe.py names no method, method parameter, space or calibration
    (beyond the defaults of its fields, which are the CLI's defaults)."""
    tree = ast.parse((ROOT / "pico" / "recipe.py").read_text())
    defaults = {id(f.value) for f in ast.walk(tree) if isinstance(f, ast.AnnAssign) and f.value is not None}
    strings = {n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in defaults}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    params = {p for m in METHODS.values() for p in m.params}
    registered = set(METHODS) | set(pico.SPACES) | set(CALIBRATIONS) - {"none"}  # "none": also a rescale mode
    assert not (strings | names) & (params | registered)


def test_a_new_method_is_one_decorated_function(capsys):
    from pico.cli import build_parser, main

    @merge_method("test_scaled", spaces=("full", "core", "knots"))
    def scaled(taus, weights, ctx, *,
               factor: Annotated[float, Interval(ge=0, le=10), "test: scale of the task sum"] = 2.0):
        """Test: a scaled task sum."""
        return taus.sum(1) * factor

    try:
        with pytest.raises(pico.RecipeError, match=r"factor must be in \[0, 10\], got 11.0 \(test: scale"):
            pico.Recipe(method="test_scaled", params={"factor": 11})
        assert "--factor" in build_parser().format_help() or "--factor" in build_parser()._subparsers._group_actions[
            0].choices["merge"].format_help()
        assert main(["methods"]) == 0
        assert "test_scaled" in capsys.readouterr().out
        from pico.docs import tables

        assert "`test_scaled`" in tables()["methods"] and "`--factor 2.0` in [0, 10]" in tables()["methods"]
        with pytest.raises(TypeError, match="needs a default"):
            merge_method("test_nodefault", spaces=("core",))(lambda taus, weights, ctx, *, x: taus)
    finally:
        METHODS.pop("test_scaled", None)
        METHODS.pop("test_nodefault", None)


def test_shared_parameters_are_declared_once_and_methods_cite_their_papers():
    """density and drop_rate come from one alias beside their primitives (pico/ops.py): every method taking one shows
    the same range and help; each method links its paper in the README table; an unknown name lists the choices."""
    from pico.docs import tables
    from pico.ops import Density, DropRate
    from pico.registry import param_of

    for alias, name in ((Density, "density"), (DropRate, "drop_rate")):
        users = [m.params[name] for m in METHODS.values() if name in m.params]
        assert len(users) >= 2 and {(p.allowed(), p.help) for p in users} == {
            (param_of(name, alias, None).allowed(), users[0].help)}
    assert METHODS["cart"].params["rho"].allowed() == "(0, 1]"
    for m in METHODS.values():
        assert m.reference_url.startswith("https://arxiv.org/abs/") and f"[`{m.name}`]({m.reference_url})" in \
            tables()["methods"]
    with pytest.raises(pico.RecipeError, match=r"unknown space 'nope'; choose from core, full, knots"):
        pico.Recipe(space="nope")


def test_readme_tables_are_generated_from_the_registries():
    from pico.docs import render

    text = (ROOT / "README.md").read_text()
    assert render(text) == text, "README.md registry tables are stale: run `python -m pico.docs`"
    for name in list(pico.SPACES) + list(CALIBRATIONS):
        assert f"| `{name}`" in text, name
    for name in METHODS:
        assert f"| [`{name}`](" in text, name


def test_skills_report_lists_the_registry():
    text = (ROOT / "skills" / "report.py").read_text()
    assert "METHODS = tuple(" in text and '"tsv"' not in text


def test_every_pico_exception_is_a_pico_error():
    import importlib
    import pkgutil

    found = []
    for info in pkgutil.walk_packages(pico.__path__, "pico."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("pico"):
                found.append(cls)
                assert issubclass(cls, pico.PicoError), cls
    assert {c.__name__ for c in found} >= {"AdapterError", "RecipeError", "TaraError", "OutputExistsError"}
    assert issubclass(pico.AdapterError, ValueError) and issubclass(pico.RecipeError, ValueError)


# ------------------------------------------------------------------------------------ adapter config allow-list

@pytest.fixture
def copy(adapters, tmp_path):
    def make(i, **changes):
        dst = tmp_path / f"a{i}"
        shutil.copytree(adapters[i], dst)
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg.update(changes)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
        return dst
    return make


@pytest.mark.parametrize("field,value", [("layer_replication", [[0, 2], [1, 2]]),
                                         ("alora_invocation_tokens", [5, 7]),
                                         ("target_parameters", ["mlp.experts.gate_up_proj"]),
                                         ("use_qalora", True), ("init_lora_weights", "pissa"),
                                         ("a_future_peft_field", 3)])
def test_config_fields_pico_does_not_understand_are_refused(copy, tmp_path, field, value):
    srcs = [copy(0, **{field: value}), copy(1)]
    out = tmp_path / "out"
    with pytest.raises(pico.AdapterError) as err:
        pico.merge(pico.load_adapters(srcs), pico.Recipe(), out, progress=False)
    assert "adapter_config.json" in str(err.value) and field in str(err.value)
    assert not out.exists()


def test_a_normal_peft_adapter_with_all_its_fields_merges(copy, adapters, tmp_path):
    cfg = json.loads((adapters[0] / "adapter_config.json").read_text())
    assert {"layer_replication", "alora_invocation_tokens", "target_parameters", "qalora_group_size"} <= set(cfg)
    srcs = [copy(0, qalora_group_size=16, megatron_core="megatron.core", lora_dropout=0.1), copy(1)]
    pico.merge(pico.load_adapters(srcs), pico.Recipe(), tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_the_allow_list_matches_the_installed_peft():
    """Every understood field is a LoraConfig field, its accepted values include PEFT's default, and every field not
    understood defaults to None (so an unset field needs no PEFT import)."""
    from pico.peft_config import UNDERSTOOD as _UNDERSTOOD
    from pico.peft_config import _peft_defaults

    _, defaults = _peft_defaults()
    for key, allowed in _UNDERSTOOD.items():
        assert key in defaults, key
        assert allowed is None or defaults[key] in allowed, key
    for key, default in defaults.items():
        if key not in _UNDERSTOOD and key != "runtime_config":  # runtime_config is never saved
            assert default is None, key
