"""``python -m cryonuseg_hf.cli``: the ``cryonuseg-hf`` command."""

import sys

from cryonuseg_hf.cli import main

sys.exit(main())
