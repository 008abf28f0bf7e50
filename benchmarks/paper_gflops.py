"""AA-ResNet-50's cost by κ = υ under two FLOP conventions, beside the paper's Table 5 (reports/paper_values.yaml).

    python benchmarks/paper_gflops.py

Ours: every multiply-add of the network (attention's q k^T, relative logits and weights v included).
Conv only: convolutions and the final fully connected layer, attention's matmuls left out.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import aa_modules as A  # noqa: E402
from benchmarks.common import markdown_table  # noqa: E402


def main():
    paper = {r["kappa"]: r for r in yaml.safe_load((Path(__file__).resolve().parents[1] / "reports" /
                                                    "paper_values.yaml").read_text())["table5"]}
    rows = []
    for k in (0.0, 0.25, 0.5, 0.75, 1.0):
        prof = A.profile(A.aa_resnet50(kappa=k, num_heads=8, pos_enc="relative"), (3, 224, 224))
        p = paper.get(k, {})
        rows.append([f"{k:g}", f"{prof.gflops:.2f}", f"{prof.gflops_conv:.2f}", p.get("gflops", ""),
                     f"{prof.params_m:.2f}", p.get("params", "")])
    print("# AA-ResNet-50 (relative, N_h=8, stages 2-4, 224 px) by κ = υ\n")
    print(markdown_table(["κ = υ", "GFLOPs (ours, all)", "GFLOPs (conv only)", "paper GFLOPs", "params M (ours)",
                          "paper params M"], rows))


if __name__ == "__main__":
    main()
