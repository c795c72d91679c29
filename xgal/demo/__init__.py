"""`xgal demo`: active learning on built-in synthetic data, strategies side by side."""

from xgal.demo.arms import ALL_ARMS, ARMS, QUICK_ARMS, Arm, pick_arms
from xgal.demo.run import run_demo

__all__ = ["ALL_ARMS", "ARMS", "QUICK_ARMS", "Arm", "pick_arms", "run_demo"]
