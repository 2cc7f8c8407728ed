"""``python -m reidkit`` runs the command line (also under ``torchrun -m reidkit``)."""

import sys

from reidkit.cli import main

sys.exit(main())
