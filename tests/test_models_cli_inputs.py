"""``valvoja models`` with odd inputs: each bad input is one clear line on stderr, exit 1, and the registry's
versions are left as they were."""

from __future__ import annotations

import json

import pytest
from models_support import regression_table

from edge.cli import main


def _rows(table) -> list[str]:
    names = table.names
    times = [str(t) for t in table.times]
    return [f"{times[i]}," + ",".join(repr(float(table.columns[n][i])) for n in names) for i in range(len(table))]


def _write(path, table, edit=None, *, times: bool = True):
    rows = _rows(table)
    if edit:
        edit(rows)
    header = "time," + ",".join(table.names)
    if not times:
        header, rows = header.split(",", 1)[1], [r.split(",", 1)[1] for r in rows]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _short(rows):
    rows[40] = ",".join(rows[40].split(",")[:3])  # file line 42: a cut-off row


def _long(rows):
    rows[40] += ",7"


def _bad_time(rows):
    rows[40] = "yesterday noon," + rows[40].split(",", 1)[1]


def _bad_number(rows):
    parts = rows[40].split(",")
    parts[2] = "1;5"  # text in a number column (x2)
    rows[40] = ",".join(parts)


def _cell(value):
    def edit(rows):
        parts = rows[40].split(",")
        parts[2] = value
        rows[40] = ",".join(parts)
    edit.__name__ = f"_cell_{value or 'empty'}"
    return edit


def _duplicate_time(rows):
    rows[41] = rows[40].split(",", 1)[0] + "," + rows[41].split(",", 1)[1]


@pytest.fixture
def registry(tmp_path, capsys):
    """A registry with one champion, trained from a good file."""
    reg = tmp_path / "reg"
    good = _write(tmp_path / "good.csv", regression_table(300))
    assert main(["models", "train", "--data", str(good), "--time-column", "time", "--target", "y", "--model-id", "m",
                 "--param", "max_iter=20", "--registry", str(reg)]) == 0
    assert main(["models", "promote", "m", "1", "--registry", str(reg)]) == 0
    capsys.readouterr()
    return reg


def _one_line_error(capsys, says: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and says in err and "Traceback" not in err, err
    return err


def _untouched(reg, capsys):
    assert main(["models", "list", "m", "--json", "--registry", str(reg)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["status"]) for v in listed] == [(1, "champion")]
    assert sorted(p.name for p in (reg / "m").iterdir()) == ["1"]


@pytest.mark.parametrize(("edit", "says"), [
    # a short row read as missing values ("non-finite values in column(s) x4, y"), a long one was cut silently
    (_short, "bad.csv: line 42 has 3 field(s), the header 6: fix or drop it"),
    (_long, "bad.csv: line 42 has 7 field(s), the header 6"),
    # "error: Invalid isoformat string: 'yesterday noon'": which file, which line?
    (_bad_time, "bad.csv: line 42: time column 'time': 'yesterday noon' is not an ISO 8601 time"),
    (_bad_number, "bad.csv: line 42: column 'x2' is not numeric: '1;5'"),
    # "non-finite values in column(s) x2": in which of the rows?
    (_cell("nan"), "non-finite values in column(s) x2, 1 row(s) (at 2024-01-02T16:00:00.000000)"),
    (_cell("inf"), "non-finite values in column(s) x2, 1 row(s) (at 2024-01-02T16:00:00.000000)"),
    (_cell(""), "non-finite values in column(s) x2, 1 row(s) (at 2024-01-02T16:00:00.000000)"),
    # trained without a word, and the time split could hold out a copy of a training row
    (_duplicate_time, "1 time(s) on more than one row (2024-01-02T16:00:00.000000)"),
])
def test_train_on_a_bad_file_is_one_line_and_registers_nothing(registry, tmp_path, capsys, edit, says):
    bad = _write(tmp_path / "bad.csv", regression_table(300, seed=3), edit)
    assert main(["models", "train", "--data", str(bad), "--time-column", "time", "--target", "y", "--model-id", "m",
                 "--param", "max_iter=20", "--registry", str(registry)]) == 1
    _one_line_error(capsys, says)
    _untouched(registry, capsys)


def test_a_time_column_left_unnamed_is_said_with_the_option_that_names_it(registry, tmp_path, capsys):
    """``train`` / ``report`` on a file with a time column but without ``--time-column`` said only "column 'time' is
    not numeric: '2024-01-01T00:00:00.000000'"."""
    data = _write(tmp_path / "d.csv", regression_table(300, seed=3))
    assert main(["models", "train", "--data", str(data), "--target", "y", "--model-id", "m", "--registry",
                 str(registry)]) == 1
    _one_line_error(capsys, "column 'time' is not numeric: '2024-01-01T00:00:00.000000' (if it is the time column, "
                            "name it: --time-column time)")
    _untouched(registry, capsys)


def test_the_same_file_twice_is_refused_by_content(registry, tmp_path, capsys):
    """Without a time column nothing else shows it: every row twice, half the holdout copies of training rows."""
    table = regression_table(300, seed=4)
    a = _write(tmp_path / "a.csv", table, times=False)
    copy = tmp_path / "copy.csv"
    copy.write_bytes(a.read_bytes())
    assert main(["models", "train", "--data", str(a), str(copy), "--target", "y",
                 "--model-id", "m", "--param", "max_iter=20", "--registry", str(registry)]) == 1
    _one_line_error(capsys, f"{copy} is the same data as {a} (same sha256): give each file once")
    assert main(["models", "promote", "m", "1", "--holdout", str(a), str(a), "--registry", str(registry)]) == 1
    _one_line_error(capsys, "is the same data as")
    # a report counted every row twice (coverage, MAE, drift)
    assert main(["models", "report", "m", "--data", str(a), str(copy), "--registry", str(registry), "--out",
                 str(tmp_path / "rep")]) == 1
    _one_line_error(capsys, f"{copy} is the same data as {a}")
    assert not (tmp_path / "rep").exists()
    _untouched(registry, capsys)


def test_promote_on_a_holdout_with_a_bad_time_is_one_line(registry, tmp_path, capsys):
    bad = _write(tmp_path / "bad.csv", regression_table(300, seed=5), _bad_time)
    assert main(["models", "promote", "m", "1", "--holdout", str(bad), "--time-column", "time", "--registry",
                 str(registry)]) == 1
    _one_line_error(capsys, "line 42: time column 'time'")
    assert main(["models", "report", "m", "--data", str(bad), "--time-column", "time", "--registry", str(registry),
                 "--out", str(tmp_path / "rep")]) == 1
    _one_line_error(capsys, "line 42: time column 'time'")
    _untouched(registry, capsys)


def test_train_takes_the_estimator_option_the_other_commands_use(tmp_path, capsys):
    """`models evaluate gas-turbine` and `emissions pems` take --estimator, `models train` took only --kind:
    `--estimator linear` was "unrecognized arguments". An unknown one is named with the choices (usage error, 2)."""
    good = _write(tmp_path / "good.csv", regression_table(200))
    base = ["models", "train", "--data", str(good), "--time-column", "time", "--target", "y", "--model-id", "m",
            "--no-register"]
    assert main([*base, "--estimator", "linear"]) == 0
    assert main([*base, "--kind", "linear"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*base, "--estimator", "xgboost"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --estimator/--kind: invalid choice: 'xgboost'" in err and "'hgb'" in err, err


def test_train_into_a_read_only_registry_folder_fails_before_training(tmp_path, capsys):
    """It trained (minutes on real data), then failed at registration: `.index.lock: Read-only file system`."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        good = _write(tmp_path / "good.csv", regression_table(200))
        assert main(["models", "train", "--data", str(good), "--time-column", "time", "--target", "y",
                     "--model-id", "m", "--registry", str(ro)]) == 1
        # one line in all: training's progress lines (stderr too) never came
        assert "Read-only file system" in _one_line_error(capsys, f"{ro}/.write-check-")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_promote_on_a_holdout_with_a_missing_input_names_the_version_and_the_data(registry, tmp_path, capsys):
    """"error: NaN or infinite input values: x2 (row 40; 1 in all)": which model, which data, which row?"""
    bad = _write(tmp_path / "bad.csv", regression_table(300, seed=6), _cell(""))
    assert main(["models", "promote", "m", "1", "--holdout", str(bad), "--time-column", "time", "--registry",
                 str(registry)]) == 1
    _one_line_error(capsys, "m v1: the given holdout data: NaN or infinite input values: x2 (row 40; 1 in all) "
                            "(rows counted from 0)")
    _untouched(registry, capsys)


@pytest.mark.parametrize(("content", "says"), [
    # "error: 'utf-8' codec can't decode byte 0xb0 in position 3": which file?
    ("AT \xb0C,b,y\n".encode("latin-1") + b"1,2,3\n",
     "bad.csv: not UTF-8 text (byte b0 at offset 3): save it as UTF-8"),
    # the second "a" replaced the first, silently
    (b"a,a,y\n1,2,3\n", "bad.csv: column(s) a appear more than once in the header"),
    # a feature named ""
    (b"a,,y\n1,2,3\n", "bad.csv: header field(s) 2 have no name"),
])
def test_a_header_or_encoding_the_reader_cannot_take_is_named(tmp_path, capsys, content, says):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    assert main(["models", "train", "--data", str(bad), "--target", "y", "--model-id", "m", "--no-register"]) == 1
    _one_line_error(capsys, says)


def test_files_with_other_columns_are_named_and_a_trailing_delimiter_is_no_column(tmp_path, capsys):
    table = regression_table(200)
    a = _write(tmp_path / "a.csv", table, times=False)
    b = tmp_path / "b.csv"
    b.write_text(a.read_text().replace("x3", "x9", 1))
    assert main(["models", "train", "--data", str(a), str(b), "--target", "y", "--model-id", "m",
                 "--no-register"]) == 1  # "tables have different columns: [...] vs [...]": of which files?
    _one_line_error(capsys, f"{b}: columns x1, x2, x9, x4, y are not those of {a}: x1, x2, x3, x4, y")
    trailing = tmp_path / "trailing.csv"  # some exports end every line with the delimiter
    trailing.write_text("".join(line + ",\n" for line in a.read_text().splitlines()))
    assert main(["models", "train", "--data", str(trailing), "--target", "y", "--model-id", "m", "--no-register",
                 "--json"]) == 0
    card = json.loads(capsys.readouterr().out.split("\nm: trained")[0])
    assert [f["name"] for f in card["input_schema"]["features"]] == ["x1", "x2", "x3", "x4"]
