"""A trial's result is a function of its cell and seed: the same metrics, bit for bit, whether it runs alone, after
another trial in the same process (as in a reused Ray actor) in either order, or interrupted and resumed from its
checkpoint. On the CPU, through `pipelines.training.fit.fit`, the function every study trial runs."""
import json
import subprocess
import sys
import textwrap

import pytest

CELL = {"arch": "aa_resnet18", "kappa": 0.5, "num_heads": 2, "stages": [4], "small_input": True,
        "dataset": "synthetic", "data": {"task": "relative_position", "image_size": 16, "train_samples": 128,
                                         "val_samples": 64},
        "epochs": 2, "batch_size": 32, "device": "cpu"}
A = {**CELL, "pos_enc": "relative", "seed": 0}
B = {**CELL, "pos_enc": "none", "kappa": 0.25, "seed": 1}

RUN = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from pipelines.training.fit import fit
    out = [fit(cfg) for cfg in json.loads(sys.argv[1])]
    print("RESULT " + json.dumps([{k: v for k, v in m.items() if k not in ("images_per_s",)} for m in out]))
""")


def _fits(configs):
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(configs)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_two_trials_in_one_process_match_each_alone_in_either_order():
    a_first, b_second = _fits([A, B])
    b_first, a_second = _fits([B, A])
    assert a_first == a_second, "trial A changed when it ran after B in the same process"
    assert b_first == b_second, "trial B changed when it ran after A in the same process"
    assert a_first["val_loss"] != b_first["val_loss"]  # two different trials, not one result twice


@pytest.mark.slow
def test_a_trial_interrupted_and_resumed_ends_as_an_uninterrupted_one(tmp_path):
    import pytorch_lightning as pl
    import torch

    from pipelines.training.fit import fit

    torch.set_num_threads(1)

    class StopAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.save_checkpoint(str(tmp_path / "last.ckpt"), weights_only=False)
            raise RuntimeError("the launch dies here")

    cfg = {**A, "epochs": 3}
    whole = fit(cfg)
    try:
        fit(cfg, callbacks=[StopAfterFirstEpoch()])
    except RuntimeError:
        pass
    resumed = fit(cfg, ckpt_path=str(tmp_path / "last.ckpt"))
    drop = ("images_per_s",)
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in whole.items() if k not in drop}


def test_deterministic_mode_changes_no_cpu_number_and_leaves_no_switch_behind():
    """`deterministic` (on by default for classification) runs PyTorch's deterministic algorithms; on the CPU the
    numbers are the ones the mode-less runs of existing stores got, and the process-wide switch is off again after
    the fit, so a reused actor's next trial starts clean."""
    import torch

    from pipelines.training.fit import fit, resolve

    assert resolve(A)["deterministic"] is True
    assert resolve({**A, "task": "detection"})["deterministic"] is False
    torch.set_num_threads(1)
    drop = ("images_per_s",)
    on = fit({**A, "epochs": 1})
    assert not torch.are_deterministic_algorithms_enabled()
    off = fit({**A, "epochs": 1, "deterministic": False})
    assert {k: v for k, v in on.items() if k not in drop} == {k: v for k, v in off.items() if k not in drop}


def test_an_op_without_a_deterministic_version_is_named_in_one_line():
    import torch

    from pipelines.training.fit import nondeterministic_error

    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError) as e:
            torch.zeros(5).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))  # no deterministic version, CPU too
    finally:
        torch.use_deterministic_algorithms(False)
    msg = str(nondeterministic_error(e.value))
    assert "\n" not in msg and msg.startswith("deterministic: put_ has no deterministic")
    assert "train.deterministic: false" in msg
    other = RuntimeError("CUDA out of memory")
    assert nondeterministic_error(other) is other
