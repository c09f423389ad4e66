"""``python -m dfine.train train|val ...`` (also ``torchrun ... -m dfine.train train ...``): the
``dfine`` command itself (:func:`dfine.cli.main`)."""

import sys

from dfine.cli import main

sys.exit(main())
