"""Telltale's backend library: load a model, read and write its residual stream, score its steps.

Nothing here imports Streamlit: the dashboard and the command line are thin front doors over it.
"""

__version__ = "0.1.0"
