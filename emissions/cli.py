"""``valvoja emissions ...``: reports and recomputation from the command line.

    valvoja emissions report  --config SITE.toml --stack K1 --day 2026-03-01   [--out DIR] [--pdf]
    valvoja emissions report  --config SITE.toml --stack K1 --month 2026-03
    valvoja emissions compute --config SITE.toml [--stack K1] --from 2026-01-01 --to 2026-03-01 [--reason TEXT]
    valvoja emissions pems    train|evaluate ...   (see emissions.pems_cli)

The database is ``--db URL``, else the site configuration's ``[database]``, else ``$VALVOJA_DB_URL``.
``python -m emissions.cli ...`` is the same as ``valvoja emissions ...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edge.errors import ConfigError
from edge.operator import who


def add_parser(subparsers) -> None:
    """Register ``emissions`` and its actions on the ``valvoja`` sub-command parser."""
    p = subparsers.add_parser("emissions", help="emission averages, compliance and reports",
                              description="Continuous emission monitoring: compute averages and compliance from "
                                          "stored readings, and write daily or monthly reports.")
    sub = p.add_subparsers(dest="emissions_command", required=True, metavar="ACTION")

    r = sub.add_parser("report", help="write a daily or monthly report (HTML + CSV, PDF with --pdf)",
                       description="Recompute the stack from the year start to the end of the period (so year-to-date "
                                   "rules are current), store the results, and write the report files. A period "
                                   "still running is computed up to the last whole hour and reported provisional. "
                                   "Where the periodic job recomputed the period's stored results from late "
                                   "readings, the report says when and why; where a run changed a stored average of "
                                   "the period (or of its hours, half-hours or days) after it had closed, it gives "
                                   "the old and new value.")
    _common(r)
    r.add_argument("--stack", required=True, help="stack name from [[stacks]]")
    when = r.add_mutually_exclusive_group(required=True)
    when.add_argument("--day", metavar="YYYY-MM-DD", help="local calendar day")
    when.add_argument("--month", metavar="YYYY-MM", help="local calendar month")
    r.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default ./reports)")
    r.add_argument("--pdf", action="store_true", help="also print the HTML to PDF with headless Chromium")
    r.add_argument("--no-store", action="store_true", help="do not write the computed averages to the database")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("compute", help="recompute and store averages and compliance for a span",
                       description="Recompute whole days from the stored readings and upsert the results "
                                   "(idempotent: running it twice stores the same rows); a day still running up to "
                                   "the last whole hour. Windows that started before --from or run on after --to (a "
                                   "month, a year) are left as stored: cover them from their first day to their end "
                                   "(or to today) to judge them. Late readings of a closed year that the periodic "
                                   "job no longer takes (after late_data_days) are taken with --from YYYY-01-01 "
                                   "--to the next 1 January.")
    _common(c)
    c.add_argument("--stack", help="one stack (default: all)")
    c.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD")
    c.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="exclusive")
    c.add_argument("--reason", default="", help="why (a corrected calibration or configuration, late data): stored "
                                                "with the run, with who ran it ($VALVOJA_USER or the login name), "
                                                "and quoted by reports of the periods it recomputed")
    c.set_defaults(func=cmd_compute)

    try:
        from emissions import pems_cli
    except ImportError:  # PEMS needs models/; the rest works without it
        return
    pems_cli.add_parser(sub)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, required=True, metavar="SITE.toml",
                   help="site configuration with [[stacks]] (emissions/sample.toml shows every key)")
    p.add_argument("--db", metavar="URL", help="postgresql:// URL (default: [database] or $VALVOJA_DB_URL)")


def load(args) -> tuple[list, str]:
    """Stacks and the database URL from the command line."""
    from edge import settings
    from edge.gateway import database_conninfo
    from emissions.config import load_stacks

    site = settings.load(args.config)
    stacks = load_stacks(site.stacks)
    if not stacks:
        raise ConfigError(f"{args.config}: no [[stacks]] configured")
    url = args.db or database_conninfo(site) or os.environ.get("VALVOJA_DB_URL")
    if not url:
        raise ConfigError("no database: give --db URL, [database] url in the configuration, or set VALVOJA_DB_URL")
    return stacks, url


def _stack(stacks: list, name: str):
    for s in stacks:
        if s.name == name:
            return s
    raise ConfigError(f"no stack {name!r}; configured: {', '.join(s.name for s in stacks)}")


def cmd_report(args) -> int:
    import psycopg

    from edge.db.migrate import migrate
    from emissions import job, late, periods, report, report_html, revisions
    from emissions.job import NothingClosed, run_span

    stacks, url = load(args)
    cfg = _stack(stacks, args.stack)
    try:
        kind, (start, end) = (("day", periods.parse_day(args.day, cfg.timezone)) if args.day
                              else ("month", periods.parse_month(args.month, cfg.timezone)))
    except ValueError as exc:
        raise ConfigError(f"--{'day' if args.day else 'month'}: {exc}") from exc
    with psycopg.connect(url, autocommit=True) as conn:
        features, _ = migrate(conn)
        try:
            sr = run_span(conn, cfg, start, end, features=features, write=not args.no_store)
        except NothingClosed as exc:
            raise ConfigError(str(exc)) from None
        recomputed = late.notes(conn, cfg, start, end) + revisions.notes(conn, cfg, kind, start, end)
        pems_levels = job.pems_levels(conn, cfg, start, end)
        pems_models = job.pems_models(conn, cfg, start, end)
    rep = report.build(sr, kind, start, end, features.edition)
    rep.pems_levels, rep.pems_models = pems_levels, pems_models
    rep.notes += recomputed  # a report filed before late data changed the stored results differs from this one
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"emissions_{cfg.name}_{args.day or args.month}"
    html_path = base.with_suffix(".html")
    html_path.write_text(report_html.render(rep), encoding="utf-8")
    written = [html_path, *report.write_csv(rep, base.with_suffix(".csv"))]
    if args.pdf:
        pdf = print_pdf(html_path)
        if pdf is None:
            print("PDF: no headless Chromium found (apt-get install chromium); HTML and CSV written", file=sys.stderr)
        else:
            written.append(pdf)
    exceed = [e for e in rep.events if e.kind != "pems_deviation"]
    print(f"{rep.title}: {len(rep.summary)} pollutants, {len(exceed)} exceedance events "
          f"({sum(e.breach for e in exceed)} breaches), computed in {sr.seconds:.1f} s")
    for p in written:
        print(f"  {p}")
    return 0


def print_pdf(html_path: Path, timeout_s: float = 120.0) -> Path | None:
    """Print an HTML file to PDF with headless Chromium where installed; None when there is none."""
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        return None
    pdf = html_path.with_suffix(".pdf")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                    f"--print-to-pdf={pdf}", html_path.resolve().as_uri()],
                   check=True, capture_output=True, timeout=timeout_s)
    return pdf if pdf.exists() else None


def cmd_compute(args) -> int:
    from datetime import date, timedelta

    import psycopg

    from edge.db.migrate import migrate
    from emissions import periods
    from emissions.job import NothingClosed, run_span

    try:
        first, after = date.fromisoformat(args.start), date.fromisoformat(args.end)
    except ValueError as exc:
        raise ConfigError(f"--from/--to: {exc} (write YYYY-MM-DD)") from None
    if after <= first:
        # run_span said "nothing to compute from --from: no hour of it has ended yet", which sent people to the clock
        raise ConfigError(f"--to {args.end} is not after --from {args.start} (--to is exclusive: one day is "
                          f"--from {first} --to {first + timedelta(days=1)})")
    stacks, url = load(args)
    chosen = [_stack(stacks, args.stack)] if args.stack else stacks
    # A recomputation by hand may change averages already reported: the reports made after it say who and why.
    reason = f"compute by {who()}" + (f": {args.reason.strip()}" if args.reason.strip() else "")
    with psycopg.connect(url, autocommit=True) as conn:
        features, _ = migrate(conn)
        for cfg in chosen:
            try:
                start = periods.parse_day(date.fromisoformat(args.start).isoformat(), cfg.timezone)[0]
                end = periods.parse_day(date.fromisoformat(args.end).isoformat(), cfg.timezone)[0]
            except ValueError as exc:
                raise ConfigError(f"--from/--to: {exc}") from exc
            try:
                sr = run_span(conn, cfg, start, end, features=features, context="day", reason=reason)
            except NothingClosed as exc:
                raise ConfigError(str(exc)) from None
            print(f"{cfg.name}: {sr.rows_written} averages, {len(sr.events)} events, "
                  f"{sum(not r.passed for r in sr.rules)} failed rule windows in {sr.seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m emissions.cli ARGS`` is ``valvoja emissions ARGS``."""
    from edge.cli import main as valvoja

    return valvoja(["emissions", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
