import itertools

import pytest

from hessnb.tracking.schedule import make_schedule


def test_every_n_steps():
    schedule = make_schedule(5)
    assert [s for s in range(21) if s in schedule] == [0, 5, 10, 15, 20]
    assert schedule.upto(12) == [0, 5, 10]


def test_log_schedule_is_dense_early_and_sparse_late():
    steps = make_schedule("log:4").upto(1000)
    assert steps[:4] == [0, 1, 2, 3]
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert gaps == sorted(gaps)  # spacing only grows
    assert 1000 in steps and len(steps) < 20
    assert all(s in make_schedule("log:4") for s in steps)
    assert 4 not in make_schedule("log:4")


def test_explicit_list():
    schedule = make_schedule([0, 3, 7])
    assert [s for s in range(10) if s in schedule] == [0, 3, 7]


@pytest.mark.parametrize(
    ("every", "error", "message"),
    [
        (0, ValueError, "positive"),
        (-3, ValueError, "positive"),
        ([3, 1, 2], ValueError, "sorted"),
        ([1, 2, 2], ValueError, "duplicates"),
        ([], ValueError, "empty"),
        ([-1, 2], ValueError, ">= 0"),
        ("sqrt", ValueError, "log"),
        ("log:0", ValueError, "log"),
        ("log:00", ValueError, "log"),
        (True, TypeError, "bool"),
    ],
)
def test_bad_schedules(every, error, message):
    with pytest.raises(error, match=message):
        make_schedule(every)
