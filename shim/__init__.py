"""The shim: one light process per container (the process lands with the tasks issue).

Its pure cores so far: `protocol` (the wire format between daemon and shim) and `journal` (the
durable, numbered event log in the bundle). It must import nothing of the daemon, nor gRPC, and
only small parts of the standard library: it is multiplied by the number of containers.
"""
