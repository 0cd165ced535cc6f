"""llmdispatch: multi-LLM routing and cascading, measured honestly and served live."""

from llmdispatch.catalog import ModelCard
from llmdispatch.data import OutcomeTable, load_table

__version__ = "0.1.0"
__all__ = ["ModelCard", "OutcomeTable", "__version__", "load_table"]
