"""Control: per-token probability and top-K entropy of fine-tuning data, confident conflicts and
whether EAFT suits a file, the EAFT loss, its trainer hooks and config fragments for other
trainers, fine-tuning comparisons at matched progress and their data (Diao et al., arXiv
2601.02151). Imports `data` and `runtime`, never `diagnose` or `sense`."""
