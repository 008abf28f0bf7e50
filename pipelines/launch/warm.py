"""Ray's worker_process_setup_hook for a launch with AA_STUDY_WARM_WORKERS=1 (experimental; see `driver.init_ray`):
what a trial's process imports, imported as soon as Ray starts the process (Ray prestarts one per CPU as it starts,
while Tune sets up) instead of after Tune hands it a trial."""


def imports() -> None:
    from ..settings import timing_stamp
    from ..training import fit  # noqa: F401  (torch, Lightning, torchvision, the networks)
    from . import trial_fit  # noqa: F401

    timing_stamp("worker warmed: a trial's imports done")
