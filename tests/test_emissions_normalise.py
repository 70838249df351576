"""Normalisation formulas against hand-computed values, and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emissions.config import StackConfig
from emissions.normalise import Primary, Why, dry_std_flow, normalise_stack


def stack(**kw) -> StackConfig:
    data = {"name": "S", "regime": "lcp", "reference_o2_percent": 3.0, "o2": {"tag": "O2"},
            "pollutants": [{"name": "NOx", "tag": "NOX", "unit": "mg/m3", "elv": {"month": 100.0}}]}
    data.update(kw)
    return StackConfig.model_validate(data)


def prim(**values) -> Primary:
    arrays = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in values.items()}
    n = len(next(iter(arrays.values())))
    return Primary(0, 60, n, {k: np.broadcast_to(v, (n,)).copy() for k, v in arrays.items()})


def nox(cfg: StackConfig, **values):
    return normalise_stack(cfg, prim(**values))["NOx"]


def test_ppm_to_mg_nm3_uses_molar_mass_and_volume():
    cfg = stack(reference_o2_percent=None, pollutants=[{"name": "NOx", "tag": "N", "unit": "ppm"}])
    n = nox(cfg, NOx=100.0)
    assert n.ref[0] == pytest.approx(100 * 46.01 / 22.414)  # 205.27 mg/Nm³ as NO2
    for name, m in (("SO2", 64.07), ("CO", 28.01), ("HCl", 36.46)):
        c = stack(reference_o2_percent=None, pollutants=[{"name": name, "tag": "x", "unit": "ppm"}])
        assert normalise_stack(c, prim(**{name: 10.0}))[name].ref[0] == pytest.approx(10 * m / 22.414)


def test_percent_is_ten_thousand_ppm():
    cfg = stack(reference_o2_percent=None, pollutants=[{"name": "CO2", "tag": "c", "unit": "percent"}])
    assert normalise_stack(cfg, prim(CO2=10.0))["CO2"].ref[0] == pytest.approx(1e5 * 44.01 / 22.414)


def test_actual_conditions_to_standard():
    cfg = stack(reference_o2_percent=None, temperature={"tag": "T"}, pressure={"tag": "p", "unit": "hPa"},
                pollutants=[{"name": "NOx", "tag": "N", "conditions": "actual"}])
    n = nox(cfg, NOx=100.0, temperature=150.0, pressure=1000.0)
    assert n.ref[0] == pytest.approx(100 * (423.15 / 273.15) * (101.325 / 100.0))  # 156.96


def test_wet_to_dry_and_reference_o2():
    cfg = stack(h2o={"tag": "H"}, pollutants=[{"name": "NOx", "tag": "N", "moisture": "wet", "elv": {"month": 1.0}}])
    n = nox(cfg, NOx=90.0, h2o=10.0, o2=6.0)
    # 90 / (1 - 0.10) = 100 dry; × (21 - 3) / (21 - 6) = 120
    assert n.dry_std[0] == pytest.approx(100.0)
    assert n.ref[0] == pytest.approx(120.0)


def test_wet_o2_is_dried_before_correction():
    cfg = stack(o2={"tag": "O2", "basis": "wet"}, h2o={"value": 10.0})
    n = nox(cfg, NOx=100.0, o2=5.4)  # 5.4 wet / 0.9 = 6.0 dry
    assert n.ref[0] == pytest.approx(100 * 18 / 15)


def test_everything_at_once_hand_computed():
    cfg = stack(o2={"tag": "O2", "basis": "wet"}, h2o={"tag": "H"}, temperature={"tag": "T", "unit": "K"},
                pressure={"tag": "p"}, reference_o2_percent=11.0,
                pollutants=[{"name": "SO2", "tag": "s", "unit": "mg/m3", "moisture": "wet", "conditions": "actual"}])
    n = normalise_stack(cfg, prim(SO2=40.0, h2o=20.0, o2=8.0, temperature=400.0, pressure=98.0))["SO2"]
    std = 40 * (400 / 273.15) * (101.325 / 98.0)
    dry = std / 0.8
    o2_dry = 8.0 / 0.8
    assert n.ref[0] == pytest.approx(dry * (21 - 11) / (21 - o2_dry))


def test_o2_guard_near_21_percent():
    n = nox(stack(), NOx=[50.0, 50.0, 50.0], o2=[19.9, 20.0, 20.9])
    assert n.valid.tolist() == [True, False, False]
    assert np.isnan(n.ref[1:]).all()
    assert all(w & Why.O2_HIGH for w in n.why[1:])


def test_correct_only_above_reference():
    cfg = stack(regulatory={"o2_correct_only_above_reference": True})
    n = nox(cfg, NOx=[100.0, 100.0], o2=[2.0, 6.0])
    assert n.ref.tolist() == pytest.approx([100.0, 120.0])


def test_missing_peripheral_invalidates_with_reason():
    n = nox(stack(), NOx=[50.0, np.nan], o2=[np.nan, 3.0])
    assert not n.valid.any()
    assert n.why[0] & Why.O2_MISSING and n.why[1] & Why.ANALYSER


def test_a_reason_is_given_only_for_what_the_pollutant_needs():
    """O2 measured wet: NOx (corrected to reference O2) needs the water content to dry the O2, CO2 in vol % dry without
    the O2 correction does not. A minute without H2O is invalid NOx with reason h2o_missing; its CO2 is valid and the
    report's "invalid data" table must not count it under h2o_missing."""
    cfg = stack(o2={"tag": "O2", "basis": "wet"}, h2o={"tag": "H"},
                pollutants=[{"name": "NOx", "tag": "N", "elv": {"month": 100.0}},
                            {"name": "CO2", "tag": "C", "unit": "percent", "o2_correction": False}])
    out = normalise_stack(cfg, prim(NOx=[50.0, 50.0], CO2=10.0, o2=5.0, h2o=[10.0, np.nan]))
    assert out["NOx"].valid.tolist() == [True, False] and out["NOx"].why[1] & Why.H2O_MISSING
    # The O2 analyser was measuring: the minute is not also counted under o2_missing (it was, as O2 | H2O missing).
    assert not out["NOx"].why[1] & Why.O2_MISSING
    wet_o2_gone = normalise_stack(cfg, prim(NOx=50.0, CO2=10.0, o2=np.nan, h2o=10.0))["NOx"]
    assert wet_o2_gone.why[0] & Why.O2_MISSING and not wet_o2_gone.why[0] & Why.H2O_MISSING
    assert out["CO2"].valid.tolist() == [True, True] and out["CO2"].why.tolist() == [0, 0]


def test_pems_substitutes_only_where_the_analyser_is_invalid():
    cfg = stack(pollutants=[{"name": "NOx", "tag": "N", "pems": {"tag": "P"}, "elv": {"month": 100.0}}])
    n = normalise_stack(cfg, prim(NOx=[50.0, np.nan, np.nan], o2=3.0, **{"pems:NOx": [70.0, 60.0, np.nan]}))["NOx"]
    assert n.ref[:2].tolist() == [50.0, 60.0] and np.isnan(n.ref[2])
    assert n.substituted.tolist() == [False, True, False]
    assert n.why[1] & Why.SUBSTITUTED


def test_flow_and_mass_rate():
    cfg = stack(h2o={"value": 10.0}, temperature={"tag": "T"}, pressure={"tag": "p"}, flow={"tag": "Q"})
    p = prim(NOx=100.0, o2=6.0, flow=200_000.0, temperature=150.0, pressure=101.325)
    q = dry_std_flow(cfg, p)[0]
    assert q == pytest.approx(200_000 * 273.15 / 423.15 * 0.9)
    n = normalise_stack(cfg, p)["NOx"]
    assert n.mass_kg_h[0] == pytest.approx(100.0 * q * 1e-6)  # mass uses the concentration before O2 correction


def test_not_operating_is_not_valid_but_flagged():
    p = prim(NOx=[50.0, 50.0], o2=3.0)
    p.operating = np.array([True, False])
    n = normalise_stack(stack(), p)["NOx"]
    assert n.valid.tolist() == [True, False] and n.why[1] & Why.NOT_OPERATING


@settings(max_examples=200, deadline=None)
@given(c=st.floats(0.0, 1e4), o2=st.floats(0.0, 19.9))
def test_normalising_to_the_measured_o2_changes_nothing(c, o2):
    cfg = stack(reference_o2_percent=o2)
    n = nox(cfg, NOx=c, o2=o2)
    assert n.ref[0] == pytest.approx(c, rel=1e-12, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(c=st.floats(0.1, 1e4), o2=st.floats(0.0, 19.9), ref=st.floats(0.0, 20.0))
def test_o2_correction_is_monotonic_and_invertible(c, o2, ref):
    there = nox(stack(reference_o2_percent=ref), NOx=c, o2=o2).ref[0]
    back = (21 - o2) / (21 - ref) * there
    assert back == pytest.approx(c, rel=1e-9)


def test_an_implausible_pressure_or_temperature_is_missing_not_converted():
    """A gauge pressure configured as absolute (0.3 kPa) made the concentration 338 times larger, and every one a limit
    exceedance in the report; hPa read as kPa the same. Such a value is missing."""
    cfg = stack(reference_o2_percent=None, temperature={"tag": "T"}, pressure={"tag": "p"},
                pollutants=[{"name": "NOx", "tag": "N", "conditions": "actual"}])
    n = normalise_stack(cfg, prim(NOx=[100.0] * 4, temperature=[150.0, 150.0, 150.0, 1900.0],
                                  pressure=[101.325, 0.3, 1013.25, 101.325]))["NOx"]
    assert n.ref[0] == pytest.approx(100 * 423.15 / 273.15)
    assert np.isnan(n.ref[1:]).all()
    assert all(Why.T_P_MISSING & int(w) for w in n.why[1:])


@pytest.mark.parametrize("signal, words", [({"pressure": {"value": 0.3}}, "not an absolute flue-gas pressure"),
                                           ({"pressure": {"value": 1013.0}}, "not an absolute flue-gas pressure"),
                                           ({"temperature": {"value": 1900.0}}, "not a flue-gas temperature")])
def test_an_implausible_constant_pressure_or_temperature_is_refused(signal, words):
    with pytest.raises(ValueError, match=words):
        stack(**signal)
    stack(pressure={"value": 1013.0, "unit": "hPa"}, temperature={"value": 423.0, "unit": "K"})  # the units said


def test_a_negative_concentration_is_kept_as_measured():
    # An analyser's zero noise goes below 0: -2 and +4 mg/m³ average to 1, not to 2 (negatives set to 0 would bias
    # a low average up). Only its validated average is reported as 0 (clamp_validated_at_zero).
    n = nox(stack(), NOx=[-2.0, 4.0], o2=3.0)
    assert n.ref.tolist() == [-2.0, 4.0] and n.valid.all() and (n.why == Why.NONE).all()
    # NaN and infinite readings are no data.
    n = nox(stack(), NOx=[np.nan, np.inf], o2=3.0)
    assert not n.valid.any() and (n.why == Why.ANALYSER).all()


def test_a_flow_in_cubic_metres_per_second():
    # 10 m³/s dry at standard conditions = 36 000 Nm³/h; 100 mg/Nm³ (before the O2 correction) -> 3.6 kg/h.
    cfg = stack(flow={"tag": "Q", "unit": "m3/s", "moisture": "dry", "conditions": "standard"})
    n = normalise_stack(cfg, prim(NOx=100.0, o2=6.0, flow=10.0))["NOx"]
    assert n.mass_kg_h[0] == pytest.approx(3.6) and n.ref[0] == pytest.approx(100.0 * 18 / 15)
