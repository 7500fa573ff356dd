"""``python -m treegrpo`` is the ``treegrpo`` command; ``torchrun ... -m treegrpo train`` launches it on every rank."""

import sys

from treegrpo.cli import main

sys.exit(main())
