"""Analyser status (calibration, maintenance, fault): the readings of a pollutant whose status tag says "not
measuring" are left out of every average, stored and live, and that time counts as unavailable (as missing data).

The day: NOx and CO of one analyser at 50 mg/m³ every minute. 10:15-10:30 a span check (status 3, span gas at
160 mg/m³ on the cell); 14:00-16:30 maintenance (status 2, the analyser reads 0). The status tag is sent on
change. Waste incineration rules: an average of half an hour or an hour is valid with 2/3 of its operating minutes
valid, a day with at most 5 invalid half-hours.
"""

from __future__ import annotations

import tomllib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge.db.features import detect
from edge.records import Alert, Quality, Reading
from emissions import job, report, store, synthetic
from emissions.config import StackConfig
from emissions.live import LiveMonitor

DAY = int(datetime(2025, 3, 3, tzinfo=UTC).timestamp())
H = 3600
SPAN = (DAY + 10 * H + 15 * 60, DAY + 10 * H + 30 * 60)  # the span check
MAINT = (DAY + 14 * H, DAY + 16 * H + 30 * 60)  # maintenance
STATUS = [(DAY, 0.0), (SPAN[0], 3.0), (SPAN[1], 0.0), (MAINT[0], 2.0), (MAINT[1], 0.0)]
LABEL = "analyser_status (calibration, maintenance, fault)"


def stack(name: str, status_tag: str | None = "same", **extra) -> StackConfig:
    pol = {"unit": "mg/m3", "elv": {"day": 200.0, "half_hour_100": 100.0}}
    status = {} if status_tag is None else {"status_tag": f"{name}.AN1.status" if status_tag == "same" else status_tag}
    return StackConfig.model_validate({
        "name": name, "regime": "waste_incineration",
        "pollutants": [{"name": "NOx", "tag": f"{name}.NOx", **pol, **status},
                       {"name": "CO", "tag": f"{name}.CO", **pol, **status}], **extra})


def cell(t: np.ndarray) -> np.ndarray:
    """What the analyser reads: 50 mg/m³ of flue gas, span gas during the check, 0 in maintenance."""
    v = np.full(len(t), 50.0)
    v[(t >= SPAN[0]) & (t < SPAN[1])] = 160.0
    v[(t >= MAINT[0]) & (t < MAINT[1])] = 0.0
    return v


def seed(conn, cfg: StackConfig, status: list[tuple[int, float]] | None = STATUS, status_tag: str | None = None,
         quality: list[int] | None = None) -> None:
    t = np.arange(DAY, DAY + 86400, 60, dtype=np.int64)
    tags = [p.tag for p in cfg.pollutants]
    status_tag = status_tag or f"{cfg.name}.AN1.status"
    ids = synthetic.ensure_tags(conn, [*tags, status_tag], asset=cfg.name)
    for tag in tags:
        synthetic.copy_readings(conn, ids[tag], t, cell(t))
    if status:
        st = np.array([s for s, _ in status], dtype=np.int64)
        q = None if quality is None else np.array(quality, dtype=np.int16)
        synthetic.copy_readings(conn, ids[status_tag], st, np.array([v for _, v in status]), None, q)


def compute(conn, cfg: StackConfig) -> job.SpanResult:
    return job.run_span(conn, cfg, DAY, DAY + 86400, context="day", clock=lambda: DAY + 2 * 86400)


def stored(conn, cfg: StackConfig, pollutant: str, period: str) -> dict[int, tuple]:
    """period start -> (value, valid, n_valid, n_operating, availability) of the stored averages."""
    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM period_start)::bigint, value, valid, n_valid, n_operating, availability"
                    " FROM emission_averages WHERE stack = %s AND pollutant = %s AND period = %s",
                    (cfg.name, pollutant, period))
        return {r[0]: tuple(r[1:]) for r in cur.fetchall()}


def test_a_span_check_and_maintenance_are_left_out_of_the_stored_averages(conn):
    cfg = stack(f"S{uuid.uuid4().hex[:8]}")
    seed(conn, cfg)
    sr = compute(conn, cfg)
    for pol in ("NOx", "CO"):  # one analyser, one status tag for both
        hours, halves = stored(conn, cfg, pol, "hour"), stored(conn, cfg, pol, "half_hour")
        # The hour of the span check: the mean of its other 45 minutes, valid (45 >= 2/3 of 60), 75 % available.
        assert hours[DAY + 10 * H] == (pytest.approx(50.0), True, 45, 60, pytest.approx(0.75))
        # Its half-hour 10:00-10:30 has 15 of 30 minutes: invalid, as it would be with 15 minutes missing.
        assert halves[DAY + 10 * H] == (pytest.approx(50.0), False, 15, 30, pytest.approx(0.5))
        assert halves[DAY + 10 * H + 1800][:3] == (pytest.approx(50.0), True, 30)
        # Maintenance: the hours and half-hours inside it have no valid data (operating, not excluded); the hour
        # 16:00 keeps 30 of 60 minutes, invalid; the half-hour 16:30 is whole again.
        for h in (14, 15):
            assert hours[DAY + h * H][1:4] == (False, 0, 60)
        assert hours[DAY + 16 * H][1:4] == (False, 30, 60)
        assert [halves[DAY + 14 * H + 1800 * i][1] for i in range(6)] == [False] * 5 + [True]
        # The day: 6 invalid half-hours (10:00 and five in maintenance) > 5: invalid; its value is the mean of
        # the valid half-hours, never the span gas nor the zeros.
        day = stored(conn, cfg, pol, "day")[DAY]
        assert day[0] == pytest.approx(50.0) and day[1] is False
        assert day[2:4] == (1440 - 15 - 150, 1440)
    # Nothing over the half-hour limit (100): the span gas at 160 made no exceedance.
    assert not [e for e in sr.events if e.kind != "invalid_days"]
    # The report says why: 165 minutes of each pollutant were left out by the analyser status.
    rep = report.build(sr, "day", DAY, DAY + 86400)
    assert rep.invalid_reasons["NOx"][LABEL] == 165 and "analyser" not in rep.invalid_reasons["NOx"]
    assert rep.invalid_reasons["CO"][LABEL] == 165


def test_without_a_status_the_span_gas_counts_and_a_status_tag_never_read_changes_nothing(conn):
    """The same day without a status signal (as before analyser status existed): the span gas is averaged. A
    configured status tag that has no readings (registered or not) gives exactly that too."""
    name = f"S{uuid.uuid4().hex[:8]}"
    seed(conn, stack(name, None), status=None)
    base = compute(conn, stack(name, None))
    hours = stored(conn, stack(name, None), "NOx", "hour")
    assert hours[DAY + 10 * H][:3] == (pytest.approx((45 * 50 + 15 * 160) / 60), True, 60)
    for tag in (f"{name}.AN1.status", f"{name}.never.registered"):  # the first is in `tags`, without readings
        other = compute(conn, stack(name, tag))
        for pol in ("NOx", "CO"):
            for period, av in base.result.averages[pol].items():
                got = other.result.averages[pol][period]
                np.testing.assert_array_equal(got.status, av.status, err_msg=f"{tag} {pol} {period}")
                np.testing.assert_array_equal(got.n_valid, av.n_valid)
                np.testing.assert_allclose(got.value, av.value)
        assert not other.primary.excluded
    # The status signal is part of the configuration fingerprint; without one a stack hashes as before it existed
    # (this is the sha256 of `synthetic.waste_stack()` before status_tag: results stored then keep their sha).
    assert stack(name, None).fingerprint() != stack(name).fingerprint()
    assert synthetic.waste_stack().fingerprint() == "aec1ef28ec2a69ea54b16b6d19f56b912bb5596ef59033e9825a8be4e621ee84"


def test_the_status_is_a_step_signal(conn):
    """A status holds from its reading to the next, also from before the span; a minute in which the analyser
    was not measuring at any moment is left out whole; before the first status reading the analyser measures;
    a status reading of BAD quality is skipped (the one before it holds on)."""
    cfg = stack(f"S{uuid.uuid4().hex[:8]}")
    st = [(DAY + 2 * H + 30, 1.0),  # 02:00:30 calibrating ...
          (DAY + 2 * H + 5 * 60 + 10, 0.0),  # ... until 02:05:10: minutes 02:00 to 02:05 out
          (DAY + 3 * H, 0.0), (DAY + 3 * H + 20, 0.0),  # repeated "measuring"
          (DAY + 4 * H, 2.0),  # 04:00:00 maintenance, still on when the span below starts at 05:00
          (DAY + 5 * H + 120, 0.0),  # back at 05:02:00 exactly: 05:02 is measured
          (DAY + 6 * H, 1.0)]  # BAD quality: skipped, measuring holds on
    seed(conn, cfg, status=st, quality=[0] * 6 + [int(Quality.BAD)])
    features = detect(conn)

    def out(start: int, end: int) -> list[int]:
        p = store.fetch_primary(conn, features, cfg, start, end)
        mask = p.excluded.get("NOx", np.zeros(p.n, dtype=bool))
        assert np.isnan(p.values["NOx"][mask]).all() and np.isfinite(p.values["NOx"][~mask]).all()
        return [(start + 60 * int(i) - DAY) // 60 for i in np.flatnonzero(mask)]

    assert out(DAY, DAY + 8 * H) == [*range(120, 126), *range(240, 302)]
    assert out(DAY + 5 * H, DAY + 6 * H) == [300, 301]  # the maintenance status read before the span holds
    assert out(DAY, DAY + 2 * H) == []  # nothing before the first non-zero status


def test_the_live_monitor_leaves_the_check_out_and_raises_no_false_alert():
    """The same day through the live monitor, readings every 20 s: without the status the span gas makes a
    half-hour heading over its limit (critical); with it the running half-hour is the flue gas only, and the day's
    half-hours that are not valid (10:00, maintenance) are left out of the day's projection."""
    def run(cfg: StackConfig) -> tuple[LiveMonitor, list[Alert], dict]:
        alerts: list[Alert] = []
        mon = LiveMonitor(cfg, alerts.append)
        seen: dict[int, dict] = {}
        ts = np.arange(DAY, DAY + 86400 - 60, 20, dtype=np.int64)
        values = cell(ts)
        status = dict(STATUS)
        for t, v in zip(ts.tolist(), values.tolist(), strict=True):
            at = datetime.fromtimestamp(t, UTC)
            batch = [Reading("L.NOx", at, v, at)]
            if t in status:
                batch.insert(0, Reading("L.AN1.status", at, status[t], at))
            mon.observe(batch)
            if (t - DAY) % 1800 == 1780:  # the last reading of each half-hour: its running average
                mon.flush()
                seen[(t - DAY) // 1800] = dict(mon.last["NOx"]["wi_half_hour_a"])
        mon.flush()
        return mon, alerts, seen

    without, alerts0, seen0 = run(stack("L", None))
    assert seen0[20]["running"] == pytest.approx((15 * 50 + 15 * 160) / 30)  # 10:00-10:30 with the span gas
    assert any(a.kind == "emission_projection" and a.severity == "critical" for a in alerts0)

    mon, alerts, seen = run(stack("L"))
    assert seen[20]["running"] == pytest.approx(50.0)  # the other 15 minutes only
    assert seen[29]["running"] != seen[29]["running"]  # 14:30-15:00: all maintenance, no value (NaN)
    assert not alerts
    day = mon.state[("NOx", "wi_daily")]
    # 48 half-hours, 47 done: 10:00 and the five of maintenance are not valid and not in the day.
    assert len(day.done_subs) == 47 - 6 and all(v == pytest.approx(50.0) for v in day.done_subs)
    assert mon.last["NOx"]["wi_daily"]["running"] == pytest.approx(50.0)
    # Without the status every half-hour counted, the maintenance zeros and the span gas among them.
    assert len(without.state[("NOx", "wi_daily")].done_subs) == 47


def test_status_configuration_errors_name_file_key_and_problem(tmp_path):
    def err(**pol) -> str:
        with pytest.raises(ValidationError) as exc:
            StackConfig.model_validate({"name": "E", "regime": "lcp", "operating_state_tag": "E.state",
                                        "pollutants": [{"name": "NOx", "tag": "E.NOx", **pol}]})
        return str(exc.value)

    assert "status_ok" in err(status_tag="E.st", status_ok=[]) and "at least one" in err(status_tag="E.st",
                                                                                          status_ok=[])
    assert "finite" in err(status_tag="E.st", status_ok=[float("nan")])
    assert "status_tag" in err(status_ok=[0, 1])
    assert "measurement tag" in err(status_tag="E.NOx")
    assert "state tag" in err(status_tag="E.state")
    assert "status_ok" in err(status_tag="E.st", status_ok="zero")
    # Through the site loader: the file, the stack, the key.
    from edge import settings
    from edge.errors import ConfigError

    sample = (Path(__file__).resolve().parents[1] / "emissions" / "sample.toml").read_text()
    assert 'status_tag = "K1.AN1.status"' in sample
    p = tmp_path / "site.toml"
    p.write_text(sample.replace("\nstatus_ok = [0] ", "\nstatus_ok = [] ", 1))
    with pytest.raises(ConfigError) as exc:
        settings.load(p)
    assert any(str(p) in line and "stacks[0] (K1)" in line and "status_ok" in line for line in exc.value.problems)
    nox = StackConfig.model_validate(tomllib.loads(sample)["stacks"][0]).pollutant("NOx")
    assert nox.status_tag == "K1.AN1.status" and nox.status_ok == [0.0]


def test_live_and_stored_leave_out_the_same_minutes(conn):
    """The step signal of `test_the_status_is_a_step_signal` through the live monitor (readings every 20 s, the
    status in the same batches) leaves out the minutes the stored computation does. A status reading that arrives
    late (07:00:10, after the readings of 07:02, beyond ``live.reorder_s``) is not lost: it holds from the interval
    being filled on."""
    cfg = stack(f"S{uuid.uuid4().hex[:8]}")
    st = [(DAY + 2 * H + 30, 1.0), (DAY + 2 * H + 5 * 60 + 10, 0.0), (DAY + 3 * H, 0.0), (DAY + 3 * H + 20, 0.0),
          (DAY + 4 * H, 2.0), (DAY + 5 * H + 120, 0.0), (DAY + 6 * H, 1.0), (DAY + 7 * H + 10, 2.0),
          (DAY + 7 * H + 600, 0.0)]
    quality = [0] * 6 + [int(Quality.BAD)] + [0, 0]
    seed(conn, cfg, status=st, quality=quality)
    p = store.fetch_primary(conn, detect(conn), cfg, DAY, DAY + 8 * H)
    stored_out = [int(i) for i in np.flatnonzero(p.excluded["NOx"])]

    mon = LiveMonitor(cfg)
    live_out: list[int] = []
    push = mon.push

    def watch(t, values, substituted=None, operating=True, excluded=()):
        assert "NOx" in values or "NOx" in excluded  # a reading every 20 s: only the status takes it out
        if "NOx" in excluded:
            live_out.append((t - DAY) // 60)
        push(t, values, substituted, operating, excluded)

    mon.push = watch
    def reading(tag: str, t: int, v: float, q: int = 0) -> Reading:
        at = datetime.fromtimestamp(t, UTC)
        return Reading(tag, at, v, at, Quality(q))

    late = DAY + 7 * H + 10
    stream = [(t, 1, reading(cfg.pollutant("NOx").tag, t, 50.0)) for t in range(DAY, DAY + 8 * H, 20)]
    stream += [(t if t != late else late + 120, 0, reading(f"{cfg.name}.AN1.status", t, v, q))
               for (t, v), q in zip(st, quality, strict=True)]
    for _, _, r in sorted(stream, key=lambda x: x[:2]):
        mon.observe([r])
    mon.flush()
    assert stored_out == [*range(120, 126), *range(240, 302), *range(420, 430)]
    assert live_out == [m for m in stored_out if m != 420]
