"""reidkit: person re-identification toolkit."""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("FeatureExtractor", "GalleryIndex"):   # lazy: importing reidkit stays light
        from . import deploy
        return getattr(deploy, name)
    raise AttributeError(f"module 'reidkit' has no attribute {name!r}")
