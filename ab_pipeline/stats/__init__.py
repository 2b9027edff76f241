"""The statistics: tests and intervals, quantiles, the novelty view, the SRM diagnosis."""
