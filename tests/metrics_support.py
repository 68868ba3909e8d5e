"""Reading a running worker's HTTP endpoint: status codes and Prometheus samples."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""  # not listening (yet, or any more)


def samples(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics by sample name (counters end in _total)."""
    status, body = get(port, "/metrics")
    assert status == 200, status
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def total(port: int, name: str, **labels: str) -> float:
    """The sum of a sample's values whose labels include `labels` (0 when absent)."""
    return sum(
        value
        for found, value in samples(port).get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )
