"""estimators layer."""
