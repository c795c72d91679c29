"""The demo's ROI budget and its learned-ROI arm (issue 26, part 4): the simulated radiologist
draws ROIs on the first ⌈f·n⌉ scans of each request, in rank order, and on no others; the
default arms are random, uncertainty, xgal (the expert's pool ROIs) and xgal-learned."""

import numpy as np
import pytest

from xgal.annotate.annotator import PendingRequest
from xgal.annotate.oracle import OracleAnnotator
from xgal.core.errors import InvalidArgument
from xgal.demo.arms import ARMS
from xgal.pool.synth import synth_pool


@pytest.mark.parametrize(("fraction", "drawn"), [(1.0, 10), (0.25, 3), (0.5, 5), (0.0, 0)])
def test_the_radiologist_draws_rois_on_the_first_scans_of_each_request(tmp_path, fraction, drawn):
    pool = synth_pool(tmp_path / "pool", 12, image_size=16)
    ids = pool.ids().tolist()[::-1][:10]  # a request's rank order, not the pool's
    labels, rois = OracleAnnotator(pool, fraction).annotate(PendingRequest(1, ids, lambda: None))
    truth = pool.take([pool.ids().tolist().index(i) for i in ids], ("labels", "rois"))
    np.testing.assert_array_equal(labels, truth["labels"])  # every label, whatever the ROI budget
    np.testing.assert_array_equal(rois[:drawn], truth["rois"][:drawn])
    assert not rois[drawn:].any() and truth["rois"].reshape(10, -1).any(axis=1).all()


def test_an_roi_budget_outside_0_to_1_is_refused(tmp_path):
    pool = synth_pool(tmp_path / "pool", 4, image_size=16)
    with pytest.raises(InvalidArgument, match="roi_fraction"):
        OracleAnnotator(pool, 1.5)


def test_the_default_arms_compare_the_learned_roi_with_the_oracle():
    by_name = {a.name: a for a in ARMS}
    assert list(by_name) == ["random", "uncertainty", "xgal", "xgal-learned"]
    learned, oracle = by_name["xgal-learned"], by_name["xgal"]
    assert learned.roi_head == "shared" and learned.acquisition.roi.value == "learned"
    assert oracle.roi_head == "none" and oracle.acquisition.roi.value == "expert"
    # Otherwise the same selection: only where M's ROI comes from differs.
    assert learned.acquisition.strategy == oracle.acquisition.strategy
    assert learned.acquisition.diversity == oracle.acquisition.diversity
    assert learned.cold_start == oracle.cold_start
