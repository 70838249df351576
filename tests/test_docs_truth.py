"""The project rule "Keep README, `--help` texts and the example configs true to the code", as tests.

- Every shipped example configuration goes through the validation of the command that reads it: site files
  through `valvoja check-config --skip-secrets` and the parsing `valvoja run` and `valvoja emissions` add
  (`[maintenance]` with the top-level `[[rules]]`, `[[stacks]]`); console files through the loader of `valvoja
  console serve|user|token`. Not done here, because it needs what a developer machine and CI do not have:
  resolving the secret references (`file:/run/secrets/...`), loading the TLS and key files the collectors name
  (check-config without `--skip-secrets` does both), and connecting to the database.
- Every TOML block in the Markdown files is a site configuration (or a fragment of one) and passes the same.
- Every command in the Markdown files (`valvoja ...`, `python -m <package> ...`, `docker compose run --rm
  <service> ...`, `bash <script>`) names sub-commands and options the argparse parser has; a command in a code
  block also gives the options the parser requires.
- The metric table of docs/operations.md lists the metrics `edge.metrics.Metrics` registers, with their labels; every
  metric, label and label value named anywhere in the Markdown is one the gateway exports.
- The log events: each one the code logs is in the guide's table, each one the table (or a "log event `x`" anywhere)
  names is logged, at a level the table gives.
- Keys and defaults: a `section.key` of the gateway's sections named in the prose exists; a default stated beside a
  key, in the prose or shown in config/site-example.toml and console/console-example.toml, is the code's.
- Names of things: `<state_dir>/` files, `bench/results/` files, systemd settings of docker/systemd/, and the
  modules, functions and constants a document names by dotted path.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge import cli, settings

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = {".venv", ".git", "var", "node_modules", "reports", "build", "test-artifacts", ".cache", "__pycache__",
               ".pytest_cache"}


def shipped(pattern: str) -> list[Path]:
    return sorted(p for p in ROOT.rglob(pattern) if not NOT_SHIPPED.intersection(p.relative_to(ROOT).parts))


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# -- example configurations --------------------------------------------------------------------------------------

CONFIGS = [p for p in shipped("*.toml") if p.name != "pyproject.toml" and "tests" not in p.relative_to(ROOT).parts]
CONSOLE_CONFIGS = [p for p in CONFIGS if p.name.startswith("console")]
SITE_CONFIGS = [p for p in CONFIGS if p not in CONSOLE_CONFIGS]


def test_the_examples_are_found():
    names = {rel(p) for p in CONFIGS}
    assert {"config/site-example.toml", "emissions/sample.toml", "console/console-example.toml",
            "docker/gateway.toml", "docker/console.toml"} <= names, names


def check_site(path: Path, capsys) -> None:
    """What `valvoja check-config --skip-secrets PATH` says, then the sections `run` and `emissions` parse again."""
    from edge.analytics import maintenance_config
    from emissions.config import load_stacks

    code = cli.main(["check-config", "--skip-secrets", str(path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"{path}: OK" in out.out
    cfg = settings.load(path)
    maintenance_config(cfg)  # the gateway's analytics: [maintenance] with the top-level [[rules]] added
    load_stacks(cfg.stacks)  # `valvoja emissions report|compute`


@pytest.mark.parametrize("path", SITE_CONFIGS, ids=rel)
def test_site_example_passes_check_config(path, capsys):
    check_site(path, capsys)


@pytest.mark.parametrize("path", CONSOLE_CONFIGS, ids=rel)
def test_console_example_loads(path, capsys):
    from console.config import load

    # `valvoja check-config` knows a console file too (it said "console: unknown key", a site file's message)
    assert cli.main(["check-config", "--skip-secrets", str(path)]) == 0, capsys.readouterr().err
    assert f"{path}: OK (console configuration" in capsys.readouterr().out
    cfg = load(path)  # `console serve` then resolves [database] password (console.config.conninfo): a secret
    assert cfg.console.listen and cfg.database.url, "the example names where the console listens and its database"


def toml_blocks() -> list[tuple[str, str]]:
    out = []
    for md in shipped("*.md"):
        for i, block in enumerate(re.findall(r"^```toml\n(.*?)^```", md.read_text(encoding="utf-8"), re.M | re.S)):
            out.append((f"{rel(md)}#{i}", block))
    return out


@pytest.mark.parametrize("where, text", toml_blocks(), ids=[w for w, _ in toml_blocks()])
def test_toml_in_the_docs_passes_check_config(where, text, tmp_path, capsys):
    path = tmp_path / "fragment.toml"
    path.write_text(text)
    check_site(path, capsys)


# -- commands in the documentation -------------------------------------------------------------------------------

# `python -m MODULE` is `valvoja` with these words first (each module's main says so).
MODULES = {"edge.cli": [], "emissions.cli": ["emissions"], "maintenance.cli": ["maintenance"],
           "models.cli": ["models"], "console.cli": ["console"], "collectors.simulator": ["simulate"],
           "collectors.opcua.cli": []}
# The compose services whose entry point is `valvoja`.
SERVICES = ("gateway", "console", "simulator")


@dataclass(frozen=True)
class Command:
    where: str
    text: str
    block: bool  # in a code block (a whole command) rather than named in the prose


def commands() -> list[Command]:
    out = []
    for md in shipped("*.md"):
        fence: str | None = None
        pending = ""
        prose: list[tuple[int, str]] = []  # a paragraph's lines: a `span` may go on over a line break
        for n, line in enumerate([*md.read_text(encoding="utf-8").splitlines(), ""], 1):
            if fence is None and line.strip() and not line.startswith("```"):
                prose.append((n, line))
                continue
            if prose:
                text = " ".join(x for _, x in prose)
                starts = [len(" ".join(x for _, x in prose[:i])) for i in range(len(prose))]
                for m in re.finditer(r"`([^`]+)`", text):
                    at = prose[max(i for i, s in enumerate(starts) if s <= m.start())][0]
                    out.append(Command(f"{rel(md)}:{at}", m.group(1), block=False))
                prose = []
            if line.startswith("```"):
                fence = None if fence is not None else line[3:].strip()
                continue
            if fence is not None:
                if fence in ("", "bash", "sh", "console"):
                    pending += line
                    if pending.endswith("\\"):
                        pending = pending[:-1] + " "
                        continue
                    out.append(Command(f"{rel(md)}:{n}", pending.strip(), block=True))
                    pending = ""
                continue
    return out


def valvoja_words(text: str) -> list[str] | None:
    """The words after `valvoja` of a documented command, or None when it is not one."""
    text = re.split(r"\s#", text, maxsplit=1)[0].strip()
    text = re.sub(r"^(\$|sudo)\s+", "", text)
    # `PGPASSWORD="$(cat FILE)" runuser -u valvoja -- valvoja ...`: the environment and the user it runs as
    text = re.sub(r"""^(?:[A-Z_]+=(?:"[^"]*"|'[^']*'|\S*)\s+)*(?:runuser -u \S+ --\s+)?""", "", text)
    m = (re.match(r"^(?:\S*/)?valvoja\s+(.*)$", text)
         or re.match(rf"^docker compose run --rm (?:{'|'.join(SERVICES)})\s+(.*)$", text))
    if m:
        prefix, rest = [], m.group(1)
    elif m := re.match(r"^\S*python3?\s+-m\s+([\w.]+)(.*)$", text):
        if m.group(1) not in MODULES:
            return None
        prefix, rest = MODULES[m.group(1)], m.group(2)
    else:
        return None
    rest = re.sub(r"\s*\|\s*", "|", rest)  # `train | evaluate` names alternatives
    try:
        words = shlex.split(rest)
    except ValueError:
        words = rest.split()
    return prefix + [w.strip("[]") for w in words if w.strip("[]")]


def subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def problems(cmd: Command, words: list[str]) -> list[str]:
    """What a documented command says that the parser does not have."""
    parser: argparse.ArgumentParser = cli.build_parser()
    path = ["valvoja"]
    i = 0
    while (sub := subparsers(parser)) is not None and i < len(words):
        word = words[i]
        if word in ("...", ".."):
            return []  # "and so on": nothing more is claimed
        if "|" in word:  # alternatives: each must exist; what follows belongs to one of them
            missing = [w for w in word.split("|") if w and w not in sub.choices]
            return [f"{' '.join(path)} has no sub-command {w!r}" for w in missing]
        if word.startswith("-"):
            break  # an option of the group itself (checked below)
        if word not in sub.choices:
            return [f"{' '.join(path)} has no sub-command {word!r} (has: {', '.join(sub.choices)})"]
        parser = sub.choices[word]
        path.append(word)
        i += 1
    known = {s for a in parser._actions for s in a.option_strings}
    out = []
    given = set()
    for word in words[i:]:
        if re.match(r"^--?[A-Za-z]", word):
            opt = word.split("=", 1)[0]
            given.add(opt)
            if opt not in known:
                out.append(f"{' '.join(path)} has no option {opt}")
    if cmd.block and subparsers(parser) is None:
        for a in parser._actions:
            if a.required and a.option_strings and not given.intersection(a.option_strings):
                out.append(f"{' '.join(path)} requires {'/'.join(a.option_strings)}")
        for g in parser._mutually_exclusive_groups:
            if g.required and not any(given.intersection(a.option_strings) for a in g._group_actions):
                out.append(f"{' '.join(path)} requires one of "
                           f"{', '.join('/'.join(a.option_strings) for a in g._group_actions)}")
    return out


def test_documented_commands_exist_with_their_options():
    found = [(c, w) for c in commands() if (w := valvoja_words(c.text)) is not None]
    assert len(found) > 40, "the documents name fewer commands than they do: is the extraction broken?"
    wrong = [f"{c.where}: `{c.text}`: {p}" for c, w in found for p in problems(c, w)]
    assert not wrong, "\n".join(wrong)


def test_documented_scripts_exist():
    scripts = set()
    for c in commands():
        m = re.match(r"^(?:sudo\s+)?bash\s+(\S+)", c.text)
        if m:
            scripts.add((c.where, m.group(1)))
    assert any(s == "scripts/test.sh" for _, s in scripts)
    missing = [f"{where}: {s}" for where, s in sorted(scripts) if not (ROOT / s).is_file()]
    assert not missing, missing


# -- numbers and names ------------------------------------------------------------------------------------------

def test_the_metric_table_lists_what_the_gateway_exports():
    from edge.metrics import Metrics

    table = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8").split("`GET /metrics`", 1)[1]
    table = table.split("\n\n", 2)[1]
    documented: dict[str, tuple[str, ...]] = {}
    for row in table.splitlines()[2:]:
        cell = row.split("|")[1]
        for name, labels in re.findall(r"`(valvoja_\w+)(?:\{([\w,]*)\})?`", cell):
            documented[name] = tuple(labels.split(",")) if labels else ()
    exported = {}
    for collector in Metrics().registry._collector_to_names:
        name = getattr(collector, "_name", None)
        if name and name.startswith("valvoja_"):
            suffix = "_total" if collector._type == "counter" else ""
            exported[name + suffix] = tuple(collector._labelnames)
    assert documented == exported


def models_in(annotation) -> list[type]:
    """The pydantic models a field's annotation holds (``X | None``, ``tuple[X, ...]``, ``list[X]`` ...)."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in models_in(a)]


def model_keys(model: type, seen: set | None = None) -> list[str]:
    """Every key of a pydantic model and of the models in its fields, as ``Model.key``."""
    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen.add(model)
    out = []
    for name, field in model.model_fields.items():
        out.append(f"{model.__name__}.{field.alias or name}")
        for m in models_in(field.annotation):
            out += model_keys(m, seen)
    return out


def example_models() -> list[tuple[str, type]]:
    import collectors.mqtt.config as mqtt
    import collectors.opcua.config as opcua
    from console.config import ConsoleConfig
    from edge.settings import SiteConfig
    from emissions.config import StackConfig
    from maintenance.config import MaintenanceConfig

    return [("config/site-example.toml", SiteConfig), ("emissions/sample.toml", StackConfig),
            ("maintenance/sample.toml", MaintenanceConfig), ("collectors/mqtt/sample.toml", mqtt.Config),
            ("collectors/opcua/sample.toml", opcua.Config), ("console/console-example.toml", ConsoleConfig)]


@pytest.mark.parametrize("where, model", example_models(), ids=[w for w, _ in example_models()])
def test_the_example_names_every_key(where, model):
    """The READMEs say the example "documents every key": each key of the model is in it (set, commented out
    with its default, or named in a comment)."""
    text = (ROOT / where).read_text(encoding="utf-8")
    missing = [k for k in model_keys(model) if not re.search(rf"(?<![\w-]){re.escape(k.split('.')[1])}(?![\w-])",
                                                             text)]
    assert not missing, missing


# -- the install steps -------------------------------------------------------------------------------------------

def test_the_service_user_can_read_what_the_install_steps_give_it():
    """docs/operations.md, "Without containers": a file installed for the service's group (``install -m 0640 -g
    valvoja``) is readable by the service only if every folder the steps create above it lets that group (or
    anyone) through. A root-only /etc/valvoja left `check-config` and `run` (User=valvoja) with "Permission
    denied" on the first start."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    block = re.search(r"### Without containers.*?```bash\n(.*?)```", text, re.S).group(1)
    folders: dict[str, tuple[int, str | None]] = {}  # folder -> (mode, group)
    wrong = []
    for line in block.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if not words or words[0] != "install":
                continue
            mode = int(words[words.index("-m") + 1], 8) if "-m" in words else 0o755
            group = words[words.index("-g") + 1] if "-g" in words else None
            paths = [w for i, w in enumerate(words[1:], 1)
                     if not w.startswith("-") and words[i - 1] not in ("-m", "-g")]
            if "-d" in words:
                folders.update({p: (mode, group) for p in paths})
                continue
            if group is None or not mode & 0o040:
                continue
            dest = Path(paths[-1])
            for folder in map(str, dest.parents):
                if folder in folders:
                    fmode, fgroup = folders[folder]
                    if not (fmode & 0o001 or (fgroup == group and fmode & 0o010)):
                        wrong.append(f"{dest} is for group {group}, but {folder} is {fmode:04o} "
                                     f"group {fgroup or 'root'}: {group} cannot reach it")
    assert folders, "no `install -d` in the block: is the extraction broken?"
    assert not wrong, wrong


def test_every_log_event_is_in_the_operations_guide():
    """The person on call greps docs/operations.md for the `event` of a log line: every event the code logs by a
    literal name is there (in the table of log events, or where the guide says what to do about it)."""
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    code = [p for p in shipped("*.py") if not {"tests", "bench", "scripts"}.intersection(p.relative_to(ROOT).parts)]
    events: dict[str, str] = {}
    for path in code:
        for name in re.findall(r"""["']event["']\s*:\s*["']([a-z][a-z0-9_]+)["']""", path.read_text(encoding="utf-8")):
            events.setdefault(name, rel(path))
    assert len(events) > 80, "fewer logged events than there are: is the extraction broken?"
    missing = sorted(f"{name} ({where})" for name, where in events.items()
                     if not re.search(rf"(?<![\w]){name}(?![\w])", guide))
    assert not missing, missing


def test_the_install_steps_check_the_configuration_without_the_services_credentials():
    """The guide has the site file name its secrets as systemd credentials (`file:/run/credentials/...`), which
    exist only inside the service: the install step's `check-config` by hand failed on every such file unless it
    skips the secrets (the unit's ExecStartPre checks them, with the credentials)."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("### Without containers", 1)[1].split("\n## ", 1)[0]
    assert "file:/run/credentials/valvoja-gateway.service/" in section
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    checks = [line for line in block.splitlines() if " check-config " in line]
    assert checks and all("--skip-secrets" in line for line in checks), checks
    unit = (ROOT / "docker" / "systemd" / "valvoja-gateway.service").read_text(encoding="utf-8")
    assert re.search(r"^ExecStartPre=\S*valvoja check-config (?!--skip-secrets)", unit, re.M), "the unit checks all"


def test_the_readme_command_list_names_every_command_and_action():
    """README's `valvoja` block is where a first-day user looks for what the command can do: every sub-command,
    and every action of a group unless the line says `...` (`maintenance window`, the planners' command, was
    missing)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The `valvoja` command\n+```\n(.*?)```", text, re.S).group(1)
    listed: dict[str, set[str] | None] = {}
    for line in block.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "valvoja":
            second = words[2] if len(words) > 2 else ""
            listed[words[1]] = None if second == "..." else set(second.split("|"))
    parser = cli.build_parser()
    missing = []
    for name, sub in subparsers(parser).choices.items():
        if name not in listed:
            missing.append(name)
            continue
        actions = subparsers(sub)
        if actions is not None and listed[name] is not None:
            missing += [f"{name} {a}" for a in actions.choices if a not in listed[name]]
    assert not missing, missing


# -- names and defaults the documents state, checked against the code ------------------------------------------

def doc_matches(pattern: str) -> list[tuple[str, re.Match]]:
    """Every match of ``pattern`` in the shipped Markdown files, with its ``file:line``."""
    out = []
    for md in shipped("*.md"):
        text = md.read_text(encoding="utf-8")
        out += [(f"{rel(md)}:{text.count(chr(10), 0, m.start()) + 1}", m) for m in re.finditer(pattern, text)]
    return out


def exported_metrics() -> dict[str, tuple[str, ...]]:
    """Every ``valvoja_*`` series `GET /metrics` can carry, with its label names (a histogram's ``_bucket``,
    ``_sum`` and ``_count`` too)."""
    from edge.metrics import Metrics

    out: dict[str, tuple[str, ...]] = {}
    for collector in Metrics().registry._collector_to_names:
        name = getattr(collector, "_name", None)
        if not (name and name.startswith("valvoja_")):
            continue
        labels = tuple(collector._labelnames)
        out[name + ("_total" if collector._type == "counter" else "")] = labels
        if collector._type == "histogram":
            out |= {f"{name}_bucket": (*labels, "le"), f"{name}_sum": labels, f"{name}_count": labels}
    return out


# Names that look like metrics and are not: the channel console/README.md says m0401's trigger notifies on.
NOT_METRICS = {"valvoja_alerts"}


def test_not_metrics_are_what_they_are_said_to_be():
    migration = (ROOT / "edge" / "db" / "migrations" / "m0401_console_alert_notify.py").read_text(encoding="utf-8")
    assert all(f"'{name}'" in migration for name in NOT_METRICS)


def test_every_metric_named_in_the_documents_is_exported_with_those_labels():
    """A metric (or a label of one) named anywhere in the Markdown, in the prose, the on-call steps and the
    suggested alerts as well as the table, is one `GET /metrics` serves: an alert rule written from the docs on a
    name the gateway does not export stays silent for ever. A label value quoted (`{kind="history_read"}`) is one the
    code writes (a string it holds)."""
    exported = exported_metrics()
    code = "\n".join(p.read_text(encoding="utf-8") for p in shipped("*.py")
                     if not {"tests", "bench", "scripts"}.intersection(p.relative_to(ROOT).parts))
    wrong = []
    for where, m in doc_matches(r"\b(valvoja_[a-z0-9_]+)(?:\{([^}]*)\})?"):
        name, labels = m.group(1), m.group(2)
        if name in NOT_METRICS:
            continue
        if name not in exported:
            wrong.append(f"{where}: {name} is not exported")
            continue
        for part in filter(None, (labels or "").split(",")):
            label, _, value = (x.strip() for x in part.partition("="))
            if label not in exported[name]:
                wrong.append(f"{where}: {name} has no label {label!r} (has {exported[name]})")
            elif value and not re.search(rf"""["']{re.escape(value.strip('"'))}["']""", code):
                wrong.append(f"{where}: {name}{{{part}}}: no code gives {label} that value")
    assert not wrong, "\n".join(wrong)


def logged_events() -> set[str]:
    """The ``event`` names the product code logs by a literal name."""
    code = [p for p in shipped("*.py") if not {"tests", "bench", "scripts"}.intersection(p.relative_to(ROOT).parts)]
    return {name for path in code
            for name in re.findall(r"""["']event["']\s*:\s*["']([a-z][a-z0-9_]+)["']""",
                                   path.read_text(encoding="utf-8"))}


def test_every_event_of_the_log_table_is_logged():
    """The other direction of `test_every_log_event_is_in_the_operations_guide`: an event of the table "Log events"
    that no code logs (renamed, or removed with its feature) sends the person on call grepping, and a log alert
    built on it never fires."""
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = guide.split("\n## Log events", 1)[1].split("\n## ", 1)[0]
    documented = {name for row in section.splitlines() if row.startswith("| `")
                  for name in re.findall(r"`([a-z][a-z0-9_]+)`", row.split("|")[1])}
    assert len(documented) > 80, "fewer events in the table than there are: is the extraction broken?"
    missing = sorted(documented - logged_events())
    assert not missing, missing


def test_every_log_event_the_documents_name_is_logged():
    """`log event `x``, `(log `x`)`, `logs `x`` and `event=x` in any Markdown file name an event the code logs (an
    alert's history events, `event `reopened``, are not log events)."""
    events = logged_events()
    found = doc_matches(r"(?:\blog(?: events?)?|\blogs|\blogged as) `([a-z][a-z0-9_]+)`"
                        r"(?:(?:,| or| and|, and) `([a-z][a-z0-9_]+)`)*|`event=([a-z][a-z0-9_]+)`")
    wrong = [f"{where}: {name}" for where, m in found for name in filter(None, m.groups()) if name not in events]
    assert len(found) > 20, "fewer log events named than there are: is the extraction broken?"
    assert not wrong, wrong


# The gateway's own sections (edge.settings.SiteConfig): `section.key` in the prose of any document.
GATEWAY_SECTIONS = ("site", "database", "spool", "validation", "http", "logging", "service")
# `database.connected` and `database.last_error` are /healthz fields (docs/operations.md, "Health and metrics").
HEALTHZ_FIELDS = {"database.configured", "database.connected", "database.edition", "database.last_error"}


def gateway_keys() -> dict[str, object]:
    """``section.key`` -> default of every key of the gateway's own sections."""
    from edge.settings import SiteConfig

    out = {}
    for section in GATEWAY_SECTIONS:
        model = SiteConfig.model_fields[section].annotation
        for name, field in model.model_fields.items():
            out[f"{section}.{field.alias or name}"] = field.get_default(call_default_factory=True)
    return out


UNITS = {"s": 1, "bytes": 1, "KiB": 1024, "MiB": 1024 ** 2, "GB": 10 ** 9, "MB": 10 ** 6}


def test_the_healthz_fields_that_look_like_keys_are_in_the_health_section():
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    health = guide.split("\n## Health and metrics", 1)[1].split("`GET /metrics`", 1)[0]
    fields = re.search(r"`database` \(([^)]*)\)", health).group(1)
    assert all(f"`{name.split('.')[1]}`" in fields for name in HEALTHZ_FIELDS), fields


def test_every_gateway_key_the_documents_name_exists_with_the_stated_default():
    """`database.writers` (default 2), `spool.max_bytes` (2 GB by default), `service.stop_timeout_s` (10 s): a key
    named in the prose of any document is one the gateway reads, and a default stated beside it is the code's."""
    keys = gateway_keys()
    wrong = []
    checked = 0
    for where, m in doc_matches(rf"`((?:{'|'.join(GATEWAY_SECTIONS)})\.[a-z0-9_]+)(?: = [^`]+)?`"
                                r"(?: \(((?:default )?[0-9][^)]*)\))?"):
        key, said = m.groups()
        if key in HEALTHZ_FIELDS or key == "spool.db":  # a /healthz field; the spool's file name
            continue
        if key not in keys:
            wrong.append(f"{where}: {key} is no key of the site configuration")
            continue
        value = said and re.match(r"(?:default )?([0-9][0-9,.]*)\s*(s|bytes|KiB|MiB|GB|MB)?\b", said)
        if not value:
            continue
        number = float(value.group(1).replace(",", "")) * UNITS[value.group(2) or "s"]
        checked += 1
        if number != keys[key]:
            wrong.append(f"{where}: {key} ({said.split(';')[0].split(':')[0]}): the default is {keys[key]!r}")
    assert checked >= 8, "fewer stated defaults than there are: is the extraction broken?"
    assert not wrong, "\n".join(wrong)


def shown_defaults_that_are_not(text: str, where: str, sections: dict[str, type]) -> tuple[int, list[str]]:
    """Each `key = value` line (set or commented out) of the tables ``sections`` names, unless its comment says the
    value is an example or names the default itself: (how many were compared, those that are not the model's
    default). The value is read through the model, so `"127.0.0.1"` is the default network `127.0.0.1/32`."""
    import tomllib

    from pydantic import ValidationError

    wrong = []
    checked = 0
    model = None
    for n, line in enumerate(text.splitlines(), 1):
        if head := re.match(r"^\[\[?([\w.]+)\]", line):
            model = sections.get(head.group(1)) if not line.startswith("[[") else None
            continue
        kv = re.match(r"^#?\s*([a-z0-9_]+)\s*=\s*(\S(?:[^#]*\S)?)\s*(?:#\s*(.*))?$", line)
        if model is None or not kv:
            continue
        key, value, comment = kv.group(1), kv.group(2), kv.group(3) or ""
        if "example" in comment or "default:" in comment or "default " in comment:
            continue
        field = next((f for name, f in model.model_fields.items() if key in (name, f.alias)), None)
        assert field is not None, f"{where}:{n}: {key} is no key of {model.__name__}"
        default = field.get_default(call_default_factory=True)
        if default is None:  # none, or computed from other keys: the comment says which
            continue
        checked += 1
        try:
            shown = getattr(model.model_validate({key: tomllib.loads(f"v = {value}")["v"]}), key)
        except ValidationError as e:
            wrong.append(f"{where}:{n}: {key} = {value} is refused: {e}")
            continue
        if shown != default:
            wrong.append(f"{where}:{n}: {key} = {value}, the default is {default!r}")
    return checked, wrong


def test_the_examples_show_the_defaults():
    """config/site-example.toml (and the `[service]` block of docs/operations.md) shows "every key of the gateway's
    own sections, with its default value unless the comment says the value is an example", and
    console/console-example.toml "every key with its default where it has one": each `key = value`, set or
    commented out, is the code's default. The console's `[models]` showed `../var/models` as if it were one."""
    from console.config import ConsoleConfig
    from edge.settings import SiteConfig

    site = {name: SiteConfig.model_fields[name].annotation for name in GATEWAY_SECTIONS}
    console = {name: ConsoleConfig.model_fields[name].annotation for name in ("console", "database", "models")}
    texts = [("config/site-example.toml", (ROOT / "config" / "site-example.toml").read_text(encoding="utf-8"), site),
             ("console/console-example.toml", (ROOT / "console" / "console-example.toml").read_text(encoding="utf-8"),
              console)]
    texts += [(f"docs/operations.md#{i}", block, site) for i, block in enumerate(re.findall(
        r"^```toml\n(.*?)^```", (ROOT / "docs" / "operations.md").read_text(encoding="utf-8"), re.M | re.S))]
    wrong = []
    checked = {}
    for where, text, sections in texts:
        checked[where], found = shown_defaults_that_are_not(text, where, sections)
        wrong += found
    assert checked["config/site-example.toml"] > 30 and checked["console/console-example.toml"] > 12, checked
    assert not wrong, "\n".join(wrong)


def test_the_benchmark_results_the_documents_cite_are_files_a_benchmark_writes():
    """A figure's source named as `bench/results/NAME.json` is the file a benchmark script writes by default, or the
    document gives the `--out` that writes it: architecture.md cited `ingest_analytics.json`, which nothing writes
    (bench_ingest.py's analytics phase goes into `ingest.json`), and emissions/README.md a PEMS result file that
    `emissions pems evaluate` writes only when told to."""
    written = "\n".join(p.read_text(encoding="utf-8") for p in shipped("bench/*.py"))
    found = doc_matches(r"(--out\s+)?bench/results/([\w.-]+\.json)")
    assert found, "no results cited: is the extraction broken?"
    wrong = [f"{where}: bench/results/{m.group(2)}" for where, m in found
             if not m.group(1) and f'"{m.group(2)}"' not in written]
    assert not wrong, wrong


def test_state_files_are_named_where_the_gateway_writes_them():
    """`<state_dir>/NAME` in a document is a file or folder the gateway keeps in `site.state_dir` itself, and a
    collector's own state is under `<state_dir>/collectors/<name>/` (each collector is handed that folder): the MQTT
    README sent the reader to `<state_dir>/subscriptions.json` and `<state_dir>/sparkplug/`, which are not there."""
    def literals(folders: tuple[str, ...]) -> set[str]:
        code = "\n".join(p.read_text(encoding="utf-8") for f in folders for p in shipped(f"{f}/**/*.py"))
        return set(re.findall(r"""state_dir\)?\s*/\s*["']([\w.]+)["']""", code)) | set(
            re.findall(r"""^[A-Z_]*FILE\s*=\s*["']([\w.]+)["']""", code, re.M))

    per_collector = literals(("collectors",))
    per_gateway = literals(("edge", "maintenance"))
    assert {"subscriptions.json", "sparkplug", "session.json", "pki"} <= per_collector, per_collector
    found = doc_matches(r"<state_dir>/(collectors/<name>/)?([\w.]+)")
    wrong = [f"{where}: {m.group(0)}" for where, m in found
             if m.group(2) not in (per_collector if m.group(1) else per_gateway)]
    assert len(found) > 10, "fewer state files named than there are: is the extraction broken?"
    assert not wrong, wrong


def test_the_systemd_settings_the_documents_quote_are_the_units():
    """`Type=notify`, `WatchdogSec=60`, `TimeoutStopSec=20`, `Restart=on-failure` ... quoted in the documents are
    lines of the shipped units (docker/systemd/), and `Key=` alone names a directive one of them uses: the guide
    tells the operator what the unit does and what to size around it (stop grace, memory)."""
    units = "\n".join(p.read_text(encoding="utf-8") for p in shipped("docker/systemd/*.service"))
    directives = set(re.findall(r"^([A-Z]\w+)=", units, re.M))
    not_units = {"Path", "SameSite", "SystemMaxUse"}  # cookie attributes (console/README.md); journald.conf's
    found = [(where, m) for where, m in doc_matches(r"`([A-Z][A-Za-z]+)=([^`\s]*)`") if m.group(1) not in not_units]
    assert len(found) > 8, "fewer unit settings quoted than there are: is the extraction broken?"
    wrong = [f"{where}: {m.group(0)}" for where, m in found if m.group(1) not in directives
             or (m.group(2) and not re.search(rf"^{m.group(1)}={re.escape(m.group(2))}$", units, re.M))]
    assert not wrong, wrong


def logged_event_levels() -> dict[str, set[str]]:
    """The levels the product code logs each event at: the `log.<level>(` call an ``"event": "name"`` belongs to
    (``exception`` is an error)."""
    levels: dict[str, set[str]] = {}
    code = [p for p in shipped("*.py") if not {"tests", "bench", "scripts"}.intersection(p.relative_to(ROOT).parts)]
    for path in code:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"""["']event["']\s*:\s*["']([a-z][a-z0-9_]+)["']""", text):
            calls = re.findall(r"\blog\w*\.(debug|info|warning|error|critical|exception)\(",
                               text[max(0, m.start() - 1500):m.start()])
            levels.setdefault(m.group(1), set()).add({"exception": "error"}.get(calls[-1], calls[-1]) if calls else "?")
    return levels


def test_the_log_table_gives_each_event_the_level_it_is_logged_at():
    """Monitoring filters the journal by level (`journalctl -p err`) and the guide's "level" column says which to
    watch: an event logged at a level its row does not name is missed there (`anomaly_state_unreadable`, at error
    when a running gateway cannot read what `train-anomaly` wrote, was listed as a warning only)."""
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = guide.split("\n## Log events", 1)[1].split("\n## ", 1)[0]
    levels = logged_event_levels()
    wrong = []
    checked = 0
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        cells = row.split("|")
        documented = set(re.findall(r"\b(debug|info|warning|error|critical)\b", cells[2]))
        if not documented:
            continue  # a row that refers to another document for its events
        for name in re.findall(r"`([a-z][a-z0-9_]+)`", cells[1]):
            checked += 1
            if levels.get(name, set()) - documented:
                wrong.append(f"{name}: logged at {sorted(levels[name])}, the table says {cells[2].strip()!r}")
    assert checked > 100, "fewer events compared than there are: is the extraction broken?"
    assert not wrong, "\n".join(wrong)


def all_defaults() -> dict[str, set]:
    """key -> the defaults it has in any configuration model (site, console, collectors, maintenance, stacks)."""
    import collectors.mqtt.config as mqtt
    import collectors.opcua.config as opcua
    from console.config import ConsoleConfig
    from edge.settings import SiteConfig
    from emissions.config import StackConfig
    from maintenance.config import MaintenanceConfig, RuleConfig

    out: dict[str, set] = {}
    seen: set[type] = set()
    todo = [SiteConfig, ConsoleConfig, MaintenanceConfig, RuleConfig, StackConfig, mqtt.Config, opcua.Config]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            out.setdefault(field.alias or name, set()).add(default if isinstance(default, int | float) else None)
            todo += models_in(field.annotation)
    return out


def test_every_default_stated_beside_a_key_is_the_codes():
    """`primary_s` (60 s), `login_failures_max` (default 5), `max_text_bytes` (64 KiB by default), `refresh_s` (30 s):
    a number the prose gives beside a configuration key, in any document, is that key's default in the code (keys
    with different defaults in different sections are left out)."""
    defaults = all_defaults()
    wrong = []
    checked = 0
    for where, m in doc_matches(r"`(?:[a-z_]+\.)?([a-z][a-z0-9_]+)` \((?:default )?([0-9][0-9,.]*)\s*"
                                r"(s|bytes|KiB|MiB|GB|MB)?(?=[ ,;:)])"):
        key, number, unit = m.groups()
        if len(defaults.get(key, ())) != 1 or None in defaults[key]:
            continue
        (default,) = defaults[key]
        checked += 1
        if float(number.replace(",", "")) * UNITS[unit or "s"] != default:
            wrong.append(f"{where}: {m.group(0)}: the default is {default}")
    assert checked > 20, "fewer stated defaults than there are: is the extraction broken?"
    assert not wrong, "\n".join(wrong)


def test_the_code_the_documents_name_exists():
    """`edge.secrets.read_secret_file`, `console.app.MAX_BODY_BYTES`, `models.registry.Registry` ...: a module,
    function, class or constant a document sends the reader to is there by that name. Left out: the console's
    `[console]` keys and permissions, which read like module paths (`console.listen`, `models.admin`)."""
    import importlib

    from console.auth import PERMISSIONS
    from console.config import ConsoleConfig

    not_code = {f"console.{k}" for k in ConsoleConfig.model_fields["console"].annotation.model_fields}
    not_code |= set().union(*PERMISSIONS.values()) | {"console.toml"}
    found = doc_matches(r"`((?:edge|models|maintenance|emissions|console|collectors)(?:\.[A-Za-z_]\w*)+)(?:\(\))?`")
    wrong = []
    for where, m in found:
        if m.group(1) in not_code:
            continue
        parts = m.group(1).split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    wrong.append(f"{where}: {m.group(1)}: {'.'.join(parts[:i])} has no {attr}")
                    break
                obj = getattr(obj, attr)
            break
        else:
            wrong.append(f"{where}: {m.group(1)}: no such module")
    assert len(found) > 50, "fewer names of code than the documents give: is the extraction broken?"
    assert not wrong, "\n".join(wrong)
