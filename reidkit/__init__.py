"""reidkit: person re-identification toolkit."""
__version__ = "0.1.0"
