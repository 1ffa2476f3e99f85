import pytest

from gatewayd.backoff import Backoff


def test_ceiling_grows_then_caps():
    b = Backoff(initial_s=1, factor=2, max_s=10)
    assert [b.ceiling(a) for a in range(6)] == [1, 2, 4, 8, 10, 10]


def test_delay_is_jittered_below_ceiling():
    b = Backoff(initial_s=1, factor=2, max_s=10)
    assert b.delay(3, rand=lambda: 1.0) == 8
    assert b.delay(3, rand=lambda: 0.25) == 2
    assert b.delay(3, rand=lambda: 0.0) == 0


def test_huge_attempt_does_not_overflow():
    assert Backoff(max_s=60).ceiling(10_000) == 60


@pytest.mark.parametrize(
    "kwargs", [{"initial_s": 0}, {"initial_s": 5, "max_s": 1}, {"factor": 0.5}]
)
def test_invalid_backoff_refused(kwargs):
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(**kwargs)
