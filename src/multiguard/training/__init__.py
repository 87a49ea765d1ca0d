"""Training: the training engine both trainings share (``engine``: splits, noise, the epoch loop, mixed
precision, DDP, EMA, resume), classifier training (``classifier``), denoiser training (``denoiser``),
objectives, losses, augmentations, their registries and the recipes (``registries``, torch-free) and the settings
(``settings``).

May import :mod:`multiguard.models` and everything below it; never :mod:`multiguard.runs` or
:mod:`multiguard.evaluation`.
"""
