"""``python -m countsdiff_sc`` runs the command line interface."""

from __future__ import annotations

import sys

from countsdiff_sc.cli import main

sys.exit(main())
