"""Legend Studio's library: safety directions in hidden states and safety margins for preference data."""

__version__ = "0.1.0"
