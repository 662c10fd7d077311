"""Control: per-token probability and top-K entropy of fine-tuning data, confident conflicts, the
EAFT loss and its trainer hooks, fine-tuning comparisons and their data (Diao et al., arXiv
2601.02151). Imports `data` and `runtime`, never `diagnose` or `sense`."""
