"""The model layer: encoder loading + embeddings (encoder), BIO alignment (tokenize), task heads
(heads) and LoRA / saved-model format (lora). Import the submodules; nothing loads at import."""
