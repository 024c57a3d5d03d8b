"""``python -m hessnb ...`` (also ``torchrun --nproc-per-node=G -m hessnb spectrum ...``)."""

import sys

from hessnb.cli import main

sys.exit(main())
