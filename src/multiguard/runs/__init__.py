"""Runs: the run specification (``spec``), the RUN_DIR format with its checks (``folder``, ``checks``), the
sampling job that fills a RUN_DIR chunk by chunk (``job``), shards (``shards``) and the certify step from a
checkpoint (``certify_step``).

The RUN_DIR side (``spec``, ``folder``, ``checks``, ``job``, ``shards``) is torch-free; ``certify_step`` loads
models. A sibling of :mod:`multiguard.training` (neither imports the other). May import :mod:`multiguard.models`
and everything below it.
"""
