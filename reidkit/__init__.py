"""reidkit: person re-identification toolkit."""
__version__ = "0.2.0"          # the one version source (pyproject.toml reads it); see CHANGELOG.md


def __getattr__(name: str):
    if name in ("FeatureExtractor", "GalleryIndex"):   # lazy: importing reidkit stays light
        from . import deploy
        return getattr(deploy, name)
    raise AttributeError(f"module 'reidkit' has no attribute {name!r}")
