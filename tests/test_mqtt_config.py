"""MQTT collector configuration, topic filters and tag templates (no broker)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from collectors.base import CollectorContext
from collectors.mqtt import Config, JsonMapping, Subscription, Tls, build
from collectors.mqtt.topics import TagTemplate, TopicFilter
from edge.errors import ConfigError, DataError
from edge.metrics import Metrics

SAMPLE = Path(__file__).resolve().parents[1] / "collectors" / "mqtt" / "sample.toml"
SUBS = [{"topic": "plant/#", "format": "plain"}]


def make(**kw) -> Config:
    return Config.model_validate({"client_id": "gw1", "subscriptions": SUBS, **kw})


def errors(**kw) -> str:
    with pytest.raises(ValidationError) as exc:
        make(**kw)
    return str(exc.value)


def sub_errors(**kw) -> str:
    with pytest.raises(ValidationError) as exc:
        Subscription.model_validate(kw)
    return str(exc.value)


def test_sample_config_validates_and_documents_the_real_defaults(tmp_path):
    text = SAMPLE.read_text()
    data = tomllib.loads(text)
    for entry in data["collectors"]:
        body = {k: v for k, v in entry.items() if k not in ("kind", "name")}
        if "tls" in body:  # the sample points at deployment paths; give it files that exist here
            for key in ("ca_file", "cert_file", "key_file"):
                if key in body["tls"]:
                    (tmp_path / key).write_text("x")
                    body["tls"][key] = str(tmp_path / key)
        Config.model_validate(body)
    # Every commented "# key = value" line must show the code's default (style notes: Telegraf's drift).
    sections = {"[[collectors]]": Config, "[collectors.tls]": Tls, "[[collectors.subscriptions]]": Subscription,
                "[collectors.subscriptions.json]": JsonMapping}
    section, checked = Config, 0
    for line in text.splitlines():
        head = line.split("#")[0].strip()
        if head in sections:
            section = sections[head]
        m = re.match(r"#\s*(\w+)\s*=\s*(\"[^\"]*\"|\S+)", line)
        if not m or m.group(1) not in section.model_fields:
            continue
        default = section.model_fields[m.group(1)].default
        if default is None:
            continue  # an example value for an optional key
        assert tomllib.loads(f"v = {m.group(2)}")["v"] == default, line
        checked += 1
    assert checked >= 14


def test_every_option_in_the_code_appears_in_the_sample():
    text = SAMPLE.read_text()
    for model in (Config, Tls, Subscription, JsonMapping):
        for name, f in model.model_fields.items():
            key = f.alias or name
            if key == "subscriptions":
                continue
            assert re.search(rf"^#?\s*{key}\s*=|\[collectors\.{key}\]|\.{key}\]", text, re.M), f"{model.__name__}.{key}"


def test_literal_password_is_refused_and_references_resolve(tmp_path, monkeypatch):
    assert "never put a secret in the config file" in errors(username="u", password="hunter2")
    assert "password without username" in errors(password="env:X")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    ctx = CollectorContext(name="c", state_dir=tmp_path, metrics=Metrics())
    assert build(make(username="u", password=f"file:{secret}"), ctx)._password == "s3cret"
    monkeypatch.setenv("MQTT_PW", "from-env")
    assert build(make(username="u", password="env:MQTT_PW"), ctx)._password == "from-env"
    monkeypatch.delenv("MQTT_PW")
    with pytest.raises(ConfigError, match="MQTT_PW is not set"):
        build(make(username="u", password="env:MQTT_PW"), ctx)


def test_each_mistake_has_its_own_message(tmp_path):
    assert "QoS 2 is not supported" in errors(qos=2)
    assert "client_id is required for a persistent session" in errors(client_id=None)
    make(client_id=None, clean_session=True)  # a clean session needs no fixed id
    assert "duplicate topic plant/+/x" in errors(subscriptions=[{"topic": "plant/+a/x"}, {"topic": "plant/+b/x"}])
    assert "Extra inputs" in errors(timeout=3)
    assert "at least 1 item" in errors(subscriptions=[])
    assert "less than or equal to 65535" in errors(port=70000)
    assert "'3.1.1' or '5'" in errors(protocol="3")
    assert "cert_file and key_file go together" in errors(tls={"cert_file": str(SAMPLE)})
    assert "unknown placeholder {asset}" in sub_errors(topic="plant/+/x", tag="{asset}")
    assert "{3} is beyond topic" in sub_errors(topic="plant/+/x", tag="{3}")
    assert "{#} needs a topic ending in '#'" in sub_errors(topic="plant/+", tag="{#}")
    assert "'#' must be the last level" in sub_errors(topic="plant/#/x")
    assert "wildcards must fill a whole level" in sub_errors(topic="plant/a+/x")
    assert "used twice" in sub_errors(topic="+a/+a")
    assert "unmatched '{'" in sub_errors(topic="a/+", tag="{1")
    assert "needs {field}" in sub_errors(topic="a/+", json={"value": "*"}, tag="{1}")
    assert "plain payloads name no {field}" in sub_errors(topic="a/+", format="plain", tag="{field}")
    assert "Sparkplug B topics start with spBv1.0/" in sub_errors(topic="plant/#", format="sparkplug")
    assert "not a dotted path" in sub_errors(topic="a", json={"time": "data..ts"})
    assert "'auto', 'iso8601'" in sub_errors(topic="a", json={"time_format": "epoch"})
    assert "rebirth_interval_s\n  Input should be greater than or equal to 1" in errors(rebirth_interval_s=0.5)
    assert "request_rebirth\n  Input should be a valid boolean" in errors(request_rebirth="sometimes")
    assert make().request_rebirth is True and make().rebirth_interval_s == 30.0


def test_bad_tls_files_are_a_configuration_error_at_build(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    ctx = CollectorContext(name="c", state_dir=tmp_path, metrics=Metrics())
    with pytest.raises(ConfigError, match=r"tls.ca_file: cannot load the CA certificates of .*ca.pem"):
        build(make(tls={"ca_file": str(bad)}), ctx)
    # A file that is not there is for the build too (check-config without --skip-secrets, run): the file alone
    # is valid on a machine without the certificates.
    absent = make(tls={"ca_file": str(tmp_path / "nope.pem"), "cert_file": str(bad), "key_file": str(tmp_path / "k")})
    with pytest.raises(ConfigError) as err:
        build(absent, ctx)
    assert err.value.problems == [f"tls.ca_file: no such file {tmp_path / 'nope.pem'}",
                                  f"tls.key_file: no such file {tmp_path / 'k'}"]


def test_topic_filter_matching_follows_mqtt_rules():
    f = TopicFilter("plant/+area/+asset/#")
    assert f.mqtt == "plant/+/+/#" and f.names == {"area": 1, "asset": 2}
    assert f.matches("plant/a/P-1/x/y".split("/"))
    assert f.matches("plant/a/P-1".split("/"))  # '#' also matches the parent level
    assert not f.matches("plant/a".split("/"))
    assert not f.matches("other/a/P-1/x".split("/"))
    exact = TopicFilter("a/+/c")
    assert exact.matches(["a", "b", "c"]) and not exact.matches(["a", "b", "c", "d"]) and not exact.matches(["a", "b"])


def test_tag_templates_render_levels_names_rest_topic_and_field():
    f = TopicFilter("plant/+area/+asset/#")
    assert TagTemplate("{asset}.{#}", f).render("plant/A1/P-101/vib/de") == "P-101.vib/de"
    assert TagTemplate("{0}:{1}.{2}", f).render("plant/A1/P-101") == "plant:A1.P-101"
    assert TagTemplate("{{{area}}}", f).render("plant/A1/P-101") == "{A1}"
    assert TagTemplate("{topic}", f).render("plant/A1/P-101/x") == "plant/A1/P-101/x"
    t = TagTemplate("{asset}.{field}.raw", f)
    assert t.uses_field and t.render("plant/A1/P-101", "temp") == "P-101.temp.raw"
    assert t.around_field("plant/A1/P-101") == ("P-101.", ".raw")
    with pytest.raises(DataError, match=r"needs \{field\}"):
        t.render("plant/A1/P-101")
    assert TagTemplate("x{5}", f).render("plant/A1/P-101") == "x"  # beyond the topic: empty (documented)
    with pytest.raises(DataError, match="empty tag name"):
        TagTemplate("{5}", f).render("plant/A1/P-101")
    sp = Subscription(topic="spBv1.0/#", format="sparkplug", tag="{group}/{node}/{device}/{field}").compiled()[1]
    assert sp.render("spBv1.0/G/DDATA/N/D", "m") == "G/N/D/m"


def test_default_tag_templates_depend_on_format():
    assert Subscription(topic="a/#", format="plain").tag_spec() == "{topic}"
    assert Subscription(topic="a/#").tag_spec() == "{topic}"
    assert Subscription(topic="a/#", json={"tag": "name"}).tag_spec() == "{field}"
    assert Subscription(topic="a/#", json={"value": "*"}).tag_spec() == "{topic}.{field}"
    assert Subscription(topic="spBv1.0/#", format="sparkplug").tag_spec() == "{group}.{node}.{field}"


def test_filters_covered_by_another_are_not_subscribed():
    from collectors.mqtt.topics import covers, subscribed_filters

    assert covers("a/#", "a") and covers("a/#", "a/+/x") and covers("a/+", "a/b") and covers("#", "a/#")
    assert covers("+/+", "a/b") and covers("a/+/#", "a/b/#")
    assert not covers("a/+", "a/#") and not covers("a/+", "a") and not covers("a/b", "a/+")
    assert not covers("#", "$SYS/x") and not covers("+/x", "$SYS/x") and covers("$SYS/#", "$SYS/x")
    assert not covers("a/+/c", "a/b") and not covers("a/b", "a/b/c")
    assert subscribed_filters(["a/+/x", "a/#", "b/c", "+/c", "$SYS/#"]) == ["a/#", "+/c", "$SYS/#"]


def test_the_topic_and_field_caches_hold_little_whatever_the_publishers_choose(tmp_path):
    """Topics and JSON field names come from whoever may publish; the router and the tag templates cache by them.
    The caches were bounded by entries only (65,536 topics, 100,000 field names per topic for 4,096 topics), and an
    MQTT topic or a field name may be 64 kB: 20,000 messages on distinct 20 kB topics kept 786 MB. Long keys are
    not cached now, and field names are bounded over all topics."""
    import datetime as dt
    import gc
    import tracemalloc

    import orjson

    from collectors.mqtt.router import Router

    subs = [Subscription.model_validate({"topic": "p/+a/+s", "tag": "{a}.{s}"}),
            Subscription.model_validate({"topic": "w/+a", "tag": "{a}.{field}", "json": {"value": "*"}})]
    router = Router("mq", subs, tmp_path)
    now = dt.datetime.now(dt.UTC)
    long = "x" * 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            readings, dead, _ = router.handle(f"p/{long}{i}/flow", b"", b'{"value": 1.0}', now)
            assert len(readings) == 1 and not dead
            router.handle(f"p/{long}{i}/flow", b"", b'{"value": "nan"', now)  # a dead letter: logged by topic
            readings, dead, _ = router.handle(f"w/A{i % 3}", b"", orjson.dumps({f"{long}{i}": 1.0}), now)
            assert len(readings) == 1 and not dead
        readings, dead, _ = router.handle("w/A0", b"", orjson.dumps({f"f{i}": 1.0 for i in range(200_000)}), now)
        assert len(readings) == 200_000 and not dead
        del readings, dead
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 1,000 messages on 20 kB topics, 1,000 field names of 20 kB, 200,000 short field names in one message: the old
    # caches kept 150 MB.
    assert kept < 25e6, f"{kept / 1e6:.0f} MB kept by the caches"


def test_a_collectors_dead_letter_lines_are_bounded_per_minute_and_the_next_minute_says_how_many_were_not(
        tmp_path, monkeypatch, caplog):
    """Malformed messages on ever new topics were logged one line each (the limit was per topic only). A collector
    writes at most LOG_TOPICS_PER_WINDOW such lines a minute; the first line of the next minute gives the count of
    those held back, so the log still adds up to the dead letters."""
    import datetime as dt
    import logging

    from collectors.mqtt import router as router_mod

    clock = [1000.0]
    monkeypatch.setattr(router_mod.time, "monotonic", lambda: clock[0])
    router = router_mod.Router("mq", [Subscription.model_validate({"topic": "p/+a/+s", "tag": "{a}.{s}"})], tmp_path)
    now = dt.datetime.now(dt.UTC)
    with caplog.at_level(logging.WARNING, logger="collectors.mqtt.router"):
        for i in range(1000):
            clock[0] += 0.001
            router.handle(f"p/A{i}/x", b"", b"{bad", now)
        first = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "mqtt_dead_letter"]
        caplog.clear()
        clock[0] += router_mod.LOG_EVERY_S
        router.handle("p/B/x", b"", b"{bad", now)
    assert router.dead_letters == 1001
    assert len(first) == router_mod.LOG_TOPICS_PER_WINDOW and "not logged" in first[-1]
    held = 1000 - router_mod.LOG_TOPICS_PER_WINDOW
    assert [f"{held} undecodable message(s) on other topics not logged" in r.getMessage() for r in caplog.records] \
        == [True]
