"""MultiGuard: provably robust multi-label classification by randomized smoothing."""

from .smoothing import Certificate, MultiGuard, Prediction

__all__ = ["Certificate", "MultiGuard", "Prediction", "__version__"]

__version__ = "0.1.0"
