"""Batched linear-algebra primitives shared by the spaces, Pico and the methods.

Every function takes a leading batch of modules with equal shapes (..., m, k). Tall-and-skinny SVDs go through a
QR first and a small k x k SVD in float64 (spec hint: the SVD of stacked LoRA factors is cheap through its R factor),
so the cost is O(m k^2) in the working dtype plus a float64 problem of size k that is exact to float64 precision.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

SMALL = 256  # LAPACK calls on matrices up to this size run single-threaded on the CPU (see lapack_threads)


@contextmanager
def lapack_threads(x: torch.Tensor, size: int | None = None):
    """Run the enclosed CPU factorizations of small matrices on one thread.

    LAPACK's threading gains nothing on k x k problems with k in the low hundreds, and on a busy machine its
    OpenMP barriers cost 10-30x (measured: 32 SVDs of 128 x 128 in float64 took 0.09 s on one thread and 2.7 s
    on two, on a 2-core machine with other load). Larger problems and CUDA tensors keep the configured threads.
    """
    size = min(x.shape[-2:]) if size is None else size
    if x.is_cuda or size > SMALL or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def single_thread(enabled: bool = True):
    """Run the enclosed CPU work on one thread: for phases made of many small tensor operations (reads, R x R
    algebra), where each parallel region is too small to gain from threads and, on a machine with other load,
    OpenMP's barriers cost milliseconds apiece (measured on a busy 2-core machine: a core-space merge of 4 Llama-8B
    layers took 17 s with two threads, 2.7 s with one)."""
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def small_svd(x: torch.Tensor, top: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of small matrices in float64 (k x k after a QR), returned in the input dtype.

    CPU: LAPACK (single-threaded for small k). CUDA: cuSOLVER's batched ``gesvda``, checked matrix by matrix against
    the float64 input (``svd_error``); the few that miss ``GESVDA_TOL`` are solved again with the default driver.
    ``top``: the caller uses only the leading ``top`` singular triplets (all singular values always), so only those
    are checked: gesvda's vectors for (near-)zero singular values are not reliable, and a rank-r core of TSV needs
    only its r leading ones.
    """
    if x.is_cuda and CHECKED_GESVDA:
        u, s, vh = checked_svd(x.double(), top)
    elif x.is_cuda:
        u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    else:
        with lapack_threads(x):
            u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u.to(x.dtype), s.to(x.dtype), vh.to(x.dtype)


CHECKED_GESVDA = True  # False: CUDA small SVDs by the default driver, psd_eig by unchecked gesvda (for comparison)
GESVDA_TOL = 1e-11  # largest residual/orthonormality error accepted from gesvda, relative to the top singular value
# what checked_svd did since the start (largest finite error seen): reported by bench/gpu_check.py
GESVDA_STATS = {"calls": 0, "matrices": 0, "fallbacks": 0, "raised": 0, "max_error": 0.0}


def svd_error(x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, top: int | None = None
              ) -> torch.Tensor:
    """How far (u, s, vh) is from a thin SVD of x, per matrix of the batch, relative to the largest singular value:
    the largest of the residuals ||X v_j - s_j u_j||, ||X^T u_j - s_j v_j|| (j < top), the orthonormality errors of
    those u_j and v_j, the sum of s_j^2 against ||X||_F^2, and any ascent in s. inf where anything is not finite
    (a zero matrix, too: its vectors are arbitrary)."""
    k = s.shape[-1] if top is None else min(top, s.shape[-1])
    uk, sk, vk = u[..., :k], s[..., :k], vh[..., :k, :].mT
    scale = s[..., :1]  # (..., 1)
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    parts = [
        (x @ vk - uk * sk.unsqueeze(-2)).norm(dim=-2).amax(-1, keepdim=True) / scale,
        (x.mT @ uk - vk * sk.unsqueeze(-2)).norm(dim=-2).amax(-1, keepdim=True) / scale,
        (uk.mT @ uk - eye).abs().amax((-2, -1)).unsqueeze(-1),
        (vk.mT @ vk - eye).abs().amax((-2, -1)).unsqueeze(-1),
        (s.square().sum(-1, keepdim=True) / x.square().sum((-2, -1)).unsqueeze(-1) - 1).abs(),
        (s[..., 1:] - s[..., :-1]).clamp_min(0).amax(-1, keepdim=True) / scale if s.shape[-1] > 1 else 0 * scale,
    ]
    err = torch.cat(parts, dim=-1).amax(-1)
    finite = torch.isfinite(s).all(-1) & torch.isfinite(uk).all(-1).all(-1) & torch.isfinite(vk).all(-1).all(-1)
    return torch.where(finite & torch.isfinite(err), err, torch.full_like(err, float("inf")))


def checked_svd(x: torch.Tensor, top: int | None = None, *, fast=None, safe=None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD by ``fast`` (default: cuSOLVER's gesvda), with every matrix whose ``svd_error`` exceeds
    ``GESVDA_TOL`` solved again by ``safe`` (default: torch's default driver). When ``fast`` raises (torch raises for
    the whole batch if gesvda did not converge on one matrix), the batch is bisected (``_fast_parts``) and only the
    parts that still raise are solved by ``safe``, in the same call as the matrices that missed the check. One host
    sync per call, plus one per call of ``fast`` that raised."""
    fast = fast or (lambda a: torch.linalg.svd(a, full_matrices=False, driver="gesvda"))
    safe = safe or (lambda a: torch.linalg.svd(a, full_matrices=False))
    batch, (m, n) = x.shape[:-2], x.shape[-2:]
    xf = x.reshape(-1, m, n)
    GESVDA_STATS["calls"] += 1
    GESVDA_STATS["matrices"] += xf.shape[0]
    u, s, vh = _fast_parts(xf, fast, BISECT_DEPTH)
    err = svd_error(xf, u, s, vh, top)  # inf for the parts that raised (NaN)
    bad = err > GESVDA_TOL
    finite_err = torch.where(torch.isfinite(err), err, torch.zeros_like(err))
    count, worst = torch.stack([bad.sum().to(err.dtype), finite_err.amax()]).tolist()
    GESVDA_STATS["fallbacks"] += int(count)
    GESVDA_STATS["max_error"] = max(GESVDA_STATS["max_error"], worst)
    if count:
        idx = bad.nonzero().squeeze(-1)
        u2, s2, vh2 = safe(xf[idx])
        u, s, vh = u.clone(), s.clone(), vh.clone()
        u[idx], s[idx], vh[idx] = u2, s2, vh2
    p = s.shape[-1]
    return u.reshape(*batch, m, p), s.reshape(*batch, p), vh.reshape(*batch, p, n)


BISECT_DEPTH = 5  # a raising batch is halved at most this often: <= 62 more calls of fast, parts of >= 1/32 of it


def _fast_parts(x: torch.Tensor, fast, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fast`` on a flat batch x; if it raises, on each half again (``depth`` levels at most). A part that raises
    at the last level, or a single matrix that raises, comes back as NaN, which ``svd_error`` rates inf."""
    try:
        return fast(x)
    except RuntimeError:  # torch raises (LinAlgError) when gesvda reports a matrix it did not converge on
        GESVDA_STATS["raised"] += 1
    if depth == 0 or x.shape[0] == 1:
        (count, m, n), p, nan = x.shape, min(x.shape[-2:]), float("nan")
        return x.new_full((count, m, p), nan), x.new_full((count, p), nan), x.new_full((count, p, n), nan)
    half = (x.shape[0] + 1) // 2
    first, second = _fast_parts(x[:half], fast, depth - 1), _fast_parts(x[half:], fast, depth - 1)
    return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]), torch.cat([first[2], second[2]])


def lowrank_svd(left: torch.Tensor, right: torch.Tensor, top: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of the products X = left @ right of low-rank factors, left (..., p, r) and right (..., r, q), from
    the factors alone: with QRs left = Q_l R_l and right^T = Q_r R_r, X = Q_l (R_l R_r^T) Q_r^T, so the SVD
    R_l R_r^T = U_s diag(s) V_s^T of a k_l x k_r matrix (k_l = min(p, r), k_r = min(q, r); ``small_svd``) gives
    U = Q_l U_s and V = Q_r V_s. Returns U (..., p, k), s (..., k), Vh (..., k, q), k = min(p, q, r), in left's dtype
    (computed in float64): the SVD of X to float64 rounding whatever X's rank (the columns past it are an orthonormal
    completion inside span(left) and span(right^T)), and never a decomposition of a p x q matrix.

    Q_l and Q_r are applied from geqrf's Householder reflectors (``_apply_q``) rather than formed by
    torch.linalg.qr, whose CUDA orgqr is one cuSOLVER call per matrix; on CUDA, torch's geqrf of a batch of
    matrices with up to 256 rows is one batched cuBLAS call. ``top``: as in ``small_svd``.
    """
    dtype = left.dtype
    left, right = left.double(), right.double()
    with lapack_threads(left, size=left.shape[-1]):
        a_l, tau_l = torch.geqrf(left)
        a_r, tau_r = torch.geqrf(right.mT)
    k_l, k_r = tau_l.shape[-1], tau_r.shape[-1]
    small = a_l[..., :k_l, :].triu() @ a_r[..., :k_r, :].triu().mT  # R_l R_r^T
    u, s, vh = small_svd(small, top)
    return _apply_q(a_l, tau_l, u).to(dtype), s.to(dtype), _apply_q(a_r, tau_r, vh.mT).mT.to(dtype)


def _apply_q(a: torch.Tensor, tau: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Q z for the thin Q (..., p, k) of a QR by ``torch.geqrf`` (a, tau) and z (..., k, c). Q = H_0 ... H_{k-1},
    H_j = I - tau_j v_j v_j^T with v_j = (0, .., 0, 1, a[j+1:, j]) (LAPACK's convention), in LAPACK's compact WY form
    Q = I - V T V^T (T upper triangular, built column by column as dlarft does), so Q [z; 0] is three products."""
    p, k = a.shape[-2], tau.shape[-1]
    v = a[..., :k].tril(-1) + torch.eye(p, k, dtype=a.dtype, device=a.device)
    g = v.mT @ v
    t = torch.zeros_like(g)
    for i in range(k):  # T[:i, i] = -tau_i T[:i, :i] V[:, :i]^T v_i; elementwise (no k tiny matmuls per matrix)
        t[..., :i, i] = -tau[..., i, None] * (t[..., :i, :i] * g[..., None, :i, i]).sum(-1)
        t[..., i, i] = tau[..., i]
    y = -(v @ (t @ (v[..., :k, :].mT @ z)))
    y[..., :k, :] += z
    return y


CHUNK = 1024  # rows of float64 scratch per step in the chunked CPU products below (about a megabyte per module)


def gram(x: torch.Tensor, *, wide: bool = False) -> torch.Tensor:
    """X^T X of a batch of tall (..., m, k) matrices, or X X^T of wide (..., k, n) ones with ``wide``, in float64:
    exact products of float32 inputs, rounding at 1e-16.

    On the CPU, X (float32) is widened chunk by chunk (along its long dimension, in memory order) into a small
    float64 scratch buffer and the partial Grams are summed in float64: no float64 copy of X is ever allocated (page
    faults and memory traffic for gigabytes at Llama-8B scale), and the result differs from one big product only
    by float64 rounding. On a GPU: one product.
    """
    long, k = (x.shape[-1], x.shape[-2]) if wide else (x.shape[-2], x.shape[-1])
    if x.is_cuda or long <= CHUNK:
        x = x.double()
        return x @ x.mT if wide else x.mT @ x
    g = torch.zeros(*x.shape[:-2], k, k, dtype=torch.float64)
    scratch = torch.empty(*x.shape[:-2], *((k, CHUNK) if wide else (CHUNK, k)), dtype=torch.float64)
    for i in range(0, long, CHUNK):
        n = min(CHUNK, long - i)
        if wide:
            c = scratch if n == CHUNK else torch.empty(*x.shape[:-2], k, n, dtype=torch.float64)
            c.copy_(x[..., i:i + n])
            g += c @ c.mT
        else:
            c = scratch[..., :n, :]
            c.copy_(x[..., i:i + n, :])
            g += c.mT @ c
    return g


def mul64(x: torch.Tensor, w: torch.Tensor, *, left: bool = False, dtype: torch.dtype = torch.float32
          ) -> torch.Tensor:
    """x @ w, or w @ x with ``left``, in float64 arithmetic: x tall (..., m, k) (wide (..., k, n) with ``left``) of
    any float dtype, w small and float64; the result in ``dtype``. On the CPU in chunks of x's long dimension
    through float64 scratch buffers (see ``gram``): each output entry is the same float64 dot product as in one
    big product. On a GPU: one product."""
    long = x.shape[-1] if left else x.shape[-2]
    if x.is_cuda or long <= CHUNK:
        return ((w @ x.double()) if left else (x.double() @ w)).to(dtype)
    lead = x.shape[:-2]
    if left:
        out = torch.empty(*lead, w.shape[-2], long, dtype=dtype)
        scratch = torch.empty(*lead, x.shape[-2], CHUNK, dtype=torch.float64)
        prod = torch.empty(*lead, w.shape[-2], CHUNK, dtype=torch.float64)
    else:
        out = torch.empty(*lead, long, w.shape[-1], dtype=dtype)
        scratch = torch.empty(*lead, CHUNK, x.shape[-1], dtype=torch.float64)
        prod = torch.empty(*lead, CHUNK, w.shape[-1], dtype=torch.float64)
    for i in range(0, long, CHUNK):
        n = min(CHUNK, long - i)
        if left:
            c = scratch if n == CHUNK else torch.empty(*lead, x.shape[-2], n, dtype=torch.float64)
            c.copy_(x[..., i:i + n])
            p = prod if n == CHUNK else torch.empty(*lead, w.shape[-2], n, dtype=torch.float64)
            torch.matmul(w, c, out=p)
            out[..., i:i + n] = p
        else:
            c = scratch if n == CHUNK else torch.empty(*lead, n, x.shape[-1], dtype=torch.float64)
            c.copy_(x[..., i:i + n, :])
            p = prod if n == CHUNK else torch.empty(*lead, n, w.shape[-1], dtype=torch.float64)
            torch.matmul(c, w, out=p)
            out[..., i:i + n, :] = p
    return out


def canonical_signs(v: torch.Tensor) -> torch.Tensor:
    """Flip each column of v so that its largest-magnitude entry is positive: eigenvectors and singular vectors are
    defined up to sign, and backends (LAPACK, cuSOLVER) choose differently. Fixing the sign makes outputs that
    depend on it (the A' factor of a core-space merge) the same on every device."""
    idx = v.abs().argmax(-2, keepdim=True)
    sign = v.gather(-2, idx).sign()
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


def psd_eig(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of symmetric positive semi-definite matrices (..., k, k): eigenvalues in descending order
    (clamped at 0) and canonically signed eigenvectors (columns), in g's dtype.

    CPU: LAPACK's syevd, single-threaded for small k. CUDA: cuSOLVER's batched ``gesvda`` on the matrix itself
    (for a PSD matrix the singular values are the eigenvalues and the right singular vectors the eigenvectors),
    checked as in ``small_svd``; a matrix that misses the check is solved again by ``eigh``. Measured on an H100 for
    32 problems of 128 x 128 in float64: gesvda 1.2 ms, eigh 53 ms, the default SVD driver 146 ms, and gesvda's
    eigenvectors agreed with LAPACK's float64 ones to 2e-15 (bench/probe_small_svd.py).
    """
    if g.is_cuda:  # checked like small_svd: for a PSD matrix, (V, e, V^T) is its SVD
        _, e, vh = checked_svd(g, fast=_psd_gesvda, safe=_psd_eigh) if CHECKED_GESVDA else _psd_gesvda(g)
        v = vh.mT
    else:
        with lapack_threads(g):
            e, v = torch.linalg.eigh(g)
        e, v = e.flip(-1), v.flip(-1)
    return e.clamp_min(0), canonical_signs(v)


def _psd_gesvda(g):
    _, e, vh = torch.linalg.svd(g, full_matrices=False, driver="gesvda")
    return vh.mT, e, vh  # (V, e, V^T): what svd_error checks against g


def _psd_eigh(g):
    e, v = torch.linalg.eigh(g)
    e, v = e.flip(-1), v.flip(-1)
    return v, e, v.mT


def thin_svd(x: torch.Tensor, top: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD X = U diag(S) Vh of a batch of matrices (..., m, k), via QR when X is tall. ``top``: only the
    leading ``top`` singular vectors will be used (see ``small_svd``)."""
    m, k = x.shape[-2:]
    if m > k:
        q, r = torch.linalg.qr(x)
        u, s, vh = small_svd(r, top)
        return q @ u, s, vh
    if k > m:
        u, s, vh = thin_svd(x.mT, top)
        return vh.mT, s, u.mT
    return small_svd(x, top)


def polar(x: torch.Tensor) -> torch.Tensor:
    """Nearest matrix with orthonormal columns (Procrustes): U Vh of the thin SVD."""
    u, _, vh = thin_svd(x)
    return u @ vh


def frob_norm_of_product(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """||B A||_F without forming B A: sqrt(<B^T B, A A^T>), batched over leading dims."""
    gram = ((b.mT @ b) * (a @ a.mT)).sum((-2, -1))
    return gram.clamp_min(0).sqrt()


def energy_share(s: torch.Tensor) -> torch.Tensor:
    """c_k = s_k^2 / sum_j s_j^2 (denominator clamped at 1e-12, as in the official Pico code)."""
    energy = s.square()
    return energy / energy.sum(-1, keepdim=True).clamp_min(1e-12)


def subspace_overlap(bases: list[torch.Tensor]) -> torch.Tensor:
    """Mean over task pairs of ||Q_t^T Q_u||_F^2 / min(r_t, r_u): 1 = same subspace, ~r/m = unrelated.

    ``bases`` are orthonormal column bases (..., m, r_t); returns one value per batch entry.
    """
    pairs = [(t, u) for t in range(len(bases)) for u in range(t + 1, len(bases))]
    if not pairs:
        return torch.ones(bases[0].shape[:-2], dtype=bases[0].dtype, device=bases[0].device)
    total = 0
    for t, u in pairs:
        total = total + (bases[t].mT @ bases[u]).square().sum((-2, -1)) / min(bases[t].shape[-1], bases[u].shape[-1])
    return total / len(pairs)
