"""The DLQ explorer: browse a dead-letter topic's latest records, decoded with the codec the
handler declared, and replay chosen records (or all) to where they came from.

Browsing reads each partition's last `limit` records with a consumer that joins no group
(dlq.Reader), so looking changes nothing. A value is decoded with the handler's codec when the
record's kw.group and kw.handler name a handler some report describes and its codec is a
built-in one (json, text, raw); a Schema Registry codec's records are shown as bytes with
their schema id (decoding them needs the worker's registry client and classes).

Replaying chosen records writes each one's key, value and own headers to its
kw.original.topic, plus kw.replayed_from, and waits for the broker's acknowledgements, as
`kafkaworker dlq replay` does; "all" is `dlq replay` itself (its progress group: records
replayed once are not replayed again).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Any

from kafkaworker.headers import PREFIX, REPLAYED_FROM
from kafkaworker.ops import dlq
from kafkaworker.producer import Producer
from kafkaworker.serialization import CODECS
from kafkaworker.serialization.registry import schema_id
from kafkaworker.settings import Settings

MAX_LIMIT = 500
# Where a record's codec is looked up: (kw.group, kw.handler) -> codec name.
CodecOf = Callable[[str | None, str | None], str | None]


def browse(settings: Settings, topic: str, limit: int, codec_of: CodecOf) -> list[dict[str, Any]]:
    """The latest `limit` records of DLQ `topic` (newest first), decoded where possible."""
    reader = dlq.Reader(settings, topic)
    try:
        span = {
            p: (max(start, end - limit), end)
            for p, (start, end) in reader.span(from_group=False).items()
        }
        records = list(reader.read(span))
    finally:
        reader.close()
    records.sort(key=lambda r: (r.failure.get("failed_at", ""), r.offset), reverse=True)
    return [shown(topic, r, codec_of) for r in records[:limit]]


def shown(topic: str, record: dlq.DeadLetterRecord, codec_of: CodecOf) -> dict[str, Any]:
    """One record as the page shows it: where it came from, why it failed, its key and value
    (decoded when the handler's codec is known), its own headers and the kw.* ones."""
    found = record.as_json(topic)
    codec = codec_of(record.failure.get("group"), record.failure.get("handler"))
    found["codec"] = codec
    found["decoded"] = False
    found["schema_id"] = None
    found["kw"] = {PREFIX + name: value for name, value in sorted(record.failure.items())}
    value = record.value
    if value is not None and codec in CODECS:
        try:
            decoded = CODECS[codec].decode(value, record.headers)
        except Exception as exc:  # noqa: BLE001 - a record its own codec cannot read: say so
            found["decode_error"] = f"{type(exc).__name__}: {exc}"
        else:
            found["decoded"] = True
            found["value"] = (
                {"base64": base64.b64encode(decoded).decode()}
                if isinstance(decoded, bytes)
                else decoded
            )
    elif value is not None:
        found["schema_id"] = schema_id(value)
    return found


def replay(
    settings: Settings, topic: str, positions: Iterable[tuple[int, int]] | None
) -> dict[str, Any]:
    """Replay the records at `positions` ((partition, offset) pairs), or every record not
    replayed yet when None; what was replayed."""
    if positions is None:
        result = dlq.replay(settings, topic)
        return {
            "replayed": result.replayed,
            "scanned": result.scanned,
            "without_origin": result.without_origin,
        }
    wanted = set(positions)
    span: dict[int, tuple[int, int]] = {}
    for partition, offset in wanted:
        start, end = span.get(partition, (offset, offset + 1))
        span[partition] = (min(start, offset), max(end, offset + 1))
    reader = dlq.Reader(settings, topic)
    producer: Producer | None = None
    replayed, missing, without_origin = [], set(wanted), 0
    try:
        ends = reader.span(from_group=False)
        # Positions past a partition's end (or before its start) are not there to read.
        span = {
            p: (max(s, ends[p][0]), min(e, ends[p][1])) for p, (s, e) in span.items() if p in ends
        }
        producer = Producer(settings, client_id="kafkaworker.dashboard.replay")
        pending = []
        for record in reader.read({p: se for p, se in span.items() if se[0] < se[1]}):
            where = (record.partition, record.offset)
            if where not in wanted:
                continue
            missing.discard(where)
            origin = record.failure.get("original.topic")
            if not origin:
                without_origin += 1
                continue
            source = f"{topic}[{record.partition}]@{record.offset}"
            pending.append(
                producer.send(
                    origin,
                    record.value,
                    key=record.key,
                    headers=[*record.headers, (REPLAYED_FROM, source.encode())],
                )
            )
            replayed.append({"from": source, "to": origin})
        for future in pending:
            future.result(60)  # acknowledged, or the ProduceError
    finally:
        reader.close()
        if producer is not None:
            producer.close()
    return {
        "replayed": len(replayed),
        "records": replayed,
        "without_origin": without_origin,
        "not_found": sorted(missing),
    }
