"""The streams worker: a Faust application with two agents and two changelog-backed tables.

``workers`` agent: reads ``eshram.worker-registry.v1`` and ``eshram.location-changes.v1``
(co-partitioned by uan; checked at start) as raw bytes, decodes with ``AvroCodec`` (not Faust's
serializers), keeps one ``WorkerView`` per uan in the ``workers`` table, publishes each change
to the state topics rule 10 names (``streams.processor``), and sends the partial migration
flows of its partition to the internal ``<app id>-flow-partials`` topic, keyed by flow pair.

``flow_ledgers`` agent: reads the partials (co-partitioned with the ``flow_pairs`` table by
pair), keeps one ``PairLedger`` per pair and publishes each ``MigrationFlow`` whose figures
changed to ``eshram.migration-flows.v1`` (``streams.flows`` has the definitions).

Delivery: at least once. Faust flushes the producer before it commits offsets; after a crash
the uncommitted messages are processed again. Both tables hold assignments, not increments
(a view is a set of changes with their status, a ledger holds absolute partial sums), and the
in-memory partial sums are rebuilt from the recovered ``workers`` table after every
rebalance: replays neither lose nor double count. State topics may see a change twice;
consumers drop duplicates by ``event_id``, as for every topic of the contract. After table
recovery the input partitions are sought to their committed offsets before they are resumed
(``streams.recovery``), so a restarted worker reads again everything not yet committed.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import structlog
from aiohttp import web

from eshram_locator.avro_codec import AvroCodec
from eshram_locator.domain.model import District, LocationChanged, MigrationFlow
from eshram_locator.intake import RawMessage
from eshram_locator.kafka.clients import SCRAM_MECHANISM, KafkaCredentials
from eshram_locator.records import MIGRATION_FLOW, migration_flow_to_avro
from eshram_locator.topics import TopicNames
from streams.flows import (
    PairLedger,
    PartitionFlows,
    contributions,
    flow_key,
    pair_key,
    pairs_to_send,
    parse_pair,
    partials_from_json,
    partials_to_json,
)
from streams.processor import Output, Processor
from streams.projection import StateProjection
from streams.recovery import StreamsTableManager
from streams.residents import Residents
from streams.worker_view import WorkerView

log = structlog.get_logger(__name__)

WORKERS_TABLE = "workers"
FLOW_PAIRS_TABLE = "flow_pairs"
FLOW_PARTIALS_SUFFIX = "-flow-partials"


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    app_id: str  # consumer group and prefix of the changelog and internal topics
    bootstrap_servers: str
    names: TopicNames
    partitions: int  # of the registry and the location changes (co-partitioned)
    store: str  # "rocksdb://" in production, "memory://" in tests
    data_dir: Path
    replication_factor: int = 1
    projections: Mapping[int, StateProjection] = field(default_factory=dict)
    commit_interval_s: float = 1.0
    # A killed worker's partitions move after this long without heartbeats (Faust: 60 s).
    session_timeout_s: float = 10.0
    # SASL/SCRAM credentials of the streams principal (scram profile); None: plaintext.
    credentials: KafkaCredentials | None = field(default=None, repr=False)


class StreamsApp:
    """The Faust app with its agents and tables, and the read side the query API uses."""

    def __init__(self, config: StreamsConfig, codec: AvroCodec) -> None:
        self.config = config
        self.codec = codec
        self.processor = Processor(codec, config.names, dict(config.projections))
        self.partition_flows = PartitionFlows()
        self.residents = Residents()
        self.totals: dict[str, int] = {"messages": 0, "dead_lettered": 0, "shared": 0, "flows": 0}
        self.app = faust.App(
            config.app_id,
            broker=_broker_url(config.bootstrap_servers),
            store=config.store,
            datadir=str(config.data_dir),
            topic_partitions=config.partitions,
            topic_replication_factor=config.replication_factor,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
            broker_commit_interval=config.commit_interval_s,
            broker_session_timeout=config.session_timeout_s,
            broker_heartbeat_interval=min(3.0, config.session_timeout_s / 3),
            producer_acks=-1,
            # Seeks the input partitions before resuming them after recovery: faust 0.15.3's
            # own order drops re-fetched input after a restart (see streams.recovery).
            TableManager=StreamsTableManager,
            broker_credentials=_broker_credentials(config.credentials),
        )
        self.workers = self.app.Table(
            WORKERS_TABLE,
            default=None,
            partitions=config.partitions,
        )
        self.flow_pairs = self.app.Table(
            FLOW_PAIRS_TABLE,
            default=None,
            partitions=config.partitions,
        )
        names = config.names
        self.inputs = self.app.topic(
            names.registry,
            names.location_changes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.flow_partials = self.app.topic(
            config.app_id + FLOW_PARTIALS_SUFFIX,
            partitions=config.partitions,
            internal=True,
            key_serializer="raw",
            value_serializer="raw",
        )
        self._topics: dict[str, Any] = {}
        self.app.agent(self.inputs, name="workers")(self._workers_agent)
        self.app.agent(self.flow_partials, name="flow_ledgers")(self._flow_ledgers_agent)
        self.app.on_rebalance_complete.connect(self._on_rebalance_complete)

    # --- the read side (query API) ------------------------------------------------------------

    def worker(self, uan: str) -> WorkerView | None:
        data = self.workers.get(uan)
        return None if data is None else WorkerView.from_json(data)

    def flows(self, month: str) -> list[MigrationFlow]:
        out: list[MigrationFlow] = []
        for key, data in self.flow_pairs.items():
            pair = parse_pair(key.decode() if isinstance(key, bytes) else key)
            figures = PairLedger.from_json(data).published.get(month)
            if figures is not None:
                out.append(_flow(month, pair, figures))
        out.sort(
            key=lambda f: (f.from_state_lgd, f.from_district_lgd, f.to_state_lgd, f.to_district_lgd)
        )
        return out

    def residents_of(self, district: District, after: str | None, limit: int) -> list[WorkerView]:
        """Workers currently in ``district`` with uan > ``after`` (keyset pagination), or fewer."""
        views = []
        for uan in self.residents.page(district, after, limit):
            view = self.worker(uan)
            if view is not None:
                views.append(view)
        return views

    def serve_api(self, api: web.Application, host: str, port: int) -> None:
        """Serve ``api`` from the worker's event loop once the app starts."""

        async def serve() -> None:
            runner = web.AppRunner(api, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            log.info("api_listening", host=host, port=port)

        self.app.task(serve)

    # --- agents ------------------------------------------------------------------------------

    async def _workers_agent(self, stream: Any) -> None:
        async for event in stream.events():
            await self._work(event)
            # Faust commits an event's offset once the agent asks for the next one, without
            # waiting for what was sent meanwhile (changelog, partials, state topics): drain the
            # producer first, so a crash can only replay an event, never drop its effects.
            await self.app.producer.flush()

    async def _work(self, event: Any) -> None:
        message = event.message
        raw = RawMessage(
            message.topic,
            message.partition,
            message.offset,
            event.key,
            event.value,
            _headers(message.headers),
        )
        uan = (raw.key or b"").decode("utf-8", errors="replace")
        data = self.workers.get(uan) if raw.key else None
        old = None if data is None else WorkerView.from_json(data)
        outcome = self.processor.process(raw, old)
        self.totals["messages"] += 1
        # Changes released from hold are not re-derived on a replay (the stored view no
        # longer holds them): they must be acknowledged before the view is written.
        released = raw.topic == self.config.names.registry and bool(outcome.outputs)
        await self._send_all(outcome.outputs, acknowledged=released)
        if outcome.dead_lettered:
            self.totals["dead_lettered"] += 1
        else:
            self.totals["shared"] += len(outcome.outputs)
        if not outcome.store:
            return
        new = outcome.view
        if new is None:
            self.workers.pop(uan, None)
        else:
            self.workers[uan] = new.to_json()
        self.residents.update(old, new)
        await self._send_partials(raw.partition, old, new, outcome.change)

    async def _send_partials(
        self,
        partition: int,
        old: WorkerView | None,
        new: WorkerView | None,
        change: LocationChanged | None,
    ) -> None:
        before, after = contributions(old), contributions(new)
        self.partition_flows.apply(partition, before, after)
        # Every pair the worker touches, and every pair the change names, is re-sent (absolute
        # values), also when nothing changed: a replay after a crash then repairs partials that
        # were lost before being sent, retractions included.
        origin = next((view.origin for view in (new, old) if view is not None), None)
        pairs = pairs_to_send(before, after, origin, change)
        for pair, months in sorted(self.partition_flows.partials(partition, pairs).items()):
            body = json.dumps(partials_to_json(partition, months), sort_keys=True).encode()
            await self.flow_partials.send(key=pair_key(pair).encode(), value=body)

    async def _flow_ledgers_agent(self, stream: Any) -> None:
        async for event in stream.events():
            key = (event.key or b"").decode("utf-8", errors="replace")
            try:
                pair = parse_pair(key)
                partition, months = partials_from_json(json.loads(event.value))
            except (ValueError, KeyError, TypeError):
                log.error("flow_partials_unreadable", offset=event.message.offset)
                continue
            ledger = PairLedger.from_json(self.flow_pairs.get(key)).with_partials(partition, months)
            ledger, changed = ledger.publish(pair)
            # The ledger remembers what it published: the flows must be acknowledged before
            # that memory is written, or a crash in between would lose them for good.
            await self._send_all(
                [
                    Output(
                        self.config.names.migration_flows,
                        flow_key(flow.month, pair).encode(),
                        self.codec.encode(
                            MIGRATION_FLOW,
                            migration_flow_to_avro(flow),
                            topic=self.config.names.migration_flows,
                        ),
                    )
                    for flow in changed
                ],
                acknowledged=True,
            )
            self.totals["flows"] += len(changed)
            self.flow_pairs[key] = ledger.to_json()
            await self.app.producer.flush()  # the ledger's changelog, before the offset commits

    async def _send_all(self, outputs: Iterable[Output], *, acknowledged: bool) -> None:
        """Send ``outputs``; with ``acknowledged``, return only once the broker has them all."""
        pending = [await self._send(output) for output in outputs]
        if acknowledged:
            for delivery in pending:
                await delivery

    async def _send(self, output: Output) -> Any:
        """Hand ``output`` to the producer; returns the future of its delivery."""
        topic = self._topics.get(output.topic)
        if topic is None:
            topic = self.app.topic(output.topic, key_serializer="raw", value_serializer="raw")
            self._topics[output.topic] = topic
        return await topic.send(key=output.key, value=output.value, headers=list(output.headers))

    async def _on_rebalance_complete(
        self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        """Tables are recovered: derive the in-memory partial sums and the residents index."""
        views = list(self._views())
        self.partition_flows.rebuild(views)
        self.residents.rebuild(views)
        log.info("local_state_rebuilt", workers=len(views))

    def _views(self) -> Iterator[WorkerView]:
        for data in self.workers.values():
            if data is not None:
                yield WorkerView.from_json(data)


def _flow(month: str, pair: tuple[District, District], figures: tuple[int, int]) -> MigrationFlow:
    return MigrationFlow(
        month=month,
        from_state_lgd=pair[0].state_lgd,
        from_district_lgd=pair[0].district_lgd,
        to_state_lgd=pair[1].state_lgd,
        to_district_lgd=pair[1].district_lgd,
        workers=figures[0],
        moves_in=figures[1],
    )


def _broker_credentials(credentials: KafkaCredentials | None) -> faust.SASLCredentials | None:
    """aiokafka's SASL settings for Faust (SASL_SSL when the credentials name a CA file)."""
    if credentials is None:
        return None
    context = (
        ssl.create_default_context(cafile=str(credentials.ca_file))
        if credentials.ca_file is not None
        else None
    )
    return faust.SASLCredentials(
        username=credentials.username,
        password=credentials.password.get_secret_value(),
        mechanism=SCRAM_MECHANISM,
        ssl_context=context,
    )


def _broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(","))


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(name), bytes(value or b"")) for name, value in items)
