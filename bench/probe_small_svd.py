"""Probe: which CUDA route solves the batched small (R x R) eigen/SVD problems of a core-space merge fast enough,
and how accurate each is against float64 on the CPU. Run on a GPU machine: ``python bench/probe_small_svd.py``.

The merge needs, per group of equal-shape modules (L = 32 Llama layers), the SVD of tall stacked factors X (L, m, R),
R = 128. Routes timed: the fp64 Gram X^T X (batched GEMM), then its eigendecomposition by eigh, by SVD with the
gesvda / gesvdj / default drivers, by gesvda of the Cholesky factor; QR of X; gesvda straight on the tall X.
"""

from __future__ import annotations

import sys
import time

import torch


def timed(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    out.sort()
    return out[len(out) // 2] * 1e3


def subspace_err(v, v_ref, s_ref, rel_floor=1e-3):
    """max over well-separated components of |1 - |<v_k, v_ref_k>||, and the same weighted by s_k / s_max."""
    dots = (v.double().cpu() * v_ref).sum(-2).abs()
    return float((1 - dots).abs().max()), float(((1 - dots).abs() * s_ref / s_ref[..., :1]).max())


def main():
    dev = torch.device("cuda")
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    L, R = 32, 128
    g = torch.Generator().manual_seed(0)
    for m in (4096, 14336):
        # a realistic spectrum: condition ~100
        u = torch.linalg.qr(torch.randn(L, m, R, generator=g, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(L, R, R, generator=g, dtype=torch.float64))[0]
        s = torch.logspace(0, -2, R, dtype=torch.float64)
        x64 = (u * s) @ v.mT
        x = x64.float()
        g_ref = x.double().mT @ x.double()
        e_ref, v_ref = torch.linalg.eigh(g_ref)
        e_ref, v_ref = e_ref.flip(-1), v_ref.flip(-1)
        s_ref = e_ref.clamp_min(0).sqrt()
        xd = x.to(dev)
        res = {}
        res["gram fp64 (cast+GEMM)"] = (timed(lambda: (lambda y: y.mT @ y)(xd.double())), None)
        gd = (xd.double().mT @ xd.double())
        res["eigh fp64"] = (timed(lambda: torch.linalg.eigh(gd)), torch.linalg.eigh(gd)[1].flip(-1))
        res["eigh fp32"] = (timed(lambda: torch.linalg.eigh(gd.float())), torch.linalg.eigh(gd.float())[1].flip(-1))
        for drv in ("gesvda", "gesvdj", None):
            for dt in (torch.float64, torch.float32):
                gg = gd.to(dt)
                try:
                    t = timed(lambda: torch.linalg.svd(gg, full_matrices=False, driver=drv))
                    vv = torch.linalg.svd(gg, full_matrices=False, driver=drv)[2].mT
                    res[f"svd(G) {drv} {str(dt)[6:]}"] = (t, vv)
                except Exception as exc:  # noqa: BLE001
                    print("  failed", drv, dt, exc)
        lch = torch.linalg.cholesky(gd)
        res["cholesky fp64"] = (timed(lambda: torch.linalg.cholesky(gd)), None)
        for dt in (torch.float64, torch.float32):
            lt = lch.mT.contiguous().to(dt)
            t = timed(lambda: torch.linalg.svd(lt, full_matrices=False, driver="gesvda"))
            res[f"svd(chol^T) gesvda {str(dt)[6:]}"] = (t, torch.linalg.svd(lt, full_matrices=False,
                                                                             driver="gesvda")[2].mT)
        for dt in (torch.float64, torch.float32):
            xx = xd.to(dt)
            t = timed(lambda: torch.linalg.svd(xx, full_matrices=False, driver="gesvda"))
            res[f"svd(X tall) gesvda {str(dt)[6:]}"] = (t, torch.linalg.svd(xx, full_matrices=False,
                                                                             driver="gesvda")[2].mT)
        res["qr(X) fp32"] = (timed(lambda: torch.linalg.qr(xd)), None)
        res["geqrf(X) fp32"] = (timed(lambda: torch.geqrf(xd)), None)
        print(f"\nL={L} m={m} R={R} (cond 100)")
        for name, (t, vv) in res.items():
            err = "" if vv is None else "  max 1-|cos| %.1e  weighted %.1e" % subspace_err(vv, v_ref, s_ref)
            print(f"  {name:28s} {t:8.2f} ms{err}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
