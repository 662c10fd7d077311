"""Sense: concept vectors, injection trials and their grading, the prefill test and the logit
lens (Lindsey 2025, arXiv 2601.01828). Imports `data` and `runtime`, never `diagnose` or
`control`."""
