"""Contrasts between cells: mean difference with a 95% CI, paired over seeds where both cells ran the same seeds
(Welch's unequal-variance t otherwise), Holm's adjustment over a report's family of contrasts, a verdict in words
and, where the data do not resolve a difference, about how many seeds per cell would.

Written by hand (on scipy's t distribution) because what a report needs is the combination: per-seed pairing
decided from the data, Holm over every contrast a report states, and a seeds-to-resolve estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional


ALPHA = 0.05  # family-wise, over the contrasts of one report (Holm)
POWER = 0.8  # for the seeds-to-resolve estimate
MIN_SEEDS = 3  # below this a cell's evidence is thin


@dataclass
class Contrast:
    label: str
    a: str  # what is compared (display names)
    b: str
    kind: str  # "paired", "welch" or "too few seeds"
    n_a: int
    n_b: int
    diff: float  # mean(a) - mean(b); NaN when a side has no value
    ci_lo: float = math.nan
    ci_hi: float = math.nan
    p: float = math.nan
    p_holm: float = math.nan
    seeds_needed: Optional[int] = None  # per cell, to resolve a difference of the observed size
    tags: Dict[str, object] = field(default_factory=dict)

    @property
    def resolved(self) -> bool:
        return not math.isnan(self.p_holm) and self.p_holm < ALPHA

    @property
    def verdict(self) -> str:
        if self.resolved:
            return f"{self.a} > {self.b}" if self.diff > 0 else f"{self.a} < {self.b}"
        return "not resolved"

    @property
    def wider_than_effect(self) -> bool:
        """The 95% CI's half-width exceeds the difference it estimates (or there is no CI)."""
        if math.isnan(self.ci_lo):
            return True
        return (self.ci_hi - self.ci_lo) / 2 > abs(self.diff)


def _t():
    """Student's t distribution (scipy, imported when a statistic is computed: a launch's summary stays light)."""
    from scipy import stats

    return stats.t


def t_ci95(values: List[float]) -> float:
    """Half-width of the Student-t 95% confidence interval of the mean (nan for n < 2)."""
    n = len(values)
    if n < 2:
        return math.nan
    return float(_t().ppf(0.975, n - 1) * _std(values) / math.sqrt(n))


def _std(values) -> float:
    import numpy as np  # the summation order pandas uses, so that reports repeat to the last digit

    return float(np.std(np.asarray(values, dtype=float), ddof=1))


def describe(values: List[float]) -> Dict[str, float]:
    """mean, std (n - 1), n and the Student-t 95% CI half-width of some values (nan where undefined)."""
    import numpy as np

    values = [float(v) for v in values]
    return {"mean": float(np.mean(np.asarray(values))) if values else math.nan,
            "std": _std(values) if len(values) > 1 else math.nan, "n": len(values), "ci95": t_ci95(values)}


def _t_seeds_needed(effect: float, sd: float, paired: bool, limit: int = 1000) -> Optional[int]:
    """Smallest n per cell with power POWER to detect `effect` at level ALPHA (two-sided t test)."""
    if effect == 0 or math.isnan(effect) or math.isnan(sd):
        return None
    if sd == 0:
        return 2
    for n in range(2, limit + 1):
        df = n - 1 if paired else 2 * n - 2
        se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
        if abs(effect) / se >= _t().ppf(1 - ALPHA / 2, df) + _t().ppf(POWER, df):
            return n
    return limit


def compare(a: Dict[int, float], b: Dict[int, float], label: str = "", name_a: str = "A", name_b: str = "B",
            **tags) -> Contrast:
    """Contrast of two cells' per-seed values ({seed: value}). Paired over seeds when both cells ran exactly
    the same seeds (at least two); Welch otherwise (at least two seeds each); else too few to test."""
    va, vb = list(a.values()), list(b.values())
    c = Contrast(label, name_a, name_b, "too few seeds", len(va), len(vb),
                 (sum(va) / len(va) - sum(vb) / len(vb)) if va and vb else math.nan, tags=tags)
    if set(a) == set(b) and len(a) >= 2:
        d = [a[s] - b[s] for s in sorted(a)]
        n = len(d)
        mean = sum(d) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        c.kind, c.diff = "paired", mean
        if sd == 0:
            c.ci_lo = c.ci_hi = mean
            c.p = 0.0 if mean != 0 else 1.0
        else:
            se = sd / math.sqrt(n)
            half = _t().ppf(1 - ALPHA / 2, n - 1) * se
            c.ci_lo, c.ci_hi = mean - half, mean + half
            c.p = float(2 * _t().sf(abs(mean) / se, n - 1))
        c.seeds_needed = _t_seeds_needed(mean, sd, paired=True)
    elif len(va) >= 2 and len(vb) >= 2:
        na, nb = len(va), len(vb)
        ma, mb = sum(va) / na, sum(vb) / nb
        sa2 = sum((x - ma) ** 2 for x in va) / (na - 1)
        sb2 = sum((x - mb) ** 2 for x in vb) / (nb - 1)
        c.kind = "welch"
        se2 = sa2 / na + sb2 / nb
        if se2 == 0:
            c.ci_lo = c.ci_hi = c.diff
            c.p = 0.0 if c.diff != 0 else 1.0
        else:
            df = se2 ** 2 / ((sa2 / na) ** 2 / (na - 1) + (sb2 / nb) ** 2 / (nb - 1))
            se = math.sqrt(se2)
            half = _t().ppf(1 - ALPHA / 2, df) * se
            c.ci_lo, c.ci_hi = c.diff - half, c.diff + half
            c.p = float(2 * _t().sf(abs(c.diff) / se, df))
        c.seeds_needed = _t_seeds_needed(c.diff, math.sqrt((sa2 + sb2) / 2), paired=False)
    return c


def holm(contrasts: List[Contrast]) -> List[Contrast]:
    """Holm's step-down adjustment over every contrast with a p-value (in place; returned for chaining)."""
    tested = sorted((c for c in contrasts if not math.isnan(c.p)), key=lambda c: c.p)
    m, running = len(tested), 0.0
    for i, c in enumerate(tested):
        running = max(running, min(1.0, (m - i) * c.p))
        c.p_holm = running
    return contrasts


def seeds_text(c: Contrast, have: int) -> str:
    if c.resolved:
        return ""
    if c.seeds_needed is None:
        return "no difference observed" if c.diff == 0 else "needs ≥ 2 seeds per cell to estimate"
    if c.seeds_needed <= have:  # power is not a promise: the estimate says this n should have sufficed
        return f"≈ {c.seeds_needed} (already reached: the difference may be smaller than observed)"
    return f"≈ {c.seeds_needed} per cell" if c.seeds_needed < 1000 else "> 1000 per cell"
