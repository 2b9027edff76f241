"""ab-pipeline: nightly A/B experiment readouts (gates, analysis, decision, brief, email)."""

__version__ = "0.1.0"

# The metric catalog plugs its `{ref: ...}` resolution into config parsing (see
# ab_pipeline.core.config.reference_resolver); importing it here installs it wherever configs load.
from ab_pipeline.core import catalog as _catalog  # noqa: E402,F401

# Every engine's SQL dialect, so a config's own SQL is checked in the dialects it may be
# written in before its warehouse is known (core.sql_safety.checked_in_any_dialect).
from ab_pipeline.warehouse.dialects import all_dialects as _all_dialects  # noqa: E402

_all_dialects()
