"""dabench's presentation: the command line, ``dabench report`` (figures, HTML page) and ``dabench xda``.

Imports point one way: :mod:`dabench` -> :mod:`harness` (the engine) -> :mod:`harness.protocols`;
the figures (:mod:`paper_figures`) are drawn from what the engine computed. Importing this package is
cheap (no torch): see :mod:`dabench.cli` for the command line.
"""
