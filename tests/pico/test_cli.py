"""The `pico` command end to end: determinism of bytes, inspect, methods, help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pico.cli
import pico.options
from pico import Recipe
from pico.cli import main

FILES = ("adapter_model.safetensors", "adapter_config.json", "merge_manifest.json")


def test_same_inputs_and_params_give_identical_bytes(adapters, tmp_path, capsys):
    args = ["merge", *map(str, adapters), "--method", "dare_ties", "--calibrate", "pico", "--seed", "3", "-q"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert main(args[:-3] + ["--seed", "4", "-q", "--out", str(tmp_path / "c")]) == 0
    a = (tmp_path / "a" / FILES[0]).read_bytes()
    assert a != (tmp_path / "c" / FILES[0]).read_bytes()  # the seed really drives the DARE masks


def test_manifest_records_sources_recipe_and_outputs(adapters, tmp_path):
    from pico.writer import sha256_file

    assert main(["merge", *map(str, adapters), "--method", "ties", "--density", "0.5", "--space", "full",
                 "--rank", "6", "--out", str(tmp_path / "m"), "-q"]) == 0
    manifest = json.loads((tmp_path / "m" / "merge_manifest.json").read_text())
    assert [s["name"] for s in manifest["sources"]] == ["math", "code", "med"]
    for src, path in zip(manifest["sources"], adapters):
        assert src["files"]["adapter_model.safetensors"] == sha256_file(path / "adapter_model.safetensors")
        assert len(src["sha256"]) == 64
    assert manifest["recipe"]["params"] == {"density": 0.5} and manifest["recipe"]["rank"] == 6
    assert manifest["output"]["files"]["adapter_model.safetensors"] == sha256_file(
        tmp_path / "m" / "adapter_model.safetensors")
    assert all(layer["rank"] == 6 and 0 < layer["kept_energy"] <= 1 for layer in manifest["layers"].values())
    config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 6


def test_bfloat16_output(adapters, tmp_path):
    from safetensors import safe_open

    assert main(["merge", *map(str, adapters), "--dtype", "bfloat16", "--out", str(tmp_path / "m"), "-q"]) == 0
    with safe_open(tmp_path / "m" / "adapter_model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}


def test_inspect_table_json_and_plot(adapters, tmp_path, capsys):
    assert main(["inspect", *map(str, adapters), "--json", str(tmp_path / "d.json"),
                 "--plot", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in out and "overlap B" in out
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diag = json.loads((tmp_path / "d.json").read_text())["modules"]
    assert len(diag) == 14 and all(len(d["alpha"]) == len(d["collision_B"]) for d in diag.values())


def test_methods_lists_the_registry(capsys):
    import pico

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in pico.METHODS:
        assert f"  {name} " in out
    assert "--density 0.7" in out and "pico-random" in out


def test_console_script_help_teaches():
    result = subprocess.run([sys.executable, "-m", "pico.cli", "merge", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "examples:" in result.stdout and "--density" in result.stdout and "hf://" in result.stdout


def test_commands_added_by_entry_points_get_their_arguments_verbatim(monkeypatch, capsys):
    """`pico NAME ...` runs an installed package's ``pico.commands`` entry point (the pipeline's `pico lineage`)
    without pico importing that package; a missing optional dependency of it is a clear error, not a traceback."""
    from importlib.metadata import EntryPoint

    import pico.cli

    calls = []
    fake = type("Fake", (), {"load": lambda self: lambda argv: calls.append(argv) or 7, "value": "pkg.mod:main"})()
    missing = EntryPoint("needy", "no_such_module_here:main", pico.cli.COMMANDS_GROUP)
    monkeypatch.setattr(pico.cli, "added_commands", lambda: {"walk": fake, "needy": missing, "merge": fake})
    assert main(["walk", "m", "3", "--project", "p", "--help"]) == 7 and calls == [["m", "3", "--project", "p",
                                                                                     "--help"]]
    assert main(["needy", "x"]) == 2
    err = capsys.readouterr().err
    assert "pico needy: error: needs no_such_module_here" in err and "Traceback" not in err
    with pytest.raises(SystemExit):  # a built-in command is never replaced by an entry point of the same name
        main(["merge", "--help"])
    assert calls == [["m", "3", "--project", "p", "--help"]]
    assert "walk" in pico.cli.build_parser().format_help()


def test_installed_pipeline_adds_pico_lineage():
    from importlib.metadata import entry_points

    import pico.cli

    (ep,) = [ep for ep in entry_points(group=pico.cli.COMMANDS_GROUP) if ep.name == "lineage"]
    assert ep.value == "pipeline.audit:main"  # pyproject.toml; reinstall (pip install -e .) after editing it


def test_cuda_request_without_cuda_is_a_clear_error(adapters, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the error path only exists without it
    assert main(["merge", *map(str, adapters), "--device", "cuda", "--out", str(tmp_path / "m"), "-q"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_threads_option_pins_threads_and_restores_them(adapters, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    args = ["merge", *map(str, adapters), "--method", "ties", "--calibrate", "pico", "--threads", "1", "-q"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert torch.get_num_threads() == before
    assert (tmp_path / "a" / FILES[0]).read_bytes() == (tmp_path / "b" / FILES[0]).read_bytes()
    assert main(args[:-3] + ["--threads", "0", "-q", "--out", str(tmp_path / "c")]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_recipe_and_tara_flags_are_generated_from_their_fields(capsys):
    """Each field of Recipe and TaraConfig is declared once (type, range, help, choices from the registries) and
    that declaration is the flag, its help and its validation."""
    from pico.options import options
    from pico.tara.config import TaraConfig, TaraError

    subs = pico.cli.build_parser()._subparsers._group_actions[0].choices
    assert set(options(Recipe)) == set(Recipe.__dataclass_fields__) - {"params"}  # params: the methods' own flags
    assert set(options(TaraConfig)) == set(TaraConfig.__dataclass_fields__)
    for cls, command in ((Recipe, "merge"), (TaraConfig, "tara")):
        text = " ".join(subs[command].format_help().split())
        for name, o in options(cls).items():
            assert o.flag in text and " ".join(o.param.help.split())[:30] in text, (command, name)
    assert "pico-uniform" in subs["tara"].format_help()  # TARA's calibrations are the registry's
    assert main(["merge", "a", "b", "--out", "o", "--kappa", "-1"]) == 2
    assert "kappa must be in [0, inf), got -1.0" in capsys.readouterr().err
    with pytest.raises(TaraError, match=r"steps_per_epoch must be in \[1, inf\), got 0"):
        TaraConfig(steps_per_epoch=0).resolve(2)
    with pytest.raises(TaraError, match="--preference must be comma-separated numbers"):
        pico.options.from_args(TaraConfig, subs["tara"].parse_args(
            ["a", "--base", "b", "--prompts", "p", "--out", "o", "--preference", "1,x"]), TaraError)
