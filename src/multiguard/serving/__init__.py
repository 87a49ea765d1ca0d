"""Certified predictions at inference time: the predict step (checkpoint and image files to certified
labels, ``predict``).

A sibling of :mod:`multiguard.evaluation` (neither imports the other). May import :mod:`multiguard.runs`,
:mod:`multiguard.training` and everything below them.
"""
