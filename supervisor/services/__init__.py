"""gRPC servicers: each method translates the request, calls a core, translates the answer.

No servicer catches errors or logs calls: `supervisor.services.rpc` does both, once, for all.
"""
