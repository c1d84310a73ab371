"""mmbert-train: pretrain massively multilingual ModernBERT encoders with the mmBERT recipe."""

__version__ = "0.1.0"
