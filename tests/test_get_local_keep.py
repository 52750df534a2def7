"""get_local(..., keep=): a reduction of the raw locals that runs before anything is kept."""
import warnings

import pytest

from getlocal import GetLocalError, get_local


def _scores(x):
    doubled = x * 2
    return doubled + 1


def test_keep_sees_the_raw_locals_and_its_result_is_what_the_cache_holds():
    seen = []

    def keep(owner, values):
        seen.append(dict(values))
        return values["doubled"] - values["x"] if values["x"] != 0 else None  # None: nothing held

    get_local("x", "doubled", keep=keep)(_scores)
    try:
        with get_local.capture(convert="raw"):
            assert [_scores(v) for v in (3, 0, 5)] == [7, 1, 11]  # the function's results are its own
        assert get_local.cache[get_local.key_of(_scores)] == [3, 5]
        assert seen == [{"x": 3, "doubled": 6}, {"x": 0, "doubled": 0}, {"x": 5, "doubled": 10}]
    finally:
        get_local.remove(_scores)


def test_a_keep_that_raises_skips_the_call_with_one_warning_and_never_breaks_the_function():
    get_local("doubled", keep=lambda owner, values: 1 / 0)(_scores)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with get_local.capture():
                assert _scores(1) == 3 and _scores(2) == 5
        assert get_local.cache.get(get_local.key_of(_scores), []) == []
        assert len([w for w in caught if "keep()" in str(w.message)]) == 1
    finally:
        get_local.remove(_scores)


def test_decorating_again_with_another_keep_is_refused_naming_the_way_out():
    get_local("doubled")(_scores)
    try:
        with pytest.raises(GetLocalError, match="get_local.remove"):
            get_local("doubled", keep=lambda owner, values: 0)(_scores)
        with pytest.raises(GetLocalError, match="keep="):
            get_local("doubled", keep=3)
    finally:
        get_local.remove(_scores)
