"""Denoised smoothing: denoiser networks and the classifier behind a denoiser (``denoisers``), the
registry of denoiser architectures (``architectures``), the ``<source>:<spec>`` forms of ready-made denoisers
(``sources``) and one-step diffusion denoisers (``diffusion``).

A denoiser is part of the base classifier, so this room lies below :mod:`multiguard.models`, which builds base
classifiers with it. May import :mod:`multiguard.common`. Denoiser *training* is in :mod:`multiguard.training`.
"""
