"""Model-card template and the released models' cards; installed as `transformers_rime.model_cards`."""
