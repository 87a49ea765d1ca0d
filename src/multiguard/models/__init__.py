"""Base classifiers: the architecture registry (``architectures``), the model factory with its prefix
families such as ``timm:`` (``factory``, ``pretrained``, ``networks``), checkpoints (``checkpoints``) and the
base-classifier spec, the one way from a checkpoint to a smoothed classifier (``base_classifier``).

May import :mod:`multiguard.denoising`, :mod:`multiguard.sampling`, :mod:`multiguard.certificates`,
:mod:`multiguard.data` and :mod:`multiguard.common`.
"""
