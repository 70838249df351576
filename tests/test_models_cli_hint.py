"""The promote command `valvoja models train` prints runs as printed: from another folder, on the registry and
database the training wrote to, and without the password a --db URL carried."""

from __future__ import annotations

import re
import shlex

from models_support import regression_table
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from edge.cli import main


def _csv(path, table):
    names = table.names
    rows = [f"{table.times[i]}," + ",".join(repr(float(table.columns[n][i])) for n in names) for i in range(len(table))]
    path.write_text("\n".join(["time," + ",".join(names), *rows]) + "\n")
    return path


def _hint(out: str) -> list[str]:
    found = re.search(r"promote with `([^`]+)`", out)
    assert found, out
    return shlex.split(found.group(1))


def test_the_printed_promote_command_works_from_another_folder(tmp_path, capsys, monkeypatch):
    data = _csv(tmp_path / "train.csv", regression_table(300))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VALVOJA_DB_URL", raising=False)
    assert main(["models", "train", "--data", str(data), "--time-column", "time", "--target", "y",
                 "--model-id", "m", "--registry", "reg"]) == 0
    command = _hint(capsys.readouterr().out)
    assert command[:5] == ["valvoja", "models", "promote", "m", "1"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative --registry given to train is not here
    assert main(command[1:]) == 0, capsys.readouterr()
    assert "m v1 is now the champion" in capsys.readouterr().out


def test_the_printed_command_names_the_database_without_its_password(pg_dsn, tmp_path, capsys, monkeypatch):
    data = _csv(tmp_path / "train.csv", regression_table(300, seed=2))
    monkeypatch.delenv("VALVOJA_DB_URL", raising=False)
    assert main(["db", "migrate", "--db", pg_dsn]) == 0
    with_password = make_conninfo(pg_dsn, password="not-printed-secret")  # trust auth: any password is taken
    assert main(["models", "train", "--data", str(data), "--time-column", "time", "--target", "y",
                 "--model-id", "m", "--registry", str(tmp_path / "reg"), "--db", with_password]) == 0
    out = capsys.readouterr().out
    assert "not-printed-secret" not in out
    command = _hint(out)
    db = command[command.index("--db") + 1]
    assert "password" not in conninfo_to_dict(db)
    assert main(command[1:]) == 0, capsys.readouterr()
    assert main(["models", "list", "m", "--registry", str(tmp_path / "reg"), "--db", pg_dsn]) == 0
    assert re.search(r"\bm\s+1\s+champion", capsys.readouterr().out)
