"""Making the models the grid runs on: the built-in model's training (with clamps) and GGUF files
converted into checkpoint folders."""
