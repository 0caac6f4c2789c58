"""Snapshotters (overlayfs, native): know nothing of gRPC (land with the snapshotter issue)."""
