"""``python -m dfine.train train|val ...`` (also ``torchrun ... -m dfine.train train ...``)."""

import sys

from dfine.train.cli import main

sys.exit(main())
