"""Derive the approximation coefficients of ``xseq/ops/native/vecmath.h`` (a tool, not a test).

Prints each coefficient set as the header writes it (hexadecimal floating point, rounded to the
type it is used in) with the largest error of the approximation before rounding:

* ``expm1 float`` / ``expm1 double`` / ``expm1 float short``: ``P`` of degree 5 / 10 / 4 with
  ``expm1(r) ~ r + r^2 P(r)`` on ``|r| <= 0.3467`` (just over ln(2) / 2), minimax in the absolute
  error of ``P`` (Remez exchange, 60 digits);
* ``tanh double``: ``P`` of degree 10 with ``tanh(a) ~ a + a^3 P(a^2)`` on ``0 <= a <= 0.5493``;
* ``tanh float``: ``M`` of degree 1 and ``Q`` of degree 2 (``Q(0) = 1``) with
  ``(1 - tanh(a) / a) / a^2 ~ M(s) / Q(s)``, ``s = a^2``, on ``0 <= a <= 1``, minimax in the
  relative error (Loeb's linearisation with Lawson's reweighting on a dense grid).

Needs mpmath (installed with sympy/torch; ``pip install mpmath``). Takes about a minute::

    python tests/native/vecmath_coefficients.py
"""

from __future__ import annotations

import struct

import mpmath as mp
import numpy as np
from numpy.polynomial import chebyshev, polynomial

mp.mp.dps = 60


def remez(f, degree, lo, hi, iterations=30, grid=4000):
    """Minimax polynomial (coefficients, lowest first) of ``degree`` for ``f`` on ``[lo, hi]``, and its error."""
    n = degree + 1
    xs = sorted((lo + hi) / 2 + (hi - lo) / 2 * mp.cos(mp.pi * i / n) for i in range(n + 1))
    coefficients, worst = None, None
    for _ in range(iterations):
        a = mp.matrix(n + 1, n + 1)
        b = mp.matrix(n + 1, 1)
        for i, x in enumerate(xs):
            for j in range(n):
                a[i, j] = x**j
            a[i, n] = (-1) ** i
            b[i] = f(x)
        solution = mp.lu_solve(a, b)
        coefficients = [solution[j] for j in range(n)]
        points = [lo + (hi - lo) * mp.mpf(i) / grid for i in range(grid + 1)]
        errors = [mp.polyval(coefficients[::-1], x) - f(x) for x in points]
        extrema = [(points[i], v) for i, v in enumerate(errors)
                   if (i == 0 or abs(v) >= abs(errors[i - 1])) and (i == grid or abs(v) >= abs(errors[i + 1]))]
        alternating = []
        for x, v in extrema:
            if alternating and mp.sign(alternating[-1][1]) == mp.sign(v):
                if abs(v) > abs(alternating[-1][1]):
                    alternating[-1] = (x, v)
            else:
                alternating.append((x, v))
        while len(alternating) > n + 1:
            alternating.pop(0 if abs(alternating[0][1]) < abs(alternating[-1][1]) else -1)
        worst = max(abs(v) for v in errors)
        if len(alternating) < n + 1:
            break
        xs = [x for x, _ in alternating]
    return coefficients, worst


def expm1_tail(r):
    """(expm1(r) - r) / r^2, the function P approximates."""
    return mp.mpf(1) / 2 if abs(r) < mp.mpf("1e-30") else (mp.expm1(r) - r) / r**2


def tanh_tail(s):
    """(tanh(a) / a - 1) / s for s = a^2."""
    if s < mp.mpf("1e-40"):
        return -mp.mpf(1) / 3
    a = mp.sqrt(s)
    return (mp.tanh(a) / a - 1) / s


def rational(g, m_degree, q_degree, s_max, outer=25, inner=150):
    """Minimax-relative M / Q (Q(0) = 1) for samples g(s) on [0, s_max]: monomial coefficients and the error."""
    a = np.unique(np.concatenate([np.linspace(1e-3, np.sqrt(s_max), 20000), np.geomspace(1e-4, np.sqrt(s_max), 2000)]))
    s = a * a
    target = np.array([g(v) for v in s])
    t = 2 * s / s_max - 1
    basis_m = np.stack([chebyshev.chebval(t, np.eye(m_degree + 1)[j]) for j in range(m_degree + 1)], 1)
    basis_q = np.stack([chebyshev.chebval(t, np.eye(q_degree + 1)[j]) for j in range(q_degree + 1)], 1)
    previous_q, best = np.ones_like(s), None
    for _ in range(outer):
        weights = np.ones_like(s)
        for _ in range(inner):
            w = weights / (target * previous_q)
            a_mat = np.hstack([basis_m * w[:, None], -basis_q[:, 1:] * (target * w)[:, None]])
            solution, *_ = np.linalg.lstsq(a_mat, target * w * basis_q[:, 0], rcond=None)
            m = solution[: m_degree + 1]
            q = np.concatenate([[1.0], solution[m_degree + 1:]])
            values_q = basis_q @ q
            error = np.abs((basis_m @ m / values_q - target) / target)
            weights = weights * error
            weights /= weights.sum()
        previous_q = values_q
        if best is None or error.max() < best[0]:
            best = (error.max(), m, q)

    def monomials(c):
        in_t = chebyshev.cheb2poly(c)
        out = np.zeros(len(in_t))
        for k, ck in enumerate(in_t):
            out[: k + 1] += ck * polynomial.polypow([-1.0, 2 / s_max], k)
        return out

    m, q = monomials(best[1]), monomials(best[2])
    return m / q[0], q / q[0], best[0]


def as_float(v):
    return struct.unpack("f", struct.pack("f", float(v)))[0]


def show(name, coefficients, error, single):
    print(f"{name}: max error {mp.nstr(mp.mpf(error), 3)}")
    for c in coefficients:
        print("   ", as_float(c).hex().replace("0000000p", "p") + "f" if single else float(c).hex())


def main():
    r = mp.mpf("0.3467")
    for name, degree, single in (("expm1 float", 5, True), ("expm1 double", 10, False), ("expm1 float short", 4, True)):
        coefficients, error = remez(expm1_tail, degree, -r, r)
        show(name + " (P, lowest first)", coefficients, error, single)
    coefficients, error = remez(tanh_tail, 10, mp.mpf(0), mp.mpf("0.5493") ** 2, grid=3000)
    show("tanh double (P in s, lowest first)", coefficients, error, False)
    g = lambda s: float((1 - mp.tanh(mp.sqrt(s)) / mp.sqrt(s)) / s)  # noqa: E731
    m, q, error = rational(g, 1, 2, 1.0)
    show("tanh float M (lowest first), relative", m, error, True)
    show("tanh float Q (lowest first)", q, error, True)


if __name__ == "__main__":
    main()
