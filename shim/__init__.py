"""The shim: one light process per container (lands with the tasks issue).

It must import nothing of the daemon, nor gRPC: it is multiplied by the number of containers.
"""
