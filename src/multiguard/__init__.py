"""MultiGuard: provably robust multi-label classification by randomized smoothing."""

__version__ = "0.1.0"
