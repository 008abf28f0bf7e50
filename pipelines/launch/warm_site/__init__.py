"""The folder the study server puts first on its local Ray's PYTHONPATH: its `sitecustomize` warms Ray's worker
processes (`driver.start_local_ray(warm=True)`)."""
