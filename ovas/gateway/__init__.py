"""The signaling gateway: one port in front of every session's signaling socket.

`ovas gateway` runs it as a process of its own (asyncio; see `ovas.gateway.server`). What
the API and the gateway share lives here, free of any web framework: stream tokens
(`tokens`), the secret they are signed with, and the client counts the gateway records in
the backend's ledger for the session lifecycle (`presence`).
"""
