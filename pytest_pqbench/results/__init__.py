"""Results: the one schema of pqbench fields inside pytest-benchmark JSON (``extra_info``)."""
