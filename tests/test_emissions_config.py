"""Stack configuration: the sample parses with the code's defaults, regime defaults, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from emissions.config import IED_CI_PERCENT, StackConfig, load_stacks
from emissions.synthetic import lcp_stack, waste_stack

SAMPLE = Path(__file__).resolve().parents[1] / "emissions" / "sample.toml"


def test_sample_parses_and_commented_defaults_match_code():
    stacks = load_stacks(tomllib.loads(SAMPLE.read_text())["stacks"])
    assert [s.name for s in stacks] == ["K1", "WI1"]
    k1 = stacks[0]
    # Every "# key = value" line in the sample documents a default: check the ones of [stacks.regulatory].
    reg = k1.regulatory
    assert reg.ci_percent == IED_CI_PERCENT
    assert (reg.ci_elv, reg.day_from, reg.day_max_invalid, reg.max_invalid_days_per_year) == ("month", "hour", 3, 10)
    assert reg.o2_max_percent == 20.0 and reg.clamp_validated_at_zero and reg.accept_uncertain
    assert k1.live.warn_percent == 100.0 and k1.live.recent_s == 600 and k1.live.projection == "recent"
    q = k1.qal3[0]
    assert (q.warn_sigma, q.action_sigma, q.cusum_k, q.cusum_h, q.zero_reference) == (2.0, 3.0, 0.501, 2.85, 0.0)
    assert k1.pollutant("NOx").molar_mass() == 46.01
    assert k1.ci_value(k1.pollutant("NOx")) == pytest.approx(20.0)  # 20 % of 100


def test_regime_defaults():
    wi = waste_stack()
    assert wi.regulatory.day_from == "half_hour" and wi.regulatory.day_max_invalid == 5
    assert wi.regulatory.ci_elv == "day"
    assert {r.name for r in wi.compliance} >= {"wi_daily", "wi_half_hour_a", "wi_half_hour_b"}
    lcp = lcp_stack()
    assert [r.name for r in lcp.compliance] == ["lcp_monthly", "lcp_daily_110", "lcp_hourly_95_200"]
    assert [r.percent for r in lcp.compliance] == [100.0, 110.0, 200.0]


def test_permit_overrides_one_ci_and_keeps_the_rest():
    cfg = lcp_stack(regulatory={"ci_percent": {"NOx": 15.0}, "day_max_invalid": 2,
                                "min_valid_share": {"hour": 0.75}})
    assert cfg.regulatory.ci_percent["NOx"] == 15.0 and cfg.regulatory.ci_percent["SO2"] == 20.0
    assert cfg.regulatory.day_max_invalid == 2 and cfg.regulatory.day_from == "hour"
    assert cfg.regulatory.min_valid_share["hour"] == 0.75 and cfg.regulatory.min_valid_share["half_hour"] == 2 / 3


def _errors(**kw) -> str:
    with pytest.raises(ValidationError) as exc:
        lcp_stack(**kw)
    return str(exc.value)


def test_errors_name_the_key():
    assert "regime" in _errors(regime="cement")
    assert "extra" in _errors(colour="red").lower()
    msg = _errors(pollutants=[{"name": "XYZ", "tag": "a", "unit": "ppm"}])
    assert "molar_mass_g_mol" in msg
    msg = _errors(pollutants=[{"name": "NOx", "tag": "a", "elv": {"day": 100.0}}])
    assert "ci_elv" in msg and "month" in msg
    assert "timezone" in _errors(timezone="Mars/Olympus")
    assert "o2" in _errors(o2={})


def test_a_flow_that_cannot_be_brought_to_dry_standard_conditions_is_refused():
    """A flue-gas flow at actual conditions needs temperature and pressure, a wet one the water content (the
    defaults are actual and wet): without them every mass rate was NaN, no mass ever, and the stack loaded fine."""
    msg = _errors(temperature={}, pressure={})
    assert "flow" in msg and "temperature" in msg and "pressure" in msg
    assert "h2o" in _errors(h2o={}, o2={"tag": "K1.O2"}, pollutants=[{"name": "NOx", "tag": "K1.NOx", "unit": "ppm",
                                                                      "elv": {"month": 100.0}}])
    assert lcp_stack(temperature={}, pressure={}, flow={"tag": "Q", "conditions": "standard"}).flow.tag == "Q"
    assert lcp_stack(flow={}).flow.tag is None  # no flow: no mass, nothing to refuse


def test_fingerprint_changes_with_permit_numbers():
    a, b = lcp_stack(), lcp_stack(regulatory={"day_max_invalid": 2})
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == lcp_stack().fingerprint()


def test_site_loader_validates_stacks(tmp_path):
    from edge import settings
    from edge.errors import ConfigError

    text = SAMPLE.read_text().replace('regime = "lcp"', 'regime = "lcpx"', 1)
    p = tmp_path / "site.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        settings.load(p)
    assert any("stacks[0] (K1)" in line and "regime" in line for line in exc.value.problems)
    p.write_text(SAMPLE.read_text())
    assert len(settings.load(p).stacks) == 2


def test_model_is_frozen():
    cfg = waste_stack()
    with pytest.raises(ValidationError):
        cfg.name = "x"
    assert isinstance(cfg, StackConfig)


def _documented_defaults() -> list[tuple[str, str, object]]:
    """(section, key, value) for every commented-out ``# key = value`` line of the sample's first stack."""
    section, out = "stacks", []
    for line in SAMPLE.read_text().split("# A waste incinerator line")[0].splitlines():
        s = line.strip()
        if s.startswith("["):
            section = s.split("#")[0].strip().strip("[]").strip()
            continue
        if not s.startswith("# ") or " = " not in s:
            continue
        body = s[2:].split("  #")[0].strip()
        key, _, value = body.partition(" = ")
        if not key.replace("_", "").replace(".", "").isalnum() or key.startswith(("{", "lcp", "waste")):
            continue
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            continue
        out.append((section, key, parsed))
    return out


def test_every_documented_default_is_the_codes_default():
    """Telegraf lesson: a sample whose commented defaults drift from the code misleads every reader."""
    k1 = load_stacks(tomllib.loads(SAMPLE.read_text())["stacks"])[0]
    nox = k1.pollutant("NOx")
    resolved = {("stacks.pollutants", "molar_mass_g_mol"): nox.molar_mass(),
                ("stacks.pollutants", "ci_percent"): k1.ci_percent(nox),
                ("stacks.pollutants", "ci_elv"): k1.ci_elv(nox)}
    objects = {"stacks": k1, "stacks.h2o": k1.h2o, "stacks.pollutants": nox, "stacks.regulatory": k1.regulatory,
               "stacks.live": k1.live, "stacks.qal3": k1.qal3[0], "stacks.fuels": k1.fuels[0]}
    checked = 0
    for section, key, value in _documented_defaults():
        if (section, key) in resolved:
            actual = resolved[(section, key)]
        else:
            obj = objects[section]
            for part in key.split("."):
                obj = getattr(obj, part)
            actual = obj
        if isinstance(value, float) and isinstance(actual, float):
            assert actual == pytest.approx(value, rel=1e-3), (section, key)
        elif isinstance(value, dict):
            assert {k: pytest.approx(v, rel=1e-3) for k, v in value.items()} == dict(actual), (section, key)
        else:
            assert actual == value, (section, key)
        checked += 1
    assert checked >= 30


def test_a_tag_registered_in_another_unit_than_the_stack_reads_it_in_is_refused(tmp_path):
    """A pollutant's ``unit`` defaults to mg/m3: an analyser tag registered in ppm whose pollutant leaves ``unit`` out
    was read as mg/m³ (NOx 100 ppm as 100, not 205 mg/Nm³; every limit judged against half the emission). The site
    loader refuses it, naming the stack key and the tag; the zero/span check tags of QAL3 and the temperature likewise.
    Spellings of the same unit (mg/Nm³, °C, %) pass."""
    from edge import settings
    from edge.errors import ConfigError

    def site(nox_unit: str, zero_unit: str, t_unit: str) -> Path:
        p = tmp_path / "site.toml"
        p.write_text(f"""
[[tags]]
name = "K1.NOx"
unit = "{nox_unit}"
[[tags]]
name = "K1.NOx.zero"
unit = "{zero_unit}"
[[tags]]
name = "K1.T"
unit = "{t_unit}"
[[tags]]
name = "K1.O2"
unit = "%"

[[stacks]]
name = "K1"
regime = "lcp"
reference_o2_percent = 3.0
o2 = {{ tag = "K1.O2" }}
temperature = {{ tag = "K1.T", unit = "degC" }}
pressure = {{ value = 101.3 }}
pollutants = [{{ name = "NOx", tag = "K1.NOx", elv = {{ month = 100.0 }} }}]
qal3 = [{{ analyser = "NOx", zero_tag = "K1.NOx.zero", s_ams = 0.8 }}]
""")
        return p

    assert settings.load(site("mg/Nm³", "mg/m3", "°C")).stacks  # the same units, spelt otherwise
    with pytest.raises(ConfigError) as exc:
        settings.load(site("ppm", "ppm", "K"))
    problems = "\n".join(exc.value.problems)
    assert "stacks (K1).pollutants (NOx).unit: read in 'mg/m3', but its tag K1.NOx is registered in 'ppm'" in problems
    assert ("stacks (K1).qal3 (NOx).zero_tag: read in 'mg/m3', but its tag K1.NOx.zero is registered in 'ppm'"
            in problems)
    assert "stacks (K1).temperature.unit: read in 'degC', but its tag K1.T is registered in 'K'" in problems
    assert all(line.startswith(str(tmp_path / "site.toml")) for line in exc.value.problems)


def test_a_qal3_check_tag_that_is_a_measured_tag_is_refused():
    """zero_tag naming the analyser's own measurement tag (or the O2 tag) charted every minute's process value as a
    zero check: thousands of drift alarms a day. Refused, naming the key and the role the tag already has."""
    msg = _errors(qal3=[{"analyser": "NOx", "zero_tag": "K1.NOx", "span_tag": "K1.O2", "span_reference": 80.0}])
    assert "qal3 (NOx).zero_tag: 'K1.NOx' is the stack's NOx tag" in msg
    assert "qal3 (NOx).span_tag: 'K1.O2' is the stack's o2 tag" in msg
    assert lcp_stack(qal3=[{"analyser": "NOx", "zero_tag": "K1.NOx.zero"}]).qal3[0].zero_tag == "K1.NOx.zero"
