"""The active-learning loop: train -> export -> publish -> ScorePool -> annotate -> repeat
(`runner`), its configuration (`config`) and named presets (`presets`), the run folder that
makes it resumable (`run_state`), the labelled set (`labelled`) and the model's view of the
scans a person is asked about (`request`)."""

from xgal.loop.config import COLD_STARTS, LoopConfig
from xgal.loop.runner import STAGES, ActiveLearningLoop, RoundRecord

__all__ = ["COLD_STARTS", "STAGES", "ActiveLearningLoop", "LoopConfig", "RoundRecord"]
