"""Reports: the paper's tables and figures from MLflow (no Ray, no model code)."""
