"""``python -m ptbr.train --config C`` for the deepspeed / torchrun / srun launchers."""

import sys

from ptbr.train.entry import main

sys.exit(main())
