"""The metadata store: one SQLite database under the root, every record namespaced."""
