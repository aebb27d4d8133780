"""Speed of the population simulator alone: domain records, no Avro, no Kafka.

    python bench/simulator_speed.py [--workers 20000] [--months 12] [--seed 7] [--repeat 3]

Prints one JSON object. ``events_per_s`` is the rate of ``Simulation.messages()`` (turning the
plans into ``RationCollection`` / ``WorkerRegistration`` records, in production order);
``end_to_end_events_per_s`` also counts planning (``simulate``: every worker's months and the
ground truth). Best of ``--repeat`` runs, wall clock; ``cpu_*`` are the same runs in process CPU
time, less sensitive to a busy machine.
"""

from __future__ import annotations

import argparse
import json
import time

from eshram_locator.simulator.population import SimulationConfig, simulate


def main() -> None:
    defaults = SimulationConfig()
    parser = argparse.ArgumentParser(description="Speed of the population simulator alone.")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--months", type=int, default=defaults.months)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = SimulationConfig(seed=args.seed, workers=args.workers, months=args.months)

    best_plan = best_generate = best_plan_cpu = best_generate_cpu = float("inf")
    events = 0
    for _ in range(max(1, args.repeat)):
        wall, cpu = time.perf_counter(), time.process_time()
        simulation = simulate(config)
        planned_wall, planned_cpu = time.perf_counter(), time.process_time()
        events = 0
        for _message in simulation.messages():
            events += 1
        done_wall, done_cpu = time.perf_counter(), time.process_time()
        best_plan = min(best_plan, planned_wall - wall)
        best_generate = min(best_generate, done_wall - planned_wall)
        best_plan_cpu = min(best_plan_cpu, planned_cpu - cpu)
        best_generate_cpu = min(best_generate_cpu, done_cpu - planned_cpu)

    print(
        json.dumps(
            {
                "events_per_s": round(events / best_generate),
                "end_to_end_events_per_s": round(events / (best_plan + best_generate)),
                "cpu_events_per_s": round(events / best_generate_cpu),
                "cpu_end_to_end_events_per_s": round(events / (best_plan_cpu + best_generate_cpu)),
                "events": events,
                "workers": config.workers,
                "months": config.months,
                "plan_s": round(best_plan, 3),
                "generate_s": round(best_generate, 3),
                "repeat": args.repeat,
            }
        )
    )


if __name__ == "__main__":
    main()
