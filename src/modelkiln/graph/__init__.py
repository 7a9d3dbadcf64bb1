"""The build graph: per-bundle stage plans, up-to-date stamps, and the doit run that executes them."""
