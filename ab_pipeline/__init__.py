"""ab-pipeline: nightly A/B experiment readouts (gates, analysis, decision, brief, email)."""

__version__ = "0.1.0"
