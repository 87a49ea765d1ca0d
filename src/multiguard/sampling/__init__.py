"""The smoothed classifier and its sampling: :class:`~multiguard.sampling.smoothed.MultiGuard`, the
certificate and prediction values it returns (``certificate``), input checks (``inputs``), the sampling
engine (``engine``: noise blocks, forward batches, top-k' counts) and sampling modes (``modes``, torch-free, and
``acceleration``, their torch side).

May import :mod:`multiguard.certificates` and :mod:`multiguard.common`.
"""
