"""The MPC training engine: CrypTen set-up, roles, the split protocol, launching."""
