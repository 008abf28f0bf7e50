"""`aa-study`: the command line. `aa-study train` runs one trial (the same code path a study trial uses)."""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from aa_modules import POS_ENCODINGS

from .model import RECIPES


def _train_parser(sub):
    p = sub.add_parser("train", help="run one trial and print its final metrics",
                       description="Train one AA network on one dataset, from flags and/or a small YAML. "
                                   "Flags override the YAML.")
    p.add_argument("--config", help="YAML mapping of training settings (keys as the flags, data: {...})")
    p.add_argument("--arch")
    p.add_argument("--kappa", type=float)
    p.add_argument("--upsilon", type=float)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--pos-enc", choices=POS_ENCODINGS)
    p.add_argument("--stages", type=int, nargs="+")
    p.add_argument("--dataset")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="a data module option, e.g. --data task=same_corners --data image_size=32")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--recipe", choices=sorted(RECIPES))
    p.add_argument("--lr", type=float, help="base learning rate for a batch of 256")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    return p


def _train_config(a) -> dict:
    cfg = {}
    if a.config:
        with open(a.config) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{a.config}: expected a mapping of training settings")
    flags = {k: getattr(a, k) for k in ("arch", "kappa", "upsilon", "num_heads", "pos_enc", "stages", "dataset",
                                        "epochs", "batch_size", "recipe", "seed", "device", "compile")}
    cfg.update({k: v for k, v in flags.items() if v is not None})
    if a.lr is not None:
        cfg.setdefault("optim", {})["base_lr"] = a.lr
    for item in a.data:
        if "=" not in item:
            raise ValueError(f"--data expects KEY=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        cfg.setdefault("data", {})[key] = yaml.safe_load(value)
    return cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="aa-study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    a = parser.parse_args(argv)
    if a.command == "train":
        from .data import DataError
        from .train import build, fit

        try:
            cfg = _train_config(a)
            built = build(cfg)  # every check before training starts
        except (ValueError, DataError, OSError, yaml.YAMLError) as e:
            print(f"aa-study train: error: {e}", file=sys.stderr)
            return 2
        metrics = fit(cfg, enable_progress_bar=a.progress, built=built)
        print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
