"""Ray's worker_process_setup_hook for the study server's warm workers (`aa-study serve`, pipelines/launch/server.py;
`driver.start_local_ray`): what a trial's process imports, imported as soon as Ray starts the process (Ray prestarts
one per CPU, and the server tops them up after each launch) instead of after Tune hands it a trial.
Nothing here touches CUDA: Ray sets a trial's CUDA_VISIBLE_DEVICES when it hands the process the trial, and CUDA
reads it at its first use, in the fit."""


def imports() -> None:
    from ..settings import timing_stamp
    from ..training import fit  # noqa: F401  (torch, Lightning, torchvision, the networks)
    from . import trial_fit  # noqa: F401

    timing_stamp("worker warmed: a trial's imports done")
