#!/usr/bin/env python3
"""Write RUN/config.json for a multi-host run without starting any party.

Takes the same options as `securemark train` (e.g. --dataset, --data-owners, --epochs,
--out RUN); copy the RUN folder to every host, then start each with run_party.py.
"""

import sys

from securemark_mpc.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "--config-only", *sys.argv[1:]]))
