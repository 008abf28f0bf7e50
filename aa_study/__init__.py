"""The `aa-study` command: the one layer above both `pipelines` (run, resume, status, train, ui) and `reports`."""
