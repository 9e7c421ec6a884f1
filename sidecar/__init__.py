"""The trading sidecar: receives events from `client`, journals them durably,
and delivers them to Notion (and more) batched, coalesced, rate-limited and
retried. Run it with `sidecar run --config FILE`.
"""
