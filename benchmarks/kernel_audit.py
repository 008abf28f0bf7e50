"""Which shipped studies build a layer whose key and value depths per head fall in different kernel blocks.

    python3 benchmarks/kernel_audit.py

Every profile of every study in studies/ (cpu ones too), each distinct network built on the meta device as a trial
builds it: the augmented layers whose d_k and d_v per head pad to different powers of two (the Triton launch
that was wrong on Hopper before both were padded to one block; `flash_relative._head_blocks`). A study whose
every layer pads both alike never ran that launch, on any GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aa_modules.augmented_conv import AugmentedConv2d  # noqa: E402
from aa_modules.flash_relative import _pow2  # noqa: E402
from pipelines.settings import BACKBONE_KEYS, arch_kwargs  # noqa: E402
from pipelines.spec import load_study  # noqa: E402
from pipelines.training.classifier import build_model  # noqa: E402


def unequal_layers(model):
    return [(name, m.dk // m.num_heads, m.dv // m.num_heads) for name, m in model.named_modules()
            if isinstance(m, AugmentedConv2d) and m.qkv is not None
            and _pow2(m.dk // m.num_heads) != _pow2(m.dv // m.num_heads)]


def build(c):
    with torch.device("meta"):
        if c["task"] == "detection":
            from aa_modules.detection import aa_retinanet
            kw = {k: c[k] for k in BACKBONE_KEYS}
            kw.update(stages=tuple(c["stages"]))
            return aa_retinanet(2, c["arch"], **kw)
        size = c["data"].get("image_size", 28)
        return build_model(c["arch"], 10, 3, (size, size), **arch_kwargs(c))


def main():
    for f in sorted((ROOT / "studies").glob("*.yaml")):
        for prof in yaml.safe_load(f.read_text()).get("profiles") or {}:
            seen, hits = set(), []
            for t in load_study(str(f), prof).trials:
                if t.cell in seen:
                    continue
                seen.add(t.cell)
                layers = unequal_layers(build(t.config))
                if layers:
                    hits.append(f"{t.name.rsplit('·s', 1)[0]}: {len(layers)} layers, e.g. {layers[0]}")
            print(f"{f.name} --profile {prof}: " + ("none" if not hits else "; ".join(hits)))


if __name__ == "__main__":
    main()
