"""kafkaworker: a decorator-driven Kafka worker framework with at-least-once delivery."""

__version__ = "0.1.0"

__all__ = ["__version__"]
