"""Ingest: events in from the producers' rings and the PULL socket, checked,
sequenced and group-committed to the journal (`core.Ingest` runs the thread)."""
