"""One Lightning fit of one trial (`fit.fit`), shared by `aa-study train` and every study trial: the
classification module and its optimiser (classifier), the detection module (detector)."""
