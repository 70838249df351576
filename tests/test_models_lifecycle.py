"""Model lifecycle at its edges: the registry's database hung or locked while a server asks for its champion,
a champion promoted between a consumer's check and its swap, rollback without a previous champion, few
calibration scores, drift of constant and missing signals."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import threading
import time

import numpy as np
import psycopg
import pytest
from models_support import FEATURES, anomaly_table, regression_table, spec

from edge.db.migrate import migrate
from models import registry as registry_module
from models.registry import Registry
from models.runtime import ModelServer
from models.train import train


@pytest.fixture(scope="module")
def trained():
    table = regression_table(1200)
    return {"a": train(spec(params={"max_iter": 30}), table), "b": train(spec(params={"max_iter": 120}), table)}


def _db_registry(dsn: str, tmp_path) -> Registry:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    return Registry(tmp_path / "models", dsn)


def _timed(fn, limit: float) -> tuple[float, BaseException | None, bool]:
    """Run ``fn`` in a thread; (seconds taken, what it raised, whether it was still running after ``limit``)."""
    box: dict = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # handed to the test
            box["exc"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit)
    return time.monotonic() - t0, box.get("exc"), th.is_alive()


def test_a_locked_registry_table_does_not_stall_a_refresh(pg_dsn, tmp_path, trained, monkeypatch):
    """A restore or a migration holds ``model_registry`` locked (ACCESS EXCLUSIVE) while the gateway asks for the
    champion between two groups of readings, and waits for the answer. The read waited for the lock as long as it
    was held (the test's 20 s, then the lock went), stalling the gateway's analysis; now it fails after
    ``REGISTRY_DB_TIMEOUT_S`` and the served version goes on."""
    monkeypatch.setattr(registry_module, "REGISTRY_DB_TIMEOUT_S", 2, raising=False)
    reg = _db_registry(pg_dsn, tmp_path)
    v = reg.register(trained["a"]).version
    reg.promote("syn", v)
    srv = ModelServer(reg, "syn")
    X = regression_table(5, seed=3).matrix(FEATURES)
    before = srv.predict(X)
    locker = psycopg.connect(pg_dsn)
    try:
        locker.execute("LOCK TABLE model_registry IN ACCESS EXCLUSIVE MODE")
        took, exc, hung = _timed(srv.refresh, 20)
        locker.rollback()
    finally:
        locker.close()
    assert not hung, "the champion read waited for the lock for 20 s"
    assert isinstance(exc, psycopg.OperationalError), exc  # lock_timeout: an error the caller logs
    assert took < 8, took
    assert srv.version == v and np.array_equal(srv.predict(X), before)
    assert srv.refresh() is False  # the lock gone, the same champion: nothing to swap


def test_a_registry_database_that_stops_answering_does_not_stall_a_refresh(own_pg_server, tmp_path, trained,
                                                                            monkeypatch):
    """The database host stops answering (SIGSTOP: a hung server or a cut network path): TCP connects, nothing
    replies. Each champion read waited for ever (libpq has no connect timeout by default); now it fails after
    ``REGISTRY_DB_TIMEOUT_S`` and the served version goes on."""
    monkeypatch.setattr(registry_module, "REGISTRY_DB_TIMEOUT_S", 2, raising=False)
    reg = _db_registry(own_pg_server.create_database(), tmp_path)
    v = reg.register(trained["a"]).version
    reg.promote("syn", v)
    srv = ModelServer(reg, "syn")
    os.kill(own_pg_server.proc.pid, signal.SIGSTOP)
    try:
        took, exc, hung = _timed(srv.refresh, 20)
    finally:
        os.kill(own_pg_server.proc.pid, signal.SIGCONT)
    assert not hung, "the champion read waited for 20 s for a database that does not answer"
    assert isinstance(exc, psycopg.OperationalError), exc
    assert took < 8, took
    assert srv.version == v and srv.predict(regression_table(3, seed=4).matrix(FEATURES)).shape == (3,)


class _RacingRegistry(Registry):
    """A registry whose next champion read is followed by ``after_read`` (another user's promotion or rollback
    landing between a consumer's two reads)."""

    after_read = None

    def champion(self, model_id):
        mv = super().champion(model_id)
        hook, self.after_read = self.after_read, None
        if hook is not None:
            hook()
        return mv


def test_a_rollback_between_the_pems_check_and_the_swap_does_not_serve_unmapped_inputs(tmp_path, trained, caplog):
    """Live PEMS checks that the champion's inputs are mapped to tags, then asks its server to swap, which reads the
    champion again. A rollback to a version with another input landing between the two reads was swapped in
    unchecked: every later prediction was None (an input without a tag), nothing logged, and no later refresh
    checked it again (the served version was the champion). Now the server checks the version it swaps in."""
    from emissions.config import PemsLink
    from emissions.pems_live import LivePems
    from models.data import FeatureTable
    from models.train import TrainSpec

    base = regression_table(1200)
    cols = dict(base.columns)
    cols["x5"] = cols["x4"] + 0.01 * np.random.default_rng(2).normal(size=cols["x4"].size)
    other = train(TrainSpec("syn", ("x1", "x2", "x3", "x5"), "y", estimator="hgb", params={"max_iter": 30}),
                  FeatureTable(cols, base.times))
    reg = _RacingRegistry(tmp_path / "models")
    v1 = reg.register(trained["a"]).version
    reg.promote("syn", v1)
    v2 = reg.register(other).version
    v3 = reg.register(trained["b"]).version
    link = PemsLink(tag="S.y.pems", model_id="syn", registry=str(tmp_path / "models"),
                    inputs={n: f"T.{n}" for n in FEATURES}, refresh_s=0)
    lp = LivePems(link, asset="S", target="y", registry=reg)
    assert lp.version == v1
    reg.promote("syn", v3)
    reg.after_read = lambda: reg.rollback("syn", to=v2)  # lands after LivePems's read, before its server's
    with caplog.at_level("ERROR"):
        lp.maybe_refresh()
    assert lp.version != v2, "a version whose input x5 has no tag was swapped in unchecked"
    X = regression_table(1, seed=9).matrix(FEATURES)
    assert lp.predict(1_700_000_000, {f"T.{n}": float(X[0, j]) for j, n in enumerate(FEATURES)}) is not None
    lp.maybe_refresh()  # the champion is now v2: refused again, said once
    assert lp.version != v2
    assert sum("x5" in r.getMessage() for r in caplog.records) == 1, [r.getMessage() for r in caplog.records]


def test_an_onnx_graph_this_runtime_cannot_run_is_refused_and_the_served_version_goes_on(tmp_path, trained):
    """A registered graph onnxruntime cannot load (a newer opset than it supports, written by a newer exporter;
    damaged bytes that were registered so) raised onnxruntime's own classes, bare Exceptions: a caller keeping its
    version on an IntegrityError let them through (a PEMS not started for good). Now `GraphError`, an
    IntegrityError naming the model; a server asked to swap to it goes on with its version."""
    import onnx

    from models.runtime import GraphError, IntegrityError, OnnxModel

    tm = trained["b"]
    proto = onnx.load_from_string(tm.onnx_bytes)
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 99
    newer = proto.SerializeToString()
    card = {k: v for k, v in tm.card.items() if k != "sha256"}
    for data, why in ((newer, "opset"), (tm.onnx_bytes[: len(tm.onnx_bytes) // 2], "damaged")):
        with pytest.raises(IntegrityError) as err:
            OnnxModel(data, {**card, "version": 5})
        assert isinstance(err.value, GraphError) and "syn v5" in str(err.value), (why, err.value)
    reg = Registry(tmp_path / "models")
    v1 = reg.register(trained["a"]).version
    reg.promote("syn", v1)
    srv = ModelServer(reg, "syn")
    v2 = dataclasses.replace(tm, onnx_bytes=newer, sha256=hashlib.sha256(newer).hexdigest(),
                             card={**tm.card, "sha256": hashlib.sha256(newer).hexdigest()})
    v2 = reg.register(v2).version
    with pytest.raises(GraphError):
        reg.rollback("syn", to=v2)
    assert reg.champion("syn").version == v1 and srv.refresh() is False and srv.version == v1
    # Promoted from a host with a newer onnxruntime (its gate could run the graph): written into the index as that
    # host's promotion did.
    from datetime import UTC, datetime

    with reg._index.tx("syn") as ix:
        ix.set_status("syn", v1, "retired", datetime.now(UTC))
        ix.set_status("syn", v2, "champion", datetime.now(UTC))
        ix.add_event("syn", v2, "promote", v1, "newer-host", {"metric": "mae"})
    with pytest.raises(GraphError):
        srv.refresh()
    assert srv.version == v1  # the served version goes on
    from emissions.config import PemsLink
    from emissions.pems_live import LivePems

    link = PemsLink(tag="S.y.pems", model_id="syn", registry=str(tmp_path / "models"),
                    inputs={n: f"T.{n}" for n in FEATURES})
    lp = LivePems(link, asset="S", target="y", registry=reg)  # raised: this PEMS was not started, for good
    assert lp.version is None and "cannot load the ONNX graph" in lp._error


class _ComparingRegistry(Registry):
    """A registry whose next gate comparison is followed by ``during`` (another user's promotion landing while the
    gate runs the graphs)."""

    during = None

    def _compare(self, cand, champ, holdout):
        c = super()._compare(cand, champ, holdout)
        hook, self.during = self.during, None
        if hook is not None:
            hook()
        return c


@pytest.mark.parametrize("index", ["json", "db"])
def test_two_promotions_at_once_and_the_rollback_after_them(tmp_path, trained, index, request):
    """Two candidates gated against the same champion at once: the one whose comparison finished second was judged
    against a champion that is no longer the champion, and is refused saying so (not promoted over the other unseen);
    a rollback then restores exactly the champion before the one promoted, and without a previous one says so."""
    from models.registry import GateRefused

    dsn = None
    if index == "db":
        dsn = request.getfixturevalue("pg_dsn")
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
    reg = _ComparingRegistry(tmp_path / "models", dsn)
    v1 = reg.register(trained["a"]).version
    with pytest.raises(LookupError, match="no previous champion"):  # nothing promoted yet
        reg.rollback("syn")
    reg.promote("syn", v1)
    with pytest.raises(LookupError, match="no previous champion"):
        reg.rollback("syn")
    v2 = reg.register(trained["b"]).version
    v3 = reg.register(trained["b"]).version
    reg.during = lambda: Registry(tmp_path / "models", dsn).promote("syn", v3)  # another user, another process
    with pytest.raises(GateRefused, match=f"champion changed to v{v3} during the comparison"):
        reg.promote("syn", v2)
    assert reg.champion("syn").version == v3 and reg.get("syn", v2).status == "candidate"
    assert [(e["event"], e["version"]) for e in reg.events("syn")][-2:] == [("promote", v3), ("refuse", v2)]
    assert reg.rollback("syn") == {"model_id": "syn", "from": v3, "to": v1}
    assert reg.champion("syn").version == v1 and reg.get("syn", v3).status == "retired"
    with pytest.raises(LookupError, match="no previous champion"):
        reg.rollback("syn")


def _register_times(root, dsn, tm, times: int, who: str, start, out) -> None:
    """One registering process: waits for the others at ``start``, registers ``tm`` ``times`` times as ``who``,
    writes the version numbers it got to ``out``."""
    import json

    reg = Registry(root, dsn)
    start.wait(60)
    out.write_text(json.dumps([reg.register(tm, actor=who).version for _ in range(times)]))


@pytest.mark.parametrize("index", ["json", "db"])
def test_three_processes_registering_at_once_get_distinct_complete_versions(tmp_path, trained, index, request):
    """Three processes (a CI job, a data scientist, the maintenance retrainer) registering the same model id at once:
    every registration gets its own number, its files are the ones its index row names (sha256 of both files
    checked by `load`), and nothing is left half-written (no temporary directory left behind)."""
    import json
    import multiprocessing

    dsn = None
    if index == "db":
        dsn = request.getfixturevalue("pg_dsn")
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
    # spawn, not fork: a fork of this process (other tests' threads, a logging lock held) may hang or fail
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    keys = ("a", "b", "a")
    procs = [ctx.Process(target=_register_times, args=(tmp_path / "models", dsn, trained[k], 4, f"writer{i}", start,
                                                        tmp_path / f"writer{i}.json"))
             for i, k in enumerate(keys)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    got = [json.loads((tmp_path / f"writer{i}.json").read_text()) for i in range(3)]
    numbers = sorted(v for vs in got for v in vs)
    assert numbers == list(range(1, 13)), got
    reg = Registry(tmp_path / "models", dsn)
    assert [v.version for v in reg.list("syn")] == numbers
    for k, vs in zip(keys, got, strict=True):
        for v in vs:
            assert reg.get("syn", v).load().sha256 == trained[k].sha256
    assert sorted(p.name for p in (tmp_path / "models" / "syn").iterdir()) == sorted(map(str, numbers))
    assert sorted({e["actor"] for e in reg.events("syn")}) == ["writer0", "writer1", "writer2"]


def test_too_few_calibration_rows_for_the_level_are_refused_not_served_overconfident():
    """20 calibration rows cannot give a finite 98 % split-conformal interval (it needs 49): the largest residual
    would cover about 20/21 while the card states 98 %. Training refuses, naming what it needs."""
    from models.conformal import min_scores

    with pytest.raises(ValueError, match=f"too few for 98.0% intervals \\(need at least {min_scores(0.02)}\\)"):
        train(spec(alpha=0.02), regression_table(100))


def test_drift_of_constant_and_missing_signals():
    """A constant reference (a setpoint) reads ok while it holds and drift when it moves; a signal with no values
    now is unknown, not ok; a stuck sensor on a varying reference is drift; a reference without a value names its
    feature."""
    from models.drift import DriftMonitor

    rng = np.random.default_rng(0)
    mon = DriftMonitor({"sp": np.full(1000, 5.0), "x": rng.normal(size=1000)}, ["sp", "x"])

    def status(sp, x):
        return {f["feature"]: f["status"] for f in mon.check({"sp": sp, "x": x})["features"]}

    assert status(np.full(200, 5.0), rng.normal(size=200)) == {"sp": "ok", "x": "ok"}
    assert status(np.full(200, 5.5), np.full(200, 0.3)) == {"sp": "drift", "x": "drift"}
    r = mon.check({"sp": np.full(200, np.nan), "x": np.r_[rng.normal(size=10), np.full(190, np.nan)]})
    assert r["status"] == "unknown" and [f["rows"] for f in r["features"]] == [0, 10]
    with pytest.raises(ValueError, match="feature 'b': no finite value"):
        DriftMonitor({"a": rng.normal(size=50), "b": np.full(50, np.nan)}, ["a", "b"])


def test_a_champion_trained_on_another_unit_of_an_input_is_not_served(tmp_path, caplog):
    """Live PEMS checked that a champion's inputs are mapped to tags, not that they are in the units the model was
    trained on: a version trained on x1 in °F, promoted while the tag is in °C (the site's [[tags]] unit), was
    swapped in and gave numbers, wrong ones. Where the card and the tag registry both declare a unit they must now
    agree ("°C" and "degC" are one); a mismatch is refused at a swap (the served version goes on) and at start."""
    from emissions.config import PemsLink
    from emissions.pems_live import LivePems

    table = regression_table(1200)
    celsius = train(spec(params={"max_iter": 30}, units={"x1": "°C", "x2": "mbar"}), table)
    fahrenheit = train(spec(params={"max_iter": 120}, units={"x1": "degF", "x2": "mbar"}), table)
    reg = Registry(tmp_path / "models")
    v1 = reg.register(celsius).version
    reg.promote("syn", v1)
    link = PemsLink(tag="S.y.pems", model_id="syn", registry=str(tmp_path / "models"),
                    inputs={n: f"T.{n}" for n in FEATURES}, refresh_s=0)
    units = {"T.x1": "degC", "T.x2": "hPa", "T.x3": "m3/h"}  # spelt otherwise, the same units; x3 undeclared
    from models.schema import unit_key

    assert unit_key("°C") == unit_key("deg C") == unit_key("C") and unit_key("%RH") == unit_key("percent")
    assert unit_key("mg/m³") == unit_key("mg/m3") != unit_key("mg/Nm3") and unit_key("K") != unit_key("°C")
    lp = LivePems(link, asset="S", target="y", registry=reg, tag_units=units)
    assert lp.version == v1
    v2 = reg.register(fahrenheit).version
    reg.promote("syn", v2)
    with caplog.at_level("ERROR"):
        lp.maybe_refresh()
    assert lp.version == v1, "a version trained on x1 in degF was served on a tag in degC"
    assert "x1 in 'degF' but tag T.x1 is in 'degC'" in caplog.text
    with pytest.raises(ValueError, match=r"x1 in 'degF' but tag T\.x1 is in 'degC'"):
        LivePems(link, asset="S", target="y", registry=reg, tag_units=units)
    assert LivePems(link, asset="S", target="y", registry=reg, tag_units={"T.x1": "°F"}).version == v2


def test_a_gateway_user_reads_a_registry_another_user_promoted_in(tmp_path_factory, trained):
    """``sudo valvoja models promote`` (or a data scientist's account) makes index.json and its lock file 0644 for
    that user. A champion read took the write lock too, opening the lock file for writing: the gateway's own user
    failed every read with EACCES and served nothing. Reads take no lock now (changes replace index.json whole)."""
    import pwd
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to read as another user")
    root = Path(tempfile.mkdtemp(prefix="valvoja-regperm-"))
    try:
        root.chmod(0o755)
        reg = Registry(root / "models")
        v = reg.register(trained["a"]).version
        reg.promote("syn", v)
        assert (root / "models" / ".index.lock").stat().st_mode & 0o777 == 0o644
        nobody = pwd.getpwnam("nobody")
        code = ("import sys; from models.registry import Registry; from models.runtime import ModelServer; "
                f"s = ModelServer(Registry({str(root / 'models')!r}), 'syn'); "
                "print(s.version, s.predict([[0.1, 0.2, 0.3, 0.4]])[0] == s.predict([[0.1, 0.2, 0.3, 0.4]])[0])")
        res = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                              sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120,
                             env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HOME": "/"})
        assert res.returncode == 0, res.stderr[-600:]
        assert res.stdout.split() == [str(v), "True"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_cli_a_locked_registry_is_one_line_not_a_wait_or_a_traceback(pg_dsn, tmp_path, trained, monkeypatch, capsys):
    """`valvoja models list --db` while a restore holds the table: it waited as long as the lock; now, after the
    registry's timeout, one line naming the registry database, exit 1."""
    from models.cli import main

    monkeypatch.setattr(registry_module, "REGISTRY_DB_TIMEOUT_S", 2, raising=False)
    reg = _db_registry(pg_dsn, tmp_path)
    reg.register(trained["a"])
    locker = psycopg.connect(pg_dsn)
    try:
        locker.execute("LOCK TABLE model_registry IN ACCESS EXCLUSIVE MODE")
        box = {}
        _, exc, hung = _timed(lambda: box.setdefault(
            "rc", main(["list", "--registry", str(tmp_path / "models"), "--db", pg_dsn])), 20)
        locker.rollback()
    finally:
        locker.close()
    assert not hung and exc is None, exc
    err = capsys.readouterr().err
    assert box["rc"] == 1 and err.startswith("error: model registry database: ") and err.count("\n") == 1, err
    assert "lock timeout" in err


def test_a_pems_input_beyond_float32_gives_no_prediction_said_once(tmp_path, trained, caplog):
    """A device's 1e39 "no value" on a PEMS input tag (finite, so it passed the missing-input check) is refused by
    the runtime: raised out of LivePems, it was logged with a traceback every primary interval for as long as the
    device sent it. Now no prediction for those intervals, one warning, a count in the status; the next good
    inputs predict again."""
    from emissions.config import PemsLink
    from emissions.pems_live import LivePems

    reg = Registry(tmp_path / "models")
    reg.promote("syn", reg.register(trained["a"]).version)
    link = PemsLink(tag="S.y.pems", model_id="syn", registry=str(tmp_path / "models"),
                    inputs={n: f"T.{n}" for n in FEATURES})
    lp = LivePems(link, asset="S", target="y", registry=reg)
    good = {f"T.{n}": 0.1 * j for j, n in enumerate(FEATURES)}
    with caplog.at_level("WARNING", logger="emissions.pems_live"):
        got = [lp.push(1_700_000_000 + 60 * i, {**good, "T.x2": 1e39}) for i in range(5)]
    assert got == [None] * 5 and lp.status()["refused_rows"] == 5
    said = [r for r in caplog.records if "refuses its inputs" in r.getMessage()]
    assert len(said) == 1 and "x2" in said[0].getMessage() and said[0].exc_info is None
    step = lp.push(1_700_000_300, good)
    assert step is not None and step.prediction.lower < step.prediction.value < step.prediction.upper


def test_a_damaged_champion_refuses_the_gate_with_a_recorded_reason(tmp_path, trained):
    """The champion's model.onnx changed on disk: the gate's re-run of it raised IntegrityError out of `promote`,
    with no refusal in the events and a message that did not say the file was the champion's. Now a refusal that
    says so and how to go on."""
    from models.registry import GateRefused

    reg = Registry(tmp_path / "models")
    v1 = reg.register(trained["a"]).version
    reg.promote("syn", v1)
    (reg.get("syn", v1).path / "model.onnx").write_bytes(b"not the registered graph")
    v2 = reg.register(trained["b"]).version
    with pytest.raises(GateRefused, match=f"the champion v{v1} cannot be compared: .*rollback syn --to"):
        reg.promote("syn", v2)
    last = reg.events("syn")[-1]
    assert (last["event"], last["version"]) == ("refuse", v2) and "champion" in last["detail"]["reason"]
    assert reg.champion("syn").version == v1


def test_a_champion_lost_by_an_index_restore_is_said_once_and_the_served_version_goes_on(tmp_path, trained, caplog):
    """index.json restored from a backup taken before the promotion: the registry names no champion, and live PEMS
    went on serving v1 without a word, so the plant ran a model the registry (and the console) says nobody promoted.
    Now said once (model_champion_gone) until a champion is named again; the served version goes on."""
    from emissions.config import PemsLink
    from emissions.pems_live import LivePems

    reg = Registry(tmp_path / "models")
    v1 = reg.register(trained["a"]).version
    backup = (tmp_path / "models" / "index.json").read_bytes()
    reg.promote("syn", v1)
    link = PemsLink(tag="S.y.pems", model_id="syn", registry=str(tmp_path / "models"),
                    inputs={n: f"T.{n}" for n in FEATURES}, refresh_s=0)
    lp = LivePems(link, asset="S", target="y", registry=reg)
    (tmp_path / "models" / "index.json").write_bytes(backup)
    with caplog.at_level("WARNING", logger="emissions.pems_live"):
        lp.maybe_refresh()
        lp.maybe_refresh()
    gone = [r for r in caplog.records if getattr(r, "event", "") == "model_champion_gone"]
    assert len(gone) == 1 and "v1 goes on being served" in gone[0].getMessage()
    assert lp.version == v1
    reg.promote("syn", v1)  # named again, then lost again: said again
    lp.maybe_refresh()
    (tmp_path / "models" / "index.json").write_bytes(backup)
    with caplog.at_level("WARNING", logger="emissions.pems_live"):
        lp.maybe_refresh()
    assert sum(getattr(r, "event", "") == "model_champion_gone" for r in caplog.records) == 2


def test_an_anomaly_scorer_under_a_pems_model_id_is_not_served(tmp_path):
    """The first version of a PEMS model id is promoted without a champion to compare kinds with; an anomaly scorer
    trained under it by mistake was served: its score stored as the pollutant's substitute value, no interval, and
    no target to warn about. Refused now, at start and at a swap."""
    from emissions.config import PemsLink
    from emissions.pems_live import LivePems

    reg = Registry(tmp_path / "models")
    reg.promote("syn", reg.register(train(spec("syn", "mahalanobis", label="label"), anomaly_table(1500))).version)
    link = PemsLink(tag="S.y.pems", model_id="syn", registry=str(tmp_path / "models"),
                    inputs={n: f"T.{n}" for n in FEATURES})
    with pytest.raises(ValueError, match="is an anomaly model; a PEMS serves a regressor"):
        LivePems(link, asset="S", target="y", registry=reg)
