"""Data building blocks: input sources, the paper's datasets, synthetic data, quarantine."""
