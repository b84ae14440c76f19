"""The DeepSeek-style MoE model family: presets, task heads, tokenizer, checkpoints, training, engine."""
