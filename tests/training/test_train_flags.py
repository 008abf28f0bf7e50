"""`aa-study train` checks its flags like a spec: one line, exit 2, before any work (no traceback, no empty fit)."""
import pytest


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "epochs must be an integer >= 1; got -1"),
    (["--epochs", "0"], "epochs must be an integer >= 1; got 0"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1; got 0"),
    (["--lr", "0"], "optim.base_lr (--lr) must be a number > 0; got 0.0"),
    (["--seed", "-3"], "seed must be an integer >= 0; got -3"),
    (["--compile", "fastest"], "compile must be true, false or a torch.compile mode (default, reduce-overhead, "
                               "max-autotune, max-autotune-no-cudagraphs); got 'fastest'"),
])
def test_train_flags_are_checked_before_any_work(flags, message, workdir, capsys):
    from aa_study.cli import main

    assert main(["train", "--dataset", "synthetic", "--data", "image_size=16", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"aa-study train: error: {message}"


@pytest.mark.parametrize("compile, mode", [(True, None), ("reduce-overhead", "reduce-overhead"), (False, "not compiled")])
def test_compile_setting_reaches_torch_compile_with_its_mode(compile, mode, monkeypatch):
    """compile: true compiles in torch.compile's default mode; a mode name is passed on (reduce-overhead: CUDA graphs
    on a GPU); false leaves the network eager."""
    import torch

    from pipelines.training import fit

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    fit.build({"dataset": "synthetic", "data": {"image_size": 16}, "device": "cpu", "epochs": 1, "compile": compile})
    assert seen == ([] if mode == "not compiled" else [mode])


def test_cudagraph_thread_state_is_set_up_in_a_new_thread():
    """compile: reduce-overhead under Ray Tune: each trial runs in a thread of its own, where torch < 2.13's CUDA Graph
    Trees had no thread-local state (pytorch#123177); the module sets it up before the fit."""
    import threading

    import torch
    from torch._inductor import cudagraph_trees as trees

    from pipelines.training.classifier import cudagraph_thread_state

    seen = []

    def trial_thread():
        cudagraph_thread_state()
        seen.append((hasattr(trees.local, "tree_manager_containers"), torch._C._is_key_in_tls("tree_manager_locks")))
        cudagraph_thread_state()  # a second call keeps the state it found
        seen.append(trees.local.tree_manager_containers is torch._C._get_obj_in_tls("tree_manager_containers"))

    t = threading.Thread(target=trial_thread)
    t.start()
    t.join()
    assert seen == [(True, True), True]
