"""Starting a local Ray head: one that has not come up within a try is cleared away (its
processes killed) and a new one started, as CI saw heads that never came up under the suite's
load; one that never starts is an error that says how often it was tried. A first wait of 0 s
makes Ray's own wait for the GCS time out for real."""

import pytest
import ray

from xgal.scorer.ray_pool import RayStartError, ray_processes, start_local


def test_a_head_that_does_not_start_in_time_is_cleared_and_started_again():
    start_local(1, gcs_waits=(0, 120, 120))
    try:
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    finally:
        ray.shutdown()


def test_a_head_that_never_starts_is_an_error_naming_its_tries_and_leaves_nothing_running():
    with pytest.raises(RayStartError, match="did not start in 2 tries"):
        start_local(1, gcs_waits=(0, 0))
    assert not ray.is_initialized()
    assert ray_processes() == []
