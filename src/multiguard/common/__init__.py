"""Shared helpers with no domain of their own: argument checks and typed errors (``validation``), the
registry behind every extension door (``registry``), frozen settings values (``settings``), the atomic file
writer (``files``), the torch file formats (``torch_files``), user code loading (``user_code``), seeds
(``seeds``), devices and torchrun processes (``devices``, ``processes``, ``distributed``), progress lines
(``progress``).

The lowest room: it imports nothing else of :mod:`multiguard`. Only ``devices``, ``distributed`` and
``torch_files`` import torch.
"""
