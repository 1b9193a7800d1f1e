"""``python -m ptbr.train --config C`` for the deepspeed / torchrun / srun launchers."""

import sys

from ptbr.train.preempt import catch_early_stop_signals

catch_early_stop_signals()  # before the heavy imports: a signal during them must not kill the rank

from ptbr.train.entry import main  # noqa: E402

sys.exit(main())
