"""The certificate math: label probability bounds, the top-k certificate of Theorem 1 (``topk``), the
Jia et al. baseline (``jia``), certified metrics (``metrics``), the certification methods a report draws
(``methods``), the thresholded certificate and its thresholds (``thresholded``, ``thresholds``) and the
sequential procedure with its stopping rule and anytime bounds (``sequential``, ``stop_rule``, ``anytime``,
``betting``, ``tuned``).

NumPy and SciPy only, never torch (an import-linter contract checks it). May import :mod:`multiguard.common`.
"""
