"""A tiny run of the codec benchmark (benchmarks/codecs.py), so that it cannot rot: every
contender of every format processed every record; never a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.codecs import FORMATS, main
from kafkaworker.testing.registry import SchemaRegistry

pytestmark = pytest.mark.kafka


def test_the_codec_benchmark_runs_end_to_end(
    kafka_bootstrap: str, schema_registry: SchemaRegistry, tmp_path: Path
) -> None:
    args = ["--messages", "2000", "--bootstrap", kafka_bootstrap]
    code = main([*args, "--registry", schema_registry.url, "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "codecs.json").read_text())
    assert [row["format"] for row in report["rows"]] == list(FORMATS)
    for row in report["rows"]:
        for side in ("raw", "kafkaworker"):
            assert row[side]["processed"] >= 2000, row
            assert row[side]["msgs_per_s"] > 0, row
    assert "| protobuf |" in (tmp_path / "codecs.md").read_text()
