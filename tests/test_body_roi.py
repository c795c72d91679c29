"""A weak ROI from the image itself (the body) where the expert drew none: the mask, the
policies that choose it, and the misalignment measured against it on every scoring path."""

import numpy as np
import pytest

from xgal.pool.body import body_mask, otsu_threshold, rois_for
from xgal.pool.synth import synth_scan


@pytest.mark.parametrize("cls", [0, 1, 2])
def test_the_body_mask_holds_the_lesion_and_leaves_out_the_corner_tag(cls):
    rng = np.random.default_rng(cls)
    image, roi = synth_scan(rng, cls, 64, marker=cls)
    mask = body_mask(image[None])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[roi > 0].all()  # the lesion lies in the body
    tag = image == 255
    assert tag.sum() > 10 and not mask[tag].any()  # the burned-in tag does not
    assert 0.3 < mask.mean() < 0.8


def test_a_flat_image_has_no_body_and_otsu_splits_two_modes():
    assert not body_mask(np.full((1, 16, 16), 7, np.uint8)).any()
    values = np.r_[np.full(500, 10.0), np.full(500, 200.0)]
    assert 10 < otsu_threshold(values) < 200


def test_the_policies_choose_per_sample():
    rng = np.random.default_rng(0)
    images = np.stack([synth_scan(rng, 0, 32, None)[0][None] for _ in range(3)])
    expert = np.zeros((3, 32, 32), np.uint8)
    expert[0, 4:8, 4:8] = 1  # only the first has an expert ROI
    same, body = rois_for(images, expert, "expert")
    assert same is expert and not body.any()
    mixed, body = rois_for(images, expert, "expert-else-body")
    assert body.tolist() == [False, True, True]
    np.testing.assert_array_equal(mixed[0], expert[0])
    np.testing.assert_array_equal(mixed[1], body_mask(images[1]))
    everywhere, body = rois_for(images, expert, "body")
    assert body.all() and not np.array_equal(everywhere[0], expert[0])
    with pytest.raises(ValueError, match="unknown ROI source"):
        rois_for(images, expert, "atlas")
