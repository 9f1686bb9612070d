"""Matrix and kernel factorizations used by LowRankFactorization and DepthwiseSubstitution.

Everything is computed in float64 and cast back. ``whiten`` (a symmetric PSD input
covariance, or ``None``) makes a truncation minimise the *output* error on that input
distribution instead of the weight error: factor W·C^{1/2}, then undo C^{1/2} on the input side.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import minimize_scalar

RankMethod = Literal["rank", "rank_ratio", "energy", "param_ratio", "vbmf"]


@dataclass(frozen=True)
class RankRule:
    """How to pick a rank from singular values: a fixed rank, a ratio of the full rank, the
    energy kept, the fraction of the matrix's parameters kept (r·(a+b) = value·a·b), or VBMF."""

    method: RankMethod
    value: float = 0.0
    round_to: int = 1
    """Ranks are rounded up to a multiple of this (capped at the full rank): vector-friendly."""

    def pick(self, s: np.ndarray, shape: tuple[int, int]) -> int:
        rank = self._pick(s, shape)
        return min(len(s), math.ceil(rank / self.round_to) * self.round_to)

    def _pick(self, s: np.ndarray, shape: tuple[int, int]) -> int:
        full = len(s)
        if self.method == "rank":
            return max(1, min(int(self.value), full))
        if self.method == "rank_ratio":
            return max(1, min(full, math.ceil(self.value * full)))
        if self.method == "param_ratio":
            a, b = shape
            return max(1, min(full, int(self.value * a * b / (a + b))))
        if self.method == "energy":
            energy = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-300)
            return max(1, min(full, int(np.searchsorted(energy, self.value - 1e-12) + 1)))
        return max(1, vbmf_rank(s, shape))


def vbmf_rank(s: np.ndarray, shape: tuple[int, int]) -> int:
    """Rank chosen by empirical variational Bayesian matrix factorization (Nakajima et al.
    2013): the analytic global solution with the noise variance estimated by minimising the
    free energy; singular values above the resulting threshold are kept."""
    L, M = sorted(shape)
    alpha = L / M
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    s = np.asarray(s, dtype=np.float64)[:L]
    H = len(s)
    residual = 0.0  # s holds every singular value, so nothing lies outside the first H
    cut = max(0, min(math.ceil(L / (1 + alpha)) - 1, H) - 1)
    upper = (np.sum(s**2) + residual) / (L * M)
    tail = s[cut + 1 :] if cut + 1 < H else s[-1:]
    lower = max(s[min(cut + 1, H - 1)] ** 2 / (M * x_bar), float(np.mean(tail**2)) / M)

    def free_energy(sigma2: float) -> float:
        x = s**2 / (M * sigma2)
        big, small = x[x > x_bar], x[x <= x_bar]
        tau = 0.5 * (big - (1 + alpha) + np.sqrt((big - (1 + alpha)) ** 2 - 4 * alpha))
        return float(
            np.sum(small - np.log(small))
            + np.sum(big - tau)
            + np.sum(np.log((tau + 1) / big))
            + alpha * np.sum(np.log(tau / alpha + 1))
            + residual / (M * sigma2)
            + (L - H) * np.log(sigma2)
        )

    if lower >= upper:
        return H
    sigma2 = minimize_scalar(free_energy, bounds=(lower, upper), method="bounded").x
    threshold = math.sqrt(M * sigma2 * x_bar)
    return int(np.sum(s > threshold))


def thin_svd(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``u, s, vt`` of ``m`` (float64), from the eigendecomposition of the smaller Gram matrix.

    LAPACK's SVD of a 512 × 4608 float64 matrix takes 1–12 s on this machine; the Gram route
    takes well under a second and is accurate for the leading directions we keep. Results are
    memoised by content, so rank searches re-use them.
    """
    key = ("svd", *_content_key(m))
    if key not in _SVD_CACHE:
        if len(_SVD_CACHE) > 256:
            _SVD_CACHE.clear()
        _SVD_CACHE[key] = _gram_svd(m) if m.shape[0] <= m.shape[1] else _transposed(_gram_svd(m.T))
    return _SVD_CACHE[key]


_SVD_CACHE: dict = {}


@contextlib.contextmanager
def _one_thread():
    """Small dense eigenproblems run on one thread: with two threads on a busy 2-core machine,
    a 512×512 eigh took 10 s instead of 0.08 s (measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _gram_svd(m: np.ndarray):
    with _one_thread():
        w, u = torch.linalg.eigh(torch.from_numpy(m @ m.T))
    w, u = w.flip(0).clamp(min=0).numpy(), u.flip(1).numpy()
    s = np.sqrt(w)
    keep = s > s[0] * 1e-12 if len(s) else s > 0
    vt = np.zeros((len(s), m.shape[1]))
    vt[keep] = (u[:, keep].T @ m) / s[keep, None]
    return u, s, vt


def _transposed(usv):
    u, s, vt = usv
    return vt.T, s, u.T


def _content_key(m: np.ndarray) -> tuple:
    return m.shape, hashlib.blake2b(np.ascontiguousarray(m).tobytes(), digest_size=16).digest()


def sqrt_and_inverse(cov: np.ndarray, damping: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """C^{1/2} and C^{-1/2} of a covariance, damped by ``damping·mean(diag)`` for stability
    (memoised by content, like :func:`thin_svd`)."""
    key = ("sqrt", damping, *_content_key(cov))
    if key not in _SVD_CACHE:
        _SVD_CACHE[key] = _sqrt_and_inverse(cov, damping)
    return _SVD_CACHE[key]


def _sqrt_and_inverse(cov: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    d = cov.shape[0]
    cov = cov + damping * max(float(np.trace(cov)) / d, 1e-12) * np.eye(d)
    with _one_thread():
        w, v = torch.linalg.eigh(torch.from_numpy(cov))
    w, v = w.clamp(min=1e-12).numpy(), v.numpy()
    return (v * np.sqrt(w)) @ v.T, (v / np.sqrt(w)) @ v.T


@dataclass(frozen=True)
class TwoFactors:
    """W (out × in) ≈ left @ right, left: out × r, right: r × in."""

    left: np.ndarray
    right: np.ndarray

    @property
    def rank(self) -> int:
        return self.right.shape[0]


def svd_factors(w: np.ndarray, rule: RankRule, cov: np.ndarray | None = None) -> TwoFactors:
    """Truncated SVD of ``w`` (out × in), whitened by the input covariance when given."""
    if cov is None:
        u, s, vt = thin_svd(w)
        r = rule.pick(s, w.shape)
        return TwoFactors(u[:, :r] * s[:r], vt[:r])
    root, inv_root = sqrt_and_inverse(cov)
    u, s, vt = thin_svd(w @ root)
    r = rule.pick(s, w.shape)
    return TwoFactors(u[:, :r] * s[:r], vt[:r] @ inv_root)


def leading_basis(m: np.ndarray, rule: RankRule) -> np.ndarray:
    """The top left singular vectors of ``m`` (rows × cols), as many as ``rule`` picks."""
    u, s, _ = thin_svd(m)
    return u[:, : rule.pick(s, m.shape)]


def tucker2(w: np.ndarray, rule: RankRule, cov: np.ndarray | None = None):
    """HOSVD of a kernel (N, C, kh, kw) over its two channel modes.

    Returns ``(first, core, last)``: first (r1, C) maps input channels, core (r2, r1, kh, kw),
    last (N, r2). With an input-channel covariance the C mode is found in whitened space.
    """
    n, c = w.shape[:2]
    root, inv_root = sqrt_and_inverse(cov) if cov is not None else (np.eye(c), np.eye(c))
    ww = np.einsum("nchw,cd->ndhw", w, root, optimize=True)  # W in whitened input coordinates
    out_basis = leading_basis(ww.reshape(n, -1), rule)  # N × r2
    in_basis = leading_basis(ww.transpose(1, 0, 2, 3).reshape(c, -1), rule)  # C × r1
    core = np.einsum("ndhw,nr,ds->rshw", ww, out_basis, in_basis, optimize=True)
    return in_basis.T @ inv_root, core, out_basis


def spatial_factors(w: np.ndarray, rule: RankRule) -> tuple[np.ndarray, np.ndarray]:
    """W (N, C, kh, kw) ≈ horizontal ∘ vertical (Jaderberg et al. 2014).

    Returns vertical (r, C, kh, 1) and horizontal (N, r, 1, kw) kernels.
    """
    n, c, kh, kw = w.shape
    m = w.transpose(1, 2, 0, 3).reshape(c * kh, n * kw)  # rows (c, i), columns (n, j)
    factors = svd_factors(m.T, rule)  # (n, j) × (c, i)
    r = factors.rank
    vertical = factors.right.reshape(r, c, kh)[..., None]
    horizontal = factors.left.reshape(n, kw, r).transpose(0, 2, 1)[:, :, None, :]
    return vertical, horizontal


def depthwise_factors(w: np.ndarray, multiplier: int) -> tuple[np.ndarray, np.ndarray]:
    """W (N, C, kh, kw) ≈ pointwise ∘ depthwise, channel by channel: the slice W[:, c]
    (N × kh·kw) is replaced by its best rank-m approximation, which is exactly m depthwise
    filters followed by a pointwise mix. Returns depthwise (C·m, 1, kh, kw), pointwise (N, C·m).
    """
    n, c, kh, kw = w.shape
    m = multiplier
    depthwise = np.zeros((c * m, kh * kw))
    pointwise = np.zeros((n, c * m))
    for channel in range(c):
        u, s, vt = np.linalg.svd(w[:, channel].reshape(n, kh * kw), full_matrices=False)  # small
        r = min(m, len(s))
        depthwise[channel * m : channel * m + r] = vt[:r]
        pointwise[:, channel * m : channel * m + r] = u[:, :r] * s[:r]
    return depthwise.reshape(c * m, 1, kh, kw), pointwise


def as_param(array: np.ndarray, like: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.as_tensor(np.ascontiguousarray(array), dtype=like.dtype))
