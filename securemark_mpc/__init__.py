"""SecureMark-MPC: private split training under CrypTen, fingerprinted copies, traitor tracing."""
