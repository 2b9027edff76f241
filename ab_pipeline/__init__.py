"""ab-pipeline: nightly A/B experiment readouts (gates, analysis, decision, brief, email)."""

__version__ = "0.1.0"

# The metric catalog plugs its `{ref: ...}` resolution into config parsing (see
# ab_pipeline.core.config.reference_resolver); importing it here installs it wherever configs load.
from ab_pipeline.core import catalog as _catalog  # noqa: E402,F401
