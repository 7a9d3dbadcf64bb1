"""Build stages: one module per step (plan is pure and light; run imports the heavy libraries)."""
