"""``python -m modelyard`` runs the command line."""

import sys

from modelyard.cli import main

sys.exit(main())
