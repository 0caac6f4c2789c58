"""Pulling from registries: the Docker Registry HTTP API v2 / OCI distribution client.

Pure cores, each testable alone: `reference` (docker's image names), `platforms` (containerd's
platform matching), `manifest` (descriptors, manifests and indexes as JSON), `auth`
(WWW-Authenticate challenges, docker's config.json) and `hosts` (which endpoints a registry
is reached at, and over which scheme). `registry` is the thin I/O shell over HTTP that
resolves references and fetches blobs into a content store.
"""
