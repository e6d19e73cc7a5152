"""Legend Studio's library: safety directions in hidden states, safety margins for pairs."""

__version__ = "0.1.0"
