"""Speed of the locator's batch decoding alone (``LocatorProcess._read``, the main thread's
work per batch): simulated collections, encoded as producers encode them, wrapped in
``confluent_kafka.Message``; no Kafka, no PostgreSQL.

    python bench/read_speed.py [--messages 200000] [--batch 10000] [--partitions 12]
                               [--repeat 7] [--per-message] [--interleaved]

Prints one JSON object: microseconds per message over all the batches, each of ``--repeat``
runs in wall clock and in process CPU time (less sensitive to a busy machine), and their
medians. ``--per-message`` reads without the compiled batch reader (the compiled readers one
message at a time, as before it). A batch holds its messages partition by partition, as
librdkafka hands out what it fetched; ``--interleaved`` mixes the partitions instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import zlib
from datetime import timedelta
from pathlib import Path

from confluent_kafka import Message

from consumers.locator import LocatorConfig, LocatorProcess, tune_collector
from eshram_locator.avro_codec import load_codec
from eshram_locator.records import to_avro
from eshram_locator.simulator.config import SimulationConfig
from eshram_locator.simulator.population import simulate
from eshram_locator.topics import COLLECTIONS, TopicNames

AVRO_DIR = Path(__file__).resolve().parents[1] / "avro"


def main() -> None:
    parser = argparse.ArgumentParser(description="Speed of the locator's batch decoding.")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--workers", type=int, default=20_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--per-message", action="store_true")
    parser.add_argument("--interleaved", action="store_true")
    args = parser.parse_args()

    codec, names = load_codec(AVRO_DIR), TopicNames("")
    simulation = simulate(
        SimulationConfig(seed=args.seed, workers=args.workers, months=args.months)
    )
    encoded: list[tuple[int, int, bytes, bytes]] = []  # partition, offset, key, value
    offsets = [0] * args.partitions
    for sim in simulation.messages():
        if sim.topic != COLLECTIONS or sim.value is None:
            continue
        key = sim.key.encode()
        partition = zlib.crc32(key) % args.partitions
        value = codec.encode(*to_avro(sim.value), topic=names.collections)
        encoded.append((partition, offsets[partition], key, value))
        offsets[partition] += 1
        if len(encoded) == args.messages:
            break
    batches: list[list[Message]] = []
    for start in range(0, len(encoded), args.batch):
        part = encoded[start : start + args.batch]
        if not args.interleaved:
            part.sort(key=lambda message: message[0])  # stable: offsets stay in order
        # A topic of its own for each message, as librdkafka makes them. (confluent-kafka's
        # stubs do not declare Message's keyword constructor, new in 2.x.)
        batches.append(
            [
                Message(  # type: ignore[call-arg]
                    topic="".join(names.collections), partition=p, offset=o, key=k, value=v
                )
                for p, o, k, v in part
            ]
        )

    process = LocatorProcess(
        consumer=None,  # type: ignore[arg-type]
        conninfo="",
        codec=codec,
        locator=None,  # type: ignore[arg-type]
        relay=None,  # type: ignore[arg-type]
        config=LocatorConfig("bench", names, args.batch, 0.1, timedelta(days=1)),
    )
    if args.per_message:
        process._read_batch = None
    tune_collector()  # as LocatorProcess.run does
    wall_runs, cpu_runs = [], []
    for _ in range(max(1, args.repeat)):
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            process._read(batch)
        wall_runs.append((time.perf_counter() - wall) / len(encoded) * 1e6)
        cpu_runs.append((time.process_time() - cpu) / len(encoded) * 1e6)

    print(
        json.dumps(
            {
                "us_per_message": round(statistics.median(wall_runs), 3),
                "cpu_us_per_message": round(statistics.median(cpu_runs), 3),
                "runs_us": [round(run, 3) for run in wall_runs],
                "cpu_runs_us": [round(run, 3) for run in cpu_runs],
                "compiled_batch": getattr(process, "_read_batch", None) is not None,
                "messages": len(encoded),
                "batch": args.batch,
                "partitions": args.partitions,
                "interleaved": args.interleaved,
            }
        )
    )


if __name__ == "__main__":
    main()
