"""Snapshotters: overlay (`overlay`) and native (`native`) backends over one metastore
(`storage`, `base`), and `mount` to perform what they return. They know nothing of gRPC."""
