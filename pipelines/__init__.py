"""Training, data, studies and tracking for aa_modules networks.

Architecture: layers import only downwards (tests/study_definition/test_layers.py checks it, and that no import cycle exists);
the lowest first. One datum flows one way: YAML -> spec -> plan -> trials -> MLflow -> reports.

- ``settings``: the training settings, their defaults and checks, the optimiser recipes, the architecture and
  encoding names, the augmentation presets. Plain data: no torch, Lightning or Ray.
- ``profiles``, ``spec``: a study YAML and profile -> a `spec.Study` (cells, seeds, resources) and each cell's
  key, with every check that needs no torch (`aa-study --help` and a spec error answer in a fraction of a second).
- ``tracking``: the MLflow store (the one writer is the launch's driver); imports MLflow only when used.
- ``data`` (package): datasets as Lightning data modules; `make_datamodule` (registry); each module declares its
  image shape. ``images`` (tensor and image-folder modules, GPU JPEG decode), ``synthetic``, ``coco``.
- ``training`` (package): one Lightning fit of one trial (``fit.fit``), shared by ``aa-study train`` and every
  study trial; ``classifier`` and ``detector`` (the Lightning modules); ``checks`` (the spec checks that build
  networks on the meta device and open datasets, run once a launch has something to run: in a process of the
  driver's own, beside Ray's start, so that the driver itself never imports torch).
- ``launch`` (package): a study launch. ``planner`` decides from the store what each trial is (done, continue,
  retry, fresh, or the launch refused); ``driver`` executes the plan through Ray Tune; ``tune_trial`` (the
  trainable), ``trial_fit`` (a fit reporting to Tune or Ray Train), ``workers`` (a trial over a Ray Train group);
  ``recorder`` (the driver's MLflow writer; it opens the store in a thread while Tune starts the trials),
  ``console`` (live progress), ``output`` (a quiet launch's log), ``resources`` (what a trial holds, GPU shares, the
  ``--mps`` daemon), ``outcome``, ``estimate`` (``--dry-run``). Ray is imported only once a launch has trials to
  run, and Tune beside Ray's start.
- ``reports`` (a sibling package, beside ``launch``): reads MLflow only.
- ``aa_study.cli``: ``aa-study``, the one layer above both ``pipelines`` and ``reports``.
"""
