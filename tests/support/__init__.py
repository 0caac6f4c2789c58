"""Helpers the tests and benchmarks share: OCI images built offline, and a real registry.

`tests/` itself has no `__init__.py`: it is a namespace package, so that with
`pythonpath = ["."]` this package imports as `tests.support` both from pytest and from a plain
`python -c "import tests.support.images"` at the repository root.
"""
