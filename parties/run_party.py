#!/usr/bin/env python3
"""Start ONE party on this host, to train with parties on other hosts.

Every host needs this project installed and the same RUN/config.json (make it once,
e.g. with `python parties/make_config.py --out RUN ...`, and copy the folder). Then, with
the model owner's address as rendezvous, on each host:

    python parties/run_party.py --rank 0 --world-size 3 --rendezvous tcp://OWNER_HOST:29500 --run RUN  # model owner
    python parties/run_party.py --rank 1 --world-size 3 --rendezvous tcp://OWNER_HOST:29500 --run RUN  # data owner 1
    python parties/run_party.py --rank 2 --world-size 3 --rendezvous tcp://OWNER_HOST:29500 --run RUN  # data owner 2
    python parties/run_party.py --rank 3 --world-size 3 --rendezvous tcp://OWNER_HOST:29500 --run RUN  # TTP dealer

--world-size counts the model owner and the data owners; the dealer is rank
world-size. gloo's traffic is not encrypted: across machines, run it inside a VPN or
an SSH tunnel. Add --resume to continue from each party's last checkpoint.
"""

from securemark_mpc.mpc.party import main

if __name__ == "__main__":
    main()
