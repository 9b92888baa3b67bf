"""Student's t distribution: its CDF and quantiles, for the summary's confidence
interval and one-sided t-test. scipy is not a dependency, and these few lines are
all the summary needs.

The CDF comes from the regularized incomplete beta function I_x(a, b):
    P(T <= t) = 1 - I_x(df/2, 1/2) / 2  for t >= 0, where x = df / (df + t^2),
and P(T <= t) = 1 - P(T <= -t) for t < 0. I_x(a, b) is the front factor
x^a (1-x)^b / (a B(a, b)) divided by the continued fraction 1 + d1/(1 + d2/(1 + ...)),
    d(2m+1) = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)),   d(2m) = m(b-m) x / ((a+2m-1)(a+2m)),
evaluated by the modified Lentz method. The fraction converges fast for
x < (a+1)/(a+b+2); above that, I_x(a, b) = 1 - I_(1-x)(b, a) is used instead.
Quantiles invert the CDF by bisection.
"""
from __future__ import annotations

import math

TINY = 1e-300           # keeps Lentz's denominators away from zero
TOLERANCE = 1e-15
MAX_TERMS = 1000


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for 0 <= x <= 1 and a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    return math.exp(log_front) / (a * _continued_fraction(x, a, b))


def _continued_fraction(x: float, a: float, b: float) -> float:
    """1 + d1/(1 + d2/(1 + ...)) by the modified Lentz method."""
    def coefficients():
        yield -(a + b) * x / (a + 1.0)                                         # d1 (m = 0)
        for m in range(1, MAX_TERMS):
            yield m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))          # d(2m)
            yield -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))   # d(2m+1)

    value, c, d = 1.0, 1.0, 0.0
    for coefficient in coefficients():
        d = 1.0 + coefficient * d
        d = 1.0 / (d if abs(d) > TINY else TINY)
        c = 1.0 + coefficient / c
        c = c if abs(c) > TINY else TINY
        value *= c * d
        if abs(c * d - 1.0) < TOLERANCE:
            break
    return value


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df > 0)."""
    if math.isnan(t):
        return math.nan
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)     # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for 0 < p < 1 (bisection on the upper tail, which keeps
    its precision where the CDF is flat near 1/2)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    tail = min(p, 1.0 - p)                      # P(T > |t|) wanted
    low, high = 0.0, 1.0
    while t_cdf(-high, df) > tail:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(-middle, df) > tail else (low, middle)
    t = 0.5 * (low + high)
    return t if p >= 0.5 else -t
