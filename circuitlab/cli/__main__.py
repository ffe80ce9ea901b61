"""``python -m circuitlab.cli`` (as torchrun launches it): the ``circuitlab`` command."""

import sys

from circuitlab.cli import main

sys.exit(main())
