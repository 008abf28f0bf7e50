"""Training, data, studies and tracking for aa_modules networks.

Architecture (layers import only downwards; the lowest first):

- ``settings``: the training settings, their defaults and checks, the optimiser recipes, the architecture and
  encoding names. Plain data: no torch, Lightning or Ray.
- ``profiles``, ``spec``: a study YAML and profile -> a `spec.Study` (cells, seeds, resources) and each cell's
  key. Light checks need only ``settings``; ``spec.check_deep`` builds every distinct network on the meta device
  and opens the datasets (torch), run when a launch has something to run, or by ``--dry-run``.
- ``tracking``: the MLflow store (the one writer is the launch's driver); imports MLflow only when used.
- ``data``, ``synthetic``, ``coco``, ``model``, ``detection``, ``train``: one Lightning fit of one trial
  (`train.fit`), shared by ``aa-study train`` and every study trial.
- ``trial``, ``distributed``: a fit inside a Ray Tune trial, on one device or as a Ray Train worker group.
- ``study``: a launch: the store says what is left, Ray Tune runs it; ``recorder``: the Tune callback through
  which the driver writes MLflow; ``progress``: the launch's console; ``plan``: ``--dry-run``. Ray is imported
  only by these callbacks and once a launch has trials to run.
- ``cli``: ``aa-study``. ``reports`` (a sibling package) reads MLflow only.
"""
