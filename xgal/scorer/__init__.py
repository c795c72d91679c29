"""The scorer: engines that run a scoring graph, acquisition, ranking and the pool pipeline.

Nothing here imports torch at module level (DESIGN.md: a scorer replica has no PyTorch).
"""
