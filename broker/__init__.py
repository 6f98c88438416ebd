"""telerad-broker: a zero-trust access broker for teleradiology."""

__version__ = "0.1.0"
