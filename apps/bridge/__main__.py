"""`python -m apps.bridge`: see apps/bridge/server.py."""

import sys

from apps.bridge.server import main

sys.exit(main())
