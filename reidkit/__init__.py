"""reidkit: person re-identification toolkit."""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "FeatureExtractor":                  # lazy: importing reidkit stays light
        from .deploy import FeatureExtractor
        return FeatureExtractor
    raise AttributeError(f"module 'reidkit' has no attribute {name!r}")
