"""Training, data, studies and tracking for aa_modules networks."""
