"""Model families of transformers_rime."""
