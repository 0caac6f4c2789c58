"""Health checks of containers (docker's HEALTHCHECK), run by the daemon through the shims.

`config` reads what a container asks for (the `ctrd.io/healthcheck` label), `state` is the
pure state machine of docker's rules, `store` keeps each container's health in the metadata
database, `probe` runs one check as an exec in the container and `monitor` schedules checks
from the task events.
"""
