"""``python -m zoobot_pipeline.cli``: the ``zoobot-pipeline`` command."""

from zoobot_pipeline.cli import run

run()
