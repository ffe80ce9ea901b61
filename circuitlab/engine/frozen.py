from circuitlab.engine.norms import NormParams, apply_norm, norm_params, norm_paths, norm_scale  # noqa: F401  # moved; kept until callers are updated
