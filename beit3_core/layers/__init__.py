"""Building blocks of the Multiway Transformer."""
