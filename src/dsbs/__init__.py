"""dsbs: Distilling step-by-step on Ray (Hsieh et al., 2023)."""

__version__ = "0.1.0"
