"""Files and labels: atomic writes, the JSONL record reader, the trace record and its step
splitting, importers of public datasets, the project's own arithmetic problems and labelled
chains, hand audits of labels, and the intervals every layer reports. Imports only `runtime`."""
