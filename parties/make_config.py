#!/usr/bin/env python3
"""Write what every party of a multi-host run needs, without starting any party.

    python parties/make_config.py --dataset imagefolder --data-owners 2 --epochs 10 --out RUN

Takes the same options as `securemark train`. Writes RUN/config.json (the settings
every party must share) and RUN/run.secret (mode 0600: the secret each party proves
it knows before any share flows). Copy both to every host out of band (e.g.
`scp -p`), then start each party there with run_party.py, each with its own data.
"""

import sys

from securemark_mpc.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "--config-only", *sys.argv[1:]]))
