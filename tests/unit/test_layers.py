"""The layers: the public API stands on its own; the runtime is loaded only to run."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_the_public_api_does_not_import_the_runtime() -> None:
    # A fresh interpreter: this test process may have imported the runtime already.
    code = (
        "import sys, kafkaworker, kafkaworker.app, kafkaworker.handlers, kafkaworker.message\n"
        "app = kafkaworker.App('svc')\n"
        "app.handler('orders', retries=1, dlq='orders.dlq')(lambda msg: None)\n"
        "print(sorted(m for m in sys.modules if m.startswith('kafkaworker.runtime')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
