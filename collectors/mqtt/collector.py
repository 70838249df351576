"""The MQTT collector: one broker, QoS 1 on a persistent session, acknowledged after the spool.

Threads. paho runs its network loop in its own thread (``loop_start``, the loop of `session.Client`).
``_on_message`` runs there: it takes an in-flight slot (back-pressure), decodes the payload, and hands a `Batch`
to the event loop with ``call_soon_threadsafe``; ``run`` emits the batches in arrival order.
The pipeline calls ``batch.ack`` on the event loop once the readings are durable; that sends the
MQTT PUBACK with ``Client.ack``, which only appends to paho's outgoing deque and wakes the
network thread through its socket pair, the same path ``publish`` takes from other threads.

At least once. paho's automatic acknowledgement is off (``manual_ack=True``): a message the
gateway received but had not stored when it died is still unacknowledged in the broker's
session and is sent again on the next connection. An acknowledgement is only sent on the
connection that received the message (packet ids are per connection); after a reconnect the
broker re-sends what was not acknowledged and the database key removes the duplicates (a copy
of a message without a source time gets its first receive time back: ``redelivery``).

Back-pressure. At most ``max_inflight`` messages are between paho and the PUBACK. MQTT 5 tells
the broker so (Receive Maximum); with 3.1.1 the network thread stops reading from the socket while
every slot is taken (still sending PUBACKs and PINGREQs), so the broker keeps the messages.

Receive times. A message without a source time takes its receive time, which must be the same when the broker
sends the message again (see ``redelivery``), and several samples of one tag must not share it (see ``untimed``).

Reconnects. paho's own reconnect is off (``reconnect_on_failure=False``): ``run`` raises
`NotConnectedError` when the connection drops and the gateway's supervisor (one back-off policy
for every collector) calls ``run`` again with a fresh client and the same client id, so the
session and its queued messages carry over. A resumed session keeps its subscriptions (see
``_subscribe``); before a clean disconnect an UNSUBSCRIBE round trip makes sure the broker has
processed every PUBACK sent (see ``_barrier``).

Sparkplug Primary Host (``primary_host_id``, off by default). The collector registers the STATE death as its will,
publishes the birth once subscribed and the death before a clean DISCONNECT, and answers an offline STATE of its id
delivered live with the birth again (``primary_host``). The configuration then requires a clean session; a
connection without a broker session makes the Sparkplug decoders distrust the births they knew
(``SparkplugDecoder.new_session``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from collectors.base import CollectorContext, Emit
from collectors.mqtt.config import Config
from collectors.mqtt.primary_host import STATE_QOS, PrimaryHost
from collectors.mqtt.rebirth import RebirthRequests
from collectors.mqtt.redelivery import CONFIRM_EVERY_S, ReceiveTimes
from collectors.mqtt.router import Router
from collectors.mqtt.session import Ack, Client, Connection, SavedSubscriptions
from collectors.mqtt.topics import covers
from edge.columns import from_us, to_us
from edge.errors import NotConnectedError
from edge.records import Batch, utcnow
from edge.timeouts import within
from edge.tls import tls_context, warn_insecure_login

log = logging.getLogger(__name__)

_LOST = object()  # queue sentinel: the connection is gone
BARRIER_TOPIC = "valvoja/barrier/never-subscribed"  # unsubscribed before DISCONNECT; see _barrier
BARRIER_TIMEOUT_S = 2.0


class MqttCollector:
    """Subscribes to ``config.subscriptions`` on one broker; see the module docstring."""

    def __init__(self, config: Config, context: CollectorContext, *, password: str | None = None) -> None:
        self.name = context.name
        self.cfg = config
        self.ctx = context
        self._password = password
        self._tls = tls_context(config.tls)  # edge/tls.py: read here, at start-up
        warn_insecure_login(f"collector {self.name}", config.host, config.port, config.tls, password)
        self.rebirths = RebirthRequests(self.name, enabled=config.request_rebirth, interval_s=config.rebirth_interval_s)
        self.router = Router(self.name, list(config.subscriptions), Path(context.state_dir),
                             on_decoder_error=context.metrics.collector_errors.labels(self.name, "decoder").inc,
                             on_rebirth=self.rebirths.request, retained_untimed=config.retained_untimed,
                             max_payload_bytes=config.max_payload_bytes,
                             on_too_large=context.metrics.collector_errors.labels(self.name, "message_too_large").inc,
                             on_sequence_gap=context.metrics.collector_errors.labels(
                                 self.name, "sparkplug_sequence_gap").inc)
        self.times = ReceiveTimes(remember=config.qos == 1 and not config.clean_session)
        self.host = PrimaryHost(self.name, config.primary_host_id) if config.primary_host_id else None
        self._times_loaded = False
        self._saved = SavedSubscriptions(Path(context.state_dir) / "subscriptions.json", config)
        self._client: mqtt.Client | None = None
        self._conn: Connection | None = None
        self._m_messages = context.metrics.messages_in.labels(self.name)
        # For status() / health.
        self.connected = False
        self.connected_since: datetime | None = None
        self.session_present: bool | None = None
        self.last_message: datetime | None = None
        self.connects = 0
        self.last_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        """Connect, subscribe, emit a batch per message until the connection is lost (then raise)."""
        await self._load_times()
        conn = self._conn = Connection(asyncio.get_running_loop(), self.cfg.max_inflight)
        client = self._client = self.rebirths.client = self._new_client(conn)
        confirming = None
        try:
            await self._connect(client, conn)
            if not self.session_present:
                self._births_unconfirmed()
            if self.times.remember and not self.session_present:
                await self._save_state(self.times.clear())  # nothing subscribed yet: no message can race this
            await self._subscribe(client, conn)
            if self.host is not None:  # after the subscriptions, as Sparkplug 3.0 asks (primary_host.py)
                await self._publish_state(client, self.host.birth(), "birth")
                self.host.births += 1
            self._set_connected(True)
            confirming = asyncio.create_task(self._confirm_acks(client, conn))
            while True:
                item = await conn.queue.get()
                if item is _LOST:
                    raise NotConnectedError(f"{self._where()}: connection lost: {conn.lost_reason}")
                # Batches received before a loss are still emitted: with QoS 0 or a clean session the
                # broker will not send them again. Their acks then only free a slot (see Ack).
                await emit(item)
        except NotConnectedError as exc:
            self.last_error = str(exc)
            raise
        finally:
            if confirming is not None:
                confirming.cancel()
            await self._teardown()

    async def aclose(self) -> None:
        """Disconnect (the broker keeps the session); safe to call more than once."""
        await self._teardown()

    def status(self) -> dict:
        conn, r = self._conn, self.router
        sparkplug = r.sparkplug.stats()
        if sparkplug is not None:
            sparkplug.update(self.rebirths.stats())
        return {
            "kind": "mqtt",
            "broker": self._where(),
            "protocol": self.cfg.protocol,
            "client_id": self.cfg.client_id,
            "connected": self.connected,
            "connected_since": self.connected_since.isoformat() if self.connected_since else None,
            "session_present": self.session_present,
            "last_message": self.last_message.isoformat() if self.last_message else None,
            "connects": self.connects,
            "messages": r.messages,
            "readings": r.readings,
            "dead_letters": r.dead_letters,
            "decoder_errors": r.decoder_errors,
            "messages_too_large": r.too_large,
            "subscription_copies": r.copies,  # MQTT 5: a message's copy for a second matching subscription, skipped
            "retained_untimed_skipped": r.retained_skipped,
            "redeliveries_matched": self.times.matched,  # sent again, given their first receive time
            "receive_times_held": len(self.times),  # of messages whose PUBACK the broker has not confirmed
            "inflight": conn.inflight if conn else 0,
            "sparkplug": sparkplug,
            "primary_host": self.host.stats() if self.host is not None else None,
            "last_error": self.last_error,
        }

    # -- steps -----------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"mqtt{'s' if self.cfg.tls else ''}://{self.cfg.host}:{self.cfg.port}"

    def _new_client(self, conn: Connection) -> mqtt.Client:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        client = Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id or "",
                             clean_session=None if v5 else cfg.clean_session, userdata=conn,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             reconnect_on_failure=False, manual_ack=True)
        client.connect_timeout = cfg.connect_timeout_s
        if self.host is not None:
            # The broker publishes it when the connection ends without DISCONNECT (crash, SIGKILL, lost link).
            client.will_set(*self.host.will(), qos=STATE_QOS, retain=True)
        if self._tls is not None:
            client.tls_set_context(self._tls)
            client.tls_insecure_set(cfg.tls.insecure)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, self._password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = _on_reply
        client.on_unsubscribe = _on_reply
        client.on_message = self._on_message
        return client

    async def _connect(self, client: mqtt.Client, conn: Connection) -> None:
        cfg = self.cfg
        self.connects += 1
        kwargs: dict = {}
        if cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if cfg.clean_session else cfg.session_expiry_s
            props.ReceiveMaximum = cfg.max_inflight
            kwargs = {"clean_start": cfg.clean_session, "properties": props}
        deadline = time.monotonic() + cfg.connect_timeout_s
        try:
            # TCP connect and TLS handshake block: run them off the event loop.
            await within(asyncio.to_thread(client.connect, cfg.host, cfg.port, cfg.keepalive_s, **kwargs),
                                   cfg.connect_timeout_s)
            client.loop_start()
            reason = await within(conn.connack, max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            raise NotConnectedError(f"{self._where()}: no CONNACK within {cfg.connect_timeout_s:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            hint = "" if "match" in str(exc) else " (is tls.ca_file the CA that signed the broker's certificate?)"
            raise NotConnectedError(f"{self._where()}: TLS: the broker's certificate was refused: "
                                    f"{exc.verify_message or exc}{hint}") from exc
        except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
            raise NotConnectedError(f"{self._where()}: cannot connect: {type(exc).__name__}: {exc}") from exc
        if reason is not None:
            raise NotConnectedError(f"{self._where()}: broker refused the connection: {reason}")

    async def _subscribe(self, client: mqtt.Client, conn: Connection) -> None:
        """Bring the session's subscriptions in line with the configuration.

        A resumed session keeps its subscriptions: subscribing again would make the broker re-send
        every retained message. Only filters added since the last run are subscribed, and filters
        removed from the configuration are unsubscribed (else their messages would keep coming).
        """
        filters = self.router.filters
        if self.host is not None and not any(covers(f, self.host.topic) for f in filters):
            filters = [*filters, self.host.topic]  # its own STATE: to see an offline one (primary_host.py)
        saved = self._saved.load() if self.session_present else None
        ids = self.router.sub_ids if self.cfg.protocol == "5" else {}
        # A filter subscribed without its identifier (by an older version) is subscribed again to get it: for MQTT 5
        # that replaces the subscription, and RETAIN_SEND_IF_NEW_SUB sends no retained message for it.
        new = [f for f in filters if saved is None or f not in saved or (ids and self._saved.ids.get(f) != ids.get(f))]
        stale = [f for f in saved or () if f not in filters]
        if stale:
            rc, mid = client.unsubscribe(stale)
            await self._reply(conn, rc, mid, "UNSUBACK")
            log.info("%s: unsubscribed from %s (no longer configured)", self.name, ", ".join(stale),
                     extra={"event": "mqtt_unsubscribed", "collector": self.name})
        if new:
            qos = self.cfg.qos
            if self.cfg.protocol == "5":
                # One SUBSCRIBE per filter: a packet carries one subscription identifier, and the identifier tells
                # the copies of a message that matches two filters apart (Router.handle).
                opts = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
                sent = []
                for f in new:
                    props = None
                    if f in self.router.sub_ids:
                        props = Properties(PacketTypes.SUBSCRIBE)
                        props.SubscriptionIdentifier = self.router.sub_ids[f]
                    sent.append(client.subscribe([(f, opts)], properties=props))
                codes = [c for rc, mid in sent for c in await self._reply(conn, rc, mid, "SUBACK")]
            else:
                rc, mid = client.subscribe([(f, qos) for f in new])
                codes = await self._reply(conn, rc, mid, "SUBACK")
            refused = [f"{f} ({c})" for f, c in zip(new, codes, strict=False) if c.is_failure]
            if refused:
                raise NotConnectedError(f"{self._where()}: subscription refused: {', '.join(refused)}")
        if new or stale or saved is None:
            self._saved.save(filters, ids)

    def _births_unconfirmed(self) -> None:
        """No session at the broker: Sparkplug births and deaths published while the gateway was away were not
        received. Before any subscription, so no message races this (the decoders run on paho's thread)."""
        n = self.router.sparkplug.new_session()
        if n:
            log.info("%s: the broker kept no session: %d Sparkplug edge node(s) known from before are asked to "
                     "rebirth at their next message, and their aliases are not used until then (a birth published "
                     "while the gateway was away may have changed them)", self.name, n,
                     extra={"event": "sparkplug_births_unconfirmed", "collector": self.name})

    async def _publish_state(self, client: mqtt.Client, payload: bytes, what: str,
                             timeout_s: float | None = None) -> None:
        """Publish this Primary Host's STATE (QoS 1, retained) and wait for the broker's PUBACK."""
        timeout_s = self.cfg.connect_timeout_s if timeout_s is None else timeout_s
        info = client.publish(self.host.topic, payload, qos=STATE_QOS, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnectedError(f"{self._where()}: cannot publish the Sparkplug STATE {what} on {self.host.topic}: "
                                    f"{mqtt.error_string(info.rc)}")
        try:
            await within(asyncio.to_thread(info.wait_for_publish, timeout_s), timeout_s + 1)
        except (TimeoutError, RuntimeError, ValueError) as exc:
            raise NotConnectedError(f"{self._where()}: no PUBACK for the Sparkplug STATE {what} on {self.host.topic} "
                                    f"within {timeout_s:g} s ({type(exc).__name__})") from None
        if not info.is_published():
            raise NotConnectedError(f"{self._where()}: no PUBACK for the Sparkplug STATE {what} on {self.host.topic} "
                                    f"within {timeout_s:g} s")
        log.info("%s: Sparkplug Primary Host %s published its STATE %s (timestamp %d)", self.name, self.host.host_id,
                 what, self.host.timestamp_ms, extra={"event": "sparkplug_state_published", "collector": self.name,
                                                      "topic": self.host.topic})

    async def _reply(self, conn: Connection, rc: int, mid: int, what: str):
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnectedError(f"{self._where()}: cannot send: {mqtt.error_string(rc)}")
        try:
            return await conn.wait_reply(mid, self.cfg.connect_timeout_s)
        except TimeoutError:
            raise NotConnectedError(f"{self._where()}: no {what} within {self.cfg.connect_timeout_s:g} s") from None

    async def _teardown(self) -> None:
        client, conn = self._client, self._conn
        self._client = self.rebirths.client = None
        self._set_connected(False)
        if client is None:
            return
        if conn is not None:
            if conn.connected:
                # The pipeline goes on acknowledging while this waits (a stop spools what is queued): no PUBACK may
                # follow the barrier's UNSUBSCRIBE (see Connection.acking).
                conn.acking = False
                await self._barrier(client, conn)
                await self._host_death(client)
            conn.close()
        try:
            # DISCONNECT does not end a persistent session; unacknowledged messages stay with the broker.
            client.disconnect()
        except Exception as exc:  # the socket may already be gone
            log.debug("%s: disconnect: %r", self.name, exc)
        await asyncio.to_thread(client.loop_stop)

    async def _host_death(self, client: mqtt.Client) -> None:
        """A clean DISCONNECT discards the will: a Primary Host publishes its death itself first."""
        if self.host is None:
            return
        try:
            await self._publish_state(client, self.host.death(), "death", BARRIER_TIMEOUT_S)
            self.host.deaths += 1
        except NotConnectedError as exc:
            # The link is likely gone (no PUBACK): the DISCONNECT that follows will not arrive either, and the
            # broker publishes the will, which says the same. Should it arrive, the retained STATE says online
            # until the gateway connects again: logged so that an operator knows why.
            log.warning("%s: %s; edge nodes may see this host online until it reconnects", self.name, exc,
                        extra={"event": "sparkplug_state_death_unsent", "collector": self.name})

    async def _barrier(self, client: mqtt.Client, conn: Connection, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
        """Wait until the broker has processed every PUBACK sent so far, then forget the receive times they held.

        A broker handles a connection's packets in order, so the UNSUBACK of a harmless UNSUBSCRIBE proves
        it. Without it, PUBACKs still unread when a quick reconnect takes the session over are dropped
        with the old connection, and those messages come again (duplicates, not losses).
        """
        n = len(conn.acked)  # acks appended while waiting may follow the UNSUBSCRIBE: not covered
        try:
            rc, mid = client.unsubscribe(BARRIER_TOPIC)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return
            await conn.wait_reply(mid, timeout_s)
        except (TimeoutError, OSError) as exc:
            log.debug("%s: no UNSUBACK: %r", self.name, exc)
            return
        done, conn.acked[:n] = conn.acked[:n], []
        await self._save_state(self.times.confirmed(done))

    async def _confirm_acks(self, client: mqtt.Client, conn: Connection) -> None:
        """Forget the receive times of acknowledged messages once the broker has their PUBACKs (``redelivery``)."""
        while True:
            await asyncio.sleep(CONFIRM_EVERY_S)
            if conn.acked and conn.connected:
                await self._barrier(client, conn, self.cfg.connect_timeout_s)

    async def _load_times(self) -> None:
        """The receive times the spool remembers (once, before the first connection: a DUP may come at once)."""
        if self._times_loaded or not self.times.remember or self.ctx.state is None:
            return
        try:
            self.times.load(await self.ctx.state.load())
        except Exception:
            log.exception("%s: cannot read the remembered receive times from the spool; messages the broker sends "
                          "again may be stored twice", self.name, extra={"collector": self.name})
        self._times_loaded = True

    async def _save_state(self, changes: list) -> None:
        if not changes or self.ctx.state is None:
            return
        try:
            await self.ctx.state.save(changes)
        except Exception as exc:  # the entries stay: harmless, removed when their packet id is used again
            log.warning("%s: cannot forget remembered receive times in the spool: %r", self.name, exc,
                        extra={"collector": self.name})

    # -- paho callbacks (network thread) -----------------------------------------------------------

    def _on_connect(self, client, conn: Connection, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            conn.to_loop(_resolve, conn.connack, str(reason_code))
            return
        conn.connected = True
        self.session_present = bool(flags.session_present)
        if not self.cfg.clean_session and not flags.session_present and self.connects > 1:
            log.warning("%s: the broker had no session for client id %s: messages published while the gateway "
                        "was away are lost", self.name, self.cfg.client_id,
                        extra={"event": "mqtt_session_lost", "collector": self.name})
        conn.to_loop(_resolve, conn.connack, None)

    def _on_disconnect(self, client, conn: Connection, flags, reason_code, properties) -> None:
        conn.connected = False
        if conn.closing:
            return
        conn.lost_reason = str(reason_code)
        conn.to_loop(_resolve, conn.connack, f"disconnected before CONNACK: {reason_code}")
        conn.to_loop(conn.queue.put_nowait, _LOST)

    def _on_message(self, client, conn: Connection, msg: mqtt.MQTTMessage) -> None:
        # An exception escaping here would stop paho's network thread: report it as a lost connection.
        try:
            if not conn.take_slot():
                return  # shutting down; the broker keeps the message
            times = self.times
            now = utcnow()
            recv_us = times.stamp(msg, now_us := to_us(now))
            received = now if recv_us == now_us else from_us(recv_us)
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = None
            props = msg.properties
            sub_ids = getattr(props, "SubscriptionIdentifier", None) if props is not None else None
            if self.host is not None and topic == self.host.topic:
                readings, dead, span_us = [], [], 0  # the host's own STATE is no measurement (primary_host.py)
                if self.host.delivered(msg.payload, msg.retain):
                    self._republish_birth(client)
            else:
                readings, dead, span_us = self.router.handle(topic, msg._topic, msg.payload, received, msg.retain,
                                                             msg.dup, sub_ids)
            # Dead letters count too: their digest in the database covers the receive time.
            changes, entry = times.settle(msg, recv_us, span_us, span_us > 0 or bool(dead))
            self.last_message = now
            self._m_messages.inc()
            conn.to_loop(conn.queue.put_nowait, Batch(self.name, readings, Ack(client, conn, msg.mid, msg.qos, entry),
                                                      dead, state=changes))
        except Exception as exc:
            log.exception("%s: message handling failed", self.name, extra={"collector": self.name})
            conn.lost_reason = f"internal error: {exc!r}"
            conn.to_loop(conn.queue.put_nowait, _LOST)

    def _republish_birth(self, client: mqtt.Client) -> None:
        """(network thread) The retained STATE says offline: publish the birth again, without waiting for its PUBACK
        (this thread reads it). A refused publish is logged and the connection treated as lost: the next one
        publishes a birth anyway."""
        info = client.publish(self.host.topic, self.host.birth(), qos=STATE_QOS, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnectedError(f"cannot publish the Sparkplug STATE birth again on {self.host.topic}: "
                                    f"{mqtt.error_string(info.rc)}")
        self.host.births += 1
        self.host.rebirths += 1

    # -- helpers ----------------------------------------------------------------------------------

    def _set_connected(self, up: bool) -> None:
        if up == self.connected:
            return
        self.connected = up
        self.connected_since = utcnow() if up else None
        self.ctx.metrics.connected.labels(self.name).set(1 if up else 0)
        if up:
            self.last_error = None
            log.info("%s: connected to %s (MQTT %s, session %s), %d subscriptions", self.name, self._where(),
                     self.cfg.protocol, "resumed" if self.session_present else "new", len(self.router.filters),
                     extra={"event": "mqtt_connected", "collector": self.name})


def _on_reply(client, conn: Connection, mid, reason_codes, properties) -> None:
    """SUBACK and UNSUBACK (network thread)."""
    conn.reply(mid, list(reason_codes))


def _resolve(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)
