#!/usr/bin/env python3
"""Start ONE party on this host, to train with parties on other hosts.

Every host needs this project installed, RUN/config.json and RUN/run.secret (make them
once with `python parties/make_config.py --out RUN ...` and copy them out of band).
Each party brings its own data: a data owner its training images (--data DIR), the
model owner its test images (--test-data DIR); DIR is an image folder (one sub-folder
of PNG/JPEG images per class), a folder of IDX files, or a torchvision root. With the
model owner's address as rendezvous, on each host:

    python parties/run_party.py --rank 0 --world-size 3 --rendezvous tcp://OWNER_HOST:29500 --run RUN --test-data TEST  # model owner
    python parties/run_party.py --rank 1 --world-size 3 --rendezvous tcp://OWNER_HOST:29500 --run RUN --data MINE      # data owner 1
    python parties/run_party.py --rank 2 --world-size 3 --rendezvous tcp://OWNER_HOST:29500 --run RUN --data MINE      # data owner 2
    python parties/run_party.py --rank 3 --world-size 3 --rendezvous tcp://OWNER_HOST:29500 --run RUN                  # TTP dealer

--world-size counts the model owner and the data owners; the dealer is rank
world-size. --secret-file F reads the run secret from F instead of RUN/run.secret.
gloo's traffic is not encrypted: across machines, run it inside a VPN or an SSH
tunnel (see the README). Add --resume to continue from each party's last checkpoint.
"""

from securemark_mpc.mpc.party import main

if __name__ == "__main__":
    main()
