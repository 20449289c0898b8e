"""`python -m bridge` is `codex-bridge`."""

import sys

from bridge.cli import main

sys.exit(main())
