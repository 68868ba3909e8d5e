"""A/B of kafkaworker's S1 or S2 contender between two checkouts (e.g. main and a branch), run
alternately on one topic, so that a loaded machine's drift weighs on both alike:

    python -m benchmarks.ab_trees --bootstrap 127.0.0.1:19192 --a /work/main --b . s1 --rounds 6
    python -m benchmarks.ab_trees --bootstrap ... --a ... --b ... s2 --ordering key --concurrency 32

Each checkout's own benchmarks/contenders/kafkaworker_app.py runs with that checkout first on
PYTHONPATH, under this interpreter. Prints each run and the medians' ratios (b / a) of msg/s
and of CPU seconds per 1M messages."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks.run import new_topic, produce_backlog


def run(
    tree: Path, bootstrap: str, topic: str, messages: int, options: dict[str, str]
) -> tuple[float, float]:
    out = tempfile.mkstemp(suffix=".json")[1]
    command = [
        sys.executable,
        str(tree / "benchmarks" / "contenders" / "kafkaworker_app.py"),
        *("--bootstrap", bootstrap, "--topic", topic, "--group", f"ab-{uuid.uuid4().hex[:8]}"),
        *("--messages", str(messages), "--out", out),
    ]
    for key, value in options.items():
        command += [f"--{key}", value]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(command, env=env, check=True, timeout=900, cwd=tempfile.mkdtemp())
    result = json.loads(Path(out).read_text())
    return float(result["msgs_per_s"]), float(result["cpu_s_per_million"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--a", type=Path, required=True, help="the first checkout (the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="the second checkout")
    parser.add_argument("scenario", choices=["s1", "s2"])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each checkout")
    parser.add_argument("--ordering", default="key", help="S2's")
    parser.add_argument("--concurrency", default="32", help="S2's")
    a = parser.parse_args()
    if a.scenario == "s1":  # JSON decode only, 1M messages, 8 partitions
        messages, keys, options = 1_000_000, 0, {}
    else:  # a 2 ms handler, 40,000 messages, 1,000 keys
        messages, keys = 40_000, 1000
        options = {"sleep_ms": "2.0", "ordering": a.ordering, "concurrency": a.concurrency}
    topic = new_topic(a.bootstrap, a.scenario)
    produce_backlog(a.bootstrap, topic, messages, keys=keys)
    trees = {"a": a.a.resolve(), "b": a.b.resolve()}
    results: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for i in range(a.rounds):
        for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
            rate, cpu = run(trees[name], a.bootstrap, topic, messages, options)
            results[name].append((rate, cpu))
            print(f"{a.scenario} {options} {name}: {rate:,.0f} msg/s, {cpu:.2f} CPU s per 1M")
    (rate_a, cpu_a), (rate_b, cpu_b) = (
        (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for runs in (results["a"], results["b"])
    )
    print(
        f"{a.scenario} {options} medians: a {rate_a:,.0f} msg/s {cpu_a:.2f} CPU, "
        f"b {rate_b:,.0f} msg/s {cpu_b:.2f} CPU; b/a: msg/s {rate_b / rate_a:.3f}, "
        f"CPU per message {cpu_b / cpu_a:.3f}"
    )


if __name__ == "__main__":
    main()
