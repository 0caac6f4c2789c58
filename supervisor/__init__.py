"""ctrd, the supervisor: a containerd-compatible gRPC daemon.

Importing this package loads nothing: entry points pull in what they need.
"""
