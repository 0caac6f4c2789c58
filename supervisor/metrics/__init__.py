"""ctrd's Prometheus metrics: one registry (`registry`), the `/v1/metrics` endpoint
(`server`) and the containers' cgroup metrics (`containers`).

Other parts of the daemon add their collectors through `registry.register` and never make a
registry or an HTTP server of their own.
"""
