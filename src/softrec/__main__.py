"""`python -m softrec` (also what `torchrun -m softrec ...` runs)."""

import sys

from softrec.cli import main

sys.exit(main())
