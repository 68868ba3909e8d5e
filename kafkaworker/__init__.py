"""kafkaworker: a decorator-driven Kafka worker framework with at-least-once delivery.

from kafkaworker import App, Message

app = App("orders-service")

@app.handler("orders", concurrency=8)
def handle_order(msg: Message) -> None: ...
"""

from kafkaworker.app import App
from kafkaworker.backoff import Backoff
from kafkaworker.errors import (
    AppImportError,
    BatchFailures,
    ConfigError,
    DeadLetter,
    DeserializationError,
    KafkaWorkerError,
    Nacked,
    Skip,
    StartupError,
)
from kafkaworker.handlers import BatchPolicy
from kafkaworker.message import Message
from kafkaworker.producer import ProduceError, Producer
from kafkaworker.settings import Settings, load_settings
from kafkaworker.version import VERSION

__version__ = VERSION

__all__ = [
    "App",
    "AppImportError",
    "Backoff",
    "BatchFailures",
    "BatchPolicy",
    "ConfigError",
    "DeadLetter",
    "DeserializationError",
    "KafkaWorkerError",
    "Message",
    "Nacked",
    "ProduceError",
    "Producer",
    "Settings",
    "Skip",
    "StartupError",
    "__version__",
    "load_settings",
]
