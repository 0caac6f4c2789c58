"""Volumes: docker's named and anonymous volumes, kept by the daemon (issue #16).

`labels` is the contract a container asks for volumes with (read by Tasks.Create without
importing the rest), `store` the records, `local` the `local` driver (paths, options, mounts),
`copyup` the filling of a new volume from the image, `manager` what ties them together for
the service and for Tasks.Create.
"""
