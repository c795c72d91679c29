"""`python -m xgal.cli ...`, as tests and benchmarks start replicas."""

from xgal.cli import main

main()
