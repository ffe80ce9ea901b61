"""One algorithm per file, all through the engine, all returning circuitlab.result.Result."""
