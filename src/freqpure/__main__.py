"""``python -m freqpure`` (also what ``torchrun -m freqpure`` runs)."""

import sys

from freqpure.cli.main import main

sys.exit(main())
