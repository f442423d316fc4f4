#!/usr/bin/env python
"""Issue 6: merge speed and memory at Llama-3-8B scale, side by side with what users would run instead.

    .venv/bin/python bench/merge_8b.py                  # full run on this machine's CPU, writes bench/RESULTS.md
    .venv/bin/python bench/merge_8b.py --device cuda    # GPU figures -> bench/results-gpu-merge8b.json (folded into
                                                        # RESULTS.md; the one-command GPU check is bench/gpu_check.py)
    .venv/bin/python bench/merge_8b.py --smoke          # tiny shapes, seconds (tests/bench/test_bench_smoke.py);
                                                        # writes build/bench-smoke/RESULTS.md, never bench/RESULTS.md

One run, same files: the workload (bench/workload.py) is generated once and cached under build/bench/. Every timed
configuration runs in its own child process (this script with --child), so each has its own peak resident memory
(from os.wait4's rusage of that child) and nothing is shared between them; the page cache is warm for all of them
(the inputs were just written or read), and ``sync`` runs before each so no run pays for another's writeback.
Children run with OMP_WAIT_POLICY=PASSIVE: on a machine shared with other busy processes, OpenMP's default spinning
barriers slow multi-threaded torch code several-fold, and that would hurt the competitors most.

What is measured (see bench/README.md):
- floor: read every input file, write one output of the merged size (rank R = sum of ranks, float32) and fsync;
- pico merge in core space with Pico + TA / TIES / TSV (pico.merge(pico.load_adapters(...), Recipe(...), out)),
  whole model, and Pico + TIES in KnOTS space (our exact KnOTS), whole model;
- per layer, on a sample: pico full-space TIES (dense deltas, TIES, SVD truncation to R), the official full-space
  KnOTS-TIES path (SVD of [dW_1 .. dW_T] in float64, capped), PEFT add_weighted_adapter cat / svd / ties_svd at
  svd_rank = R through PEFT's own code on a module tree of Llama-8B-shaped Linear layers, and mergekit's LoRA path
  (base+lora -> merge_and_unload -> dense TIES -> mergekit-extract-lora at rank R) on a one-layer 8B-shaped model;
- correctness: every module of the Pico + TIES output against a straightforward float64 reference
  (bench/reference.py); determinism: a second Pico + TIES run must give byte-identical files.

This file is the entry point and the run's plan (main); the competitors are bench/competitors.py (one child_*
function each), the child-process harness bench/harness.py, the results' rendering bench/render_8b.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from competitors import CHILDREN, DENSITY, KINDS, SHAPES, manifest_format_time, sample_modules  # noqa: E402
from harness import (  # noqa: E402
    Runner,
    dir_bytes,
    files_identical,
    git_commit,
    layer_adapters,
    machine,
    make_mergekit_base,
    mib,
    vm_hwm,
)
from render_8b import goals, goals_text, gpu_files, render  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, every part, seconds (the test)")
    ap.add_argument("--shape", choices=SHAPES, default=None)
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--main", default=None, help="T x r of the main configuration (default 8x16; smoke 3x4)")
    ap.add_argument("--growth", default=None,
                    help="further T x r configurations, ours and floor (default 2x16,4x16,8x64; smoke none)")
    ap.add_argument("--competitors", default=None,
                    help="comma list of full_ties,knots_full,peft,mergekit,knots_space, or 'none' (default all; "
                         "smoke: no mergekit)")
    ap.add_argument("--sample-layer", type=int, default=0)
    ap.add_argument("--knots-cap", type=float, default=None,
                    help="seconds per module for full-space KnOTS (default 900; GPU 120)")
    ap.add_argument("--check-layers", default=None,
                    help="'all' or a count of layers for the reference check (default all; GPU 4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs of the floor and of core Pico+TIES in the main configuration, alternating; medians "
                         "are reported (default 3; smoke 2; GPU 1)")
    ap.add_argument("--inprocess", action="store_true", help="run every part in this process (default for --smoke)")
    ap.add_argument("--cache", default=str(ROOT / "build" / "bench"))
    ap.add_argument("--results", default=None, help="markdown results file (default bench/RESULTS.md)")
    ap.add_argument("--json", default=None,
                    help="raw results (default: beside the markdown, or bench/results-gpu-merge8b.json)")
    ap.add_argument("--mergekit-python", default=str(ROOT / "build" / "mergekit-venv" / "bin" / "python"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        result = CHILDREN[spec["kind"]](spec)
        result["peak_rss"] = vm_hwm()
        Path(args.child_result).write_text(json.dumps(result))
        return 0


    from workload import Shape, ensure_adapters, write_adapter  # noqa: F401

    smoke = args.smoke
    gpu = args.device.startswith("cuda")
    if args.main is None:
        args.main = "3x4" if smoke else "8x16"
    if args.growth is None:
        args.growth = "" if smoke or gpu else "2x16,4x16,8x64"
    if args.competitors is None:
        args.competitors = "full_ties,knots_full,peft,knots_space" + ("" if smoke or gpu else ",mergekit")
    if args.knots_cap is None:
        args.knots_cap = 120.0 if gpu else 900.0
    if args.repeat is None:
        args.repeat = 2 if smoke else (1 if gpu else 3)
    if args.check_layers is None:
        args.check_layers = "4" if gpu else "all"
    shape_name = args.shape or ("tiny" if smoke else "8b")
    shape = dict(SHAPES[shape_name])
    if args.layers:
        shape["layers"] = args.layers
    cache = Path(args.cache).resolve() / ("smoke" if smoke else "")
    work = cache / "runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    # a smoke run never overwrites the committed full-run results: it writes under build/ unless told otherwise
    default_md = (ROOT / "build" / "bench-smoke" / "RESULTS.md") if smoke else BENCH / "RESULTS.md"
    results_md = Path(args.results) if args.results else (None if cuda else default_md)
    if results_md is not None:
        results_md.parent.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else (BENCH / "results-gpu-merge8b.json" if cuda else
                                                   results_md.with_suffix(".json"))
    log = print
    runner = Runner(work, CHILDREN, Path(__file__).resolve(), log=lambda *a: print(*a, flush=True),
                    inprocess=args.inprocess or smoke)
    configs = [tuple(int(v) for v in c.split("x")) for c in [args.main] + [g for g in args.growth.split(",") if g]]
    comps = [] if args.competitors == "none" else args.competitors.split(",")
    R_main = configs[0][0] * configs[0][1]
    t_start = time.time()
    res = {"machine": machine(), "shape": shape, "device": args.device, "density": DENSITY, "configs": [],
           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit()}
    log(f"machine: {res['machine']}")

    # 1. the workload
    sh = Shape(**shape)
    max_t = {}
    for T, r in configs:
        max_t[r] = max(max_t.get(r, 0), T)
    family = {r: ensure_adapters(cache, sh, r, T, log=lambda *a: print(*a, flush=True)) for r, T in max_t.items()}

    # 2. whole-model runs per configuration: floor, ours (TA, TIES, TSV); main config: + determinism, KnOTS space
    methods = ["ta", "ties", "tsv"]
    for ci, (T, r) in enumerate(configs):
        paths = [str(p) for p in family[r][:T]]
        in_bytes = sum((Path(p) / "adapter_model.safetensors").stat().st_size for p in paths)
        out_bytes = sum((m + n) * T * r * 4 for _, m, n in sh.modules())  # merged rank R = T r, float32
        entry = {"T": T, "r": r, "R": T * r, "input_bytes": in_bytes, "output_data_bytes": out_bytes, "runs": {}}
        log(f"\n== T={T} r={r}: {len(paths)} adapters, {mib(in_bytes):.0f} MiB in")
        floor = runner.run("floor", {"paths": paths, "out": str(work / f"floor-{T}x{r}"), "out_bytes": out_bytes})
        entry["runs"]["floor"] = floor
        log(f"  floor: {floor['time_s']:.2f} s (fsync {floor['fsync_s']:.2f} s), peak RSS {mib(floor['peak_rss']):.0f} MiB")
        shutil.rmtree(work / f"floor-{T}x{r}", ignore_errors=True)
        for method in methods:
            out = work / f"ours-{method}-{T}x{r}"
            run = runner.run("ours", {"paths": paths, "method": method, "space": "core", "device": args.device,
                                      "out": str(out)})
            run["output_bytes"] = dir_bytes(out)
            entry["runs"][f"core-{method}"] = run
            log(f"  pico core Pico+{method.upper()}: {run['time_s']:.2f} s (process {run['wall_s']:.2f} s), "
                f"peak RSS {mib(run['peak_rss']):.0f} MiB")
        if ci == 0:
            # the floor and core Pico+TIES again, alternating (timings on a shared machine are noisy: the figures
            # used are the medians); the second Pico+TIES output must be byte-identical to the first
            samples = {"floor": [floor["time_s"]], "core-ties": [entry["runs"]["core-ties"]["time_s"]]}
            for i in range(max(args.repeat, 2) - 1):
                if i < args.repeat - 1:
                    f = runner.run("floor", {"paths": paths, "out": str(work / "floor-again"), "out_bytes": out_bytes})
                    samples["floor"].append(f["time_s"])
                    shutil.rmtree(work / "floor-again", ignore_errors=True)
                again = runner.run("ours", {"paths": paths, "method": "ties", "space": "core", "device": args.device,
                                            "out": str(work / "ours-ties-again")})
                if i < args.repeat - 1:
                    samples["core-ties"].append(again["time_s"])
                if i == 0:
                    entry["deterministic"] = files_identical(work / f"ours-ties-{T}x{r}", work / "ours-ties-again")
                shutil.rmtree(work / "ours-ties-again", ignore_errors=True)
            for key, values in samples.items():
                entry["runs"][key]["samples"] = values
                entry["runs"][key]["first_s"] = values[0]
                entry["runs"][key]["time_s"] = statistics.median(values)
            log(f"  {len(samples['floor'])} alternating runs: floor " + ", ".join(f"{v:.2f}" for v in samples["floor"])
                + " s; core Pico+TIES " + ", ".join(f"{v:.2f}" for v in samples["core-ties"]) + " s")
            log(f"  determinism (second Pico+TIES run byte-identical): {entry['deterministic']}")
            # correctness against the float64 reference (+ CPU versus GPU on a GPU machine)
            spec = {"paths": paths, "out": str(work / f"ours-ties-{T}x{r}")}
            if args.check_layers != "all":
                k = int(args.check_layers)
                spec["layers"] = sorted({round(i * (shape["layers"] - 1) / max(k - 1, 1)) for i in range(k)})
            if cuda:
                cpu_out = work / "ours-ties-cpu"
                run = runner.run("ours", {"paths": paths, "method": "ties", "space": "core", "device": "cpu",
                                          "out": str(cpu_out)})
                entry["runs"]["core-ties-on-cpu"] = run
                spec["other"] = str(cpu_out)
            check = runner.run("check", spec)
            entry["check"] = check
            log(f"  reference check: {check['modules']} modules, max relative difference {check['max_rel_diff']:.2e}"
                + (f"; CPU vs GPU {check['other_max_rel_diff']:.2e}" if cuda else ""))
            if cuda:
                math = runner.run("gpu_math", {"paths": paths, "device": args.device, "methods": methods})
                entry["gpu_math"] = math
                log("  GPU merge math, whole model: " + ", ".join(f"{m.upper()} {math[m]['time_s'] * 1e3:.1f} ms"
                                                              for m in methods))
            main_paths = paths
        for method in methods:
            if not (ci == 0 and method == "ties"):
                shutil.rmtree(work / f"ours-{method}-{T}x{r}", ignore_errors=True)
        res["configs"].append(entry)

    # 3. per-layer competitors on a sample (main configuration)
    main = res["configs"][0]
    T, r = configs[0]
    comp = main["competitors"] = {}
    layer_spec = {"paths": main_paths, "shape": shape, "layer": args.sample_layer, "device": args.device}
    ours_layer = runner.run("ours_layer", layer_spec)
    comp["ours_layer"] = ours_layer
    log(f"\n== per layer (layer {args.sample_layer}), T={T} r={r}, output rank {R_main}")
    log(f"  pico core Pico+TIES, one layer's math: {ours_layer['time_s'] * 1e3:.1f} ms")
    if "knots_space" in comps:
        run = runner.run("ours_layer", {**layer_spec, "space": "knots"})
        comp["knots_space"] = run
        log(f"  pico KnOTS-space Pico+TIES (exact, QR-based), one layer: {run['time_s']:.2f} s, "
            f"peak RSS {mib(run['peak_rss']):.0f} MiB")
    if "full_ties" in comps:
        run = runner.run("full_ties", layer_spec)
        comp["full_ties"] = run
        log(f"  pico full-space Pico+TIES: {run['time_s']:.1f} s per layer, peak RSS {mib(run['peak_rss']):.0f} MiB")
    if "peft" in comps:
        run = runner.run("peft", {**layer_spec, "types": ["cat", "svd", "ties_svd"]})
        comp["peft"] = run
        log("  PEFT add_weighted_adapter: " + ", ".join(f"{t} {run[t]['time_s']:.1f} s" for t in ("cat", "svd",
                                                                                              "ties_svd"))
            + f" per layer, peak RSS {mib(run['peak_rss']):.0f} MiB")
    if "knots_full" in comps:
        kn = {"per_module": {}, "skipped": []}
        mods = sample_modules(shape, args.sample_layer, KINDS)
        budget = {"q_proj", "k_proj"} if not smoke else set(KINDS)
        for name, m, n in mods:
            kind = name.rsplit(".", 1)[1]
            if kind not in budget:
                kn["skipped"].append(kind)
                continue
            run = runner.run("knots_full", {**layer_spec, "module": name}, timeout=args.knots_cap)
            kn["per_module"][kind] = run
            log(f"  full-space KnOTS {kind} ({m}x{T * n}, float64 SVD): "
                + (f">= {args.knots_cap:.0f} s (cap)" if run["timed_out"] else f"{run['time_s']:.1f} s")
                + f", peak RSS {mib(run['peak_rss']):.0f} MiB")
        kn["time_s"] = sum(v["time_s"] * KINDS[k] for k, v in kn["per_module"].items())
        kn["lower_bound"] = bool(kn["skipped"]) or any(v["timed_out"] for v in kn["per_module"].values())
        kn["peak_rss"] = max([v["peak_rss"] for v in kn["per_module"].values()] or [0])
        comp["knots_full"] = kn
        log(f"  full-space KnOTS per layer: {'>= ' if kn['lower_bound'] else ''}{kn['time_s']:.1f} s")
    if "mergekit" in comps and not cuda:
        mk_py = Path(args.mergekit_python)
        if mk_py.exists():
            base = make_mergekit_base(cache / f"mergekit-base-{shape_name}", shape, log)
            loras = layer_adapters(main_paths, cache / f"layer{args.sample_layer}-T{T}-r{r}-{shape_name}", shape,
                                   args.sample_layer)
            try:
                run = runner.run("mergekit", {"base": str(base), "loras": [str(p) for p in loras], "rank": R_main,
                                              "work": str(work / "mergekit")}, python=str(mk_py))
                comp["mergekit"] = run
                log(f"  mergekit (one-layer model): {run['time_s']:.1f} s (merge {run['merge_s']:.1f} + extract "
                    f"{run['extract_s']:.1f}), peak RSS {mib(run['tool_peak_rss']):.0f} MiB, output rank "
                    f"{run['out_rank']}, {run['dense_merges_cached']} dense base+lora merges")
            except RuntimeError as exc:
                comp["mergekit"] = {"error": str(exc)[-1500:]}
                log(f"  mergekit failed: {str(exc)[-500:]}")
            shutil.rmtree(work / "mergekit", ignore_errors=True)
        else:
            comp["mergekit"] = {"error": f"no mergekit virtualenv at {mk_py}"}
    res["manifest_format_s"] = manifest_format_time(len(sh.modules()), R_main)
    res["elapsed_s"] = time.time() - t_start
    res["goals"] = goals(res)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    log(f"\nraw results: {json_path}")
    if results_md is not None:
        gpus = [] if smoke else [json.loads(p.read_text()) for p in gpu_files(BENCH)]
        text = render(res, gpus)
        results_md.write_text(text)
        log(f"results: {results_md}")
    print("\n" + goals_text(res["goals"]))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
