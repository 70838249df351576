"""An asyncua subscription that hands over whole publish responses, and batched item creation.

asyncua 2.1.0 delivers data changes either to a handler (one asyncio task per value) or to an
iterator queue that drops the oldest values when full. Neither suits a gateway: a task per value
is slow at thousands of values per second, and silent dropping loses data. `BatchSubscription`
overrides `publish_callback` (which asyncua's publish loop awaits before it acknowledges the
message and asks for the next one) so one publish response becomes one `Batch`, and a slow
pipeline slows the publish loop down instead of losing values: the server then queues them
(per-item ``queue_size``) as OPC UA intends.

The class stays a real `asyncua.common.subscription.Subscription`, so asyncua's own
stale-subscription watchdog and `recreate()` keep working with it. It keeps what the server granted
(RevisedPublishingInterval, RevisedMaxKeepAliveCount): a server that publishes slower than asked also
sends its keep-alives later, so a silent subscription is judged by the granted keep-alive period, not
the requested one (else a quiet, healthy subscription would be deleted and re-created again and again).

`last_sequence_number` is the last notification message the pipeline made durable (not merely received): after
a connection loss `resume` continues the subscription in the re-activated session and asks the server to
republish every message after it that it still holds (asyncua's own ``Subscription.restore`` /
``_republish_gaps`` counts a message as done once received, stops only on BadMessageNotAvailable, which
asyncua's server never sends (it answers an empty message, so the loop never ends), and starts asyncua's publish
loop before the gap is filled, so newer messages could overtake republished ones). ``on_durable`` hears of each
new value, before asyncua acknowledges the message, so what the collector writes down for a restarted gateway
never names a message the server may already have forgotten; `restored` rebuilds a subscription that an earlier
process created, for `resume`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from asyncua import Client, ua
from asyncua.common.subscription import Subscription, SubscriptionEvent
from asyncua.ua.uaerrors import BadMessageNotAvailable

from collectors.opcua.config import Config, NodeConfig

log = logging.getLogger(__name__)


class _QuietRepublishEnd(logging.Filter):
    """asyncua logs every ServiceFault at WARNING; BadMessageNotAvailable answering a Republish is how a server says
    it holds no more messages, which `BatchSubscription.resume` may ask for on purpose: not worth a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("BadMessageNotAvailable" in text and "RepublishRequest" in text)


logging.getLogger("asyncua.client.ua_client.UASocketProtocol").addFilter(_QuietRepublishEnd())

# (client handle -> data values) and status changes, handed to the collector per publish response; on_data
# returns whether the batch is durable (False: refused, the collector is dropping the connection).
OnData = Callable[[list[ua.MonitoredItemNotification]], Awaitable[bool]]
OnStatus = Callable[[ua.StatusCode], None]


@dataclass(slots=True)
class ItemFailure:
    tag: str
    node_id: str
    status: str  # status code name, e.g. BadNodeIdUnknown


@dataclass(slots=True)
class ItemRevision:
    """A monitored item the server created with less than was asked: sampled slower, or a smaller queue."""

    tag: str
    node_id: str
    sampling_interval_ms: tuple[float, float]  # (asked, granted)
    queue_size: tuple[int, int]  # (asked, granted)


OnFailures = Callable[[list[ItemFailure]], None]
OnDurable = Callable[[int], None]
Item = tuple[NodeConfig, ua.MonitoredItemCreateRequest]


class BatchSubscription(Subscription):
    def __init__(self, client: Client, params: ua.CreateSubscriptionParameters, *, on_data: OnData,
                 on_status: OnStatus, on_failures: OnFailures | None = None, on_durable: OnDurable | None = None,
                 name: str = "opcua") -> None:
        # handler=None puts the base class in iterator mode; its queue stays unused.
        super().__init__(client.uaclient.session, params, None, queue_maxsize=1)
        self._on_data = on_data
        self._on_status = on_status
        self._on_failures = on_failures
        self._on_durable = on_durable
        self.name = name
        self._busy = False
        self.items: list[Item] = []  # the created items, for recreate()
        self.failures: list[ItemFailure] = []  # items the server refused at the last recreate()
        self.revisions: list[ItemRevision] = []  # items granted less than asked at the last creation
        self.per_call = 500
        self.recreated = 0
        self.missed = 0  # notification messages the server no longer had (sequence-number gaps)
        # What the server granted (CreateSubscription's Revised* values): it publishes, and sends keep-alives,
        # at these, not at what was asked for.
        self.revised: ua.CreateSubscriptionResult | None = None

    @classmethod
    def restored(cls, client: Client, params: ua.CreateSubscriptionParameters, granted: ua.CreateSubscriptionResult,
                 last_sequence_number: int | None, **kw) -> BatchSubscription:
        """The subscription ``granted`` (id and Revised* values) that an earlier process created, ``client`` holding
        its session; ``last_sequence_number`` is the last message that process made durable. `resume` continues it.
        """
        sub = cls(client, params, **kw)
        sub.subscription_id = granted.SubscriptionId
        sub.revised = granted
        sub.last_sequence_number = last_sequence_number
        return sub

    async def _create(self, event: SubscriptionEvent) -> ua.CreateSubscriptionResult:
        result = await super()._create(event)
        asked = self.parameters
        if self.revised is None and (result.RevisedPublishingInterval, result.RevisedMaxKeepAliveCount) != (
                asked.RequestedPublishingInterval, asked.RequestedMaxKeepAliveCount):
            log.info("%s: the server revised the subscription's publishing interval %g -> %g ms and keep-alive "
                     "count %d -> %d (lifetime count %d)", self.name, asked.RequestedPublishingInterval,
                     result.RevisedPublishingInterval, asked.RequestedMaxKeepAliveCount,
                     result.RevisedMaxKeepAliveCount, result.RevisedLifetimeCount,
                     extra={"event": "opcua_subscription_revised", "collector": self.name})
        self.revised = result
        return result

    def stale_after_s(self, margin: float) -> float:
        """How long without a publish response (data or keep-alive) until the subscription counts as dead:
        ``margin`` x the server's keep-alive period (revised interval x revised count), at least 1 s."""
        granted, asked = self.revised, self.parameters
        interval_ms = granted.RevisedPublishingInterval if granted and granted.RevisedPublishingInterval > 0 \
            else asked.RequestedPublishingInterval
        keepalive = granted.RevisedMaxKeepAliveCount if granted and granted.RevisedMaxKeepAliveCount > 0 \
            else asked.RequestedMaxKeepAliveCount
        return max(interval_ms / 1000.0 * max(int(keepalive or 1), 1) * margin, 1.0)

    def is_stale(self, margin: float) -> bool:
        # While the pipeline holds a batch (back-pressure) no publish can arrive: slow, not dead.
        # Without this, asyncua's watchdog would delete and re-create a healthy subscription.
        if self._busy or self._deleted or self.subscription_id is None or self.last_publish_at is None:
            return False
        return time.monotonic() - self.last_publish_at >= self.stale_after_s(margin)

    async def create_items(self, items: Sequence[Item], per_call: int) -> tuple[list[Item], list[ItemFailure]]:
        """Create monitored items ``per_call`` at a time; one bad node never fails the others.

        Servers cap the items per request (thousands in one call is a known failure of other
        gateways), so large tag lists go in slices. Returns the items created and those the server refused;
        `revisions` lists the created items the server granted less than asked (a slower sampling interval, a
        smaller queue: what a cut or a restart can lose depends on it).
        """
        failures: list[ItemFailure] = []
        created: list[Item] = []
        revisions: list[ItemRevision] = []
        for start in range(0, len(items), per_call):
            chunk = items[start:start + per_call]
            # The service itself rather than Subscription.create_monitored_items, which keeps only the item ids:
            # the Revised* values are in the results. The base class's item table is not used (publish_callback
            # and recreate are this class's own).
            params = ua.CreateMonitoredItemsParameters(SubscriptionId=self.subscription_id,
                                                       ItemsToCreate=[r for _, r in chunk],
                                                       TimestampsToReturn=ua.TimestampsToReturn.Both)
            results = await self.server.create_monitored_items(params)
            for item, result in zip(chunk, results, strict=True):
                if not result.StatusCode.is_good():
                    failures.append(ItemFailure(item[0].tag, item[0].node_id, result.StatusCode.name))
                    continue
                created.append(item)
                asked = item[1].RequestedParameters
                # Asked 0: the fastest rate / the server's queue, whatever it grants. A bigger queue or a faster
                # sampling than asked loses nothing.
                slower = 0 < asked.SamplingInterval < result.RevisedSamplingInterval
                smaller = 0 < result.RevisedQueueSize < asked.QueueSize
                if slower or smaller:
                    revisions.append(ItemRevision(item[0].tag, item[0].node_id,
                                                  (asked.SamplingInterval, result.RevisedSamplingInterval),
                                                  (asked.QueueSize, result.RevisedQueueSize)))
        self.revisions = revisions
        return created, failures

    async def recreate(self) -> None:
        """Replace a subscription the server stopped serving (asyncua's stale-subscription watchdog).

        asyncua's own version re-sends the items with DiscardOldest forced on; this one re-sends
        the original requests (deadband, queue size, discard policy), in slices like the first time,
        and reports the items the server refuses now (`failures`, ``on_failures``).
        """
        if self._deleted:
            return
        self.recreated += 1
        old = self.subscription_id
        self.subscription_id = None
        self.last_sequence_number = None  # a new subscription numbers its messages from 1
        self._monitored_items.clear()
        self.last_publish_at = time.monotonic()
        session = self.server
        if old is not None:
            session._subscription_callbacks.pop(old, None)
            try:
                await session.delete_subscriptions([old])
            except Exception as exc:  # the server may have dropped it already
                log.debug("%s: deleting stale subscription %s before re-creating it failed (%s: %s); the server "
                          "may have dropped it already", self.name, old, type(exc).__name__, exc)
        await self._create(SubscriptionEvent.RECREATED)
        _, self.failures = await self.create_items(self.items, self.per_call)
        if self._on_failures is not None:
            self._on_failures(self.failures)
        self.last_publish_at = time.monotonic()

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        # Same bookkeeping as the base class (the watchdog reads last_publish_at), without exploding the message
        # into one object per value.
        self.last_publish_at = time.monotonic()
        if not await self._handle(publish_result.NotificationMessage, publish_result.SubscriptionId):
            # Not durable (the pipeline refused it; the collector drops the connection): never return, so asyncua's
            # publish loop does not acknowledge the message and the server keeps it for Republish once the session
            # is resumed. The collector's teardown cancels this task.
            await asyncio.Event().wait()

    async def _handle(self, message: ua.NotificationMessage, subscription: int | None = None) -> bool:
        """Hand one notification message (of ``subscription``, by default this one) to the collector; True once
        durable (``last_sequence_number`` then names it). A keep-alive (no data) carries the *next* sequence number
        and is not counted."""
        if not message.NotificationData:
            return True
        subscription = self.subscription_id if subscription is None else subscription
        seq = int(message.SequenceNumber)
        last = self.last_sequence_number
        if seq and last is not None and seq > last + 1:
            self.missed += seq - last - 1
            log.warning("%s: %d notification messages of subscription %s are lost (the server no longer held "
                        "sequence numbers %d-%d)", self.name, seq - last - 1, self.subscription_id, last + 1,
                        seq - 1, extra={"event": "opcua_messages_lost", "collector": self.name})
        items: list[ua.MonitoredItemNotification] = []
        for notification in message.NotificationData:
            if isinstance(notification, ua.DataChangeNotification):
                items.extend(notification.MonitoredItems)
            elif isinstance(notification, ua.StatusChangeNotification):
                self._on_status(notification.Status)
        if items:
            self._busy = True
            try:
                if not await self._on_data(items):
                    return False
            finally:
                self._busy = False
                self.last_publish_at = time.monotonic()
        if seq and subscription == self.subscription_id:
            # 0: asyncua's own status message on a lost connection, not from the server. A message of a subscription
            # re-created while it was handed on (behind a backfill) numbers the old one's messages, not the new one's.
            self.last_sequence_number = seq
            if self._on_durable is not None:
                self._on_durable(seq)
        return True

    async def resume(self) -> int:
        """Continue this subscription in the session just re-activated on a new channel; the number of
        notification messages republished.

        TransferSubscriptions (to the same session; SendInitialValues false) re-binds it and gives the sequence
        numbers the server still holds unacknowledged; each one after the last durable message is fetched with
        Republish, in order, and handed over like a publish response. A server that answers BadNothingToDo (the
        subscription is in this session already; node-opcua) gives no list: the messages after the last durable
        one are asked for in turn until it has no more (BadMessageNotAvailable), as OPC UA Part 4 §6.7 has a
        client do after re-activating its session. Only then does asyncua's publish loop start again, so what the
        server queued during the outage follows in order. Raises `ua.UaStatusCodeError` (BadSubscriptionIdInvalid
        ...) when the server no longer has the subscription.
        """
        session = self.server
        params = ua.TransferSubscriptionsParameters(SubscriptionIds=[self.subscription_id], SendInitialValues=False)
        results = await session.transfer_subscriptions(params)
        if not results:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadSubscriptionIdInvalid)
        in_session = results[0].StatusCode.value == ua.StatusCodes.BadNothingToDo
        if not in_session:
            results[0].StatusCode.check()
        session._subscription_callbacks[self.subscription_id] = self.publish_callback
        last = self.last_sequence_number or 0
        wanted = itertools.count(last + 1) if in_session else \
            iter(sorted(n for n in results[0].AvailableSequenceNumbers if n > last))
        republished = 0
        for seq in wanted:
            try:
                message = await session.republish(self.subscription_id, seq)
            except BadMessageNotAvailable:
                if in_session:
                    break  # the last one it holds
                continue  # counted as a gap by the next message
            if int(message.SequenceNumber) != seq:  # asyncua's server answers an empty message instead
                if in_session:
                    break
                continue
            if not await self._handle(message):
                raise ConnectionError("the pipeline refused a republished notification")
            republished += 1
        self.last_publish_at = time.monotonic()
        session.ensure_publish_loop()
        return republished


def subscription_parameters(cfg: Config) -> ua.CreateSubscriptionParameters:
    params = ua.CreateSubscriptionParameters()
    params.RequestedPublishingInterval = cfg.publishing_interval_ms
    params.RequestedLifetimeCount = cfg.lifetime_count
    params.RequestedMaxKeepAliveCount = cfg.keepalive_count
    params.MaxNotificationsPerPublish = cfg.max_notifications_per_publish
    params.PublishingEnabled = True
    params.Priority = 0
    return params


def item_request(node: NodeConfig, cfg: Config, handle: int, eu_range: tuple[float, float] | None = None, *,
                 node_id: ua.NodeId | None = None) -> ua.MonitoredItemCreateRequest:
    """A Value monitored item for ``node`` with the collector's defaults filled in; ``node_id``: the node as the
    session's server numbers it (`NodeConfig.resolve`), by default the configured ``ns=`` id.

    A percent deadband is sent as the absolute deadband it stands for, ``percent/100 * (high - low)``
    of the node's EURange (OPC UA Part 8's definition): servers that do not implement percent
    deadbands (asyncua's ignores them) then filter correctly, and those that do filter the same.
    """
    rv = ua.ReadValueId()
    rv.NodeId = node_id if node_id is not None else node.resolve(None)
    rv.AttributeId = ua.AttributeIds.Value
    mp = ua.MonitoringParameters()
    mp.ClientHandle = handle
    mp.SamplingInterval = node.sampling_interval_ms if node.sampling_interval_ms is not None \
        else cfg.sampling_interval_ms
    mp.QueueSize = node.queue_size if node.queue_size is not None else cfg.queue_size
    mp.DiscardOldest = node.discard_oldest if node.discard_oldest is not None else cfg.discard_oldest
    if node.deadband is not None:
        flt = ua.DataChangeFilter()
        flt.Trigger = ua.DataChangeTrigger.StatusValue
        flt.DeadbandType = ua.DeadbandType.Absolute
        if node.deadband_type == "percent":
            if eu_range is None:
                raise ValueError("percent deadband without an EURange")
            flt.DeadbandValue = node.deadband / 100.0 * abs(eu_range[1] - eu_range[0])
        else:
            flt.DeadbandValue = node.deadband
        mp.Filter = flt
    mir = ua.MonitoredItemCreateRequest()
    mir.ItemToMonitor = rv
    mir.MonitoringMode = ua.MonitoringMode.Reporting
    mir.RequestedParameters = mp
    return mir


async def eu_ranges(client: Client, node_ids: Sequence[ua.NodeId], per_call: int) -> list[tuple[float, float] | None]:
    """The EURange (low, high) property of each node, None where it has none; ``per_call`` per request."""
    out: list[tuple[float, float] | None] = []
    for start in range(0, len(node_ids), per_call):
        chunk = node_ids[start:start + per_call]
        paths = []
        for nid in chunk:
            bp = ua.BrowsePath()
            bp.StartingNode = nid
            el = ua.RelativePathElement()
            el.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasProperty)
            el.IsInverse = False
            el.IncludeSubtypes = True
            el.TargetName = ua.QualifiedName("EURange", 0)
            bp.RelativePath = ua.RelativePath(Elements=[el])
            paths.append(bp)
        results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        found = [(i, r.Targets[0].TargetId) for i, r in enumerate(results) if r.StatusCode.is_good() and r.Targets]
        ranges: list[tuple[float, float] | None] = [None] * len(chunk)
        if found:
            params = ua.ReadParameters()
            for _, target in found:
                rv = ua.ReadValueId()
                rv.NodeId = ua.NodeId(target.Identifier, target.NamespaceIndex)
                rv.AttributeId = ua.AttributeIds.Value
                params.NodesToRead.append(rv)
            values = await client.uaclient.read(params)
            for (i, _), dv in zip(found, values, strict=True):
                v = dv.Value.Value if dv.Value is not None else None
                if isinstance(v, ua.Range) and v.High > v.Low:
                    ranges[i] = (float(v.Low), float(v.High))
        out.extend(ranges)
    return out
