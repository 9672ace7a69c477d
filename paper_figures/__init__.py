"""Figures of the paper (runtime vs rank, speed-up tables) drawn from run records alone.

Nothing here reads a method or a task: only ``results/records``. The figures arrive with the
reproduction issue; the package exists so the layout of the design card holds from the start.
"""
