"""The pool format (DESIGN.md §3) and the synthetic pool generator.

A pool is read by the scorer (to score it) and by the trainer (labels and ROIs in simulation),
so it lives beside both rather than inside either; it needs NumPy alone.
"""

from xgal.pool.format import Pool, PoolFormatError, PoolWriter

__all__ = ["Pool", "PoolFormatError", "PoolWriter"]
