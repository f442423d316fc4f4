#!/usr/bin/env python
"""Issue 26: the GPU check, one process and one command on a GPU machine.

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 bench/gpu_check.py --out $OUT 2>&1 | tee $OUT/log.txt
    PYTHONPATH=. python bench/gpu_check.py --quick --out build/gpu-check-quick   # tiny shapes on this CPU, seconds

In order (the most important figures first; results-gpu.json is rewritten after every step, so a run stopped
part-way still leaves what it measured, and a step that would overrun --budget is skipped and says so):
 1. workload: bench/workload.py's Llama-3-8B-shaped adapters, T = 8, r = 16 (1.25 GiB), under --work (local disk),
    written by several processes; then every batch is read onto the device (timed);
 2. merge math, whole model, on the device: core Pico + TA / TIES / TSV from the resident factors (Grams, Pico, core
    bases, method, output products, manifest entries), as pico.merge batches them; a warm-up, then the median of
    --reps synchronised runs; what the checked gesvda did (pico.linalg.GESVDA_STATS) and how many per-task SVDs
    TSV took from the task factors (pico.linalg.lowrank_svd; on a CPU device too, for a dry run);
 3. end to end: `pico.merge(pico.load_adapters(paths), recipe, out, device=...)`, Pico + TIES alternating with the
    read + write floor (bench/competitors.py child_floor) --e2e-reps times, then TA and TSV twice each; a second
    run of each method must give byte-identical files;
 4. the same merges on the host CPU (all its cores), and every module of each device output against the CPU
    output: max over modules of ||B A - B' A'||_F / ||B' A'||_F (float64, never forming B A);
 5. Pico + TIES on --ref-layers layers against the float64 reference (bench/reference.py);
 6. where end-to-end time goes, each part alone: hashing the inputs, the math with the copy back to the host, and
    writing the merged adapter (streamed sha256, fsync); plus single-stream sha256 speed;
 7. for comparison on the same device: Pico + TSV merge math with the dense per-task SVDs (the route before the
    factored one: an SVD of each rank-r R x R core), two runs;
 8. goals and a markdown summary, OUT/results-gpu.md (also what bench/render_8b.py puts in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

METHODS = ("ta", "ties", "tsv")
TOLERANCE = 1e-5  # CPU vs device and reference: relative difference of the merged updates
QUICK_SHAPE = dict(layers=2, hidden=64, kv=16, mlp=160)
FULL_SHAPE = dict(layers=32, hidden=4096, kv=1024, mlp=14336)


def ensure_annotated_types() -> bool:
    """pico needs annotated_types (a declared dependency); the lent GPU machine's image lacks it and has no registry.
    Use the real package when importable, else bench/compat's copy of the subset pico uses. True if the fallback
    was needed."""
    try:
        import annotated_types  # noqa: F401
        return False
    except ImportError:
        sys.path.insert(0, str(BENCH / "compat"))
        sys.modules.pop("annotated_types", None)
        import annotated_types  # noqa: F401
        return True


class Run:
    """The run's clock, log and incrementally written results."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget, self.t0 = out, budget, time.time()
        self.res: dict = {"kind": "gpu_check", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def log(self, *parts) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{self.elapsed():6.1f}s]", *parts, flush=True)

    def save(self) -> None:
        self.res["elapsed_s"] = self.elapsed()
        path = self.out / "results-gpu.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.res, indent=1, default=str) + "\n")
        os.replace(tmp, path)

    def guarded(self, name: str, fn, *args, default=None):
        """Run one step; an exception is logged and recorded (results-gpu.json "errors") and the run goes on."""
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - one failed step must not cost the others' figures
            import traceback

            text = traceback.format_exc()
            self.res.setdefault("errors", {})[name] = text[-4000:]
            self.log(f"ERROR in {name}:\n{text}")
            self.save()
            return default

    def over(self, need: float, what: str) -> bool:
        """True (and noted) when ``need`` more seconds would overrun the budget: the step is skipped."""
        if self.elapsed() + need <= self.budget:
            return False
        self.res.setdefault("skipped", []).append(f"{what} (needs ~{need:.0f} s, {self.elapsed():.0f} s of "
                                                  f"{self.budget:.0f} s used)")
        self.log(f"SKIPPED {what}: not enough time left in the budget")
        self.save()
        return True


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def recipe_for(method: str):
    from competitors import DENSITY

    import pico

    return pico.Recipe(method=method, space="core", calibrate="pico",
                       params={"density": DENSITY} if method == "ties" else {})


def code_digest() -> str:
    """sha256 over pico/ and bench/ sources: names the code measured where git is absent (the device machine)."""
    h = hashlib.sha256()
    for folder in ("pico", "bench"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def filesystem(path: Path) -> str:
    """The type and device of the filesystem holding ``path`` (tmpfs would make the floor a memory copy)."""
    best = ("", "?", "?")
    try:
        for line in open("/proc/mounts"):
            dev, mnt, fstype = line.split()[:3]
            if str(Path(path).resolve()).startswith(mnt) and len(mnt) > len(best[0]):
                best = (mnt, fstype, dev)
    except OSError:
        pass
    return f"{best[1]} ({best[2]} on {best[0]})"


LOWRANK_STATS = {"calls": 0, "matrices": 0}  # TSV's per-task SVDs from the task factors (counted by main's wrapper)
TSV_DEFAULT_DEVICES: tuple[str, ...] = ()  # pico.methods.tsv.FACTOR_SVD_DEVICES as the library sets it (main)
TSV_DEVICES: tuple[str, ...] = ()  # what the device under test uses (main: its type, or none with --tsv-dense)


@contextlib.contextmanager
def tsv_route(which: str):
    """TSV's per-task SVD route within: "device" (the device under test's: from the factors unless --tsv-dense),
    "default" (the library's: from the factors on CUDA only) or "dense" (never from the factors)."""
    from pico.methods import tsv

    before = tsv.FACTOR_SVD_DEVICES
    tsv.FACTOR_SVD_DEVICES = {"device": TSV_DEVICES, "default": TSV_DEFAULT_DEVICES, "dense": ()}[which]
    try:
        yield
    finally:
        tsv.FACTOR_SVD_DEVICES = before


def count_lowrank_svds() -> None:
    """Wrap pico.methods.tsv.lowrank_svd so that LOWRANK_STATS counts its calls and matrices."""
    from pico.methods import tsv

    inner = tsv.lowrank_svd

    def counted(left, right, top=None):
        LOWRANK_STATS["calls"] += 1
        LOWRANK_STATS["matrices"] += left[..., 0, 0].numel()
        return inner(left, right, top)

    tsv.lowrank_svd = counted


def file_digests(path: Path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(Path(path).iterdir()) if f.is_file()}


# ----------------------------------------------------------------------------------------------------------- steps

def step_math(run: Run, aset, dev, reps: int, plan=tuple((m, m) for m in METHODS)) -> None:
    """Read every batch onto the device (timed, the first time), then time the merge math of each (key, method) of
    ``plan`` from there, recorded as run.res["math"][key]."""
    import torch

    from pico import factored, linalg
    from pico.batch import calibrate_factors
    from pico.merge import BATCH_BYTES, CUDA_BATCH_BYTES, CalibratedBatch, merge_batch, plan_batches

    batches = plan_batches(aset, "core", CUDA_BATCH_BYTES if dev.type == "cuda" else BATCH_BYTES)
    t0 = time.perf_counter()
    stacks = [factored.load(aset, b, dev) for b in batches]
    sync(dev)
    read_s = time.perf_counter() - t0
    math = run.res.setdefault("math", {})
    if "read_to_device_s" not in math:
        math.update(batches=len(batches), batch_sizes=[len(b) for b in batches], read_to_device_s=read_s)
        run.log(f"read {len(batches)} batches onto {dev}: {read_s:.2f} s")
    raw = [(s.b_all, s.a_all, s.ranks) for s in stacks]
    del stacks

    def once(recipe):
        fast = True
        for (b_all, a_all, ranks), batch in zip(raw, batches):
            st = factored.Stacked(b_all, a_all, ranks)  # the Grams are part of the timed math
            fc, norms, diag = factored.calibrate(st, mode="pico", diagnostics=True)
            if fc is None:  # not expected on this workload; the general path, as pico.merge would take it
                fast = False
                bs, as_ = st.split()
                cal = calibrate_factors(batch, ranks, bs, as_, recipe)
            else:
                cal = CalibratedBatch(batch, ranks, None, None, norms, diag, factored=fc)
            merge_batch(cal, recipe, to_cpu=False)
        return fast

    for key, method in plan:
        if run.over(3.0, f"merge math {key}"):
            continue
        recipe = recipe_for(method)
        linalg.GESVDA_STATS.update(calls=0, matrices=0, fallbacks=0, raised=0, max_error=0.0)
        LOWRANK_STATS.update(calls=0, matrices=0)
        t0 = time.perf_counter()
        fast = once(recipe)
        sync(dev)
        warm = time.perf_counter() - t0
        n = reps if warm < 2.0 else max(1, min(reps, int(20 // max(warm, 1e-3))))  # a slow method: fewer runs
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            once(recipe)
            sync(dev)
            times.append(time.perf_counter() - t0)
        math[key] = {"time_s": statistics.median(times), "runs": times, "warmup_s": warm, "gram_fast_path": fast,
                     "gesvda": dict(linalg.GESVDA_STATS), "lowrank_svd": dict(LOWRANK_STATS)}
        run.log(f"merge math, whole model, Pico + {method.upper()}{'' if key == method else f' ({key})'}: median "
                f"{statistics.median(times) * 1e3:.1f} ms (runs {', '.join(f'{t * 1e3:.1f}' for t in times)} ms; "
                f"warm-up {warm * 1e3:.0f} ms); gesvda {linalg.GESVDA_STATS}; per-task SVDs from the factors "
                f"{LOWRANK_STATS}")
        run.save()
    if dev.type == "cuda":
        math["device_peak_gib"] = max(math.get("device_peak_gib", 0.0), torch.cuda.max_memory_allocated(dev) / 2**30)
    run.save()


def merge_once(paths, method, out: Path, device: str):
    import torch

    import pico

    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # the context exists already; nothing outside the timed region
    t0 = time.perf_counter()
    aset = pico.load_adapters(paths)
    pico.merge(aset, recipe_for(method), out, device=device, progress=False, overwrite=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def floor_once(paths, out: Path, out_bytes: int) -> dict:
    from competitors import child_floor

    res = child_floor({"paths": paths, "out": str(out), "out_bytes": out_bytes})
    shutil.rmtree(out, ignore_errors=True)
    return res


def step_e2e(run: Run, paths, device: str, work: Path, out_bytes: int, reps: int) -> dict:
    """End to end against the floor (alternating); every method twice for determinism. Returns the first output of
    each method (kept for the CPU comparison)."""
    e2e = run.res["e2e"] = {"floor": [], "floor_fsync": []}
    outs = {}
    plan = [("floor", None), ("ties", 1)]
    for i in range(1, reps):
        plan += [("floor", None), ("ties", i + 1)]
    plan += [("ta", 1), ("ta", 2), ("tsv", 1), ("tsv", 2)]
    for kind, i in plan:
        est = 3 * (statistics.median(e2e["floor"]) if e2e["floor"] else 5.0)
        if run.over(est, f"end to end {kind} #{i or len(e2e['floor']) + 1}"):
            continue
        os.sync()
        if kind == "floor":
            f = floor_once(paths, work / "floor", out_bytes)
            e2e["floor"].append(f["time_s"])
            e2e["floor_fsync"].append(f["fsync_s"])
            run.log(f"floor (read inputs, write {out_bytes / 2**30:.2f} GiB, fsync): {f['time_s']:.2f} s "
                    f"(fsync {f['fsync_s']:.2f} s)")
        else:
            out = work / f"{device.replace(':', '')}-{kind}-{i}"
            t = merge_once(paths, kind, out, device)
            entry = e2e.setdefault(kind, {"runs": []})
            entry["runs"].append(t)
            entry["time_s"] = statistics.median(entry["runs"])
            run.log(f"pico.merge(device={device!r}), Pico + {kind.upper()}, end to end: {t:.2f} s")
            if i == 1:
                outs[kind] = out
                entry["digests"] = file_digests(out)
            else:
                same = file_digests(out) == entry["digests"]
                entry["deterministic"] = entry.get("deterministic", True) and same
                run.log(f"  run {i} byte-identical to run 1: {same}")
                shutil.rmtree(out, ignore_errors=True)
        run.save()
    if e2e["floor"]:
        e2e["floor_s"] = statistics.median(e2e["floor"])
        for m in METHODS:
            if m in e2e:
                e2e[m]["ratio_to_floor"] = e2e[m]["time_s"] / e2e["floor_s"]
        run.save()
    return outs


def compare_outputs(a: Path, b: Path, modules, dev) -> tuple[float, str | None]:
    """Max over modules of ||B_a A_a - B_b A_b||_F / ||B_b A_b||_F (float64 on ``dev``)."""
    from reference import relative_difference

    from pico.output import peft_key
    from pico.reader import SafetensorsReader

    ra, rb = SafetensorsReader(a / "adapter_model.safetensors"), SafetensorsReader(b / "adapter_model.safetensors")
    worst, where = 0.0, None
    for module in modules:
        fa = [ra.get_tensor(peft_key(module, w)).to(dev) for w in "BA"]
        fb = [rb.get_tensor(peft_key(module, w)).to(dev) for w in "BA"]
        d = relative_difference(*fa, *fb)
        if not d <= worst:  # NaN counts as worst
            worst, where = d, module
    return worst, where


def step_cpu(run: Run, paths, dev_outs: dict, work: Path, modules, cmp_dev) -> None:
    """The same merges on the CPU; each device output against the CPU output, module by module."""
    import torch

    cpu = run.res["cpu"] = {"threads": torch.get_num_threads()}
    for method, dev_out in dev_outs.items():
        if run.over(4 * run.res["e2e"].get(method, {}).get("time_s", 10.0) + 10, f"CPU merge and comparison, {method}"):
            continue
        out = work / f"cpu-{method}"
        with tsv_route("default"):  # the CPU's own route: dense per-task SVDs, the bytes users have
            t = merge_once(paths, method, out, "cpu")
        t0 = time.perf_counter()
        diff, where = compare_outputs(dev_out, out, modules, cmp_dev)
        cpu[method] = {"time_s": t, "max_rel_diff_device_vs_cpu": diff, "worst_module": where,
                       "modules": len(modules), "compare_s": time.perf_counter() - t0,
                       "identical_bytes": file_digests(out)["adapter_model.safetensors"]
                       == run.res["e2e"][method]["digests"]["adapter_model.safetensors"]}
        run.log(f"pico.merge(device='cpu'), Pico + {method.upper()}: {t:.2f} s; device vs CPU over {len(modules)} "
                f"modules: max relative difference {diff:.2e} ({where})")
        shutil.rmtree(out, ignore_errors=True)
        run.save()


def step_reference(run: Run, aset, dev_out: Path, layers: list[int], cmp_dev) -> None:
    from competitors import DENSITY
    from reference import pico_ties_module, relative_difference

    from pico.output import peft_key
    from pico.reader import SafetensorsReader

    reader = SafetensorsReader(dev_out / "adapter_model.safetensors")
    worst, where, n = 0.0, None, 0
    t0 = time.perf_counter()
    for module in aset.modules:
        if int(module.split(".")[2]) not in layers:
            continue
        pairs = [(b.to(cmp_dev), a.to(cmp_dev)) for b, a in aset.factors(module)]
        rb, ra = pico_ties_module(pairs, density=DENSITY)
        d = relative_difference(*(reader.get_tensor(peft_key(module, w)).to(cmp_dev) for w in "BA"), rb, ra)
        n += 1
        if not d <= worst:
            worst, where = d, module
    run.res["reference"] = {"layers": layers, "modules": n, "max_rel_diff": worst, "worst_module": where,
                            "time_s": time.perf_counter() - t0}
    run.log(f"Pico + TIES on the device vs the float64 reference, {n} modules (layers {layers}): max relative "
            f"difference {worst:.2e} ({where})")
    run.save()


def step_phases(run: Run, paths, dev, work: Path) -> None:
    """Each part of an end-to-end merge alone, on the same data (the page cache warm)."""
    import pico
    from pico import factored
    from pico.merge import BATCH_BYTES, CUDA_BATCH_BYTES, calibrate_batch, merge_batch, plan_batches, write_merged

    ph = run.res["phases"] = {}
    buf = os.urandom(1 << 20) * 256
    t0 = time.perf_counter()
    hashlib.sha256(buf).hexdigest()
    ph["sha256_gib_per_s"] = len(buf) / 2**30 / (time.perf_counter() - t0)
    del buf
    aset = pico.load_adapters(paths)
    batches = plan_batches(aset, "core", CUDA_BATCH_BYTES if dev.type == "cuda" else BATCH_BYTES)
    t0 = time.perf_counter()
    aset.hash_sources()
    ph["hash_inputs_s"] = time.perf_counter() - t0
    ph["hash_workers"] = max(1, (os.cpu_count() or 1) // 4)
    recipe = recipe_for("ties")
    t0 = time.perf_counter()
    stacks = [factored.load(aset, b, dev) for b in batches]
    sync(dev)
    ph["read_to_device_s"] = time.perf_counter() - t0
    del stacks
    t0 = time.perf_counter()
    results = [merge_batch(calibrate_batch(aset, b, recipe, dev), recipe) for b in batches]
    sync(dev)
    ph["read_math_to_host_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    os.sync()
    write_merged(aset, recipe, batches, iter(results), work / "phase-write", progress=False, overwrite=True)
    ph["write_s"] = time.perf_counter() - t0  # the merged adapter: header, streamed sha256, fdatasyncs, fsync
    shutil.rmtree(work / "phase-write", ignore_errors=True)
    run.log("phases alone: " + ", ".join(f"{k} {v:.2f}" for k, v in ph.items()))
    run.save()


# ------------------------------------------------------------------------------------------------- goals and text

def goals(res: dict) -> dict:
    g = {}
    math = res.get("math", {})
    if "ta" in math and "ties" in math:
        t = max(math["ta"]["time_s"], math["ties"]["time_s"])
        g["math_ta_ties_under_0.1s"] = {"holds": t < 0.1, "ta_s": math["ta"]["time_s"], "ties_s": math["ties"]["time_s"]}
    if "tsv" in math:
        g["math_tsv_under_0.2s"] = {"holds": math["tsv"]["time_s"] < 0.2, "tsv_s": math["tsv"]["time_s"]}
    e2e = res.get("e2e", {})
    if "floor_s" in e2e and "ties" in e2e:
        g["e2e_within_2x_floor"] = {"holds": e2e["ties"]["ratio_to_floor"] <= 2, "ties_s": e2e["ties"]["time_s"],
                                    "floor_s": e2e["floor_s"], "ratio": e2e["ties"]["ratio_to_floor"]}
    diffs = {m: v["max_rel_diff_device_vs_cpu"] for m, v in res.get("cpu", {}).items() if isinstance(v, dict)}
    if diffs:
        worst = max(diffs.values(), key=lambda d: d if d == d else float("inf"))
        g["cpu_equals_device"] = {"holds": len(diffs) == len(METHODS) and worst < TOLERANCE, "max_rel_diff": worst,
                                  "methods": sorted(diffs), "tolerance": TOLERANCE}
    det = {m: e2e[m].get("deterministic") for m in METHODS if m in e2e and "deterministic" in e2e[m]}
    if det:
        g["deterministic"] = {"holds": len(det) == len(METHODS) and all(det.values()), "methods": det}
    ref = res.get("reference")
    if ref:
        g["equals_reference"] = {"holds": ref["max_rel_diff"] < TOLERANCE, "max_rel_diff": ref["max_rel_diff"],
                                 "modules": ref["modules"]}
    return g


def _ms(x):
    return "-" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")


def render(res: dict) -> str:
    """The markdown summary (also the GPU section of bench/RESULTS.md, through bench/render_8b.py)."""
    m = res.get("machine", {})
    dev = res.get("device", "?")
    w = res.get("workload", {})
    L = [f"## GPU check: {m.get('gpu') or dev} (host: {m.get('cpu')}, {m.get('cores')} cores; torch "
         f"{m.get('torch')}, Python {m.get('python')})\n",
         f"`bench/gpu_check.py`{' --quick' if res.get('quick') else ''}, run {res.get('started')}, code "
         f"{res.get('commit')} (sources digest {res.get('code_digest')}); device `{dev}`; workload "
         f"{w.get('layers')} layers, T = {w.get('T')}, r = {w.get('r')}, {w.get('input_bytes', 0) / 2**30:.2f} GiB "
         f"in, on {w.get('filesystem')}; {res.get('elapsed_s', 0):.0f} s in all.\n"]
    math, e2e, cpu = res.get("math", {}), res.get("e2e", {}), res.get("cpu", {})
    L += ["| what | time |", "|---|---:|"]
    if "read_to_device_s" in math:
        L.append(f"| read every batch onto the device ({math['batches']} batches) | {_ms(math['read_to_device_s'])} |")
    for meth in (*METHODS, "tsv_dense"):
        if meth in math:
            x = math[meth]
            gs = x["gesvda"]
            what = "Pico + TSV, per-task SVDs by the dense route (as before)" if meth == "tsv_dense" else \
                f"Pico + {meth.upper()}"
            lowrank = x.get("lowrank_svd", {}).get("matrices")
            L.append(f"| merge math, whole model, {what} (median of {len(x['runs'])}; "
                     + (f"per-task SVDs from the factors: {lowrank} matrices; " if lowrank else "")
                     + f"gesvda {gs['matrices']} matrices, {gs['fallbacks']} re-solved"
                     + (f" ({gs['raised']} calls raised)" if gs.get("raised") else "")
                     + f", max error {gs['max_error']:.1e}) | "
                     f"{_ms(x['time_s'])} |")
    if "floor_s" in e2e:
        L.append(f"| floor: read inputs, write the merged size, fsync (median of {len(e2e['floor'])}) | "
                 f"{_ms(e2e['floor_s'])} |")
    for meth in METHODS:
        if meth in e2e:
            x = e2e[meth]
            ratio = f", {x['ratio_to_floor']:.2f}x the floor" if "ratio_to_floor" in x else ""
            L.append(f"| `pico.merge(..., device='{dev}')`, Pico + {meth.upper()}, end to end (median of "
                     f"{len(x['runs'])}: {', '.join(f'{t:.2f}' for t in x['runs'])} s{ratio}) | {_ms(x['time_s'])} |")
    for meth in METHODS:
        if meth in cpu:
            L.append(f"| `pico.merge(..., device='cpu')` on the host ({cpu['threads']} threads), Pico + "
                     f"{meth.upper()} | {_ms(cpu[meth]['time_s'])} |")
    ph = res.get("phases", {})
    if ph:
        L.append(f"| alone: hash the inputs ({ph['hash_workers']} threads) | {_ms(ph['hash_inputs_s'])} |")
        L.append(f"| alone: read every batch onto the device | {_ms(ph['read_to_device_s'])} |")
        L.append(f"| alone: read, merge math, copy back to the host (Pico + TIES) | {_ms(ph['read_math_to_host_s'])} |")
        L.append(f"| alone: write the merged adapter (streamed sha256, fsync) | {_ms(ph['write_s'])} |")
    L.append("")
    for meth in METHODS:
        if meth in cpu:
            x = cpu[meth]
            L.append(f"- Pico + {meth.upper()}: device output against the CPU output, all {x['modules']} modules: max "
                     f"relative difference {x['max_rel_diff_device_vs_cpu']:.1e} ({x['worst_module']}); same bytes: "
                     f"{x['identical_bytes']}.")
    ref = res.get("reference")
    if ref:
        L.append(f"- Pico + TIES on the device against the float64 reference (layers {ref['layers']}, "
                 f"{ref['modules']} modules): max relative difference {ref['max_rel_diff']:.1e}.")
    det = {k: e2e[k].get("deterministic") for k in METHODS if k in e2e and "deterministic" in e2e[k]}
    if det:
        L.append("- Second device run byte-identical: " + ", ".join(f"{k.upper()} {v}" for k, v in det.items()) + ".")
    if ph:
        L.append(f"- Single-stream sha256 on the host: {ph['sha256_gib_per_s']:.2f} GiB/s.")
    if res.get("compat_annotated_types"):
        L.append("- annotated_types was missing there: bench/compat's subset was used.")
    if res.get("checked_gesvda") is False:
        L.append("- Run with --unchecked-svd: small CUDA SVDs by the default driver, as before issue 26.")
    if "tsv_factor_svd_devices" in res:
        route = "from the task factors" if dev.split(":")[0] in res["tsv_factor_svd_devices"] else "dense"
        L.append(f"- Pico + TSV's per-task SVDs on the device: {route}; in the CPU merges: dense (pico's CPU route).")
    for s in res.get("skipped", []):
        L.append(f"- Skipped (time budget): {s}.")
    for name in res.get("errors", {}):
        L.append(f"- Step `{name}` failed; its traceback is in results-gpu.json (\"errors\").")
    L.append("")
    names = {"math_ta_ties_under_0.1s": lambda x: f"merge math, whole model, Pico + TA and TIES < 0.1 s: TA "
                                                  f"{_ms(x['ta_s'])}, TIES {_ms(x['ties_s'])}",
             "math_tsv_under_0.2s": lambda x: f"merge math, whole model, Pico + TSV < 0.2 s: {_ms(x['tsv_s'])}",
             "e2e_within_2x_floor": lambda x: f"end to end <= 2x the floor: {x['ties_s']:.2f} s vs "
                                              f"{x['floor_s']:.2f} s = {x['ratio']:.2f}x (Pico + TIES)",
             "cpu_equals_device": lambda x: f"device output equals the CPU output ({', '.join(x['methods'])}): max "
                                            f"relative difference {x['max_rel_diff']:.1e} (tolerance "
                                            f"{x['tolerance']:.0e})",
             "deterministic": lambda x: "second device run byte-identical: " + ", ".join(
                 f"{k.upper()} {v}" for k, v in x["methods"].items()),
             "equals_reference": lambda x: f"equal to the float64 reference: {x['max_rel_diff']:.1e} over "
                                           f"{x['modules']} modules"}
    g = res.get("goals", {})
    L.append("```\nGPU goals:\n" + "\n".join(f"  [{'x' if v['holds'] else ' '}] {names[k](v)}" for k, v in g.items())
             + "\n```\n")
    return "\n".join(L)


def fold_sections(bench: Path = BENCH) -> None:
    """Re-render the GPU sections of bench/RESULTS.md (from its first '## GPU' heading to the end) from the GPU
    results in bench/ (bench/render_8b.py gpu_files), leaving the CPU sections as they are."""
    from render_8b import gpu_files, gpu_sections

    md = bench / "RESULTS.md"
    text = md.read_text()
    cut = text.find("\n## GPU")
    head = text[:cut + 1] if cut >= 0 else text + "\n"
    cpu = json.loads((bench / "RESULTS.json").read_text()) if (bench / "RESULTS.json").exists() else None
    md.write_text(head + "\n".join(gpu_sections([json.loads(p.read_text()) for p in gpu_files(bench)], cpu)) + "\n")


def fold(src: Path, bench: Path = BENCH) -> None:
    """Record a run: its results-gpu.json becomes bench/results-gpu.json and bench/RESULTS.md's GPU sections are
    re-rendered."""
    res = json.loads(Path(src).read_text())
    if res.get("kind") != "gpu_check":
        raise SystemExit(f"{src}: not a results file of bench/gpu_check.py")
    dst = bench / "results-gpu.json"
    if Path(src).resolve() != dst.resolve():
        dst.write_text(json.dumps(res, indent=1, default=str) + "\n")
    fold_sections(bench)


# ------------------------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "build" / "gpu-check"), help="results-gpu.json and results-gpu.md")
    ap.add_argument("--work", default=None, help="workload and outputs (local disk; default /tmp/pico-gpu-check, "
                                                 "or OUT/work with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, T = 3, r = 4, few runs (the test)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--T", type=int, default=None)
    ap.add_argument("--r", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None, help="timed merge-math runs after a warm-up (default 5)")
    ap.add_argument("--e2e-reps", type=int, default=None, help="floor / Pico + TIES alternations (default 3)")
    ap.add_argument("--ref-layers", default=None, help="comma list of layers for the float64 reference")
    ap.add_argument("--budget", type=float, default=None, help="seconds; later steps are skipped past it "
                                                               "(default 285; quick: 600)")
    ap.add_argument("--keep", action="store_true", help="keep the outputs under --work")
    ap.add_argument("--unchecked-svd", action="store_true",
                    help="small CUDA SVDs as before issue 26 (default driver; psd_eig by unchecked gesvda)")
    ap.add_argument("--tsv-dense", action="store_true",
                    help="TSV's per-task SVDs on the device by the dense route (an SVD of each R x R core), as "
                         "before; default: from the task factors, on a CPU device too (a dry run of the GPU's route)")
    ap.add_argument("--fold", metavar="JSON", default=None,
                    help="no run: copy a run's results-gpu.json to bench/ and re-render bench/RESULTS.md's GPU part")
    args = ap.parse_args(argv)
    if args.fold:
        fold(Path(args.fold))
        print(f"bench/results-gpu.json and the GPU sections of bench/RESULTS.md written from {args.fold}")
        return 0

    quick = args.quick
    out = Path(args.out).resolve()
    run = Run(out, args.budget or (600.0 if quick else 285.0))
    run.log(f"gpu_check: results to {out}")
    compat = ensure_annotated_types()

    import torch
    from harness import git_commit, machine

    import pico
    from pico import linalg

    linalg.CHECKED_GESVDA = not args.unchecked_svd
    from workload import Shape, ensure_adapters

    from pico.methods import tsv

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    global TSV_DEFAULT_DEVICES, TSV_DEVICES
    TSV_DEFAULT_DEVICES = tsv.FACTOR_SVD_DEVICES
    TSV_DEVICES = () if args.tsv_dense else tuple(sorted({*TSV_DEFAULT_DEVICES, dev.type}))
    tsv.FACTOR_SVD_DEVICES = TSV_DEVICES  # every merge on the device below; the CPU's own merges: tsv_route
    count_lowrank_svds()
    shape = dict(QUICK_SHAPE if quick else FULL_SHAPE)
    if args.layers:
        shape["layers"] = args.layers
    T = args.T or (3 if quick else 8)
    r = args.r or (4 if quick else 16)
    reps = args.reps or (2 if quick else 5)
    e2e_reps = args.e2e_reps or (2 if quick else 3)
    ref_layers = ([int(x) for x in args.ref_layers.split(",")] if args.ref_layers
                  else sorted({0, shape["layers"] - 1}))
    work = Path(args.work).resolve() if args.work else (out / "work" if quick else Path("/tmp/pico-gpu-check"))
    runs_dir = work / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir(parents=True, exist_ok=True)

    info = machine()
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    run.res.update(machine=info, device=device, quick=quick, commit=git_commit(), code_digest=code_digest(),
                   compat_annotated_types=compat, pico=pico.__version__, checked_gesvda=linalg.CHECKED_GESVDA,
                   tsv_factor_svd_devices=list(TSV_DEVICES))
    run.log(f"machine: {info}")
    run.save()

    # 1. the workload
    sh = Shape(**shape)
    t0 = time.perf_counter()
    paths = [str(p) for p in ensure_adapters(work / "adapters", sh, r, T, log=run.log,
                                             workers=1 if quick else min(T, max(1, (os.cpu_count() or 1) // 2)))]
    in_bytes = sum((Path(p) / "adapter_model.safetensors").stat().st_size for p in paths)
    out_bytes = sum((m + n) * T * r * 4 for _, m, n in sh.modules())
    run.res["workload"] = {**shape, "T": T, "r": r, "input_bytes": in_bytes, "output_data_bytes": out_bytes,
                           "generate_s": time.perf_counter() - t0, "path": str(work / "adapters"),
                           "filesystem": filesystem(work)}
    run.log(f"workload: {T} adapters, {in_bytes / 2**30:.2f} GiB, ready in {run.res['workload']['generate_s']:.1f} s")
    run.save()
    aset = pico.load_adapters(paths)

    # 2. merge math on the device
    torch.zeros(1, device=dev)
    run.guarded("math", step_math, run, aset, dev, reps)
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # 3. end to end, floor, determinism
    outs = run.guarded("e2e", step_e2e, run, paths, device, runs_dir, out_bytes, e2e_reps, default={})

    # 4. CPU path and comparison; 5. float64 reference
    run.guarded("cpu", step_cpu, run, paths, outs, runs_dir, aset.modules, dev)
    if "ties" in outs and not run.over(30.0 if not quick else 5.0, "float64 reference check"):
        run.guarded("reference", step_reference, run, aset, outs["ties"], ref_layers, dev)

    # 6. phases alone (diagnosis)
    if not run.over(6 * run.res.get("e2e", {}).get("floor_s", 5.0) + 10, "phases alone"):
        run.guarded("phases", step_phases, run, paths, dev, runs_dir)

    # 7. for comparison: Pico + TSV with the dense per-task SVDs, on the same device
    if not args.tsv_dense and not run.over(5.0 if quick else 45.0, "merge math tsv_dense"):
        with tsv_route("dense"):
            run.guarded("math_tsv_dense", step_math, run, aset, dev, 1, (("tsv_dense", "tsv"),))

    # 8. goals and summary
    run.res["goals"] = goals(run.res)
    run.save()
    text = render(run.res)
    (out / "results-gpu.md").write_text(text)
    print("\n" + text, flush=True)
    if not args.keep:
        shutil.rmtree(runs_dir, ignore_errors=True)
    run.log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
