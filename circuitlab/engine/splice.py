from circuitlab.sparse.splice import splice  # noqa: F401  # moved; kept until callers are updated
