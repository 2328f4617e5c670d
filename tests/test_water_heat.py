"""The one water heat formula, shared by the board's state report and the leader's heat meter."""

import math

import pytest

from agent.water_heat import heat_w


def test_ten_litres_a_minute_warmed_by_five_kelvin_carry_about_3_5_kw():
    # 10/60 kg/s * 4180 J/(kg K) * 5 K
    assert heat_w(10.0, 40.0, 45.0) == pytest.approx(3483.33, abs=0.01)


def test_water_cooled_on_its_way_through_is_negative_heat_not_hidden():
    assert heat_w(6.0, 45.0, 44.0) == pytest.approx(-418.0)


@pytest.mark.parametrize("inputs", [(None, 40.0, 45.0), (10.0, None, 45.0), (10.0, 40.0, None),
                                    (math.nan, 40.0, 45.0), (10.0, math.inf, 45.0)])
def test_an_unknown_or_non_finite_input_gives_no_heat_rather_than_a_guess(inputs):
    assert heat_w(*inputs) is None
