"""Client-side proxies: our store interfaces over a live daemon's gRPC API.

They implement the same protocols as the daemon's own stores (so the conformance suites run
against them) and are what ctrctl builds on.
"""
