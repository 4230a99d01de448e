"""Run one flow in this process: ``python -m flows FLOW [--params JSON] [--params-file FILE.yaml|.json]``.

For batch jobs that bring their own Ray cluster (a Slurm allocation, a KubeRay RayJob): the flow run reports to the
Prefect API in ``PREFECT_API_URL`` (without one, to a temporary local API). Parameters are validated by the flow
(strings become paths, dictionaries become configs); ``--params`` entries override the file's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

import flows

FLOWS = {name: getattr(flows, name) for name in flows.__all__}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the flow; a failed flow run raises (non-zero exit)."""
    parser = argparse.ArgumentParser(prog="python -m flows", description=__doc__.splitlines()[0])
    parser.add_argument("flow", choices=sorted(FLOWS), help="the flow to run")
    parser.add_argument("--params", default="{}", help="parameters as a JSON object")
    parser.add_argument("--params-file", type=Path, help="parameters from a YAML or JSON file")
    args = parser.parse_args(argv)
    parameters = (yaml.safe_load(args.params_file.read_text()) or {}) if args.params_file else {}
    parameters.update(json.loads(args.params))
    FLOWS[args.flow](**parameters)


if __name__ == "__main__":
    main()
