from circuitlab.sparse.architectures.topk import TopKConfig  # noqa: F401  # moved; kept until callers are updated
