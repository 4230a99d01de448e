"""Survey scoring: a data release and a model package in, a Parquet catalogue out.

- :mod:`.session`: onnxruntime sessions for model packages, seeded MC-dropout masks.
- :mod:`.columns`: model outputs to catalogue columns (fractions, concentrations, vote-space information, acquisition).
- :mod:`.catalogue`: the catalogue on disk (part file per tile, failures, metadata) and :func:`read_catalogue`.
- :mod:`.chunks`: one chunk of a tile, cut, preprocessed and scored: the unit of work of both execution paths.
- :mod:`.pipeline`: :func:`score_release`: checks, resuming, in-process execution, writing.
- :mod:`.ray_data`: the same chunks on Ray Data (read tasks, an actor pool for inference).
- :mod:`.summary`: counts and distributions of a catalogue, in bounded memory.
"""
