"""The model registry: versions on disk, an index (database table or JSON file), the promotion gate, rollback.

Layout: ``<root>/<model_id>/<version>/model.onnx`` + ``card.json`` (+ ``holdout.npz``: the version's held-out
rows, so the gate can compare candidate and champion on the same data without the training files). The
index is the ``model_registry`` / ``model_events`` tables (migration m0100) when a database URL is given,
else ``<root>/index.json`` (a gateway without a database, tests, a laptop).

Statuses: ``candidate`` (registered) -> ``champion`` (served; at most one per model id) -> ``retired``.

- `Registry.register` writes the files, checks the written files' sha256 (``model.onnx`` and ``card.json``: the
  card holds the feature order and the calibration, so it is as much the model as the graph), syncs them and the
  version directory's rename to disk, and only then inserts a candidate (a power cut after the index committed
  cannot leave a row whose files were lost). A model that failed parity is refused (`ParityError`).
  `ModelVersion.load` refuses either file when it is not the registered one (`models.runtime.IntegrityError`).
- `Registry.promote` is the gate: the candidate must have passed parity and its files must still be the
  registered ones; against a champion, its target and alpha must be the champion's, its intervals must cover
  the held-out rows (``holdout``, default the candidate's own) at least to `coverage_floor` of nominal (or of the
  champion's coverage when drifted rows take the champion below that too), and on the same rows it must match or beat
  the champion by the model id's gate metric (the one its first promotion used: a candidate's card cannot pick
  it), both ONNX graphs re-run on those rows. The comparison is returned (and recorded) either way; a refused
  candidate raises `GateRefused` carrying it.
- `Registry.rollback` puts the previous champion back (replaying the promote/rollback events) and retires the
  current one: one call, one command (``valvoja models rollback MODEL``).

Module-level `promote` and `rollback` do the same from a registry directory and database URL, for the console.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError, ValvojaError
from edge.files import fsync_path, write_atomic
from edge.jsontext import json_safe
from models.data import FeatureTable
from models.export import ParityError, sha256
from models.runtime import IntegrityError, OnnxModel, check_version_dir
from models.schema import InputError
from models.train import GATE_METRICS, TrainedModel, holdout_metrics

log = logging.getLogger(__name__)

__all__ = ["Comparison", "GateRefused", "ModelVersion", "Registry", "coverage_floor", "far_band", "promote", "rollback"]

STATUSES = ("candidate", "champion", "retired")
# Relative slack when comparing gate metrics: float32 inference of the same graph on the same rows is
# bit-identical, so a retrained identical model "matches"; this only absorbs summation-order noise.
MATCH_RTOL = 1e-9
# The coverage check: a candidate whose intervals really cover 1 - alpha is refused by chance on fewer than this
# share of holdouts (one-sided binomial test of its holdout coverage against nominal, `coverage_floor`).
COVERAGE_TEST_LEVEL = 0.01
# Gate metrics that need the rows' truth labels (anomaly scorers): computed with the champion's label column.
LABELLED_METRICS = frozenset({"auc"})
# How the far_gap gate decides (`_far_gate`): not by |far - alpha|, which a detector flagging alpha of all rows wins.
FAR_RULE = "false alarm rate within alpha's tolerance, then the higher detection rate"
# The longest a registry read waits for its database (connecting, a lock, a statement). The gateway reads the
# champion between two groups of readings and waits for the answer: without a bound, a database host that stopped
# answering or a restore holding the table locked stalled its analysis until the database came back.
REGISTRY_DB_TIMEOUT_S = 10


class GateRefused(ValvojaError):
    """The promotion gate refused a candidate; ``comparison`` says why (metric values on the same rows)."""

    def __init__(self, comparison: Comparison):
        self.comparison = comparison
        super().__init__(comparison.describe())


@dataclass
class ModelVersion:
    """One registered version (a row of the index)."""

    model_id: str
    version: int
    status: str
    sha256: str
    path: Path
    created_at: datetime
    kind: str
    parent_version: int | None
    parity_passed: bool
    metrics: dict
    card: dict
    promoted_at: datetime | None = None
    retired_at: datetime | None = None
    card_sha256: str | None = None  # of card.json; None for versions registered before it was recorded

    def load(self) -> OnnxModel:
        """The ONNX model and its card, refusing (`IntegrityError`) files that are not the registered ones:
        ``model.onnx`` and ``card.json`` by their sha256; a version registered before card hashes were recorded
        by its card's copy in the index (everything but the calibration score list and the drift reference)."""
        try:
            m = OnnxModel.load(self.path, sha256=self.sha256, card_sha256=self.card_sha256)
        except IntegrityError as exc:  # the same class (GraphError too), named by the version once
            msg = str(exc)
            raise type(exc)(msg if msg.startswith(model_id_v(self) + ":") else f"{model_id_v(self)}: {msg}") from None
        if self.card_sha256 is None:
            indexed = {k: v for k, v in self.card.items() if k not in ("card_sha256", "holdout_sha256")}
            on_disk = json_safe(_index_card(m.card))
            differ = sorted(k for k in indexed.keys() | on_disk.keys() if indexed.get(k) != on_disk.get(k))
            if differ:
                raise IntegrityError(
                    f"{model_id_v(self)}: {self.path / 'card.json'} differs from the card in the registry index "
                    f"({', '.join(differ)}): the file was changed after registration. This version was registered "
                    "before card sha256s were recorded: restore its card.json, or register the model again "
                    "(`valvoja models train ...`; the new version records its card's sha256)")
        return m

    def summary(self) -> dict:
        gate = self.metrics.get("gate", {})
        return {"model_id": self.model_id, "version": self.version, "status": self.status, "kind": self.kind,
                "created_at": self.created_at.isoformat(), "parent_version": self.parent_version,
                "sha256": self.sha256, "card_sha256": self.card_sha256, "gate_metric": gate.get("metric"),
                "holdout": self.metrics.get("holdout", {}), "path": str(self.path)}


@dataclass
class Comparison:
    """The gate's comparison of a candidate with the champion on the same held-out rows."""

    model_id: str
    candidate: int
    champion: int | None
    metric: str
    direction: str
    candidate_value: float
    champion_value: float | None
    rows: int
    holdout: str  # where the rows came from
    holdout_fingerprint: str
    parity_passed: bool
    accepted: bool
    reason: str
    candidate_metrics: dict = field(default_factory=dict)
    champion_metrics: dict = field(default_factory=dict)
    metric_source: str = ""  # why this metric: the model id's first promotion, or the card that set it
    coverage_floor: float | None = None  # the lowest holdout coverage accepted (regressors; `coverage_floor`)

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    def describe(self) -> str:
        verdict = "ACCEPTED" if self.accepted else "REFUSED"
        lines = [f"gate {verdict}: {self.model_id} v{self.candidate} vs "
                 f"{'champion v' + str(self.champion) if self.champion is not None else 'no champion'} "
                 f"on {self.rows} held-out rows ({self.holdout}); metric {self.metric} ("
                 f"{FAR_RULE if self.metric == 'far_gap' else self.direction + ' is better'}"
                 f"{', ' + self.metric_source if self.metric_source else ''})",
                 f"  {'metric':<18}{'candidate':>14}{'champion':>14}"]
        keys = [k for k in self.candidate_metrics if isinstance(self.candidate_metrics[k], float)]
        for k in keys:
            c = self.candidate_metrics.get(k)
            h = self.champion_metrics.get(k)
            gated = ("far", "detection_rate") if self.metric == "far_gap" else (self.metric,)  # `_far_gate`
            mark = " <- gate" if k in gated else ""
            lines.append(f"  {k:<18}{_fmt(c):>14}{_fmt(h):>14}{mark}")
        if self.coverage_floor is not None:
            lines.append(f"  coverage floor {self.coverage_floor:.4f} (nominal minus a one-sided "
                         f"{1 - COVERAGE_TEST_LEVEL:.0%} binomial tolerance for {self.rows} rows)")
        lines.append(f"  reason: {self.reason}")
        return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def _ts(v) -> datetime | None:
    """A stored time as an aware UTC datetime. psycopg hands timestamptz back in the session's TimeZone (a plant
    database's is often local), and `valvoja models list` prints these under "created (UTC)"."""
    if v is None:
        return None
    t = v if isinstance(v, datetime) else datetime.fromisoformat(v)
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


# ---------------------------------------------------------------- index backends

class _JsonIndex:
    """``<root>/index.json`` guarded by an exclusive ``flock`` for every read-modify-write."""

    def __init__(self, root: Path):
        self.path = root / "index.json"
        self.lock_path = root / ".index.lock"

    @contextlib.contextmanager
    def tx(self, model_id: str | None = None) -> Iterator[_JsonTx]:
        """A change (``model_id`` given) under the exclusive lock; a read (None) without it: every change replaces
        index.json whole (`write_atomic`), so a read sees one state or the next. A read took the lock too, opening
        ``.index.lock`` for writing: a gateway reading a registry whose lock file another user made (``sudo valvoja
        models promote``, 0644) failed every champion read with EACCES, and served nothing after a restart."""
        if model_id is None:
            t = _JsonTx(self._read())
            yield t
            if t.dirty:
                raise RuntimeError("a registry change outside a per-model transaction")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            t = _JsonTx(data)
            yield t
            if t.dirty:
                write_atomic(self.path, json.dumps(data, indent=1, allow_nan=False) + "\n")

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            # json's "Expecting value: line 2 column 1" alone names neither the file nor what it is (the gateway
            # logs it when a served model asks for its champion).
            raise ConfigError(f"{self.path} is not a readable registry index ({exc}): restore it from a "
                              "backup") from None
        data.setdefault("versions", [])
        data.setdefault("events", [])
        return data


class _JsonTx:
    def __init__(self, data: dict):
        self.data = data
        self.dirty = False

    def rows(self, model_id: str | None = None) -> list[dict]:
        return [dict(r) for r in self.data["versions"] if model_id is None or r["model_id"] == model_id]

    def insert(self, row: dict) -> None:
        row = dict(row)
        for k in ("created_at", "promoted_at", "retired_at", "training_start", "training_end"):
            if isinstance(row.get(k), datetime):
                row[k] = row[k].isoformat()
        self.data["versions"].append(json_safe(row))
        self.dirty = True

    def set_status(self, model_id: str, version: int, status: str, now: datetime) -> None:
        for r in self.data["versions"]:
            if r["model_id"] == model_id and r["version"] == version:
                r["status"] = status
                r["promoted_at" if status == "champion" else "retired_at"] = now.isoformat()
                self.dirty = True

    def events(self, model_id: str) -> list[dict]:
        return [e for e in self.data["events"] if e["model_id"] == model_id]

    def add_event(self, model_id: str, version: int, event: str, from_version: int | None, actor: str,
                  detail: dict) -> None:
        self.data["events"].append({"model_id": model_id, "version": version, "event": event,
                                    "from_version": from_version, "time": datetime.now(UTC).isoformat(),
                                    "actor": actor, "detail": json_safe(detail)})
        self.dirty = True


_ROW_COLUMNS = ("model_id", "version", "kind", "status", "sha256", "path", "created_at", "parent_version", "target",
                "estimator", "metrics", "gate_metric", "gate_direction", "input_schema", "calibration", "parity",
                "parity_passed", "training_fingerprint", "training_start", "training_end", "training_span", "card",
                "promoted_at", "retired_at")
_JSONB = {"metrics", "input_schema", "calibration", "parity", "training_span", "card"}


class _DbIndex:
    """The ``model_registry`` and ``model_events`` tables; one transaction per operation, serialised per model
    id by an advisory lock (two promotions of the same model cannot interleave)."""

    def __init__(self, dsn: str):
        import psycopg

        from edge.db.migrate import SchemaMismatch, check_schema

        self.dsn = dsn
        try:
            with psycopg.connect(dsn, connect_timeout=REGISTRY_DB_TIMEOUT_S) as conn:
                check_schema(conn)  # another version's schema: a promotion written into it may mean another thing
        except SchemaMismatch as exc:
            raise ConfigError(f"model registry database: {exc}") from None
        except psycopg.OperationalError as exc:
            raise ConfigError(f"model registry database: cannot connect ({exc})".strip()) from None

    @contextlib.contextmanager
    def tx(self, model_id: str | None = None) -> Iterator[_DbTx]:
        import psycopg

        # libpq waits for ever by default: bounded (at least 2 s, libpq's floor) so a hung database is an error.
        with psycopg.connect(self.dsn, connect_timeout=max(2, math.ceil(REGISTRY_DB_TIMEOUT_S))) as conn, \
                conn.transaction():
            if model_id is None:
                # A read (the gateway's champion, a listing): bounded too, against a lock held by a restore or a
                # migration (ACCESS EXCLUSIVE). A change (model_id given) waits its turn behind the per-model lock.
                # statement_timeout counts the lock wait too: twice as long, so a lock is said as one.
                ms = int(REGISTRY_DB_TIMEOUT_S * 1000)
                conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                             (str(ms), str(2 * ms)))
            else:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("valvoja.models:" + model_id,))
            yield _DbTx(conn)


class _DbTx:
    def __init__(self, conn):
        from psycopg.rows import dict_row

        self.conn = conn
        self.dict_row = dict_row

    def rows(self, model_id: str | None = None) -> list[dict]:
        cur = self.conn.cursor(row_factory=self.dict_row)
        if model_id is None:
            return cur.execute("SELECT * FROM model_registry ORDER BY model_id, version").fetchall()
        return cur.execute("SELECT * FROM model_registry WHERE model_id = %s ORDER BY version",
                           (model_id,)).fetchall()

    def insert(self, row: dict) -> None:
        from psycopg.types.json import Jsonb

        vals = [Jsonb(json_safe(row.get(c))) if c in _JSONB else row.get(c) for c in _ROW_COLUMNS]
        self.conn.execute(f"INSERT INTO model_registry ({', '.join(_ROW_COLUMNS)}) "
                          f"VALUES ({', '.join(['%s'] * len(_ROW_COLUMNS))})", vals)

    def set_status(self, model_id: str, version: int, status: str, now: datetime) -> None:
        col = "promoted_at" if status == "champion" else "retired_at"
        self.conn.execute(f"UPDATE model_registry SET status = %s, {col} = %s WHERE model_id = %s AND version = %s",
                          (status, now, model_id, version))

    def events(self, model_id: str) -> list[dict]:
        cur = self.conn.cursor(row_factory=self.dict_row)
        return cur.execute("SELECT * FROM model_events WHERE model_id = %s ORDER BY id", (model_id,)).fetchall()

    def add_event(self, model_id: str, version: int, event: str, from_version: int | None, actor: str,
                  detail: dict) -> None:
        from psycopg.types.json import Jsonb

        self.conn.execute("INSERT INTO model_events (model_id, version, event, from_version, actor, detail) "
                          "VALUES (%s, %s, %s, %s, %s, %s)",
                          (model_id, version, event, from_version, actor, Jsonb(json_safe(detail))))


# ---------------------------------------------------------------- holdout rows stored with a version

def _save_holdout(table: FeatureTable, path: Path) -> None:
    arrays = {f"col:{k}": v for k, v in table.columns.items()}
    if table.times is not None:
        arrays["times"] = table.times.astype("datetime64[us]").astype(np.int64)
    with path.open("wb") as fh:
        np.savez_compressed(fh, **arrays)


def _version_dirs(model_dir: Path) -> list[int]:
    """The version numbers that have a directory under ``model_dir`` (``<root>/<model_id>``), whatever index knows
    them; hidden names (a registration's temporary directory, an old release's ``.N-orphan-...``) are none."""
    try:
        return [int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir()]
    except FileNotFoundError:
        return []


def load_holdout(path: Path) -> FeatureTable:
    with np.load(path, allow_pickle=False) as z:
        cols = {k[4:]: z[k] for k in z.files if k.startswith("col:")}
        times = z["times"].astype("datetime64[us]") if "times" in z.files else None
    return FeatureTable(cols, times, [(f"holdout of {path.parent.name}", 0, len(next(iter(cols.values()))))])


# ---------------------------------------------------------------- the registry

class Registry:
    """Model versions under ``root`` indexed in the database at ``dsn`` (or ``root/index.json`` when None)."""

    def __init__(self, root: str | Path = "var/models", dsn: str | None = None, *, create: bool = True):
        """``create``: make ``root`` if it is missing (registering); False for readers, which must not leave an empty
        folder behind a mistyped path."""
        self.root = Path(root).absolute()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.dsn = dsn
        self._index = _DbIndex(dsn) if dsn else _JsonIndex(self.root)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r}, {'database' if self.dsn else 'index.json'})"

    def check_writable(self) -> None:
        """`OSError` naming the folder unless a file can be created in ``root``: `register` writes there, and a
        read-only folder was found out only after the whole training run."""
        fd, name = tempfile.mkstemp(prefix=".write-check-", dir=self.root)
        os.close(fd)
        os.unlink(name)

    def _version(self, row: dict) -> ModelVersion:
        return ModelVersion(row["model_id"], int(row["version"]), row["status"], row["sha256"],
                            self.root / row["path"], _ts(row["created_at"]), row["kind"], row.get("parent_version"),
                            bool(row["parity_passed"]), row.get("metrics") or {}, row.get("card") or {},
                            _ts(row.get("promoted_at")), _ts(row.get("retired_at")),
                            (row.get("card") or {}).get("card_sha256"))

    # ---------------------------------------------------------------- reading

    def list(self, model_id: str | None = None) -> list[ModelVersion]:
        with self._index.tx() as ix:
            rows = ix.rows(model_id)
        return sorted((self._version(r) for r in rows), key=lambda v: (v.model_id, v.version))

    def get(self, model_id: str, version: int) -> ModelVersion:
        for v in self.list(model_id):
            if v.version == int(version):
                return v
        have = ", ".join(str(v.version) for v in self.list(model_id)) or "none"
        raise LookupError(f"model {model_id!r} has no version {version} (versions: {have})")

    def champion(self, model_id: str) -> ModelVersion | None:
        return next((v for v in self.list(model_id) if v.status == "champion"), None)

    def events(self, model_id: str) -> list[dict]:
        with self._index.tx() as ix:
            return [dict(e) for e in ix.events(model_id)]

    # ---------------------------------------------------------------- register

    def register(self, trained: TrainedModel, *, actor: str = "system") -> ModelVersion:
        """Write the version's files and index it as a candidate; returns it (``.version`` is the new number)."""
        if not trained.parity.passed:
            raise ParityError(f"{trained.model_id}: not registered, {trained.parity.describe()}")
        if sha256(trained.onnx_bytes) != trained.sha256:
            raise ParityError(f"{trained.model_id}: ONNX bytes do not match the sha256 they were checked with")
        model_id = trained.model_id
        with self._index.tx(model_id) as ix:
            rows = ix.rows(model_id)
            known = {int(r["version"]) for r in rows}
            on_disk = _version_dirs(self.root / model_id)
            # A directory the index has no row for may be another index's served version (a registry folder used
            # with and without --db: the console's database and a CLI run without it) or a crash's leftover. Its
            # number is skipped, its files are left as they are: moving it aside to reuse the number took a served
            # champion's files away, and that index's gateway found "model.onnx is missing" at its next start.
            unknown = sorted(set(on_disk) - known)
            version = max([0, *known, *on_disk]) + 1
            if unknown:
                log.warning("model registry: %s holds version(s) %s that its index (%s) does not know (another "
                            "index's, or left by a crash): left as they are; %s v%d takes the next free number",
                            self.root / model_id, ", ".join(map(str, unknown)), "database" if self.dsn else
                            "index.json", model_id, version)
            parent = trained.card.get("parent_version")
            if parent is None:
                parent = next((int(r["version"]) for r in rows if r["status"] == "champion"), None)
            card = json_safe({**trained.card, "version": version, "parent_version": parent})
            rel = f"{model_id}/{version}"
            final = self.root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            card_bytes = (json.dumps(card, indent=2, allow_nan=False) + "\n").encode("utf-8")
            card_sha256 = sha256(card_bytes)
            tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
            try:
                tmp.chmod(0o755)  # mkdtemp makes it 0700; the served files are not secret
                (tmp / "model.onnx").write_bytes(trained.onnx_bytes)
                (tmp / "card.json").write_bytes(card_bytes)
                _save_holdout(trained.holdout, tmp / "holdout.npz")
                holdout_sha256 = sha256((tmp / "holdout.npz").read_bytes())
                for name, expected in (("model.onnx", trained.sha256), ("card.json", card_sha256)):
                    on_disk = sha256((tmp / name).read_bytes())
                    if on_disk != expected:
                        raise OSError(f"{tmp / name}: written file has sha256 {on_disk}, expected {expected}")
                for name in ("model.onnx", "card.json", "holdout.npz", "."):
                    fsync_path(tmp / name)  # on disk before the index can name them (a power cut after the commit)
                # The directory appears complete or not at all; never over another's (a writer of the other index
                # between the scan above and here): rename would replace an empty directory, so say it instead.
                if final.exists():
                    raise OSError(f"{final} appeared while this version was written (a registration through the "
                                  "other index of this folder?): nothing replaced; register again")
                os.rename(tmp, final)
                fsync_path(final.parent)  # ... and so does the rename
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            td = card.get("training_data", {})
            span = td.get("span", {})
            gate = card["metrics"]["gate"]
            row = {"model_id": model_id, "version": version, "kind": card["kind"], "status": "candidate",
                   "sha256": trained.sha256, "path": rel, "created_at": datetime.now(UTC), "parent_version": parent,
                   "target": card.get("target"), "estimator": card.get("estimator"), "metrics": card["metrics"],
                   "gate_metric": gate["metric"], "gate_direction": gate["direction"],
                   "input_schema": card["input_schema"], "calibration": _card_calibration(card),
                   "parity": card["parity"], "parity_passed": bool(card["parity"]["passed"]),
                   "training_fingerprint": td.get("fingerprint"), "training_start": _ts(span.get("start")),
                   "training_end": _ts(span.get("end")), "training_span": span,
                   # the score list (up to 5,000 floats) and the drift reference stay in card.json, where the
                   # runtime and the report read them; the index rows are what the console lists: keep them small.
                   # card_sha256: card.json's, checked on every load (no column of its own: m0100 has none)
                   # holdout_sha256: the gate's rows (`_compare`), which decide a promotion as much as the model
                   "card": {**_index_card(card), "card_sha256": card_sha256, "holdout_sha256": holdout_sha256}}
            try:
                ix.insert(row)
                ix.add_event(model_id, version, "register", None, actor,
                             {"sha256": trained.sha256, "card_sha256": card_sha256,
                              "holdout": card["metrics"]["holdout"]})
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        return self.get(model_id, version)

    # ---------------------------------------------------------------- the gate

    def compare(self, model_id: str, version: int, holdout: FeatureTable | None = None) -> Comparison:
        """The gate's comparison without changing anything."""
        cand = self.get(model_id, version)
        champ = self.champion(model_id)
        return self._compare(cand, champ, holdout)

    def _first_promotion(self, model_id: str) -> dict | None:
        return next((e for e in self.events(model_id) if e["event"] == "promote"), None)

    def gate_metric(self, model_id: str, champ: ModelVersion | None = None,
                    cand: ModelVersion | None = None) -> tuple[str, str, str]:
        """``(metric, direction, why)`` of the model id's gate. Fixed by its first promotion (recorded in that
        event), so no later card can pick the metric it happens to win on; before any promotion, the champion's
        card's (a champion put back by rollback only), else the candidate's (it sets the metric by becoming the
        first champion). The direction is always `GATE_METRICS`' for the metric, never a card's."""
        first = self._first_promotion(model_id)
        metric = ((first or {}).get("detail") or {}).get("metric")
        if metric in GATE_METRICS:
            return metric, GATE_METRICS[metric], f"fixed by the first promotion, v{first['version']}"
        src = champ or cand
        if src is None:
            return "mae", "lower", "default"
        metric = (src.metrics.get("gate") or {}).get("metric")
        if metric not in GATE_METRICS:
            metric = "mae" if src.kind == "regression" else "far_gap"
        return metric, GATE_METRICS[metric], f"from the card of v{src.version}"

    def _compare(self, cand: ModelVersion, champ: ModelVersion | None, holdout: FeatureTable | None) -> Comparison:
        metric, direction, why = self.gate_metric(cand.model_id, champ, cand)
        if holdout is None:
            try:
                check_version_dir(cand.path)  # else "no stored holdout rows ... give --holdout files"
            except IntegrityError as exc:
                raise IntegrityError(f"{model_id_v(cand)}: {exc}") from None
            hpath = cand.path / "holdout.npz"
            if not hpath.exists():
                raise ConfigError(f"{model_id_v(cand)}: no stored holdout rows ({hpath}); give --holdout files")
            expected = cand.card.get("holdout_sha256")  # None: registered before it was recorded
            if expected is not None and sha256(hpath.read_bytes()) != expected:
                raise ConfigError(f"{model_id_v(cand)}: {hpath} is not the registered file (sha256 differs): it was "
                                  "changed after registration, and the gate will not judge on it; restore it, or give "
                                  "--holdout files")
            table, source = load_holdout(hpath), f"held-out rows of v{cand.version}"
        else:
            table, source = holdout, "given holdout data"
        fp = table.fingerprint()
        # Anomaly truth: the champion's label column, for both (a candidate trained without labels is judged on
        # the same rows and truth as the champion; its own card cannot leave the gate metric undefined).
        label = (champ.card.get("label") if champ else None) or None
        label = label if label in table.columns else None

        def run(mv: ModelVersion) -> dict:
            m = mv.load()  # model.onnx and card.json checked against the registry
            card = {**m.card, "label": label} if label else m.card
            need = m.schema.names + [c for c in (card.get("target"), card.get("label")) if c]
            missing = [c for c in need if c not in table.columns]
            if missing:
                raise ConfigError(f"{model_id_v(mv)}: the holdout data has no column(s) {', '.join(missing)}")
            for c in (card.get("target"), card.get("label")):
                # An empty truth cell (analyser down) made the metric NaN ("not defined on these rows") and counted
                # as an interval miss; training refuses such rows by name, so does the gate.
                gaps = np.flatnonzero(~np.isfinite(table.column(c))) if c else np.empty(0, dtype=int)
                if gaps.size:
                    shown = ", ".join(str(r) for r in gaps[:5]) + (" ..." if gaps.size > 5 else "")
                    raise ConfigError(f"{model_id_v(mv)}: the holdout data has no value of {c} in {gaps.size} row(s) "
                                      f"({shown}): drop those rows, the gate scores every row")
            try:
                out = m.predict(table.matrix(m.schema.names), columns=m.schema.names)
            except InputError as exc:  # it said "NaN or infinite input values: b (row 10; ...)": of which data?
                raise InputError(f"{model_id_v(mv)}: the {source}: {exc} (rows counted from 0)") from None
            return holdout_metrics(card, table, out.value, out.lower, out.upper, out.p_value)

        def result(accepted: bool, reason: str, cm: dict, hm: dict | None = None, floor: float | None = None):
            return Comparison(cand.model_id, cand.version, champ.version if champ else None, metric, direction,
                              cm.get(metric, math.nan), (hm or {}).get(metric), len(table), source, fp,
                              cand.parity_passed, accepted, reason, cm, hm or {}, why, floor)

        if not cand.parity_passed:
            return result(False, "the candidate failed the ONNX parity check", {})
        try:
            cm = run(cand)
        except IntegrityError as exc:
            return result(False, str(exc), {})
        cv = cm.get(metric)
        if cv is None or not math.isfinite(cv):
            return result(False, f"the candidate's {metric} is not defined on these rows"
                          + self._needs_labels(cand, champ, metric, label), cm)
        if champ is None:
            # Nothing to compare with, and the first version is served at once. Its own held-out rows are still
            # checked, and a shortfall is said in the verdict, but does not refuse it: those rows are the latest of
            # its training period, where drift makes good models under-cover too (the gas-turbine NOx PEMS covers
            # 85 % there and is served with adaptive intervals), and refusing would leave nothing served at all.
            floor, short = _coverage_check(cm, {}, len(table))
            doubts = [short] if short else []
            if metric == "far_gap":
                ok, verdict = _far_gate(cm, None, (cand.card.get("calibration") or {}).get("n"))
                if not ok:
                    doubts.append(verdict)
            if doubts:
                return result(True, "no champion yet: the first version that passes parity becomes champion, BUT "
                              "on its own held-out rows " + "; ".join(doubts)
                              + " (check it before relying on its uncertainty, or train it again)", cm, None, floor)
            held = "passes parity" + (" and covers its nominal level" if floor is not None else "") \
                + (" with its false alarm rate within alpha's tolerance" if metric == "far_gap" else "")
            return result(True, f"no champion yet: the first version that {held} becomes champion", cm, None, floor)
        if champ.version == cand.version:
            return result(False, "this version is already the champion", cm, cm)
        if champ.kind != cand.kind:
            return result(False, f"the champion is a {champ.kind} model, the candidate a {cand.kind} model", cm)
        ct, ht = cand.card.get("target"), champ.card.get("target")
        if ct != ht:
            # Each side is scored on its own target: a CO model registered under the NOx model id had the smaller
            # MAE (CO's scale) and became the champion, and the NOx PEMS served CO values as NOx.
            return result(False, f"the candidate predicts {ct!r}, the champion {ht!r}: a model id serves one target "
                          f"(register the candidate under another model id, or train it with target {ht!r})", cm)
        refusals = []
        ca, ha = _alpha(cand), _alpha(champ)
        if (ca is None) != (ha is None) or (ca is not None and not math.isclose(ca, ha, rel_tol=1e-9)):
            refusals.append(f"the candidate's alpha {ca} is not the champion's {ha}: intervals and p-values of "
                            f"different levels do not compare (train the candidate with alpha {ha})")
        try:
            hm = run(champ)
        except IntegrityError as exc:
            # Raised, it escaped the gate with no refusal recorded, and named a file without saying it was the
            # champion's that stood in the way.
            return result(False, f"the champion v{champ.version} cannot be compared: {exc}; restore its files, or "
                          f"roll back to an intact version (`valvoja models rollback {cand.model_id} --to N`) and "
                          "gate the candidate against that", cm)
        floor, short = _coverage_check(cm, hm, len(table))
        if short:
            refusals.append(short)
        hv = hm.get(metric)
        ok = True
        if metric == "far_gap":
            ok, verdict = _far_gate(cm, hm, (cand.card.get("calibration") or {}).get("n"))
        elif hv is None or not math.isfinite(hv):
            verdict = f"the champion's {metric} is not defined on these rows"
        else:
            slack = MATCH_RTOL * max(abs(hv), 1e-12)
            ok = cv <= hv + slack if direction == "lower" else cv >= hv - slack
            verdict = (f"candidate {metric} {cv:.6g} {'matches or beats' if ok else 'is worse than'} champion "
                       f"{hv:.6g} ({direction} is better)")
        own = (cand.metrics.get("gate") or {}).get("metric")
        if own and own != metric:
            verdict += f" (the candidate's card names {own}; the gate metric is not the candidate's to choose)"
        return result(ok and not refusals, "; ".join([*refusals, verdict]), cm, hm, floor)

    def _needs_labels(self, cand: ModelVersion, champ: ModelVersion | None, metric: str, label: str | None) -> str:
        """What a candidate whose labelled gate metric is undefined needs ('' when that is not why): the metric was
        fixed by an earlier promotion, and the rows lack the label column named on the champion's card."""
        first = self._first_promotion(cand.model_id)
        if metric not in LABELLED_METRICS or label or first is None:
            return ""
        column = (champ.card.get("label") if champ else None) \
            or self.get(cand.model_id, int(first["version"])).card.get("label")
        own = f"labelled by {cand.card['label']!r}" if cand.card.get("label") else "trained without labels"
        need = f"holdout data with column {column!r}" if column else "labelled holdout data"
        return (f": the gate metric {metric} was fixed by v{first['version']}'s promotion and needs labelled rows "
                f"(the candidate was {own}); give {need} "
                f"(`valvoja models promote {cand.model_id} {cand.version} --holdout FILE`)")

    def promote(self, model_id: str, version: int, *, holdout: FeatureTable | None = None,
                actor: str = "system", also: Callable[[Any, Comparison], None] | None = None) -> Comparison:
        """The gate. Returns the comparison when the candidate became champion; raises `GateRefused` (with the
        comparison) when it did not. Either way the outcome is recorded in the events. ``also(conn, comparison)``
        runs inside the index's transaction after the change (``conn``: its database connection, None for
        ``index.json``), so what it writes (the console's audit entry) commits with the change or not at all."""
        cand = self.get(model_id, version)
        if cand.status == "champion":
            raise GateRefused(self._compare(cand, cand, holdout))
        champ = self.champion(model_id)
        comparison = self._compare(cand, champ, holdout)
        with self._index.tx(model_id) as ix:
            rows = {int(r["version"]): r for r in ix.rows(model_id)}
            now_champ = next((v for v, r in rows.items() if r["status"] == "champion"), None)
            if comparison.accepted and now_champ != (champ.version if champ else None):
                comparison.accepted = False
                comparison.reason = f"the champion changed to v{now_champ} during the comparison; run the gate again"
            if not comparison.accepted:
                ix.add_event(model_id, version, "refuse", now_champ, actor, comparison.to_dict())
            else:
                now = datetime.now(UTC)
                if now_champ is not None:
                    ix.set_status(model_id, now_champ, "retired", now)
                ix.set_status(model_id, version, "champion", now)
                ix.add_event(model_id, version, "promote", now_champ, actor, comparison.to_dict())
            if also is not None:
                also(getattr(ix, "conn", None), comparison)
        if not comparison.accepted:
            raise GateRefused(comparison)
        return comparison

    # ---------------------------------------------------------------- rollback

    def rollback(self, model_id: str, to: int | None = None, *, actor: str = "system",
                 also: Callable[[Any, dict], None] | None = None) -> dict:
        """Retire the champion and put back ``to`` (default: the champion before it). No gate: this is the way
        back when a promoted model misbehaves in service; the version must still have passed parity and its
        file must have the registered sha256. ``also(conn, result)`` runs inside the transaction, as for
        `promote`."""
        with self._index.tx(model_id) as ix:
            rows = {int(r["version"]): r for r in ix.rows(model_id)}
            if not rows:
                raise LookupError(f"no model {model_id!r} in the registry")
            current = next((v for v, r in rows.items() if r["status"] == "champion"), None)
            stack = _champion_history(ix.events(model_id))
            if to is None:
                earlier = [v for v in stack if v != current]
                if not earlier:
                    raise LookupError(f"model {model_id!r} has no previous champion to roll back to")
                to = earlier[-1]
            to = int(to)
            if to not in rows:
                raise LookupError(f"model {model_id!r} has no version {to}")
            if to == current:
                raise ValueError(f"{model_id} v{to} is already the champion")
            target = self._version(rows[to])
            if not target.parity_passed:
                raise ParityError(f"{model_id} v{to} failed parity; it cannot be served")
            if current is not None:
                was = rows[current].get("target")
                if target.card.get("target") != was:
                    # No gate here, but a model id serves one target: its consumers name the target themselves
                    # (a PEMS link stores the output as its own pollutant), so another target is served as this one.
                    raise ValueError(f"{model_id} v{to} predicts {target.card.get('target')!r}, the champion "
                                     f"v{current} {was!r}: a model id serves one target")
            target.load()  # the file must be intact before it becomes the served model
            now = datetime.now(UTC)
            if current is not None:
                ix.set_status(model_id, current, "retired", now)
            ix.set_status(model_id, to, "champion", now)
            detail = {"from": current, "to": to}
            ix.add_event(model_id, to, "rollback", current, actor, detail)
            result = {"model_id": model_id, **detail}
            if also is not None:
                also(getattr(ix, "conn", None), result)
        return result


def _champion_history(events: list[dict]) -> list[int]:
    """Champions in order, as a stack: a promotion pushes; a rollback to ``v`` pops back to ``v`` (or pushes
    it when it was never champion). The previous champion is the entry below the current one."""
    stack: list[int] = []
    for e in events:
        v = int(e["version"])
        if e["event"] == "promote":
            stack.append(v)
        elif e["event"] == "rollback":
            if v in stack:
                del stack[len(stack) - stack[::-1].index(v):]
            else:
                stack.append(v)
    return stack


def _card_calibration(card: dict) -> dict:
    """The calibration without the score list (that stays in the card; the column is for reading)."""
    return {k: v for k, v in card.get("calibration", {}).items() if k != "scores"}


def _index_card(card: dict) -> dict:
    """The card as the index holds it: without the calibration score list and the drift reference."""
    return {k: v for k, v in {**card, "calibration": _card_calibration(card)}.items() if k != "drift_reference"}


def _alpha(mv: ModelVersion) -> float | None:
    return (mv.card.get("calibration") or {}).get("alpha")


def _coverage_check(cm: dict, hm: dict, rows: int) -> tuple[float | None, str | None]:
    """``(floor, why refused or None)`` for the candidate's interval coverage on the gate rows (regressors).
    The candidate must cover at least `coverage_floor` of nominal, or, when the rows have drifted so that the
    champion's intervals cover less than that too, at least the floor of the champion's coverage: a candidate is
    not refused for a drift both suffer, and never promoted with intervals clearly worse than the champion's."""
    cov, nominal = cm.get("coverage"), cm.get("nominal_coverage")
    if cov is None or nominal is None or not rows:
        return None, None
    floor = coverage_floor(nominal, rows)
    against = f"nominal {nominal:.4g}"
    champ_cov = hm.get("coverage")
    if champ_cov is not None and coverage_floor(champ_cov, rows) < floor:
        floor, against = coverage_floor(champ_cov, rows), f"the champion's {champ_cov:.4f} on these rows"
    if round(cov * rows) >= round(floor * rows):
        return floor, None
    return floor, (f"the candidate's intervals cover {cov:.4f} of the rows, below {floor:.4f} ({against} minus a "
                   f"one-sided {1 - COVERAGE_TEST_LEVEL:.0%} binomial tolerance for {rows} rows)")


def far_band(alpha: float, normal_rows: int, calibration_rows: int | None = None) -> tuple[float, float]:
    """The false alarm rates the gate accepts on ``normal_rows`` normal rows for p-values flagged at ``alpha``:
    ``k / n`` between the `COVERAGE_TEST_LEVEL` (1 %) lower and upper quantiles of Binomial(n, alpha). A detector's
    rate varies with its calibration scores too (a conformal threshold from ``m`` scores is itself random), so with
    ``calibration_rows`` ``n`` is ``1 / (1 / normal_rows + 1 / m)``, the binomial of the same variance; calibrated
    p-values then fall outside on about 2 % of holdouts. E.g. alpha 0.1 on 500 rows: [0.07, 0.132]; with 500
    calibration scores: [0.06, 0.148]."""
    from scipy.stats import binom

    if normal_rows <= 0:
        return 0.0, 1.0
    n = normal_rows if not calibration_rows else max(1, round(1 / (1 / normal_rows + 1 / calibration_rows)))
    return float(binom.ppf(COVERAGE_TEST_LEVEL, n, alpha)) / n, float(binom.isf(COVERAGE_TEST_LEVEL, n, alpha)) / n


def _far_gate(cm: dict, hm: dict | None, calibration_rows: int | None) -> tuple[bool, str]:
    """``(accepted, verdict)`` of the ``far_gap`` gate. Ranking by ``|far - alpha|`` alone preferred a detector
    that flags alpha of all rows at random (gap 0, detects nothing) to a good one that raises slightly fewer false
    alarms than alpha. Now the false alarm rate is a condition and detection decides: the candidate's rate must
    not exceed the upper end of `far_band` (more false alarms than its p-values promise); on labelled rows it must
    match or beat the champion's detection rate at ``p <= alpha`` (fewer false alarms than alpha cost nothing
    there: what it misses shows). Without labelled anomalies nothing shows a detector's power but its alarms, so
    its rate must also not fall below the band (a detector that hardly flags is refused), and within the band it
    is accepted. As for coverage (`_coverage_check`), rows that drifted so that the champion's rate is above the
    band too do not refuse a candidate for what both suffer: its rate must then be within the same tolerance of
    the champion's, and detection decides. ``hm`` None: no champion (a first promotion), the band alone."""
    alpha, n = cm["alpha"], int(cm.get("normal_rows") or 0)
    lo, hi = far_band(alpha, n, calibration_rows)
    band = (f"[{lo:.4g}, {hi:.4g}] (alpha {alpha:g} within a {1 - COVERAGE_TEST_LEVEL:.0%} binomial tolerance for "
            f"{n} normal rows and {calibration_rows or 'unknown'} calibration scores)")
    first, hm = hm is None, hm or {}
    cf, hf = cm["far"], hm.get("far")
    champion_above = hf is not None and math.isfinite(hf) and hf > hi
    drift = ""
    if cf > hi:
        if not champion_above:
            return False, f"the candidate's false alarm rate {cf:.4g} is above {band}"
        around = far_band(hf, n, calibration_rows)[1]
        if cf > around:
            return False, (f"the candidate's false alarm rate {cf:.4g} is above {band}, and above {around:.4g}, the "
                           f"same tolerance around the champion's {hf:.4g} on these rows")
        drift = (f"the champion's false alarm rate {hf:.4g} is above {band} too (the rows drifted for both), the "
                 f"candidate's {cf:.4g} within the same tolerance of it ({around:.4g}); ")
    cd, hd = cm.get("detection_rate"), hm.get("detection_rate")
    labelled = cd is not None and math.isfinite(cd) and (first or (hd is not None and math.isfinite(hd)))
    if not labelled:
        if cf < lo:
            return False, (f"the candidate's false alarm rate {cf:.4g} is below {band}, and no labelled anomalous "
                           "rows show what it detects")
        return True, drift + (f"the candidate's false alarm rate {cf:.4g} is "
                              f"{'not above the champion tolerance' if drift else 'within ' + band}; no labelled "
                              "anomalous rows to rank detection by")
    if first:
        return True, f"the candidate's false alarm rate {cf:.4g} is not above {band}; detection rate {cd:.4g}"
    if not drift and champion_above:
        return True, f"the candidate's false alarm rate {cf:.4g} is within {band}, the champion's {_fmt(hf)} is not"
    if hf is None or not math.isfinite(hf):
        return True, f"the candidate's false alarm rate {cf:.4g} is within {band}, the champion's is not defined"
    ok = cd >= hd - MATCH_RTOL * max(abs(hd), 1e-12)
    return ok, drift + (f"false alarm rates {cf:.4g} (candidate) and {hf:.4g} (champion) "
                        f"{'within that tolerance' if drift else 'not above ' + band}; candidate detection rate "
                        f"{cd:.4g} {'matches or beats' if ok else 'is below'} champion {hd:.4g} at p <= alpha")


def coverage_floor(nominal: float, rows: int) -> float:
    """The lowest holdout coverage the gate accepts for intervals of ``nominal`` coverage on ``rows`` rows:
    ``k / rows`` with ``k`` the `COVERAGE_TEST_LEVEL` (1 %) quantile of Binomial(rows, nominal). Intervals that
    really cover ``nominal`` (split conformal does on exchangeable rows) fall below it on fewer than 1 % of
    holdouts; e.g. 90 % on 300 rows: 0.8567, on 1,000 rows: 0.877."""
    from scipy.stats import binom

    return float(binom.ppf(COVERAGE_TEST_LEVEL, rows, nominal)) / rows if rows > 0 else 0.0


def model_id_v(mv: ModelVersion) -> str:
    return f"{mv.model_id} v{mv.version}"


# ---------------------------------------------------------------- for the console and scripts

def promote(model_id: str, version: int, *, root: str | Path = "var/models", dsn: str | None = None,
            actor: str = "system", holdout: FeatureTable | None = None, also=None) -> Comparison:
    """`Registry.promote` on the registry at ``root`` / ``dsn``."""
    return Registry(root, dsn).promote(model_id, version, holdout=holdout, actor=actor, also=also)


def rollback(model_id: str, to: int | None = None, *, root: str | Path = "var/models", dsn: str | None = None,
             actor: str = "system", also=None) -> dict:
    """`Registry.rollback` on the registry at ``root`` / ``dsn``."""
    return Registry(root, dsn).rollback(model_id, to, actor=actor, also=also)
