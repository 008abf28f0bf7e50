"""A study launch: the planner decides what each trial is from the store (planner), the driver executes the plan
through Ray Tune (driver), each trial a fit in a Tune trial (tune_trial) or a Ray Train worker group (workers); the
driver's MLflow writer (recorder), its console (console) and log (output), and the dry run's estimate
(estimate)."""
