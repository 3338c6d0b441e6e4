"""Stage 1: the teacher writes a rationale and a label for each input."""

from dsbs.generate.stage import GenerateSummary, GenerationError, generate_rationales

__all__ = ["GenerateSummary", "GenerationError", "generate_rationales"]
