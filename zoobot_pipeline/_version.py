"""The installed version of zoobot-pipeline, recorded in every checkpoint, package and catalogue it writes."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("zoobot-pipeline")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
