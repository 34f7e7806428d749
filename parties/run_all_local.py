#!/usr/bin/env python3
"""Start every party of a training run on this machine (same as `securemark train`).

    python parties/run_all_local.py --dataset digits --data-owners 2 --epochs 10 --out runs/r1

Each party is its own process: the model owner (rank 0, with the progress bar), the
data owners (ranks 1..k) and the TTP dealer (rank k+1). Their logs go to RUN/logs/.
"""

import sys

from securemark_mpc.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
