"""The simulator process: the plant model on a clock, feeding an OPC UA server and MQTT.

Time: every ``interval_s`` of real time the plant advances ``interval_s * speed`` simulated
seconds. Source timestamps are either the real time of the tick (``timestamps="wall"``, the
default: a faster-than-life plant stamped with the present) or ``start + simulated time``
(``timestamps="sim"``, e.g. to replay a year of data into the past). A tick that falls behind
is not replayed twice: the next one integrates the whole elapsed time.

Test API: ``Simulator(options)``, ``await start()``, ``inject("P-101:bearing")``, ``await tick()``
(advance one step without waiting), ``on_samples`` (a hook seeing every published value),
``await stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from collectors.simulator import DEFAULT_ENDPOINT
from collectors.simulator.faults import Fault
from collectors.simulator.opcua_server import SimOpcUaServer
from collectors.simulator.plant import Plant, PlantConfig, Sample
from collectors.simulator.replay import CsvReplay, ReplaySpec
from collectors.simulator.synthetic import SyntheticSignals
from collectors.simulator.tags import TagSpec
from edge.timeouts import within

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SimOptions:
    seed: int = 1
    interval_s: float = 1.0  # real seconds between plant steps
    speed: float = 1.0  # simulated seconds per real second
    timestamps: str = "wall"  # wall | sim
    start: datetime | None = None  # origin of simulated time (default: now)
    faults: list[str | Fault] = field(default_factory=list)
    opcua_endpoint: str | None = DEFAULT_ENDPOINT  # None: no OPC UA server
    # Keyword arguments for SimOpcUaServer's security (certificate, private_key, policies, trusted_clients).
    opcua_security: dict = field(default_factory=dict)
    mqtt: object | None = None  # collectors.simulator.mqtt_publisher.MqttOptions; None: no MQTT
    synthetic_tags: int = 0
    synthetic_interval_s: float | None = None  # default: interval_s
    replay: ReplaySpec | None = None
    duration_s: float | None = None  # real seconds, then stop


OnSamples = Callable[[datetime, list[Sample]], None]


class Simulator:
    def __init__(self, options: SimOptions | None = None, *, plant: Plant | None = None) -> None:
        self.options = opts = options or SimOptions()
        if opts.timestamps not in ("wall", "sim"):
            raise ValueError("timestamps must be 'wall' or 'sim'")
        if opts.interval_s <= 0 or opts.speed <= 0:
            raise ValueError("interval_s and speed must be positive")
        self.replay = CsvReplay(opts.replay) if opts.replay else None
        # A replay with a time column, stamped with simulated time, starts at its first row's time: the file's stamps.
        replay_start = self.replay.first_time if self.replay and opts.timestamps == "sim" else None
        # The plant's daily cycles (boiler load peaking at 14:00, ambient at 15:00) run from the given start's time
        # of day: --start was taken for the stamps only, so a plant replayed from 14:00 showed its night-time load
        # (50 % for 87 %) stamped 14:00. Without one, the plant's own midnight (the same plant whenever it runs).
        self._start = opts.start or replay_start
        pcfg = PlantConfig(seed=opts.seed) if self._start is None else PlantConfig(seed=opts.seed, start=self._start)
        self.plant = plant or Plant(pcfg, faults=list(opts.faults))
        self._replay_tags = frozenset(self.replay.tags) if self.replay else frozenset()
        self.synthetic = SyntheticSignals(opts.synthetic_tags, opts.seed) if opts.synthetic_tags else None
        self.tags: list[TagSpec] = self._tag_specs()
        self.opcua: SimOpcUaServer | None = None
        if opts.opcua_endpoint:
            self.opcua = SimOpcUaServer(self.tags, opts.opcua_endpoint, **opts.opcua_security)
        self.mqtt = None
        if opts.mqtt is not None:
            from collectors.simulator.mqtt_publisher import MqttPublisher

            self.mqtt = MqttPublisher(opts.mqtt, self.tags)
        self.on_samples: OnSamples | None = None
        self.steps = 0
        self.sim_s = 0.0
        self._origin_wall: datetime | None = None
        self._origin_sim: datetime | None = None

    def _tag_specs(self) -> list[TagSpec]:
        specs = {t.name: t for t in self.plant.tags}
        if self.replay:
            for tag in self.replay.tags:
                specs.setdefault(tag, TagSpec(tag, tag.split(".", 1)[0] if "." in tag else "REPLAY", "",
                                              f"replayed from {self.replay.spec.path.name}", -1e9, 1e9))
        out = list(specs.values())
        if self.synthetic:
            out += self.synthetic.specs
        return out

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        now = datetime.now(UTC)
        self._origin_wall = now
        self._origin_sim = self._start or now
        if self.opcua:
            await self.opcua.start()
        if self.mqtt:
            await self.mqtt.start()
        # Every tag has a value from the first moment a client connects.
        await self.tick(0.0)

    async def stop(self) -> None:
        if self.mqtt:
            await self.mqtt.stop()
        if self.opcua:
            await self.opcua.stop()
        if self.replay:
            self.replay.close()

    def inject(self, fault: str | Fault) -> Fault:
        """Inject a fault starting now (simulated time) unless it says otherwise."""
        return self.plant.inject(fault, from_now=True)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Tick until ``stop`` is set or ``duration_s`` has passed (start() first)."""
        opts = self.options
        stop = stop or asyncio.Event()
        tasks = [asyncio.create_task(self._plant_loop(stop))]
        if self.synthetic:
            tasks.append(asyncio.create_task(self._synthetic_loop(stop)))
        try:
            if opts.duration_s is not None:
                try:
                    await within(stop.wait(), opts.duration_s)
                except TimeoutError:
                    stop.set()
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _plant_loop(self, stop: asyncio.Event) -> None:
        interval = self.options.interval_s
        t0 = time.monotonic()
        done = 0
        while not stop.is_set():
            due = int((time.monotonic() - t0) / interval)
            if due > done:
                await self.tick((due - done) * interval * self.options.speed)
                done = due
            delay = t0 + (done + 1) * interval - time.monotonic()
            if delay > 0:
                try:
                    await within(stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # behind: the next tick integrates the lost time; let others run

    async def _synthetic_loop(self, stop: asyncio.Event) -> None:
        assert self.synthetic is not None
        interval = self.options.synthetic_interval_s or self.options.interval_s
        names = self.synthetic.names
        t0 = time.monotonic()
        k = 0
        warned = False
        while not stop.is_set():
            k += 1
            delay = t0 + k * interval - time.monotonic()
            if delay > 0:
                try:
                    await within(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            else:
                # Behind schedule: skip the missed updates rather than queueing them, and let others run.
                behind = int(-delay / interval)
                if behind and not warned:
                    log.warning("writing %d synthetic values takes longer than --tags-interval %g s; "
                                "updates are skipped to keep up", len(names), interval)
                    warned = True
                k += behind
                await asyncio.sleep(0)
            t_s = (time.monotonic() - t0) * self.options.speed
            # Stamped with the plant's last step, every synthetic update between two steps (--tags-interval shorter
            # than --interval) had the same source time: duplicates a store keeps one of.
            ts = self._stamp(t_s) if self.options.timestamps == "sim" else datetime.now(UTC)
            samples = [Sample(n, v) for n, v in zip(names, self.synthetic.values(t_s), strict=True)]
            await self._publish(ts, samples)

    # -- one step --------------------------------------------------------------------------------------

    def _stamp(self, sim_s: float) -> datetime:
        """Source timestamp of simulated time ``sim_s`` (see the module docstring)."""
        assert self._origin_wall is not None and self._origin_sim is not None
        if self.options.timestamps == "sim":
            return self._origin_sim + timedelta(seconds=sim_s)
        return self._origin_wall + timedelta(seconds=sim_s / self.options.speed)

    async def tick(self, dt_s: float | None = None) -> None:
        """Advance the plant (and the replay) by ``dt_s`` simulated seconds and publish the values."""
        if self._origin_wall is None:
            raise RuntimeError("start() the simulator first")
        dt = self.options.interval_s * self.options.speed if dt_s is None else dt_s
        self.sim_s += dt
        replayed = self.replay.advance(dt) if self.replay else []
        samples = self.plant.step(dt)
        if self._replay_tags:  # a replayed column replaces the model's signal of the same name
            samples = [s for s in samples if s.tag not in self._replay_tags]
        self.steps += 1
        for row_s, row in replayed:  # replay and plant share simulated time 0
            await self._publish(self._stamp(row_s), row)
        await self._publish(self._stamp(self.sim_s), samples)

    async def _publish(self, ts: datetime, samples: list[Sample]) -> None:
        if self.on_samples is not None:
            self.on_samples(ts, samples)
        if self.opcua:
            await self.opcua.write(samples, ts, datetime.now(UTC))
        if self.mqtt:
            await self.mqtt.publish(ts, samples)
