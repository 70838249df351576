"""Command line of the plant simulator: ``python -m collectors.simulator`` or ``valvoja simulate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from collectors.simulator import DEFAULT_ENDPOINT
from collectors.simulator import faults as faultlib
from collectors.simulator.replay import ReplaySpec, parse_mapping
from edge.cli import iso_time_arg, positive_arg

if TYPE_CHECKING:  # the runner imports asyncua: only the commands that simulate pay for it
    from collectors.simulator.runner import SimOptions, Simulator

DESCRIPTION = """\
A small KIP-style plant: pumps P-101..P-103 (vibration, bearing temperature, current, flow,
pressure; bearing wear grows by itself), boiler K1 and its stack (NOx, CO, SO2, dust, O2, CO2,
H2O, flow, temperature, pressure, operating state, load, fuel, steam), served over OPC UA and
published over MQTT. Deterministic for a given --seed. See collectors/simulator/README.md for
every tag, node id and topic."""

EPILOG = """\
fault form: TARGET:KIND[@START][+DURATION][,severity=X|p=X|rate=X], times in simulated s/m/h/d
  kinds: bearing, cavitation, stop (pumps); shutdown (K1); freeze, sensor_failure, uncertain,
  nan, drift (a tag or every tag of an asset)
examples:
  python -m collectors.simulator --fault P-102:bearing@10m --fault P-103.vib_de:sensor_failure@1m+30s
  python -m collectors.simulator --speed 3600 --replay ../shared/data/gas-turbine/gt_2011.csv \\
      --replay-map NOX=K1.NOx,CO=K1.CO --mqtt 127.0.0.1:1883
  python -m collectors.simulator --tags 2000 --tags-interval 0.1 --opcua opc.tcp://127.0.0.1:4841/sim
"""


def configure(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plant and clock")
    g.add_argument("--seed", type=int, default=1, help="random seed; same seed, same plant (default 1)")
    g.add_argument("--interval", type=positive_arg, default=1.0, metavar="S", help="real seconds between steps (1.0)")
    g.add_argument("--speed", type=positive_arg, default=1.0, help="simulated seconds per real second (1.0)")
    g.add_argument("--timestamps", choices=["wall", "sim"], default="wall",
                   help="source timestamps: real time of each step (wall) or --start + simulated time (sim)")
    g.add_argument("--start", type=iso_time_arg, metavar="ISO-TIME",
                   help="origin of simulated time for --timestamps sim (ISO 8601; without an offset it is UTC; "
                        "default now, or the first row's time with --replay-time); the plant's day runs from the "
                        "time of day given (else from midnight UTC, the same plant whenever it runs)")
    g.add_argument("--duration", type=positive_arg, metavar="S", help="stop after this many real seconds")
    g.add_argument("--fault", action="append", default=[], metavar="SPEC", help="inject a fault (repeatable)")
    g.add_argument("--list-tags", action="store_true", help="print every tag with unit and node id, then exit")
    g = p.add_argument_group("OPC UA")
    g.add_argument("--opcua", default=DEFAULT_ENDPOINT, metavar="ENDPOINT", help=f"serve here ({DEFAULT_ENDPOINT})")
    g.add_argument("--no-opcua", action="store_true", help="do not start the OPC UA server")
    g.add_argument("--opcua-cert", metavar="FILE", help="server certificate (DER or PEM) for secure endpoints")
    g.add_argument("--opcua-key", metavar="FILE", help="its private key (PEM)")
    g.add_argument("--opcua-policy", action="append", metavar="NAME",
                   help="endpoint to offer, asyncua SecurityPolicyType name, repeatable "
                        "(e.g. Basic256Sha256_SignAndEncrypt; default NoSecurity)")
    g.add_argument("--tags", type=int, default=0, metavar="N", help="add N synthetic variables SYN.00001...")
    g.add_argument("--tags-interval", type=positive_arg, metavar="S", help="update period of the synthetic variables")
    g = p.add_argument_group("MQTT")
    g.add_argument("--mqtt", metavar="HOST:PORT", help="publish to this broker (default: no MQTT)")
    g.add_argument("--mqtt-prefix", default="valvoja/sim", help="topic prefix for json/plain (valvoja/sim)")
    g.add_argument("--mqtt-formats", default="json", help="comma list of json, plain, sparkplug (json)")
    g.add_argument("--mqtt-username", help="broker user name")
    g.add_argument("--mqtt-password", metavar="REF", help="env:NAME or file:/path")
    g.add_argument("--mqtt-client-id", default="valvoja-simulator")
    g.add_argument("--sparkplug-group", default="KIP", help="Sparkplug B group id (KIP)")
    g.add_argument("--sparkplug-node", default="simulator", help="Sparkplug B edge node id (simulator)")
    g = p.add_argument_group("CSV replay")
    g.add_argument("--replay", type=Path, metavar="FILE.csv", help="replay this CSV file's rows as tags")
    g.add_argument("--replay-map", action="append", default=[], metavar="COL=TAG[,COL=TAG]",
                   help="column to tag (repeatable); with a map only mapped columns are replayed")
    g.add_argument("--replay-prefix", default="replay", help="tag prefix of unmapped columns (replay)")
    g.add_argument("--row-seconds", type=positive_arg, default=3600.0, metavar="S",
                   help="simulated seconds per CSV row (3600: hourly data)")
    g.add_argument("--replay-time", metavar="COL",
                   help="column of row times (ISO 8601, UTC without an offset): each row comes at its own time after "
                        "the first row's instead of every --row-seconds; with --timestamps sim and no --start the "
                        "stamps are the file's times")
    g.add_argument("--replay-loop", action="store_true", help="start again after the last row")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``valvoja simulate``."""
    p = subparsers.add_parser("simulate", help="run the plant simulator (OPC UA server, MQTT publisher)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    p.set_defaults(func=run_command)
    return p


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """SimOptions from parsed arguments; ValueError with a message a person can act on."""
    from collectors.simulator.runner import SimOptions

    faults = [faultlib.parse(spec) for spec in args.fault]
    replay = None
    if args.replay is not None:
        replay = ReplaySpec(args.replay, parse_mapping(args.replay_map), args.replay_prefix, args.row_seconds,
                            args.replay_loop, time_column=args.replay_time)
    mqtt = None
    if args.mqtt:
        from collectors.simulator.mqtt_publisher import MqttOptions

        host, _, port = args.mqtt.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--mqtt {args.mqtt!r}: expected HOST:PORT")
        mqtt = MqttOptions(host=host, port=int(port), prefix=args.mqtt_prefix,
                           formats=tuple(f.strip() for f in args.mqtt_formats.split(",") if f.strip()),
                           username=args.mqtt_username, password=args.mqtt_password, client_id=args.mqtt_client_id,
                           sparkplug_group=args.sparkplug_group, sparkplug_node=args.sparkplug_node)
    if not args.no_opcua:
        _check_opcua(args.opcua, args.opcua_policy)
    return SimOptions(seed=args.seed, interval_s=args.interval, speed=args.speed, timestamps=args.timestamps,
                      start=args.start, faults=faults, opcua_endpoint=None if args.no_opcua else args.opcua,
                      opcua_security={"certificate": args.opcua_cert, "private_key": args.opcua_key,
                                      "policies": args.opcua_policy},
                      mqtt=mqtt, synthetic_tags=args.tags, synthetic_interval_s=args.tags_interval, replay=replay,
                      duration_s=args.duration)


def _check_opcua(endpoint: str, policies: list[str] | None) -> None:
    """--opcua and --opcua-policy as a person can fix them (a wrong one was an asyncio/enum traceback)."""
    from urllib.parse import urlsplit

    from asyncua import ua

    url = urlsplit(endpoint)
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "opc.tcp" or not url.hostname or port is None:
        raise ValueError(f"--opcua {endpoint!r}: expected opc.tcp://HOST:PORT[/path], e.g. {DEFAULT_ENDPOINT}")
    names = [m.name for m in ua.SecurityPolicyType]
    for name in policies or ():
        if name not in names:
            raise ValueError(f"--opcua-policy {name!r}: choose from {', '.join(names)}")


def list_tags(sim: Simulator) -> None:
    ns = sim.opcua.ns if sim.opcua else 2
    print(f"{'tag':28} {'unit':8} {'node id':36} description")
    for t in sim.tags:
        print(f"{t.name:28} {t.unit:8} {f'ns={ns};s={t.name}':36} {t.description}")


def run_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    logging.getLogger("asyncua.server.server").setLevel(logging.ERROR)  # "no signing policy": None is intended
    from collectors.simulator.runner import Simulator

    try:
        sim = Simulator(options_from_args(args))
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    if args.list_tags:
        list_tags(sim)
        return 0
    return asyncio.run(_serve(sim))


async def _serve(sim: Simulator) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log = logging.getLogger("valvoja.simulator")
    try:
        await sim.start()
    except OSError as exc:  # a port in use, a broker away: a message, not a traceback (ConnectionError included)
        await sim.stop()  # what did start (the OPC UA server before the broker failed)
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    where = [f"OPC UA {sim.opcua.endpoint} (ns={sim.opcua.ns})"] if sim.opcua else []
    if sim.mqtt:
        where.append(f"MQTT {sim.mqtt.describe()}")
    log.info("simulating %d tags -> %s; Ctrl-C stops", len(sim.tags), ", ".join(where) or "nowhere")
    try:
        await sim.run(stop)
    finally:
        await sim.stop()
        log.info("stopped after %d steps (%.0f simulated s)", sim.steps, sim.sim_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collectors.simulator", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    try:
        return run_command(parser.parse_args(argv))
    except KeyboardInterrupt:
        return 130
