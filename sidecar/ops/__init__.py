"""The operator's side: metrics, the status snapshot, the loopback HTTP API,
systemd notify, logging and credentials."""
