"""Batch-size scaling studies: the grid, the sweep, the memory planner and the report."""
