"""The gRPC metadata keys containerd's API carries, shared by the servers and the clients."""

NAMESPACE = "containerd-namespace"
LEASE = "containerd-lease"
