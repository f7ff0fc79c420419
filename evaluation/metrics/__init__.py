"""Pure metric functions of the benchmark suite, one module per metric family (see each module's docstring)."""
