"""Diagnose: per-step signals, teacher-forced capture of pooled step features, the step probe and
prefix tracker, their evaluation and metrics, the streaming monitor and the backtracking test
(Lu et al., arXiv 2601.02170). Imports `data` and `runtime`, never `sense` or `control`."""
