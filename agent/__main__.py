"""`python -m agent` is `hearth`."""

import sys

from agent.cli import main

sys.exit(main())
