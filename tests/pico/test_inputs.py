"""Bad input gets one clear error naming the adapter, the module and the problem, and nothing is written."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import pico
from pico.cli import main


@pytest.fixture
def copies(adapters, tmp_path):
    out = []
    for path in adapters:
        shutil.copytree(path, tmp_path / path.name)
        out.append(tmp_path / path.name)
    return out


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def assert_refused(sources, out, capsys, *fragments, extra=()):
    code, err = run_cli(["merge", *sources, "--out", out, "-q", *extra], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def rewrite_weights(path: Path, fn) -> None:
    tensors = load_file(str(path / "adapter_model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "adapter_model.safetensors"))


def test_different_base_models(edit_config, copies, tmp_path, capsys):
    edit_config(copies[1], base_model_name_or_path="meta-llama/Other")
    assert_refused(copies, tmp_path / "o", capsys, "code", "base model", "meta-llama/Other")


def test_different_target_modules_error_then_common_modules(make_adapter, base, copies, tmp_path, capsys):
    fewer = make_adapter(base, tmp_path / "attn-only", r=4, seed=9, targets=["q_proj", "v_proj"])
    assert_refused([copies[0], fewer], tmp_path / "o", capsys, "target different modules", "--common-modules")
    code, err = run_cli(["merge", copies[0], fewer, "--out", tmp_path / "o", "--common-modules"], capsys)
    assert code == 0, err
    assert "skipped 10 not in every adapter" in err
    manifest = json.loads((tmp_path / "o" / "merge_manifest.json").read_text())
    assert len(manifest["layers"]) == 4 and len(manifest["skipped_modules"]) == 10


def test_shape_mismatch(edit_config, make_adapter, make_base, tmp_path, copies, capsys):
    other = make_base(tmp_path / "wide", hidden=48)
    wide = make_adapter(other, tmp_path / "wide-adapter", r=4)
    edit_config(wide, base_model_name_or_path=json.loads((copies[0] / "adapter_config.json").read_text())[
        "base_model_name_or_path"])
    assert_refused([copies[0], wide], tmp_path / "o", capsys, "wide-adapter", "model.layers.0", "does not match")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf(copies, tmp_path, capsys, bad):
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    rewrite_weights(copies[2], lambda t: t[key].view(-1).__setitem__(3, bad))
    assert_refused(copies, tmp_path / "o", capsys, "med", "model.layers.1.mlp.up_proj", "lora_B", "NaN/Inf")


@pytest.mark.parametrize("change,fragment", [
    ({"use_dora": True}, "DoRA"),
    ({"lora_bias": True}, "LoRA bias"),
    ({"bias": "lora_only"}, "trains base biases"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
])
def test_unmerged_features_are_refused(edit_config, copies, tmp_path, capsys, change, fragment):
    edit_config(copies[1], **change)
    assert_refused(copies, tmp_path / "o", capsys, "code", fragment, "refusing")


def test_extra_tensors_are_refused(copies, tmp_path, capsys):
    rewrite_weights(copies[0], lambda t: t.__setitem__("base_model.model.lm_head.weight", torch.zeros(2, 2)))
    assert_refused(copies, tmp_path / "o", capsys, "math", "lm_head", "not a LoRA factor")


def test_truncated_safetensors(copies, tmp_path, capsys):
    path = copies[1] / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(copies, tmp_path / "o", capsys, "code", "truncated or corrupt")
    path.write_bytes(b"\x05")
    assert_refused(copies, tmp_path / "o", capsys, "code", "truncated or corrupt")


def test_corrupt_header(copies, tmp_path, capsys):
    path = copies[1] / "adapter_model.safetensors"
    path.write_bytes((40).to_bytes(8, "little") + b"{not json" + b" " * 40)
    assert_refused(copies, tmp_path / "o", capsys, "code", "header is not JSON")


def test_missing_config(copies, tmp_path, capsys):
    (copies[0] / "adapter_config.json").unlink()
    assert_refused(copies, tmp_path / "o", capsys, "math", "missing adapter_config.json")


def test_missing_directory(copies, tmp_path, capsys):
    assert_refused([copies[0], tmp_path / "nope"], tmp_path / "o", capsys, "nope", "no such adapter directory")


def test_config_rank_disagrees_with_tensors(edit_config, copies, tmp_path, capsys):
    edit_config(copies[0], r=16)
    assert_refused(copies, tmp_path / "o", capsys, "math", "r=16", "rank 4")


def test_pickle_refused_unless_opted_in(copies, tmp_path, capsys):
    weights = copies[2] / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), copies[2] / "adapter_model.bin")
    weights.unlink()
    assert_refused(copies, tmp_path / "o", capsys, "med", "pickle", "--allow-pickle")
    code, err = run_cli(["merge", *copies, "--out", tmp_path / "o", "-q", "--allow-pickle"], capsys)
    assert code == 0, err and (tmp_path / "o" / "adapter_model.safetensors").exists()


def test_unpinned_hub_source(tmp_path, capsys):
    assert_refused(["hf://org/adapter"], tmp_path / "o", capsys, "pin a revision")


def test_hub_source_failure_is_one_clear_line(tmp_path, capsys):
    assert_refused(["hf://org/adapter@0123abc"], tmp_path / "o", capsys, "hf://org/adapter@0123abc",
                   "could not download")


@pytest.mark.parametrize("args,fragment", [
    (["--method", "tsv", "--space", "knots"], "does not run in knots space"),
    (["--method", "ta", "--density", "0.5"], "has no parameter 'density'"),
    (["--method", "ties", "--density", "1.5"], "density must be in (0, 1]"),
    (["--weights", "1,2"], "2 weights given for 3 adapters"),
    (["--weights", "1,x,2"], "comma-separated numbers"),
])
def test_bad_recipe(copies, tmp_path, capsys, args, fragment):
    assert_refused(copies, tmp_path / "o", capsys, fragment, extra=args)


def test_existing_output_is_kept_unless_forced(copies, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = run_cli(["merge", *copies, "--out", out, "-q"], capsys)
    assert code == 2 and "already exists" in err and (out / "keep.txt").read_text() == "precious"
    code, err = run_cli(["merge", *copies, "--out", out, "-q", "--force"], capsys)
    assert code == 0 and not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").exists()


def test_crash_mid_merge_leaves_nothing(copies, tmp_path, monkeypatch):
    driver = importlib.import_module("pico.merge")  # the module; `pico.merge` the attribute is the function

    real, calls = driver.merge_batch, []

    def flaky(cal, recipe):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker died")
        return real(cal, recipe)

    monkeypatch.setattr(driver, "merge_batch", flaky)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="worker died"):
        pico.merge(pico.load_adapters(copies), pico.Recipe(), out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".o.*"))
    monkeypatch.setattr(driver, "merge_batch", real)
    pico.merge(pico.load_adapters(copies), pico.Recipe(), out, progress=False)  # the next run completes
    assert (out / "merge_manifest.json").exists()
