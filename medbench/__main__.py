"""``python -m medbench``."""

import sys

from medbench.cli import main

sys.exit(main())
