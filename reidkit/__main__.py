"""``python -m reidkit`` (and ``torchrun ... -m reidkit train RECIPE``): the ``reidkit`` command."""
import sys

from .cli import main

sys.exit(main())
