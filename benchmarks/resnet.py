"""Training throughput: AA-ResNet-50 (relative, kappa = upsilon = 0.25, N_h = 8) vs torchvision ResNet-50.

    python benchmarks/resnet.py [--batch 128] [--size 224] [--steps 10] [--bounds] [--paper] [--compile [--mode M]]

--bounds adds the same AA-ResNet-50 without positional encoding (content-only attention: our Triton kernel, and
PyTorch's SDPA, flash on an H100): an upper bound on what any relative-attention kernel can reach in this network,
since the relative logits only add work to the same attention.

One SGD step (forward, cross-entropy, backward, update) per timed repeat, bf16 autocast and channels_last on
CUDA; images/s = batch / median step time. Also tries AA in all four stages at batch 64 (fits or OOM).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import aa_modules as A  # noqa: E402
from benchmarks.common import environment, markdown_table, measure  # noqa: E402


def train_step_fn(model, batch, size, dev, compile=False, mode=None):
    cuda = dev == "cuda"
    model = model.to(dev, memory_format=torch.channels_last if cuda else torch.contiguous_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if compile:
        model = torch.compile(model, mode=mode)
    x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=torch.channels_last if cuda else
                                                          torch.contiguous_format)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--mode", default=None, help="torch.compile's mode (e.g. reduce-overhead: CUDA graphs)")
    p.add_argument("--bounds", action="store_true", help="also AA-ResNet-50 without positions (see above)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's own AA-ResNet-50 (20 key dims per head, stage 2's attention on a pooled map, "
                        "depths rounded to the heads) at kappa = 2 upsilon = 0.2 and kappa = upsilon = 0.25, "
                        "beside torchvision's, instead of the rows above")
    p.add_argument("--no-all-stages", action="store_true", help="skip the AA-in-all-four-stages rows (batch 64)")
    p.add_argument("--impls", nargs="+", default=["triton", "fused"],
                   help="attention implementations to time (relative_attention's implementation=)")
    a = p.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torchvision_r50 = ("torchvision resnet50", lambda: torchvision.models.resnet50())

    def aa_r50(pos_enc, impl, stages=(2, 3, 4), label=None):
        """(name, builder) of AA-ResNet-50, kappa = upsilon = 0.25, N_h = 8, AA in ``stages``."""
        what = {"none": "no positions"}.get(pos_enc, pos_enc)
        return (f"aa_resnet50 {what} k=v=0.25 N_h=8, stages {stages[0]}-{stages[-1]}, {label or impl}",
                lambda: A.aa_resnet50(kappa=0.25, num_heads=8, pos_enc=pos_enc, stages=stages, input_size=a.size,
                                      attention_impl=impl))

    def paper_r50(kappa, upsilon, pos_enc="relative", impl="auto"):
        return (f"paper aa_resnet50 {pos_enc} k={kappa:g} v={upsilon:g} N_h=8, {impl}",
                lambda: A.aa_resnet50(kappa=kappa, upsilon=upsilon, num_heads=8, pos_enc=pos_enc, input_size=a.size,
                                      min_key_depth_per_head=20, attention_pool_stages=(2,),
                                      round_depths_to_heads=True, attention_impl=impl))

    configs = [(*torchvision_r50, a.batch)] + [(*aa_r50("relative", impl), a.batch) for impl in a.impls]
    if a.paper:
        configs = [(*torchvision_r50, a.batch)] + [(*paper_r50(k, u, pe, impl), a.batch)
                                                   for k, u in ((0.2, 0.1), (0.25, 0.25)) for pe in ("relative", "none")
                                                   for impl in a.impls]
        a.no_all_stages = True
    if a.bounds:
        configs += [(*aa_r50("none", impl, label=label), a.batch)
                    for impl, label in (("triton", "our content-only kernel"), ("fused", "SDPA"))]
    if not a.no_all_stages:
        configs += [(*torchvision_r50, 64)] + [(*aa_r50("relative", impl, (1, 2, 3, 4)), 64) for impl in a.impls]
    rows, base = [], None
    for name, build, batch in configs:
        model = build()
        prof = A.profile(model, (3, a.size, a.size))
        try:
            t, peak = measure(train_step_fn(model, batch, a.size, dev, a.compile, a.mode), warmup=3, repeats=a.steps)
        except torch.OutOfMemoryError:
            rows.append([name, batch, f"{prof.params_m:.2f}", f"{prof.gflops_conv:.2f}", f"{prof.gflops:.2f}", "OOM", "",
                         ""])
            torch.cuda.empty_cache()
            continue
        ips = batch / t
        if name.startswith("torchvision"):
            base = ips  # ratios are to torchvision's ResNet-50 at the same batch
        mem = f"{peak / 2**30:.1f}" if peak is not None else "n/a"
        rows.append([name, batch, f"{prof.params_m:.2f}", f"{prof.gflops_conv:.2f}", f"{prof.gflops:.2f}", f"{ips:.0f}",
                     f"{ips / base:.2f}x", mem])
        del model
        if dev == "cuda":
            torch.cuda.empty_cache()
    print(f"# training throughput, {a.size}x{a.size}, bf16 autocast + channels_last on CUDA"
          f"{', torch.compile' if a.compile else ''}{f' (mode {a.mode})' if a.compile and a.mode else ''}\n")
    print(environment() + "\n")
    print(markdown_table(["model", "batch", "params M", "GFLOPs (conv)", "GFLOPs (all)", "images/s", "vs resnet50",
                          "peak GiB"], rows))


if __name__ == "__main__":
    main()
