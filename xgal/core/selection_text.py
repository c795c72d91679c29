"""What ranked a selection, in words a radiologist's team reads beside the scans (the request,
the hints, the report): the formula, the ROI the misalignment was measured against, and how the
k were picked. One wording, so the hand-off and the report cannot say different things."""

from __future__ import annotations

from xgal.core.acquisition import AcquisitionConfig, Diversity, Normalise, RoiSource, Selection, Strategy

ROI_WORDS = {
    RoiSource.EXPERT: "the expert's ROI",
    RoiSource.BODY: "the body found in the scan",
    RoiSource.EXPERT_ELSE_BODY: "the expert's ROI, or the body found in the scan where none was drawn",
    RoiSource.LEARNED: "the ROI the model's head predicts",
    RoiSource.EXPERT_ELSE_LEARNED: "the expert's ROI, or the model's predicted ROI where none was drawn",
}


def describe_selection(config: AcquisitionConfig, k: int, *, cold_start: bool = False) -> str:
    """One sentence: what ranked the k scans and what the `score` column holds."""
    u = config.uncertainty.value.replace("_", " ")
    m = f"1 − Dice of the Grad-CAM with {ROI_WORDS[config.roi]}"
    if config.strategy is Strategy.RANDOM:
        what = "a random draw (the score is the draw's key, not U or M)"
    elif config.strategy is Strategy.UNCERTAINTY:
        what = f"uncertainty U ({u})"
    elif config.strategy is Strategy.MISALIGNMENT:
        what = f"misalignment M ({m})"
    else:
        what = f"{config.lam:g}·U + {1 - config.lam:g}·M (U: {u}; M: {m})"
    if config.normalise is not Normalise.NONE and config.strategy is not Strategy.RANDOM:
        what += f", each criterion {config.normalise.value}-normalised over the pool"
    if config.selection is not Selection.TOP and config.strategy is not Strategy.RANDOM:
        law = "exp(β·score)" if config.selection is Selection.SOFTMAX else "score^β"
        what += f"; k drawn with probability ∝ {law}, β = {config.beta:g} (the score is the draw's key)"
    if config.diversity is Diversity.SPREAD:
        what += f"; spread over the model's embedding among the {config.candidate_count(k)} best"
    elif config.diversity is Diversity.TYPICAL:
        what = (
            f"TypiClust: the most typical scan of each of {k} clusters of the model's embedding, among "
            f"{config.candidate_count(k)} candidates ranked by {what}"
        )
    return f"the cold start: {what}" if cold_start else f"ranked by {what}"
