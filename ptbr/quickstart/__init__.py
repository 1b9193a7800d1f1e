"""The quickstart: the whole pipeline on one machine (ptbr quickstart, launch/quickstart.sh)."""
