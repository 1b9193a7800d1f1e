"""``ptbr train --config C [key=value ...]``: train in this process (any launcher)."""

from ptbr.train.entry import add_arguments as configure
from ptbr.train.entry import run

__all__ = ["configure", "run"]
