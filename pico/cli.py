"""The `pico` command: merge, inspect, methods, tara, and the commands other installed packages add (entry-point
group ``pico.commands``: the pipeline adds `pico lineage`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._version import __version__
from .adapters import load_adapters
from .calibrations import CALIBRATIONS
from .errors import PicoError, RecipeError
from .merge import inspect_adapters, merge
from .options import add_flags, from_args
from .recipe import RESCALES, Recipe
from .registry import METHODS, Registry, all_params
from .spaces import SPACES
from .tara.cli import add_tara_parser, cmd_tara

EPILOG_MERGE = """examples:
  pico merge ./math ./code ./med --out merged                      # Task Arithmetic (sum) in Core Space
  pico merge ./math ./code ./med --method ties --calibrate pico --out merged
  pico merge a b --method ta --lam 0.5 --weights 1,2 --out merged   # 0.5 * (a + 2 b)
  pico merge a b --method ties --space full --rank 32 --out merged  # dense baseline, SVD-truncated to rank 32
  pico merge hf://org/adapter@<commit> ./local --out merged

Each SRC is a PEFT LoRA directory or hf://org/name@revision. The output is a PEFT LoRA directory (scale 1,
exact per-module rank) plus merge_manifest.json with the sources' sha256, the recipe and per-layer diagnostics.
`pico methods` lists the methods and their parameters."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


COMMANDS_GROUP = "pico.commands"  # entry points named after the command, each a main(argv: list[str]) -> int
COMMANDS: Registry = Registry("command")  # the built-in commands: name -> fn(args) -> exit status


def command(name: str):
    return lambda fn: COMMANDS.register(name, fn)


command("tara")(cmd_tara)  # `pico tara` lives in pico/tara/cli.py


def added_commands() -> dict:
    """The commands installed packages add to `pico` (entry points, not imported until one is run): this keeps pico
    a library that imports nothing of the pipeline, while `pico lineage` works wherever the pipeline is installed."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


def run_added(name: str, entry_point, argv: list[str]) -> int:
    try:
        return entry_point.load()(argv)
    except ModuleNotFoundError as exc:  # an optional dependency of that command (MLflow, DVC, ...) is missing
        print(f"pico {name}: error: needs {exc.name}, which is not installed ({entry_point.value}; for the pipeline's "
              "commands: pip install -e '.[pipeline]')", file=sys.stderr)
        return 2


def build_parser(added: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pico", description="Exact LoRA merging with Pico calibration.")
    parser.add_argument("--version", action="version", version=f"pico {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("merge", help="merge LoRA adapters into one PEFT adapter", epilog=EPILOG_MERGE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("sources", nargs="+", metavar="SRC", help="adapter directory or hf://org/name@revision")
    m.add_argument("--out", required=True, type=Path, help="output directory (must not exist unless --force)")
    add_flags(m, Recipe)  # the recipe's fields (pico/recipe.py)
    for name, users in sorted(all_params().items()):
        p = users[0][1]
        defaults = ", ".join(f"{meth}: {prm.default}" for meth, prm in users)
        allowed = f"; in {p.allowed()}" if p.allowed() else ""
        m.add_argument(_flag(name), dest=f"param_{name}", type=p.type, default=argparse.SUPPRESS, metavar=name.upper(),
                       help=f"{p.help}{allowed} [{defaults}]")
    m.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written factors (default: float32)")
    m.add_argument("--threads", type=int,
                   help="CPU threads (default: torch's, usually one per core). Same inputs, recipe and threads give "
                        "the same bytes; another thread count can round differently, so pin it to compare outputs "
                        "across machines")
    m.add_argument("--common-modules", action="store_true",
                   help="merge only the modules every adapter has, and report the rest (default: error)")
    m.add_argument("--allow-pickle", action="store_true",
                   help="accept .bin/.pt checkpoints (loading pickles can run code; only for trusted files)")
    m.add_argument("--force", action="store_true", help="replace --out if it exists (atomically)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")

    i = sub.add_parser("inspect", help="Pico diagnostics per layer: collision spectra, alphas, B vs A overlap")
    i.add_argument("sources", nargs="+", metavar="SRC")
    i.add_argument("--kappa", type=float, help="Pico strength for the alphas shown (default: T - 1)")
    i.add_argument("--plot", type=Path, help="write a PNG of per-layer B/A overlap and the collision spectra")
    i.add_argument("--json", type=Path, help="write the full diagnostics as JSON")
    i.add_argument("--device", default="auto")
    i.add_argument("--common-modules", action="store_true")
    i.add_argument("--allow-pickle", action="store_true")

    sub.add_parser("methods", help="list merge methods, spaces, calibrations and their parameters")
    add_tara_parser(sub)  # `pico tara` lives in pico/tara/cli.py
    builtin = set(sub.choices)
    for name, ep in sorted((added_commands() if added is None else added).items()):
        if name not in builtin:  # listed in `pico --help`; `pico NAME ...` goes straight to the entry point
            sub.add_parser(name, help=f"(from {ep.value}; pico {name} --help)", add_help=False)
    return parser


@command("merge")
def cmd_merge(args) -> int:
    import torch

    params = {k.removeprefix("param_"): v for k, v in vars(args).items() if k.startswith("param_")}
    if args.threads is not None and args.threads < 1:
        raise RecipeError(f"--threads must be at least 1, got {args.threads}")
    recipe = from_args(Recipe, args, params=params)
    aset = load_adapters(args.sources, common_modules_only=args.common_modules, allow_pickle=args.allow_pickle)
    if aset.skipped and not args.quiet:
        print(f"merging {len(aset.modules)} common modules; skipped {len(aset.skipped)} not in every adapter: "
              + ", ".join(sorted(aset.skipped)[:5]) + (" ..." if len(aset.skipped) > 5 else ""), file=sys.stderr)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        manifest = merge(aset, recipe, args.out, device=args.device, overwrite=args.force, progress=not args.quiet,
                         dtype=getattr(torch, args.dtype))
    finally:
        torch.set_num_threads(threads)
    if not args.quiet:
        layers = manifest["layers"].values()
        line = (f"merged {len(aset)} adapters ({recipe.method}, {recipe.space} space, calibrate={recipe.calibrate}) "
                f"-> {args.out}: {len(manifest['layers'])} modules, rank <= {manifest['output']['max_rank']}")
        kept = [layer["kept_energy"] for layer in layers if "kept_energy" in layer]
        if kept:
            line += f", kept energy min {min(kept):.4f} mean {sum(kept) / len(kept):.4f}"
        print(line)
    return 0


@command("inspect")
def cmd_inspect(args) -> int:
    aset = load_adapters(args.sources, common_modules_only=args.common_modules, allow_pickle=args.allow_pickle)
    diag = inspect_adapters(aset, device=args.device, kappa=args.kappa)
    print(f"{len(aset)} adapters, {len(diag)} modules. c_1: top collision degree of B (share of B energy in its "
          "top direction); overlap: mean pairwise subspace overlap across tasks (1 = same space)")
    print(f"{'module':<48} {'c1 B':>7} {'c1 A':>7} {'min alpha':>9} {'overlap B':>9} {'overlap A':>9}")
    for module, d in diag.items():
        print(f"{module:<48} {d['collision_B'][0]:>7.3f} {d['collision_A'][0]:>7.3f} {min(d['alpha']):>9.3f} "
              f"{d['overlap_B']:>9.3f} {d['overlap_A']:>9.3f}")
    mean = lambda key: sum(d[key] for d in diag.values()) / len(diag)  # noqa: E731
    print(f"{'mean':<48} {'':>7} {'':>7} {'':>9} {mean('overlap_B'):>9.3f} {mean('overlap_A'):>9.3f}")
    if args.json:
        args.json.write_text(json.dumps({"sources": [s.uri for s in aset.sources], "modules": diag}, indent=1))
    if args.plot:
        plot_diagnostics(diag, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def plot_diagnostics(diag: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = list(diag)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax1.plot([diag[m]["overlap_B"] for m in modules], label="B column spaces", marker=".")
    ax1.plot([diag[m]["overlap_A"] for m in modules], label="A row spaces", marker=".")
    ax1.set_xlabel("module (in model order)")
    ax1.set_ylabel("mean pairwise subspace overlap")
    ax1.set_title("Cross-task overlap: B versus A")
    ax1.legend()
    for key, label in (("collision_B", "B (stacked)"), ("collision_A", "A (stacked)")):
        k = min(len(diag[m][key]) for m in modules)
        avg = [sum(diag[m][key][j] for m in modules) / len(modules) for j in range(k)]
        ax2.plot(range(1, k + 1), avg, label=label, marker=".")
    ax2.set_yscale("log")
    ax2.set_xlabel("direction k")
    ax2.set_ylabel("collision degree c_k (mean over modules)")
    ax2.set_title("Collision spectrum")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def param_text(p) -> str:
    """One method parameter as `pico methods` and the README show it: flag, default and allowed range."""
    return f"{_flag(p.name)} {p.default}" + (f" (in {p.allowed()})" if p.allowed() else "")


@command("methods")
def cmd_methods(_args) -> int:
    print("methods (--method):")
    for method in sorted(METHODS.values(), key=lambda m: m.name):
        params = ", ".join(param_text(p) for p in method.params.values())
        print(f"  {method.name:<10} {method.summary}")
        print(f"  {'':<10} spaces: {', '.join(method.spaces)}" + (f"; params: {params}" if params else ""))
    print("\nspaces (--space):")
    for name, sp in SPACES.items():
        print(f"  {name:<10} {sp.summary}")
    print("\ncalibration (--calibrate):")
    for name, cal in CALIBRATIONS.items():
        print(f"  {name:<13} {cal.summary}")
    print("\nrescaling with calibration (--rescale):")
    for name, text in RESCALES.items():
        print(f"  {name:<10} {text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    added = added_commands()
    if argv and argv[0] in added and argv[0] not in COMMANDS:
        return run_added(argv[0], added[argv[0]], argv[1:])
    args = build_parser(added).parse_args(argv)
    try:
        return COMMANDS.lookup(args.command)(args)
    except (PicoError, ValueError, FileExistsError) as exc:
        print(f"pico: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pico: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
