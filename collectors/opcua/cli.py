"""``valvoja opcua ...``: OPC UA tools for commissioning a site.

    valvoja opcua browse opc.tcp://plc:4840 [--root ns=2;s=Line1] [--toml tags.toml]

Connects exactly as a collector would (same security settings, trust list and own certificate, so
a server certificate refused here is refused by the gateway too, with the same message), walks
the address space and prints each variable with data type, unit, EURange and access level;
``--toml`` also writes ``[[tags]]`` entries and a ``[[collectors]]`` block for the site configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from edge.cli import positive_int_arg
from edge.timeouts import within


def _node_id(text: str) -> str:
    """--root as asyncua parses it (a wrong one was its UaStringParsingError traceback)."""
    from asyncua import ua

    try:
        ua.NodeId.from_string(text)
    except Exception:
        raise argparse.ArgumentTypeError(f"{text!r} is not a node id (e.g. i=85, ns=2;s=Line1, ns=3;i=1001)") from None
    return text


def add_parser(sub) -> None:
    p = sub.add_parser("opcua", help="OPC UA tools (browse a server)")
    osub = p.add_subparsers(dest="opcua_command", required=True, metavar="ACTION")
    b = osub.add_parser("browse", help="list a server's variables; optionally write a TOML tag section",
                        description="Walk the address space from --root (default: the Objects folder) and list "
                                    "every variable with data type, unit, EURange and access level.")
    b.add_argument("endpoint", metavar="URL", help="opc.tcp://host:port/path")
    b.add_argument("--root", default="i=85", type=_node_id,
                   help="node id to start from (default i=85, Objects); exit 1 when the server has no such node")
    b.add_argument("--depth", type=positive_int_arg, default=10, help="levels to walk (default 10)")
    b.add_argument("--max-nodes", type=positive_int_arg, default=10_000,
                   help="stop after this many nodes (default 10000)")
    b.add_argument("--include-server", action="store_true", help="also walk the standard Server object")
    b.add_argument("--toml", type=Path, metavar="FILE", help="write [[tags]] and a [[collectors]] block here")
    b.add_argument("--name", default="opcua", help="collector name in the TOML (default opcua)")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.add_argument("--security-policy", default="None",
                   choices=["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"])
    b.add_argument("--security-mode", default="None", choices=["None", "Sign", "SignAndEncrypt"])
    b.add_argument("--pki-dir", type=Path, default=Path("var/opcua-browse/pki"),
                   help="own certificate, trusted/ and rejected/ (default var/opcua-browse/pki; give the "
                        "collector's <state_dir>/collectors/<name>/pki to use its trust list)")
    b.add_argument("--trust-on-first-use", action="store_true")
    b.add_argument("--no-check-host-name", dest="check_host_name", action="store_false",
                   help="accept a server certificate whose host names do not include the endpoint's host")
    b.add_argument("--username")
    b.add_argument("--password", metavar="REF", help="env:NAME or file:/path (never the password itself)")
    b.add_argument("--certificate", help="a site-issued client certificate (PEM/DER) instead of the generated one")
    b.add_argument("--private-key", help="its private key (with --certificate)")
    b.add_argument("--private-key-password", metavar="REF", help="of an encrypted --private-key: env:NAME, file:/path")
    b.add_argument("--user-certificate", help="X.509 user identity instead of --username (with --user-private-key)")
    b.add_argument("--user-private-key")
    b.add_argument("--user-private-key-password", metavar="REF", help="env:NAME or file:/path")
    b.add_argument("--timeout", type=float, default=10.0, help="connect and request timeout, s (default 10)")
    b.set_defaults(func=cmd_browse)


def cmd_browse(args) -> int:
    from pydantic import ValidationError

    from collectors.opcua.config import Connection
    from collectors.opcua.connection import resolve_secrets
    from edge.errors import ConfigError

    try:
        conn = Connection.model_validate({
            "endpoint": args.endpoint, "connect_timeout_s": args.timeout, "request_timeout_s": args.timeout,
            "security_policy": args.security_policy, "security_mode": args.security_mode,
            "pki_dir": str(args.pki_dir), "trust_on_first_use": args.trust_on_first_use,
            "check_host_name": args.check_host_name,
            "username": args.username, "password": args.password, "certificate": args.certificate,
            "private_key": args.private_key, "private_key_password": args.private_key_password,
            "user_certificate": args.user_certificate, "user_private_key": args.user_private_key,
            "user_private_key_password": args.user_private_key_password})
        secrets = resolve_secrets(conn, lambda key: "--" + key.replace("_", "-"))
    except ValidationError as exc:
        for err in exc.errors():
            print(f"{'.'.join(map(str, err['loc'])) or 'options'}: {err['msg'].removeprefix('Value error, ')}",
                  file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return asyncio.run(_browse(args, conn, secrets))


async def _browse(args, conn, secrets) -> int:
    from collectors.opcua.browse import browse, table, toml_section
    from collectors.opcua.connection import ClientOpener, describe
    from collectors.opcua.security import SecurityError

    opener = ClientOpener(conn, name=args.name, secrets=secrets)
    client = opener.new_client()
    try:
        await opener.connect(client)
    except TimeoutError:
        print(f"{conn.endpoint}: no OPC UA session within {conn.connect_timeout_s:g} s", file=sys.stderr)
        return 1
    except Exception as exc:
        print(str(exc) if isinstance(exc, SecurityError) else f"{conn.endpoint}: cannot connect: {describe(exc)}",
              file=sys.stderr)
        return 1
    try:
        variables, truncated = await browse(client, args.root, max_depth=args.depth, max_nodes=args.max_nodes,
                                            include_server=args.include_server)
    except LookupError as exc:  # --root the server does not have: "0 variables", exit 0, read as an empty server
        print(f"{conn.endpoint}: {exc}", file=sys.stderr)
        return 1
    finally:
        try:
            await within(client.disconnect(), conn.request_timeout_s)
        except Exception:  # the listing is what matters
            client.disconnect_socket()
    if args.json:
        print(json.dumps([{"node_id": v.node_id, "namespace_uri": v.namespace_uri, "tag": v.tag, "path": v.path,
                           "data_type": v.data_type, "array": v.is_array, "unit": v.unit, "eu_range": v.eu_range,
                           "access": v.access, "description": v.description} for v in variables], indent=1))
    else:
        print(table(variables), flush=True)
        print(f"{len(variables)} variables" + (f" (stopped at --max-nodes {args.max_nodes})" if truncated else ""),
              file=sys.stderr)
    if args.toml:
        args.toml.write_text(toml_section(variables, endpoint=conn.endpoint, name=args.name,
                                          security_policy=conn.security_policy, security_mode=conn.security_mode))
        print(f"wrote {args.toml}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # python -m collectors.opcua.cli browse ...
    parser = argparse.ArgumentParser(prog="opcua")
    add_parser(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args()
    sys.exit(a.func(a))
