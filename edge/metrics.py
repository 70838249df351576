"""Prometheus metrics of one gateway (served as text on ``/metrics``).

One `Metrics` object per gateway with its own registry, so several gateways (tests,
the demo) can live in one process. Names follow Prometheus conventions: counters end
in ``_total``, units are in the name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

# In the text format /metrics serves, each counter's and histogram's `<name>_created` (its creation time) is a series
# of its own that Prometheus stores beside it: a third of the gateway's series (42 of 128 with one collector, 636 of
# 1,415 with 100) telling nothing an operator uses. A setting of the library, for the whole process.
disable_created_metrics()

# The kinds of records the forwarder writes besides readings (records_refused's label; edge/analytics.py).
RECORD_KINDS = ("prediction", "alert_change", "detector_version")


def _loop_tasks() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # rendered outside the loop (a test, a thread): not known
        return float("nan")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.readings_in = Counter("valvoja_readings_in_total", "Readings of a collector made durable in the spool",
                                   ["collector"], registry=r)
        self.readings_flagged = Counter("valvoja_readings_flagged_total",
                                        "Readings a validation rule flagged (unknown_tag keeps the quality)",
                                        ["rule"], registry=r)
        self.readings_out = Counter("valvoja_readings_stored_total", "Readings committed to the database",
                                    registry=r)
        self.readings_conflicting = Counter("valvoja_readings_conflicting_total",
                                            "Readings not stored: the database holds another value of their tag at "
                                            "the same time (the first one is kept)", registry=r)
        self.messages_in = Counter("valvoja_collector_messages_total", "Protocol messages received",
                                   ["collector"], registry=r)
        self.dead_letters = Counter("valvoja_dead_letters_total", "Messages that could not be decoded",
                                    ["collector"], registry=r)
        self.collector_errors = Counter("valvoja_collector_errors_total",
                                        "Collector errors (connection lost, refused, timeouts)",
                                        ["collector", "kind"], registry=r)
        self.reconnects = Counter("valvoja_collector_reconnects_total", "Collector reconnect attempts",
                                  ["collector"], registry=r)
        self.connected = Gauge("valvoja_collector_connected", "1 while the collector is connected",
                               ["collector"], registry=r)
        self.failovers = Counter("valvoja_collector_failovers_total", "Switches of an OPC UA collector to another "
                                 "server of its redundant set (reason: connection_lost, service_level)",
                                 ["collector", "reason"], registry=r)
        self.active_server = Gauge("valvoja_collector_active_server", "1 for the server of its redundant set an "
                                   "OPC UA collector uses, 0 for the others", ["collector", "endpoint"], registry=r)
        self.backfilled = Counter("valvoja_collector_backfilled_total", "Readings an OPC UA collector read back "
                                  "from the server's history after a gap no resumed session bridged",
                                  ["collector"], registry=r)
        self.spool_records = Gauge("valvoja_spool_readings", "Readings waiting in the spool", registry=r)
        self.spool_bytes = Gauge("valvoja_spool_bytes",
                                 "Payload bytes held in the spool (what spool.max_bytes bounds; the file is larger)",
                                 registry=r)
        self.spool_rejected = Counter("valvoja_spool_rejected_total",
                                      "Readings refused because the spool disk budget was full", registry=r)
        self.spool_dropped = Counter("valvoja_spool_dropped_total",
                                     "Readings dropped (oldest first) to keep the spool within budget",
                                     registry=r)
        self.spool_undecodable = Counter("valvoja_spool_undecodable_readings_total",
                                         "Readings of spool batches whose stored bytes do not decode (kept as dead "
                                         "letters)", registry=r)
        self.spool_damaged = Counter("valvoja_spool_damaged_total",
                                     "Spool files SQLite could not read at start, set aside for a new spool",
                                     registry=r)
        self.spool_errors = Counter("valvoja_spool_write_errors_total",
                                    "Spool writes and deletes that failed (disk full, I/O error) and were retried",
                                    registry=r)
        self.rollup_errors = Counter("valvoja_rollup_errors_total",
                                     "Rollup refreshes (with raw retention) and hourly retention rounds the "
                                     "database refused while it took readings, retried", ["part"], registry=r)
        self.db_write_seconds = Histogram(
            "valvoja_db_write_seconds", "Time to commit one batch to the database", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.readings_refused = Counter("valvoja_readings_refused_total",
                                        "Readings the database refused for their content (stored as dead letters)",
                                        registry=r)
        self.readings_too_large = Counter("valvoja_readings_too_large_total",
                                          "Text readings over validation.max_text_bytes (kept as dead letters)",
                                          ["collector"], registry=r)
        self.tag_names_too_long = Counter("valvoja_tag_names_too_long_total",
                                          "Readings whose tag name is over validation.max_tag_bytes (kept as dead "
                                          "letters)", ["collector"], registry=r)
        self.db_errors = Counter("valvoja_db_errors_total", "Failed database writes", ["kind"], registry=r)
        self.db_connected = Gauge("valvoja_db_connected", "1 while the database is reachable", registry=r)
        self.latency_seconds = Histogram(
            "valvoja_reading_latency_seconds", "Reading time (the source's, else the receive time) to database commit",
            registry=r,
            # Up to a day: readings forwarded from the spool after a database outage of hours were all "over 600 s",
            # and histogram_quantile() answered 600 s for an outage of any length.
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 3600, 6 * 3600, 86400))
        self.queue_depth = Gauge("valvoja_ingest_queue_batches", "Batches waiting to be spooled", registry=r)
        # Process supervision (edge/service.py): watchdog, SIGHUP reloads, disk; process_* gives RSS and CPU.
        self.watchdog_restarts = Counter("valvoja_watchdog_restarts_total",
                                         "Gateway parts restarted by the watchdog", ["part", "reason"], registry=r)
        self.config_reloads = Counter("valvoja_config_reloads_total", "SIGHUP configuration reloads",
                                      ["result"], registry=r)
        self.disk_free = Gauge("valvoja_state_disk_free_bytes",
                               "Free bytes on the file system of the spool (the folder of spool.path)", registry=r)
        self.analytics_dropped = Counter("valvoja_analytics_dropped_total",
                                         "Readings analytics skipped because it was behind (raw data is stored)",
                                         registry=r)
        self.analytics_late = Counter("valvoja_analytics_late_total",
                                      "Readings live analytics left out for arriving behind what it had moved on "
                                      "to (a backlog; stored all the same): indicators (their windows, ISO zones and "
                                      "rules on them), rul (a closed cycle), emissions (the live view's closed "
                                      "interval)",
                                      ["analysis"], registry=r)
        self.model_swaps = Counter("valvoja_model_swaps_total",
                                   "Registry champions swapped in live (swapped), refused (refused) or not readable "
                                   "(error)", ["model_id", "outcome"], registry=r)
        self.rul_cycles_refused = Counter("valvoja_rul_cycles_refused_total",
                                          "RUL cycles closed without a prediction: inputs beyond the model's "
                                          "training range (out_of_domain) or refused by the runtime (input)",
                                          ["asset", "reason"], registry=r)
        self.analytics_errors = Counter("valvoja_analytics_errors_total",
                                        "Groups of readings live analytics failed on (logged with the error)",
                                        registry=r)
        self.notifications = Counter("valvoja_alert_notifications_total", "Alert notifications sent",
                                     ["result"], registry=r)
        self.notify_receiver_up = Gauge("valvoja_alert_receiver_up",
                                        "Alert receivers: 1 when the start-up probe or the last notification got "
                                        "through, 0 when it failed", ["receiver"], registry=r)
        self.notify_waiting = Gauge("valvoja_alert_notifications_waiting",
                                    "Groups of alert changes waiting for a receiver (the one being sent included)",
                                    ["receiver"], registry=r)
        self.notified_unstored = Counter("valvoja_alert_changes_notified_unstored_total",
                                         "Alert changes notified before the spool held them (it did not take them "
                                         "within 10 s, or refused them)", registry=r)
        self.emissions_runs = Counter("valvoja_emissions_runs_total",
                                      "Emissions job runs per stack: ok, db_unreachable or error (logged once per "
                                      "distinct error); both retried at the next interval", ["stack", "result"],
                                      registry=r)
        self.emissions_last_success = Gauge("valvoja_emissions_last_success_timestamp_seconds",
                                            "Unix time the emissions job last computed the stack through",
                                            ["stack"], registry=r)
        self.emissions_revisions = Counter("valvoja_emissions_revisions_total",
                                           "Stored averages of closed periods the emissions job changed (late data; "
                                           "emission_revisions)", ["stack"], registry=r)
        self.emissions_qal3_alarms = Counter("valvoja_emissions_qal3_alarms_total",
                                             "QAL3 zero/span checks the emissions job charted with an alarm (drift, "
                                             "CUSUM, precision; log event qal3_alarm)", ["stack"], registry=r)
        self.records_refused = Counter("valvoja_records_refused_total",
                                       "Predictions/alert changes the database refused (dead-lettered)",
                                       ["kind"], registry=r)
        # Tasks alive on the event loop the metrics are served from (the gateway's one loop): a number that climbs
        # over days is a task started per event and never finished (bench/bench_soak.py --plant watches it).
        self.asyncio_tasks = Gauge("valvoja_asyncio_tasks", "Tasks alive on the gateway's event loop", registry=r)
        self.asyncio_tasks.set_function(_loop_tasks)
        ProcessCollector(registry=r)
        # Series of the label values known from the start exist at 0 from the start: a counter first seen at 1 (or
        # at 10,000 after a flood) is a rise that rate() and increase() never see, and an alert on its absence
        # fires on a healthy gateway.
        for result in ("applied", "rejected"):
            self.config_reloads.labels(result)
        for result in ("ok", "failed", "dropped", "skipped"):
            self.notifications.labels(result)
        for part in ("refresh", "retention"):
            self.rollup_errors.labels(part)
        for kind in RECORD_KINDS:
            self.records_refused.labels(kind)
        for analysis in ("indicators", "rul", "emissions"):
            self.analytics_late.labels(analysis)

    def known(self, *, collectors: Iterable[str] = (), rules: Iterable[str] = ()) -> None:
        """Create at 0 the series of a gateway's collectors and validation rules (see the end of ``__init__``):
        called by each gateway built, so a collector a reload adds has them too."""
        for name in collectors:
            for counter in (self.readings_in, self.messages_in, self.dead_letters, self.reconnects,
                            self.readings_too_large, self.tag_names_too_long):
                counter.labels(name)
            self.connected.labels(name).set(0)  # until it connects (a broker away at the start: an alert fires)
        for rule in rules:
            self.readings_flagged.labels(rule)

    def known_stacks(self, stacks: Iterable[str]) -> None:
        """Create at 0 the emissions job's counters of its stacks (not the time of the last success: 0 would say
        1970, and it is absent until the first run instead)."""
        for stack in stacks:
            for result in ("ok", "db_unreachable", "error"):
                self.emissions_runs.labels(stack, result)
            self.emissions_revisions.labels(stack)
            self.emissions_qal3_alarms.labels(stack)

    def known_rul(self, asset: str, model_id: str | None) -> None:
        """Create at 0 a live RUL asset's refused cycles and, served from a registry, its model's swaps."""
        for reason in ("out_of_domain", "input"):
            self.rul_cycles_refused.labels(asset, reason)
        if model_id is not None:
            for outcome in ("swapped", "refused", "error"):
                self.model_swaps.labels(model_id, outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)
