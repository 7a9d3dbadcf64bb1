"""modelkiln: a Make-style, declarative build tool for machine-learning model bundles."""

__version__ = "0.1.0"
