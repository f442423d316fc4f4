"""Rendering of bench/merge_8b.py's results: the goals, bench/RESULTS.md and its GPU section."""

from __future__ import annotations

from pathlib import Path

from competitors import KINDS, SHAPES
from harness import mib


def goals(res: dict) -> dict:
    main = res["configs"][0]
    runs, comp = main["runs"], main.get("competitors", {})
    floor = runs["floor"]["time_s"]
    ties = runs["core-ties"]["time_s"]
    layers = res["shape"]["layers"]
    ours_layer = ties / layers  # conservative: whole-model wall (I/O included) per layer
    out = {}
    out["within_3x_floor"] = {"holds": ties <= 3 * floor, "ours_s": ties, "floor_s": floor, "ratio": ties / floor}
    peft = comp.get("peft", {}).get("ties_svd", {}).get("time_s")
    kn = comp.get("knots_full", {})
    speed = {"ours_per_layer_s": ours_layer}
    holds = True
    if peft:
        speed["peft_ties_svd_per_layer_s"] = peft
        speed["vs_peft_ties_svd"] = peft / ours_layer
        holds &= peft / ours_layer >= 300
    else:
        holds = False
    if kn.get("time_s"):
        speed["knots_full_per_layer_s"] = kn["time_s"]
        speed["knots_full_lower_bound"] = kn["lower_bound"]
        speed["vs_knots_full"] = kn["time_s"] / ours_layer
        holds &= kn["time_s"] / ours_layer >= 300
    else:
        holds = False
    speed["holds"] = bool(holds)
    out["300x_per_layer"] = speed
    rss = max(runs[f"core-{m}"]["peak_rss"] for m in ("ta", "ties", "tsv"))
    out["rss_below_half_input"] = {"holds": rss < main["input_bytes"] / 2, "peak_rss": rss,
                                   "input_bytes": main["input_bytes"], "fraction": rss / main["input_bytes"]}
    check = main.get("check", {})
    out["equals_reference"] = {"holds": check.get("max_rel_diff", 1) < 1e-5, "max_rel_diff": check.get("max_rel_diff"),
                               "modules": check.get("modules"), "tolerance": 1e-5}
    out["deterministic"] = {"holds": bool(main.get("deterministic"))}
    if "gpu_math" in main:
        t = main["gpu_math"]["ties"]["time_s"]
        out["gpu_under_0.1s"] = {"holds": t < 0.1, "ties_math_s": t, "gpu": res["machine"].get("gpu")}
        out["cpu_equals_gpu"] = {"holds": (check.get("other_max_rel_diff") or 1) < 1e-5,
                                 "max_rel_diff": check.get("other_max_rel_diff")}
    return out


def goal_line(holds: bool, text: str) -> str:
    """One goal as a checklist line: "  [x] text" when it holds, "  [ ] text" when not."""
    return f"  [{'x' if holds else ' '}] {text}"


def goals_text(g: dict) -> str:
    lines = ["Goals:"]
    s = g["within_3x_floor"]
    lines.append(goal_line(s["holds"], f"core Pico+TIES, whole model, within 3x of the floor: "
                                       f"{s['ours_s']:.2f} s vs {s['floor_s']:.2f} s = {s['ratio']:.2f}x"))
    s = g["300x_per_layer"]
    parts = []
    if "vs_peft_ties_svd" in s:
        parts.append(f"PEFT ties_svd {s['vs_peft_ties_svd']:.0f}x")
    if "vs_knots_full" in s:
        parts.append(f"full-space KnOTS {'>= ' if s['knots_full_lower_bound'] else ''}{s['vs_knots_full']:.0f}x")
    lines.append(goal_line(s["holds"], ">= 300x faster per layer: " + (", ".join(parts) or "not measured")))
    s = g["rss_below_half_input"]
    lines.append(goal_line(s["holds"], f"peak RSS below half the input: {mib(s['peak_rss']):.0f} MiB vs "
                                       f"{mib(s['input_bytes']):.0f} MiB input ({s['fraction']:.2f})"))
    s = g["equals_reference"]
    lines.append(goal_line(s["holds"], f"equal to the float64 reference: max relative difference "
                                       f"{s['max_rel_diff']:.1e} over {s['modules']} modules (tolerance "
                                       f"{s['tolerance']:.0e})"))
    lines.append(goal_line(g["deterministic"]["holds"], "deterministic (byte-identical second run)"))
    if "gpu_under_0.1s" in g:
        lines += gpu_goal_lines(g, "GPU merge math < 0.1 s ({gpu}): {ms:.1f} ms")
    return "\n".join(lines)


def gpu_goal_lines(g: dict, math_text: str, reference_text: str | None = None) -> list[str]:
    """The GPU goals (merge math under 0.1 s, CPU and GPU outputs equal; optionally the float64 reference)."""
    s = g["gpu_under_0.1s"]
    lines = [goal_line(s["holds"], math_text.format(gpu=s["gpu"], ms=s["ties_math_s"] * 1e3))]
    s = g["cpu_equals_gpu"]
    lines.append(goal_line(s["holds"], f"CPU and GPU outputs equal: max relative difference {s['max_rel_diff']:.1e}"))
    if reference_text is not None:
        s = g["equals_reference"]
        lines.append(goal_line(s["holds"], reference_text.format(diff=s["max_rel_diff"])))
    return lines


def _fmt_s(x, lb=False):
    if x is None:
        return "-"
    pre = ">= " if lb else ""
    if x < 1:
        return f"{pre}{x * 1e3:.1f} ms"
    return f"{pre}{x:.2f} s" if x < 100 else f"{pre}{x:.0f} s"


def _fmt_x(x, lb=False):
    if x is None:
        return "-"
    pre = ">= " if lb else ""
    return f"{pre}{x:.2f}x" if x < 10 else f"{pre}{x:.0f}x"


def render(res: dict, gpus: list[dict]) -> str:
    m = res["machine"]
    main = res["configs"][0]
    runs = main["runs"]
    floor = runs["floor"]["time_s"]
    ours = runs["core-ties"]["time_s"]
    layers = res["shape"]["layers"]
    L = []
    L.append("# Merge speed and memory at Llama-3-8B scale (issue 6)\n")
    L.append("Generated by `bench/merge_8b.py` (do not edit by hand; `bench/README.md` says how to run it).\n")
    L.append(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, host `{m['host']}`; "
             f"Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), PEFT {m.get('peft', '-')}.")
    loads = [r["load_before"] for c in res["configs"] for r in c["runs"].values() if "load_before" in r]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded"
    L.append(f"- Run: {res['started']}, {res['elapsed_s'] / 60:.0f} min, code `{res.get('commit', 'not recorded')}`. "
             f"1-minute load average before each whole-model run: {load} (it includes the benchmark's own previous "
             "runs; per run in the raw results, `bench/RESULTS.json`).")
    sh = res["shape"]
    llama = " (Llama-3-8B)" if sh == SHAPES["8b"] else ""
    L.append(f"- Workload: {sh['layers']} layers, q/k/v/o/gate/up/down at hidden {sh['hidden']}, kv {sh['kv']}, "
             f"MLP {sh['mlp']}{llama}, PEFT safetensors written by `bench/workload.py` (float32, r = lora_alpha, "
             "decaying spectra, shared B directions). TIES density 0.7 everywhere. Output rank R = T r.")
    L.append("- Each figure comes from its own child process: the time is the timed call inside it "
             "(`pico.merge(pico.load_adapters(...), ...)`; the floor's read + write + fsync), the process wall adds "
             "interpreter start and imports, and peak RSS is the child's own high-water mark (VmHWM). Page cache "
             "warm for every run; `sync` before each. Children run with OMP_WAIT_POLICY=PASSIVE (fairer to "
             "multi-threaded competitors on a shared machine).\n")

    L.append(f"## Whole model (T = {main['T']}, r = {main['r']}: {mib(main['input_bytes']):.0f} MiB of input)\n")
    fs, ts = runs["floor"].get("samples"), runs["core-ties"].get("samples")
    if fs and len(fs) > 1:
        L.append(f"The floor and core Pico + TIES ran {len(fs)} times each, alternating; their rows give the median "
                 f"(floor: {', '.join(f'{v:.2f}' for v in fs)} s; Pico + TIES: {', '.join(f'{v:.2f}' for v in ts)} s). "
                 "Process wall, CPU time and peak RSS are those of the first run.\n")
    L.append("| what | time | process wall | CPU time (process) | peak RSS | vs floor | vs ours (core Pico+TIES) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("floor: read all inputs, write one merged-size output, fsync", "floor"),
            ("pico core, Pico + TA", "core-ta"), ("**pico core, Pico + TIES**", "core-ties"),
            ("pico core, Pico + TSV", "core-tsv")]
    for label, key in rows:
        if key not in runs:
            continue
        r = runs[key]
        cpu = f"{r['cpu_s']:.1f} s" if "cpu_s" in r else "-"
        L.append(f"| {label} | {_fmt_s(r['time_s'])} | {_fmt_s(r['wall_s'])} | {cpu} | {mib(r['peak_rss']):.0f} MiB | "
                 f"{_fmt_x(r['time_s'] / floor)} | {_fmt_x(r['time_s'] / ours)} |")
    L.append("")

    comp = main.get("competitors", {})
    if comp:
        L.append(f"## Per layer (sample: layer 0; T = {main['T']}, r = {main['r']}, output rank {main['R']})\n")
        h, kv, f = sh["hidden"], sh["kv"], sh["mlp"]
        L.append("Competitors that take minutes per layer were timed on one module of each distinct shape of layer 0 "
                 f"(q_proj {h}x{h}, k_proj {kv}x{h}, gate_proj {f}x{h}, down_proj {h}x{f}) and summed with "
                 "each shape's count in a layer (q/o, k/v, gate/up, down). Ours per layer is the whole-model time "
                 f"divided by {layers} (I/O included), and separately one layer's math alone.\n")
        L.append("| what | per layer | peak RSS | vs ours per layer | vs floor per layer |")
        L.append("|---|---:|---:|---:|---:|")
        ours_pl, floor_pl = ours / layers, floor / layers

        def row(label, t, rss, lb=False):
            L.append(f"| {label} | {_fmt_s(t, lb)} | {'-' if rss is None else f'{mib(rss):.0f} MiB'} | "
                     f"{_fmt_x(t / ours_pl, lb)} | {_fmt_x(t / floor_pl, lb)} |")

        row(f"**pico core Pico + TIES** (whole model / {layers})", ours_pl, runs["core-ties"]["peak_rss"])
        ol = comp.get("ours_layer")
        if ol:
            row("pico core Pico + TIES, one layer's math only", ol["time_s"], None)
        if "knots_space" in comp:
            row("pico KnOTS space, Pico + TIES (exact KnOTS: QR of the stacked factors, one layer)",
                comp["knots_space"]["time_s"], comp["knots_space"]["peak_rss"])
        if "full_ties" in comp:
            row("pico full space, Pico + TIES (dense deltas, SVD to rank R)", comp["full_ties"]["time_s"],
                comp["full_ties"]["peak_rss"])
        kn = comp.get("knots_full")
        if kn and kn.get("per_module"):
            row("full-space KnOTS-TIES, official path (float64 SVD of m x Tn)", kn["time_s"], kn["peak_rss"],
                kn["lower_bound"])
        pe = comp.get("peft")
        if pe:
            for t in ("cat", "svd", "ties_svd"):
                if t in pe:
                    row(f"PEFT add_weighted_adapter `{t}`" + (" (exact, rank R)" if t == "cat" else
                                                              f" (svd_rank {main['R']})"),
                        pe[t]["time_s"], pe["peak_rss"])
        mk = comp.get("mergekit")
        if mk and "time_s" in mk:
            row("mergekit LoRA path: base+lora merge_and_unload, dense TIES, extract-lora rank R", mk["time_s"],
                mk.get("tool_peak_rss", mk["peak_rss"]))
        L.append("")
        L.append("Per-module figures (seconds):\n")
        L.append("| module | pico full-space TIES | full-space KnOTS | PEFT svd | PEFT ties_svd |")
        L.append("|---|---:|---:|---:|---:|")
        for kind in KINDS:
            ft = comp.get("full_ties", {}).get("per_module_s", {}).get(kind)
            knr = (kn or {}).get("per_module", {}).get(kind)
            kns = "not run" if knr is None else (f">= {knr['time_s']:.0f} (cap)" if knr["timed_out"] else
                                                   f"{knr['time_s']:.1f}")
            ps = (pe or {}).get("svd", {}).get("per_module_s", {}).get(kind)
            pt = (pe or {}).get("ties_svd", {}).get("per_module_s", {}).get(kind)
            L.append(f"| {kind} | {'-' if ft is None else f'{ft:.1f}'} | {kns} | "
                     f"{'-' if ps is None else f'{ps:.1f}'} | {'-' if pt is None else f'{pt:.1f}'} |")
        L.append("")
        notes = []
        if kn and kn.get("skipped"):
            notes.append(f"Full-space KnOTS was not run on {', '.join(kn['skipped'])}: its SVD of a "
                         f"{res['shape']['mlp']} x {main['T'] * res['shape']['hidden']} float64 matrix is estimated "
                         "at hours on this machine, so its per-layer figure is a lower bound (the attention "
                         "modules alone).")
        if mk and "error" in mk:
            notes.append(f"mergekit: not timed ({mk['error'][:300]}).")
        elif mk:
            notes.append("mergekit merges dense models: its LoRA path was timed on a one-layer model with "
                         "Llama-3-8B's layer shapes (bfloat16 base, vocabulary 256), the adapters cut to that layer; "
                         f"merge {mk['merge_s']:.1f} s (8 dense merge_and_unload + TIES), extract "
                         f"{mk['extract_s']:.1f} s (SVD per module).")
        if pe:
            notes.append(f"PEFT {res['machine'].get('peft', '')}: `PeftModel.from_pretrained` + `load_adapter` on a "
                         "module tree with Llama-3-8B's names and Linear shapes (only the sampled layers), then "
                         "`add_weighted_adapter` with defaults (svd_full_matrices=True); loading took "
                         f"{pe['load_s']:.1f} s and is not counted.")
        for n in notes:
            L.append(f"- {n}")
        L.append("")

    L.append("## Growth with T and r (whole model)\n")
    L.append("| T | r | input | floor | core Pico+TA | core Pico+TIES | core Pico+TIES / floor | core Pico+TSV | "
             "peak RSS (max of ours) | RSS / input |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in sorted(res["configs"], key=lambda c: (c["r"], c["T"])):
        rr = c["runs"]
        rss = max(rr[f"core-{x}"]["peak_rss"] for x in ("ta", "ties", "tsv"))
        L.append(f"| {c['T']} | {c['r']} | {mib(c['input_bytes']):.0f} MiB | {_fmt_s(rr['floor']['time_s'])} | "
                 f"{_fmt_s(rr['core-ta']['time_s'])} | {_fmt_s(rr['core-ties']['time_s'])} | "
                 f"{_fmt_x(rr['core-ties']['time_s'] / rr['floor']['time_s'])} | {_fmt_s(rr['core-tsv']['time_s'])} | "
                 f"{mib(rss):.0f} MiB | {rss / c['input_bytes']:.2f} |")
    L.append("")
    ch = main.get("check", {})
    L.append("## Correctness\n")
    L.append(f"- Every one of the {ch.get('modules')} modules of the core Pico + TIES output was compared with a "
             "straightforward float64 reference (`bench/reference.py`: per-module `torch.linalg.svd`, Pico, Core "
             "Space bases, TIES, rescale), as ||B'A' - B_ref A_ref||_F / ||B_ref A_ref||_F: max "
             f"{ch.get('max_rel_diff', float('nan')):.1e} (module {ch.get('worst_module')}).")
    L.append(f"- Determinism: a second run gave byte-identical files: {main.get('deterministic')}.\n")
    L.append("## Goals\n")
    L.append("```\n" + goals_text(res["goals"]) + "\n```\n")
    L += gpu_sections(gpus, res)
    return "\n".join(L) + "\n"


def gpu_files(bench: Path) -> list[Path]:
    """The GPU results folded into RESULTS.md: bench/results-gpu.json (bench/gpu_check.py) first, then any other
    bench/results-gpu-*.json (bench/merge_8b.py --device cuda runs, e.g. the H100 one), by name."""
    first = bench / "results-gpu.json"
    return ([first] if first.exists() else []) + sorted(bench.glob("results-gpu-*.json"))


def gpu_sections(gpus: list[dict], cpu: dict | None = None) -> list[str]:
    if not gpus:
        return ["## GPU\n\nNo GPU results recorded (`bench/gpu_check.py` writes `results-gpu.json`; "
                "`bench/gpu_check.py --fold` puts it into `bench/`).\n"]
    return [render_gpu(g, cpu) for g in gpus]


def render_gpu(g: dict, cpu: dict | None = None) -> str:
    if g.get("kind") == "gpu_check":  # written by bench/gpu_check.py (issue 26), which renders its own section
        from gpu_check import render as render_gpu_check

        return render_gpu_check(g)
    m = g["machine"]
    main = g["configs"][0]
    runs = main["runs"]
    layers = g["shape"]["layers"]
    L = [f"## GPU: {m.get('gpu')} (device machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']})\n"]
    code = f"code `{g['commit']}`" if g.get("commit") else "commit not recorded: code before the streaming-hash writer"
    L.append(f"Run {g['started']} with `bench/merge_8b.py --device cuda` (one run; the device time of that session "
             f"allowed no second; {code}); T = {main['T']}, r = {main['r']}, the same workload generated there.\n")
    gm = main.get("gpu_math", {})
    L.append("| what | time | peak RSS (host) |")
    L.append("|---|---:|---:|")
    for meth in ("ta", "ties", "tsv"):
        if meth in gm:
            L.append(f"| merge math, whole model, Pico + {meth.upper()} (inputs resident on the GPU, "
                     f"{gm['batches']} batches; median of 5) | {_fmt_s(gm[meth]['time_s'])} | - |")
    L.append(f"| floor (read inputs, write merged-size output, fsync) | {_fmt_s(runs['floor']['time_s'])} | "
             f"{mib(runs['floor']['peak_rss']):.0f} MiB |")
    for meth in ("ta", "ties", "tsv"):
        r = runs.get(f"core-{meth}")
        if r:
            L.append(f"| `pico.merge(..., device='cuda')`, Pico + {meth.upper()}, end to end | {_fmt_s(r['time_s'])} "
                     f"| {mib(r['peak_rss']):.0f} MiB |")
    r = runs.get("core-ties-on-cpu")
    if r:
        L.append(f"| `pico.merge` on that machine's CPU ({m['cores']} cores), Pico + TIES | {_fmt_s(r['time_s'])} | "
                 f"{mib(r['peak_rss']):.0f} MiB |")
    comp = main.get("competitors", {})
    if comp.get("ours_layer"):
        L.append(f"| one layer's math, Pico + TIES (batch functions, reads and transfers included) | "
                 f"{_fmt_s(comp['ours_layer']['time_s'])} | - |")
    pe = comp.get("peft")
    if pe and "ties_svd" in pe:
        for t in ("svd", "ties_svd"):
            L.append(f"| PEFT `{t}` per layer (sampled modules, on the GPU) | {_fmt_s(pe[t]['time_s'])} | - |")
    kn = comp.get("knots_full")
    if kn and kn.get("per_module"):
        L.append(f"| full-space KnOTS per layer (float64 SVD on the GPU; attention modules only) | "
                 f"{_fmt_s(kn['time_s'], kn['lower_bound'])} | - |")
    if comp.get("full_ties"):
        L.append(f"| pico full-space Pico + TIES per layer | {_fmt_s(comp['full_ties']['time_s'])} | - |")
    L.append("")
    ties_pl = gm.get("ties", {}).get("time_s", float("nan")) / layers
    if pe and "ties_svd" in pe:
        L.append(f"- Per layer on the GPU, Pico + TIES math is {_fmt_s(ties_pl)} (whole model / {layers}): "
                 f"{pe['ties_svd']['time_s'] / ties_pl:.0f}x faster than PEFT `ties_svd`"
                 + (f", >= {kn['time_s'] / ties_pl:.0f}x than full-space KnOTS" if kn and kn.get("time_s") else "")
                 + f"; end to end (I/O included, {_fmt_s(runs['core-ties']['time_s'] / layers)} per layer) "
                 f"{pe['ties_svd']['time_s'] / (runs['core-ties']['time_s'] / layers):.0f}x.")
        if not pe.get("warmed_up"):
            L.append(f"- PEFT `svd` ran first and its first module (q_proj) includes cuSOLVER's one-time start-up "
                     f"({pe['svd']['per_module_s']['q_proj']:.1f} s against {pe['ties_svd']['per_module_s']['q_proj']:.1f}"
                     " s for the same SVD inside `ties_svd`); `ties_svd` is the fair figure.")
    fmt = (cpu or {}).get("manifest_format_s")
    L.append("- The merge-math figure covers, per batch of equal-shape modules: the float64 Grams, Pico, the core "
             "bases (cuSOLVER gesvda), the method, the output products, and building each module's manifest entry "
             "(Python rounding of its diagnostics"
             + (f", which took {fmt * 1e3:.0f} ms for the model's {layers * 7} modules on the CPU machine above: "
                "a large share of the figure, and not GPU work" if fmt else "") + "). "
             "TSV is slow on the GPU: its per-task SVDs of the 128 x 128 cores go through torch's default cuSOLVER "
             "driver (146 ms per 32 matrices in bench/probe_small_svd.py).")
    L.append("- End to end on the GPU is I/O-bound (reading, hashing the inputs for the manifest, host-device copies, "
             "writing); host RSS includes the CUDA context and pinned staging buffers for 32-layer batches.")
    ch = main.get("check", {})
    L.append(f"- GPU output against the float64 reference: max relative difference {ch.get('max_rel_diff', 0):.1e} "
             f"over {ch.get('modules')} modules (4 layers); against the CPU output, all "
             f"{ch.get('other_modules') or g['shape']['layers'] * 7} modules: {ch.get('other_max_rel_diff') or 0:.1e}.")
    L.append(f"- Determinism on the GPU (second run byte-identical): {main.get('deterministic')}.\n")
    gg = g["goals"]
    reference = "GPU output equal to the float64 reference: {diff:.1e}"
    if "gpu_under_0.1s" in gg:
        lines = gpu_goal_lines(gg, "GPU merge math, whole model, < 0.1 s: {ms:.1f} ms (Pico + TIES)", reference)
    else:
        x = gg["equals_reference"]
        lines = [goal_line(x["holds"], reference.format(diff=x["max_rel_diff"]))]
    L.append("```\nGPU goals:\n" + "\n".join(lines) + "\n```\n")
    return "\n".join(L)
