"""reports.stats and reports.contrasts on crafted values with known answers: paired and Welch contrasts against
scipy, Holm's adjustment by hand, resolved and unresolved verdicts, seeds to resolve, the thin-evidence banner."""
import math

import pandas as pd
import pytest
from scipy import stats

from reports.contrasts import Family, banner
from reports.stats import compare, holm


def test_paired_contrast_matches_scipy_and_is_resolved():
    a, b = {0: 0.80, 1: 0.84, 2: 0.83}, {0: 0.70, 1: 0.75, 2: 0.72}
    c = compare(a, b, "A vs B", "A", "B")
    ref = stats.ttest_rel([a[s] for s in range(3)], [b[s] for s in range(3)])
    lo, hi = ref.confidence_interval(0.95)
    assert c.kind == "paired" and c.diff == pytest.approx(0.10)
    assert c.p == pytest.approx(ref.pvalue) and (c.ci_lo, c.ci_hi) == pytest.approx((lo, hi))
    holm([c])
    assert c.resolved and c.verdict == "A > B" and not c.wider_than_effect


def test_welch_contrast_when_the_seeds_differ():
    a, b = {0: 0.61, 1: 0.66, 2: 0.63}, {3: 0.55, 4: 0.58, 5: 0.50, 6: 0.52}
    c = compare(a, b)
    ref = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    lo, hi = ref.confidence_interval(0.95)
    assert c.kind == "welch" and c.n_a == 3 and c.n_b == 4
    assert c.p == pytest.approx(ref.pvalue) and (c.ci_lo, c.ci_hi) == pytest.approx((lo, hi))


def test_unresolved_contrast_says_how_many_seeds_might_resolve_it():
    a, b = {0: 0.52, 1: 0.70}, {0: 0.55, 1: 0.60}  # differences -0.03 and +0.10: noise larger than the mean
    c = holm([compare(a, b, "A vs B", "A", "B")])[0]
    assert not c.resolved and c.verdict == "not resolved" and c.wider_than_effect
    # n seeds with power 0.8 at the observed mean difference 0.035 and difference sd 0.0919
    sd, eff = stats.tstd([-0.03, 0.10]), 0.035
    n = c.seeds_needed
    assert n > 2
    power_ok = lambda k: eff / (sd / math.sqrt(k)) >= stats.t.ppf(0.975, k - 1) + stats.t.ppf(0.8, k - 1)
    assert power_ok(n) and not power_ok(n - 1)
    # a smaller difference needs more seeds
    smaller = compare({0: 0.52, 1: 0.70}, {0: 0.54, 1: 0.66})
    assert smaller.seeds_needed > n
    # one seed per cell: no test at all
    one = holm([compare({0: 0.9}, {0: 0.1})])[0]
    assert one.kind == "too few seeds" and math.isnan(one.p) and one.verdict == "not resolved"


def test_holm_adjustment_by_hand():
    cs = [compare({0: 0, 1: 1}, {0: 0, 1: 1}) for _ in range(3)]
    for c, p in zip(cs, (0.01, 0.04, 0.03)):
        c.p = p
    holm(cs)
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert [c.p_holm for c in cs] == pytest.approx([0.03, 0.06, 0.06])
    assert cs[0].resolved and not cs[1].resolved and not cs[2].resolved


def _cells_and_runs(values):
    """values: {(kappa, pos_enc): [top-1 per seed]} -> (cells summary, runs) as reports.runs builds them."""
    cells, runs = [], []
    for (k, enc), vals in values.items():
        key = f"k{k}-{enc}"
        cells.append({"cell": key, "arch": "aa_resnet18", "kappa": k, "upsilon": k, "num_heads": 1 if k == 0 else 2,
                      "pos_enc": "none" if k == 0 else enc, "n": len(vals)})
        runs += [{"cell": key, "seed": s, "status": "FINISHED", "val_top1": v} for s, v in enumerate(vals)]
    return pd.DataFrame(cells), pd.DataFrame(runs)


def test_family_compares_each_kappa_with_the_baseline_and_relative_with_none():
    cells, runs = _cells_and_runs({
        (0.0, "none"): [0.50, 0.52, 0.51],
        (0.5, "none"): [0.60, 0.64, 0.59],
        (0.5, "relative"): [0.61, 0.62, 0.66],  # +1.3 over none, noisy: not resolved
    })
    fam = Family(cells, runs, "val_top1").adjust()
    labels = {c.label: c for c in fam.order}
    assert set(labels) == {"κ=0.5 vs no attention (κ=0) (none)", "κ=0.5 vs no attention (κ=0) (relative)",
                           "relative vs none (κ=0.5)"}
    assert labels["κ=0.5 vs no attention (κ=0) (relative)"].verdict == "κ=0.5 > no attention (κ=0)"
    assert labels["relative vs none (κ=0.5)"].verdict == "not resolved"
    assert len(fam.order) == 3 and all(not math.isnan(c.p_holm) for c in fam.order)
    assert "1 of 3 contrasts have a 95% CI wider" in banner(fam) and "fewer than 3" not in banner(fam)
    table = fam.table()
    row = table[table["Comparison"] == "relative vs none (κ=0.5)"].iloc[0]
    assert row["verdict"] == "not resolved" and "per cell" in row["seeds to resolve"]


def test_no_banner_when_every_cell_has_three_seeds_and_every_effect_is_resolved():
    cells, runs = _cells_and_runs({(0.0, "none"): [0.50, 0.52, 0.51], (0.5, "relative"): [0.80, 0.83, 0.81]})
    fam = Family(cells, runs, "val_top1").adjust()
    assert fam.order[0].resolved and banner(fam) == ""
    cells2, runs2 = _cells_and_runs({(0.0, "none"): [0.50, 0.52], (0.5, "relative"): [0.80, 0.83]})
    assert "2 of 2 cells have fewer than 3 finished seeds" in banner(Family(cells2, runs2, "val_top1").adjust())
