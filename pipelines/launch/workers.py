"""One trial on several workers (`resources.workers` > 1): Ray Train V2's pattern inside Tune.

The Tune trial (pipelines/launch/tune_trial.py) runs `run_workers`, which starts a `TorchTrainer` of N workers (a GPU
each, or CPU workers with gloo) and waits for it; each worker runs the same `pipelines.training.fit.fit` as a
one-device trial, with Lightning's DDP over the process group Ray Train set up. Rank 0's epoch metrics and
checkpoint travel to Tune through Ray's `TuneReportCallback` (as `checkpoint_path` in the result), so the
driver's MLflow record is the same as for a one-device trial.

Retries: the Train run is named after the Tune trial, so when Tune retries the trial (max_failures), the new
TorchTrainer finds the run's checkpoint manager in storage and its workers start from the latest checkpoint
(`ray.train.get_checkpoint()`). A later launch (`aa-study resume`) passes the checkpoint recorded in MLflow.

Why not `ray.train.lightning.RayDDPStrategy` / `RayLightningEnvironment`: Ray binds those to `lightning.pytorch`
whenever the `lightning` package is installed (it is on many GPU hosts, beside `pytorch_lightning`), and a
`pytorch_lightning.Trainer` rejects a strategy of the other package. The two small classes below do the same
(root device and ranks from Ray Train's context) for the package this project uses.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy



class RayTrainEnvironment(LightningEnvironment):
    """Ranks and world size from Ray Train's context (Ray Train has set up the process group)."""

    def world_size(self) -> int:
        import ray.train
        return ray.train.get_context().get_world_size()

    def global_rank(self) -> int:
        import ray.train
        return ray.train.get_context().get_world_rank()

    def local_rank(self) -> int:
        import ray.train
        return ray.train.get_context().get_local_rank()

    def node_rank(self) -> int:
        import ray.train
        return ray.train.get_context().get_node_rank()

    def set_world_size(self, size: int) -> None:
        pass

    def set_global_rank(self, rank: int) -> None:
        pass

    def teardown(self):
        pass


class RayTrainDDP(DDPStrategy):
    @property
    def root_device(self) -> torch.device:
        import ray.train.torch
        return ray.train.torch.get_device()


def trainer_options() -> Dict[str, Any]:
    """pl.Trainer options for a fit inside a Ray Train worker of a group of several."""
    return dict(devices="auto", strategy=RayTrainDDP(cluster_environment=RayTrainEnvironment()),
                use_distributed_sampler=False)  # the data modules shard each global batch themselves


def run_workers(t: Dict[str, Any]) -> None:
    """Inside a Tune trial: train t (the trial's dict, pipelines/launch/driver.py) on t["workers"] Ray Train workers."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpu = t["gpu"] > 0
    per_worker = {"CPU": t["cpu"], **({"GPU": 1} if gpu else {})}
    name = f"{t['name']}-{tune.get_context().get_trial_id()}"  # the same on a retry: Train resumes the run
    trainer = TorchTrainer(
        _worker, train_loop_config=t,
        scaling_config=ScalingConfig(num_workers=t["workers"], use_gpu=gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=t["storage"], callbacks=[TuneReportCallback()],
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             # retries are Tune's (max_failures), which the driver records in MLflow
                             failure_config=FailureConfig(max_failures=0, controller_failure_limit=0)),
    )
    trainer.fit()


def _worker(t: Dict[str, Any]) -> None:
    import ray.train

    from .trial_fit import train_trial

    # this Train run's latest checkpoint (a retry), else the one the launch resumes from
    train_trial(t, ray.train.get_checkpoint(), ray.train.Checkpoint, rank=ray.train.get_context().get_world_rank(),
                report=_train_report, placement=trainer_options())


def _train_report(metrics, checkpoint_dir: Optional[str], rank: int) -> None:
    """Every worker reports (Ray Train waits for all); rank 0's metrics and checkpoint are the ones kept."""
    import ray.train

    ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir and rank == 0 else None
    ray.train.report(metrics, checkpoint=ckpt)
