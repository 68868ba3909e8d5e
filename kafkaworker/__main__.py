"""`python -m kafkaworker ...`, the same as the `kafkaworker` command."""

from kafkaworker.cli import main

main()
