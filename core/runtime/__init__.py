"""The model and its hooks: loading any causal LM, finding its decoder blocks, reading
(`capture`) and writing (`inject`) the residual stream, step pooling, chat prompts and batched
sampling. Imports nothing else from `core` but itself."""
