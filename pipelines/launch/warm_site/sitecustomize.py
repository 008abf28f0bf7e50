"""Run by Python at the start of every process of the study server's local Ray (`aa-study serve`; this folder is
first on the PYTHONPATH its Ray inherits, with AA_STUDY_WARM_WORKERS=1): in Ray's worker processes only, import
what a trial imports (ray.tune, torch, Lightning, torchvision, the networks) before the process registers with Ray.

Why here and not in Ray's worker_process_setup_hook: Ray runs that hook only once a process is given to a job's
work, and gives an actor (a Tune trial is one) only a process that has run nothing yet; the processes Ray starts
idle as it starts (one per CPU) run no hook. So without this, every trial imports them itself after Tune asks for
it (10 s of a one-trial study on the GPU host). Nothing here touches CUDA: Ray sets a trial's CUDA_VISIBLE_DEVICES
when it hands the process the trial, and CUDA reads it at its first use, in the fit (the launch's benchmark checks
that an idle server holds no GPU memory). A failure of these imports only costs the trial its head start.

Then the `sitecustomize` this one shadows on sys.path, if any, runs as it would have."""
import os
import sys


def _warm() -> None:
    if os.environ.get("AA_STUDY_WARM_WORKERS") != "1" or not sys.argv or not sys.argv[0].endswith("default_worker.py"):
        return
    import time

    try:
        from ray import tune  # noqa: F401  (the Tune trainable's module)
        from pipelines.launch import trial_fit  # noqa: F401  (torch, Lightning, the networks)
    except Exception as e:  # noqa: BLE001 - the trial imports them itself
        print(f"aa-study: a warm worker's imports failed ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return
    if os.environ.get("AA_STUDY_TIMING"):
        print(f"[aa-study timing] {time.time():.3f} worker warmed: a trial's imports done", file=sys.stderr,
              flush=True)


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.origin and os.path.abspath(spec.origin) != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_warm()
_chain()
