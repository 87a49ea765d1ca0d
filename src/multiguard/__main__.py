"""``python -m multiguard`` runs the ``multiguard`` command (also under ``torchrun -m multiguard``)."""

import sys

from multiguard.cli import main

if __name__ == "__main__":
    sys.exit(main())
