"""Evaluation: curves from runs (``curves``), plots (``plots``), tables (``tables``), reports
(``report``), ``results.json`` (``results``), the paper's findings checked on curves (``findings``), and the
empirical attack (``attack``, ``attack_run``, ``empirical``).

The report path (``curves``, ``plots``, ``tables``, ``report``, ``results``, ``empirical``, ``findings``) is
torch-free (an
import-linter contract checks it). May import :mod:`multiguard.runs` and everything below it.
"""
