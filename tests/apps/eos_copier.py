"""A test app: an exactly_once copier. Each input's value is produced as it is (raw bytes) on
the output topic with the input's key, key-ordered with concurrency 8.

Configured by environment: EOS_TOPIC, EOS_OUTPUT, EOS_GROUP, EOS_SIDE (a topic each input is
also sent to with app.producer, during the call), EOS_ASYNC=1 (an `async def` handler),
EOS_SLEEP (seconds per message, default 0.0005: keeps work in flight when a kill comes),
EOS_GUARANTEE (default exactly_once; the benchmark runs at_least_once too), EOS_STALL_EVERY=N
and EOS_STALL=seconds (the inputs whose value is N/2 modulo N stall that long: a handler stalled
past transaction.timeout.ms).
"""

from __future__ import annotations

import asyncio
import os
import time

from kafkaworker import App, Message

app = App("eos-copier")
_sleep = float(os.environ.get("EOS_SLEEP", "0.0005"))
_side = os.environ.get("EOS_SIDE")
_stall_every = int(os.environ.get("EOS_STALL_EVERY", "0"))
_stall = float(os.environ.get("EOS_STALL", "0"))


def _pause(msg: Message[bytes]) -> float:
    if _stall_every and int(msg.value) % _stall_every == _stall_every // 2:
        return _stall
    return _sleep


def copy(msg: Message[bytes]) -> bytes:
    if _side:
        app.producer.send(_side, msg.value, key=msg.key)
    if pause := _pause(msg):
        time.sleep(pause)
    return msg.value


async def copy_async(msg: Message[bytes]) -> bytes:
    if _side:
        await app.producer.send_async(_side, msg.value, key=msg.key)
    if pause := _pause(msg):
        await asyncio.sleep(pause)
    return msg.value


app.handler(
    os.environ.get("EOS_TOPIC", "in"),
    output=os.environ.get("EOS_OUTPUT", "out"),
    group=os.environ.get("EOS_GROUP") or None,
    name="copy",
    codec="raw",
    ordering="key",
    concurrency=8,
    processing_guarantee=os.environ.get("EOS_GUARANTEE", "exactly_once"),  # type: ignore[arg-type]
)(copy_async if os.environ.get("EOS_ASYNC") == "1" else copy)
