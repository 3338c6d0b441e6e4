"""Stage 1: the teacher writes a rationale and a label for each input."""

from dsbs.generate.stage import GenerationError, generate_rationales
from dsbs.generate.summary import GenerateSummary

__all__ = ["GenerateSummary", "GenerationError", "generate_rationales"]
