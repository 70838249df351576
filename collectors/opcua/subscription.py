"""An asyncua subscription that hands over whole publish responses, and batched item creation.

asyncua 2.1.0 delivers data changes either to a handler (one asyncio task per value) or to an
iterator queue that drops the oldest values when full. Neither suits a gateway: a task per value
is slow at thousands of values per second, and silent dropping loses data. `BatchSubscription`
overrides `publish_callback` (which asyncua's publish loop awaits before it acknowledges the
message and asks for the next one) so one publish response becomes one `Batch`, and a slow
pipeline slows the publish loop down instead of losing values: the server then queues them
(per-item ``queue_size``) as OPC UA intends.

The class stays a real `asyncua.common.subscription.Subscription`, so asyncua's own
stale-subscription watchdog and `recreate()` keep working with it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from asyncua import Client, ua
from asyncua.common.subscription import Subscription, SubscriptionEvent

from collectors.opcua.config import Config, NodeConfig

# (client handle -> data values) and status changes, handed to the collector per publish response.
OnData = Callable[[list[ua.MonitoredItemNotification]], Awaitable[None]]
OnStatus = Callable[[ua.StatusCode], None]


class BatchSubscription(Subscription):
    def __init__(self, client: Client, params: ua.CreateSubscriptionParameters, *, on_data: OnData,
                 on_status: OnStatus) -> None:
        # handler=None puts the base class in iterator mode; its queue stays unused.
        super().__init__(client.uaclient.session, params, None, queue_maxsize=1)
        self._on_data = on_data
        self._on_status = on_status
        self._busy = False
        self.requests: list[ua.MonitoredItemCreateRequest] = []  # the created items, for recreate()
        self.per_call = 500
        self.recreated = 0

    def is_stale(self, margin: float) -> bool:
        # While the pipeline holds a batch (back-pressure) no publish can arrive: slow, not dead.
        # Without this, asyncua's watchdog would delete and re-create a healthy subscription.
        return not self._busy and super().is_stale(margin)

    async def recreate(self) -> None:
        """Replace a subscription the server stopped serving (asyncua's stale-subscription watchdog).

        asyncua's own version re-sends the items with DiscardOldest forced on; this one re-sends
        the original requests (deadband, queue size, discard policy), in slices like the first time.
        """
        if self._deleted:
            return
        self.recreated += 1
        old = self.subscription_id
        self.subscription_id = None
        self._monitored_items.clear()
        self.last_publish_at = time.monotonic()
        session = self.server
        if old is not None:
            session._subscription_callbacks.pop(old, None)
            try:
                await session.delete_subscriptions([old])
            except Exception:  # the server may have dropped it already
                pass
        await self._create(SubscriptionEvent.RECREATED)
        for start in range(0, len(self.requests), self.per_call):
            params = ua.CreateMonitoredItemsParameters()
            params.SubscriptionId = self.subscription_id
            params.ItemsToCreate = self.requests[start:start + self.per_call]
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            await session.create_monitored_items(params)
        self.last_publish_at = time.monotonic()

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        # Same bookkeeping as the base class (the watchdog reads last_publish_at; republish uses
        # the sequence number), without exploding the message into one object per value.
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        if message.NotificationData is None:
            return
        self.last_sequence_number = int(message.SequenceNumber)
        items: list[ua.MonitoredItemNotification] = []
        for notification in message.NotificationData:
            if isinstance(notification, ua.DataChangeNotification):
                items.extend(notification.MonitoredItems)
            elif isinstance(notification, ua.StatusChangeNotification):
                self._on_status(notification.Status)
        if items:
            self._busy = True
            try:
                await self._on_data(items)
            finally:
                self._busy = False
                self.last_publish_at = time.monotonic()


def subscription_parameters(cfg: Config) -> ua.CreateSubscriptionParameters:
    params = ua.CreateSubscriptionParameters()
    params.RequestedPublishingInterval = cfg.publishing_interval_ms
    params.RequestedLifetimeCount = cfg.lifetime_count
    params.RequestedMaxKeepAliveCount = cfg.keepalive_count
    params.MaxNotificationsPerPublish = cfg.max_notifications_per_publish
    params.PublishingEnabled = True
    params.Priority = 0
    return params


def item_request(node: NodeConfig, cfg: Config, handle: int,
                 eu_range: tuple[float, float] | None = None) -> ua.MonitoredItemCreateRequest:
    """A Value monitored item for ``node`` with the collector's defaults filled in.

    A percent deadband is sent as the absolute deadband it stands for, ``percent/100 * (high - low)``
    of the node's EURange (OPC UA Part 8's definition): servers that do not implement percent
    deadbands (asyncua's ignores them) then filter correctly, and those that do filter the same.
    """
    rv = ua.ReadValueId()
    rv.NodeId = ua.NodeId.from_string(node.node_id)
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


@dataclass(slots=True)
class ItemFailure:
    tag: str
    node_id: str
    status: str  # status code name, e.g. BadNodeIdUnknown


async def create_items(sub: Subscription, requests: Sequence[tuple[NodeConfig, ua.MonitoredItemCreateRequest]],
                       per_call: int) -> list[ItemFailure]:
    """Create monitored items ``per_call`` at a time; one bad node never fails the others.

    Servers cap the items per request (thousands in one call is a known failure of other
    gateways), so large tag lists go in slices. Returns the items the server refused.
    """
    failures: list[ItemFailure] = []
    created: list[ua.MonitoredItemCreateRequest] = []
    for start in range(0, len(requests), per_call):
        chunk = requests[start:start + per_call]
        results = await sub.create_monitored_items([r for _, r in chunk])
        for (node, request), result in zip(chunk, results, strict=True):
            if isinstance(result, ua.StatusCode):
                failures.append(ItemFailure(node.tag, node.node_id, result.name))
            else:
                created.append(request)
    if isinstance(sub, BatchSubscription):
        sub.requests, sub.per_call = created, per_call
    return failures


async def eu_ranges(client: Client, node_ids: Sequence[str], per_call: int) -> list[tuple[float, float] | None]:
    """The EURange (low, high) property of each node, None where it has none; ``per_call`` per request."""
    out: list[tuple[float, float] | None] = []
    for start in range(0, len(node_ids), per_call):
        chunk = node_ids[start:start + per_call]
        paths = []
        for nid in chunk:
            bp = ua.BrowsePath()
            bp.StartingNode = ua.NodeId.from_string(nid)
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
