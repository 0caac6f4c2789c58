"""Copying files in and out of a container's root (`ctrctl cp`, docker's archive API).

`resolve` opens paths inside a root as the kernel resolves them from there (openat2 with
RESOLVE_IN_ROOT), `paths` holds docker's pure path rules, `pack` writes a tar of what is at a
path, `unpack` extracts a tar into a directory without ever writing outside the root, and
`view` mounts a container's root with its bind mounts for the length of one call. The daemon's
service (`supervisor.services.archive`) and ctrctl's local side (`ctl.cp`) both use them.
"""
