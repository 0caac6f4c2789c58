"""The content store: immutable blobs addressed by digest, and resumable ingests."""
