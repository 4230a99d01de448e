"""zoobot-pipeline: Galaxy Zoo morphology at survey scale."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zoobot-pipeline")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
