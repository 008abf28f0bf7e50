"""Our paper networks' parameters and FLOPs beside every value the paper gives (reports/paper_values.yaml).

    python3 benchmarks/paper_gflops.py

The Table 5 rows are built from the trials of `studies/table5.yaml --profile paper` exactly as a trial builds them;
the ImageNet rows (ResNet-34/50/101 and their AA versions at kappa = 2 upsilon = 0.2) from `studies/table6.yaml
--profile paper`'s settings. Two FLOP conventions, 2 FLOPs per multiply-add, one 224 px image:
  paper's: convolutions and the classifier only (the one that reproduces the paper's falling Table 5 GFLOPs);
  ours: every multiply-add of the network, attention's q k^T, relative logits and weights x v included.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import aa_modules as A  # noqa: E402
from benchmarks.common import markdown_table  # noqa: E402
from pipelines.settings import arch_kwargs  # noqa: E402
from pipelines.spec import load_study  # noqa: E402
from pipelines.training.classifier import build_model  # noqa: E402
from reports.tables import paper_values  # noqa: E402


def profile_of(cfg):
    model = build_model(cfg["arch"], 1000, 3, (224, 224), **arch_kwargs(cfg))
    return A.profile(model, (3, 224, 224))


def diff(ours, paper):
    return "" if paper in (None, "") else f"{ours - paper:+.2f}"


def main():
    paper = paper_values()
    rows = []
    t5 = {r["kappa"]: r for r in paper["table5"]}
    for t in sorted(load_study(str(ROOT / "studies/table5.yaml"), "paper").trials, key=lambda t: t.config["kappa"]):
        if t.seed != 0:
            continue
        c, p = t.config, t5.get(t.config["kappa"], {})
        prof = profile_of(c)
        rows.append([f"Table 5: {p.get('model', c['arch'])}", f"{prof.params_m:.2f}", p.get("params", ""),
                     diff(prof.params_m, p.get("params")), f"{prof.gflops_conv:.2f}", p.get("gflops", ""),
                     diff(prof.gflops_conv, p.get("gflops")), f"{prof.gflops:.2f}"])
    base = load_study(str(ROOT / "studies/table6.yaml"), "paper").trials[0].config
    main_rows = {(r["arch"], bool(r.get("attention"))): r for r in paper["imagenet"]}
    for arch in ("aa_resnet34", "aa_resnet50", "aa_resnet101"):
        for attention in (False, True):
            c = dict(base, arch=arch, kappa=0.2 if attention else 0.0, upsilon=0.1 if attention else 0.0,
                     pos_enc="relative")
            p = main_rows.get((arch, attention), {})
            prof = profile_of(c)
            name = p.get("model") or (("AA-" if attention else "") + arch.replace("aa_resnet", "ResNet-"))
            rows.append([f"ImageNet: {name}" + (" (κ = 2υ = 0.2)" if attention else ""), f"{prof.params_m:.2f}",
                         p.get("params", ""), diff(prof.params_m, p.get("params")), f"{prof.gflops_conv:.2f}",
                         p.get("gflops", ""), diff(prof.gflops_conv, p.get("gflops")), f"{prof.gflops:.2f}"])
    print("# The paper profiles' networks beside the paper (relative, N_h = 8, stages 2-4, 224 px; at least 20 key "
          "dims per head, stage 2's attention on a 3x3 stride-2 pooled map)\n")
    print(markdown_table(["network", "params M", "paper", "Δ", "GFLOPs (conv + fc)", "paper", "Δ",
                          "GFLOPs (all, ours)"], rows))


if __name__ == "__main__":
    main()
