"""Importing what Zoobot users hold, the framework-free half: which Zoobot model a file holds, how its weights are
named here, which decision tree, classes and preprocessing it gets, and what its checkpoint records of its origin.

Two sources (:func:`source_format`):

- a Lightning checkpoint (``.ckpt``) written by Zoobot 2.x: ``ZoobotTree`` (pretrained on a Galaxy Zoo tree),
  ``FinetuneableZoobotClassifier``, ``FinetuneableZoobotRegressor`` or ``FinetuneableZoobotTree``. The backend reads
  only its tensors and plain containers (a pickle is never allowed to run code); :func:`plan_lightning` reads its
  ``hyper_parameters`` and weight names. Which class wrote it follows from its head (``head.1.0.*``: a Dirichlet head,
  dropout then linear then ``1 + 100 * sigmoid``; ``head.linear.*``: a linear head) and hyper-parameters, or from
  ``--task`` (:data:`IMPORT_TASKS`) when they do not tell.
- an encoder in timm's layout, as Zoobot publishes its pretrained encoders on the Hugging Face hub: a directory with
  ``config.json`` (``architecture``, ``model_args``) and ``model.safetensors`` (:func:`plan_encoder`). It has no
  head: the checkpoint gets a Dirichlet head with zero weights (every concentration 2, the broad prior of a fresh
  head) and is meant for ``finetune``.

The encoder is rebuilt as Zoobot builds it, ``timm.create_model(architecture, num_classes=0, in_chans=channels,
**timm_kwargs)``, so the architecture must be a timm name (``architecture_name`` in a ``ZoobotTree``'s
hyper-parameters, ``architecture`` in ``config.json``, or ``--architecture`` for finetuned checkpoints, which do not
record it). A tree comes from ``--schema`` or from the hyper-parameters (``question_answer_pairs``,
``dependencies``); Zoobot's label columns (``smooth-or-featured-dr5_smooth``, ...) are this project's, so its answers
are matched by name and the head's rows put in this project's order (a tree equal to a built-in one takes its name).
The preprocessing is a preset (or a JSON config) chosen on import and recorded: Zoobot's images are in [0, 1] as
this project's are, without further normalisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import pydantic

from zoobot_pipeline._safe_load import load_json_object
from zoobot_pipeline.data.preprocessing import PreprocessingConfig
from zoobot_pipeline.errors import CheckpointImportError, ZoobotPipelineError, check_name
from zoobot_pipeline.io import file_sha256, prepare_output_dir
from zoobot_pipeline.models.checkpoint import CHECKPOINT_JSON
from zoobot_pipeline.models.config import FinetuneConfig, ModelConfig
from zoobot_pipeline.schemas import Schema, available_schemas, get_schema, schema_from_dict

__all__ = [
    "ENCODER_CONFIG", "ENCODER_WEIGHTS", "IMPORTED_SCHEMA", "IMPORT_TASKS", "ZOOBOT_CLASSES", "ImportPlan",
    "ImportRequest", "ImportTask", "check_output", "check_request", "plan_encoder", "plan_lightning",
    "read_encoder_config", "source_format",
]

ImportTask = Literal["pretrained", "classification", "regression", "dirichlet"]
IMPORT_TASKS: tuple[str, ...] = get_args(ImportTask)
ZOOBOT_CLASSES = {"pretrained": "ZoobotTree", "classification": "FinetuneableZoobotClassifier",
                  "regression": "FinetuneableZoobotRegressor", "dirichlet": "FinetuneableZoobotTree"}
"""The Zoobot class behind each import task."""
ENCODER_CONFIG = "config.json"
ENCODER_WEIGHTS = "model.safetensors"
IMPORTED_SCHEMA = "zoobot_import"
"""Name of a tree read from a checkpoint's hyper-parameters that equals no built-in tree."""

_ZOOBOT_HEADS = {"dirichlet": "head.1.0.", "linear": "head.linear."}
"""Zoobot's head parameters: ``get_pytorch_dirichlet_head`` (dropout, (linear, scaled sigmoid)), ``LinearHead``."""
_OUR_HEADS = {"pretrained": "head.linear.", "dirichlet": "head.linear.", "classification": "head.1.",
              "regression": "head.1."}
"""This project's head parameters: ``DirichletHead.linear``, or the linear layer of (dropout, linear)."""
_FINETUNE_HPARAMS = ("zoobot_checkpoint_loc", "head_dropout_prob", "training_mode", "layer_decay")
"""Hyper-parameters only Zoobot's finetuneable models have."""
_TIMM_KWARGS = ("drop_path_rate",)
"""The timm keywords a :class:`ModelConfig` records (and so a rebuilt encoder gets)."""
_ENCODER_ARGS = ("num_classes", "in_chans", "global_pool", *_TIMM_KWARGS)
_ZOOBOT_DEFAULTS = {"dropout_rate": 0.2, "head_dropout_prob": 0.5, "layer_decay": 0.75, "label_col": "label"}
"""Zoobot 2.x's defaults, for hyper-parameters a checkpoint does not record."""
_COMPILED = "_orig_mod."
"""What ``torch.compile`` (Zoobot's ``compile_encoder``) inserts into the encoder's weight names."""


@dataclass(frozen=True)
class ImportRequest:
    """What to import and the choices the file cannot make: the preprocessing (always), and where the file does not
    record them, the task, the tree (a built-in name or a YAML path), the encoder's timm architecture and the
    class names of a classifier (Zoobot's classes are the integers ``0..n-1``; by default named ``"0"``, ``"1"``...).
    """

    source: Path
    preprocessing: PreprocessingConfig
    task: ImportTask | None = None
    schema: str | None = None
    architecture: str | None = None
    class_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ImportPlan:
    """How to rebuild an imported model: a ``"pretrained"`` (``model``, ``schema``) or ``"finetuned"`` (``finetune``
    on the ``model`` encoder) checkpoint; ``renames`` maps every source weight to this project's name; the rows of the
    ``head_names`` weights are taken in ``head_rows`` order (None: as they are); ``has_head`` is False for an encoder
    (the caller gives it a zero head); ``imported`` is the record of the origin for ``checkpoint.json``."""

    kind: Literal["pretrained", "finetuned"]
    model: ModelConfig
    schema: Schema | None
    finetune: FinetuneConfig | None
    class_names: tuple[str, ...] | None
    renames: dict[str, str]
    head_names: tuple[str, ...]
    head_rows: list[int] | None
    has_head: bool
    imported: dict[str, Any]


def source_format(path: Path) -> Literal["lightning", "encoder"]:
    """``"encoder"`` for a directory in timm's layout, ``"lightning"`` for a file; anything else is an error."""
    if path.is_dir():
        if (path / CHECKPOINT_JSON).is_file():
            raise CheckpointImportError(f"{path}: already a zoobot-pipeline checkpoint ({CHECKPOINT_JSON}); use it "
                                        "as it is")
        if not (path / ENCODER_CONFIG).is_file():
            raise CheckpointImportError(f"{path}: a directory without {ENCODER_CONFIG}; expected a Lightning .ckpt "
                                        f"file or an encoder in timm's layout ({ENCODER_CONFIG} + {ENCODER_WEIGHTS})")
        if not (path / ENCODER_WEIGHTS).is_file():
            others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
            hint = f" ({', '.join(others)} are pickles, never read)" if others else ""
            raise CheckpointImportError(f"{path}: no {ENCODER_WEIGHTS}{hint}; zoobot-pipeline reads encoder weights "
                                        "from safetensors only")
        return "encoder"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or encoder directory")
    if not path.is_file():
        raise CheckpointImportError(f"{path}: not a regular file")
    return "lightning"


def check_output(request: ImportRequest, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output that cannot take a checkpoint (see
    :func:`~zoobot_pipeline.io.prepare_output_dir`), or that overlaps the source."""
    return prepare_output_dir(out_dir, marker=CHECKPOINT_JSON, what="checkpoint", overwrite=overwrite,
                              inputs=[request.source])


def read_encoder_config(directory: Path) -> dict[str, Any]:
    """The ``config.json`` of an encoder directory (bounded JSON read)."""
    return load_json_object(directory / ENCODER_CONFIG, CheckpointImportError, ENCODER_CONFIG)


def _config(cls: type[pydantic.BaseModel], source: str, **fields: Any) -> Any:
    """``cls(**fields)``, with a validation error naming ``source`` (where the values came from)."""
    try:
        return cls(**fields)
    except pydantic.ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']} (got {e['input']!r})"
                             for e in err.errors(include_url=False))
        raise CheckpointImportError(f"{source}: {problems}") from None


def _architecture(request: ImportRequest, recorded: Any, source: str, hint: str = "") -> str:
    """The timm architecture: ``recorded`` in the file, or ``--architecture`` (which must agree with it)."""
    if recorded is not None and not isinstance(recorded, str):
        raise CheckpointImportError(f"{source}: the architecture should be a timm model name, got {recorded!r}")
    if request.architecture and recorded and request.architecture != recorded:
        raise CheckpointImportError(f"--architecture {request.architecture!r} contradicts {source}, which records "
                                    f"{recorded!r}")
    architecture = request.architecture or recorded
    if not architecture:
        raise CheckpointImportError(f"{request.source}: the checkpoint does not record its encoder's timm "
                                    f"architecture{hint}; give it with --architecture (e.g. convnext_nano)")
    if ":" in architecture:
        raise CheckpointImportError(f"{source}: {architecture!r} is a hub reference; give the timm architecture it "
                                    "holds (the 'architecture' in its config.json), since nothing is downloaded")
    return architecture


def _in_channels(request: ImportRequest, recorded: Any, source: str) -> int:
    channels = request.preprocessing.n_channels
    if recorded is not None and recorded != channels:
        raise CheckpointImportError(f"{source}: the encoder reads {recorded!r} channel(s) but the preprocessing "
                                    f"gives {channels}; choose a preprocessing with {recorded} channel(s)")
    return channels


def _timm_kwargs(kwargs: Any, source: str) -> dict[str, Any]:
    if kwargs is None:
        return {}
    return dict(_supported(kwargs, _TIMM_KWARGS, "timm keywords", source))


def _supported(values: Any, allowed: tuple[str, ...], what: str, source: str) -> Mapping[str, Any]:
    """``values`` if it is a mapping whose keys are all in ``allowed``; else one error naming ``what`` and the keys."""
    if not isinstance(values, Mapping):
        raise CheckpointImportError(f"{source}: {what} should be a mapping, got {values!r}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise CheckpointImportError(f"{source}: {what} {unknown} are not supported (the encoder is rebuilt with "
                                    f"{', '.join(allowed)} only)")
    return values


def _head_kind(shapes: Mapping[str, tuple[int, ...]], source: Path) -> Literal["dirichlet", "linear"]:
    found = [kind for kind, prefix in _ZOOBOT_HEADS.items() if f"{prefix}weight" in shapes]
    if len(found) != 1:
        heads = " or ".join(f"{prefix}weight" for prefix in _ZOOBOT_HEADS.values())
        raise CheckpointImportError(f"{source}: state_dict has no Zoobot head ({heads}); is it a Zoobot "
                                    "checkpoint? (an encoder alone: import its timm directory)")
    return found[0]  # type: ignore[return-value]


def _detect_task(hparams: Mapping[str, Any], head: str, rows: int) -> ImportTask | None:
    """The task the hyper-parameters and head show, or None when they do not tell."""
    finetuned = any(key in hparams for key in _FINETUNE_HPARAMS)
    if head == "dirichlet":
        if finetuned:
            return "dirichlet"
        return "pretrained" if {"question_answer_pairs", "architecture_name"} & set(hparams) else None
    if "num_classes" in hparams or rows > 1:
        return "classification"
    return "regression" if {"unit_interval", "loss"} & set(hparams) else None


def _task(request: ImportRequest, hparams: Mapping[str, Any], head: str, rows: int) -> ImportTask:
    detected = _detect_task(hparams, head, rows)
    fits = ("pretrained", "dirichlet") if head == "dirichlet" else ("classification", "regression")
    if request.task is not None:
        if request.task not in fits:
            raise CheckpointImportError(f"--task {request.task}: {request.source} has a "
                                        f"{'Dirichlet' if head == 'dirichlet' else 'linear'} head, so it is "
                                        f"{' or '.join(fits)}")
        if detected is not None and detected != request.task:
            raise CheckpointImportError(f"--task {request.task}: {request.source} is a {ZOOBOT_CLASSES[detected]} "
                                        f"({detected})")
        return request.task
    if detected is None:
        raise CheckpointImportError(f"{request.source}: its hyper-parameters do not say which Zoobot model it is; "
                                    f"give --task ({' or '.join(fits)})")
    return detected


def _renames(names: Iterable[str], head: str, task: ImportTask, source: Path) -> dict[str, str]:
    zoobot_head, our_head = _ZOOBOT_HEADS[head], _OUR_HEADS[task]
    renames = {}
    for name in names:
        if name.startswith("encoder."):
            renames[name] = name.replace(_COMPILED, "", 1)
        elif name in (f"{zoobot_head}weight", f"{zoobot_head}bias"):
            renames[name] = our_head + name.removeprefix(zoobot_head)
        else:
            raise CheckpointImportError(f"{source}: unexpected weight {name!r} (a Zoobot model has encoder.* and "
                                        f"{zoobot_head}weight/bias)")
    return renames


def _zoobot_tree(hparams: Mapping[str, Any], source: str) -> tuple[list[str], dict[str, Any]] | None:
    """Zoobot's label columns and tree spec from ``question_answer_pairs`` and ``dependencies``, or None."""
    pairs = hparams.get("question_answer_pairs")
    if pairs is None:
        return None
    dependencies = hparams.get("dependencies") or {}
    if not isinstance(pairs, Mapping) or not isinstance(dependencies, Mapping):
        raise CheckpointImportError(f"{source}: question_answer_pairs and dependencies should be mappings")
    questions, label_cols = [], []
    for question, suffixes in pairs.items():
        if not isinstance(suffixes, list | tuple) or not all(isinstance(s, str) and s.startswith("_")
                                                              for s in suffixes):
            raise CheckpointImportError(f"{source}: question_answer_pairs[{question!r}] should list answer suffixes "
                                        f"such as '_smooth', got {suffixes!r}")
        label_cols += [f"{question}{suffix}" for suffix in suffixes]
        questions.append({"name": str(question), "answers": [s[1:] for s in suffixes],
                          "asked_after": dependencies.get(question)})
    return label_cols, {"name": IMPORTED_SCHEMA, "questions": questions}


def _same_tree(schema: Schema, spec: dict[str, Any]) -> bool:
    """Whether ``spec`` (from Zoobot) has ``schema``'s answers, in any order, and its dependencies."""
    asked_after = {q["name"]: q["asked_after"] for q in spec["questions"]}
    cols = {f"{q['name']}_{a}" for q in spec["questions"] for a in q["answers"]}
    return cols == set(schema.label_cols) and all(
        asked_after.get(q.name) == (q.asked_after.label_col if q.asked_after else None) for q in schema.questions)


def _tree(request: ImportRequest, hparams: Mapping[str, Any], rows: int) -> tuple[Schema, str, list[int]]:
    """The tree (``--schema`` or the checkpoint's), its name for the config, and the head rows in its order."""
    source = f"{request.source} (hyper_parameters)"
    zoobot = _zoobot_tree(hparams, source)
    if request.schema is not None:
        schema, name = get_schema(request.schema), request.schema
        if zoobot is not None and not _same_tree(schema, zoobot[1]):
            raise CheckpointImportError(f"--schema {request.schema}: the decision tree in {source} has other "
                                        f"answers or dependencies than {schema.name!r}: "
                                        f"{_difference(zoobot[0], schema.label_cols)}")
    elif zoobot is None:
        raise CheckpointImportError(f"{request.source}: the checkpoint records no decision tree; give it with "
                                    f"--schema ({', '.join(available_schemas())} or a YAML file)")
    else:
        builtin = [name for name in available_schemas() if _same_tree(get_schema(name), zoobot[1])]
        name = builtin[0] if builtin else IMPORTED_SCHEMA
        schema = get_schema(name) if builtin else schema_from_dict(zoobot[1], source=source)
    label_cols = zoobot[0] if zoobot is not None else schema.label_cols
    if rows != len(label_cols) or rows != schema.n_answers:
        raise CheckpointImportError(f"{request.source}: the head has {rows} outputs but tree {schema.name!r} has "
                                    f"{schema.n_answers} answers")
    return schema, name, [label_cols.index(col) for col in schema.label_cols]


def _difference(theirs: list[str], ours: list[str]) -> str:
    missing, extra = [c for c in ours if c not in theirs], [c for c in theirs if c not in ours]
    if not missing and not extra:
        return "the same answers, other dependencies"
    return f"the checkpoint lacks {missing[:3]}, has {extra[:3]} besides"


def _record(request: ImportRequest, file: Path, form: str, zoobot_class: str, **extra: Any) -> dict[str, Any]:
    return {"source": str(request.source.resolve()), "format": form, "file_sha256": file_sha256(file),
            "zoobot_class": zoobot_class, **extra}


def plan_lightning(request: ImportRequest, hparams: Any, shapes: Mapping[str, tuple[int, ...]],
                   lightning_version: str | None = None) -> ImportPlan:
    """The plan for a Zoobot Lightning checkpoint: its ``hyper_parameters`` (plain containers) and the shapes of
    its ``state_dict`` weights by name."""
    source = request.source
    hp_source = f"{source} (hyper_parameters)"
    if hparams is None:
        hparams = {}
    if not isinstance(hparams, Mapping):
        raise CheckpointImportError(f"{hp_source}: expected a mapping, got {type(hparams).__name__}")
    head = _head_kind(shapes, source)
    rows = shapes[f"{_ZOOBOT_HEADS[head]}weight"][0]
    task = _task(request, hparams, head, rows)
    renames = _renames(shapes, head, task, source)
    hub = hparams.get("name") or hparams.get("zoobot_checkpoint_loc")
    hint = f" (its encoder came from {hub!r}, whose config.json names it)" if hub else ""
    architecture = _architecture(request, hparams.get("architecture_name"), f"{hp_source} architecture_name", hint)
    encoder = {"architecture": architecture, "in_channels": _in_channels(request, hparams.get("channels"), hp_source),
               "input_size": request.preprocessing.input_size,
               **_timm_kwargs(hparams.get("timm_kwargs"), f"{hp_source} timm_kwargs")}
    head_names = tuple(_OUR_HEADS[task] + suffix for suffix in ("weight", "bias"))
    record = _record(request, source, "lightning", ZOOBOT_CLASSES[task], lightning=lightning_version, head="imported")
    if task == "pretrained":
        schema, schema_name, head_rows = _tree(request, hparams, rows)
        model = _config(ModelConfig, hp_source, schema_name=schema_name,
                        dropout_rate=hparams.get("dropout_rate", _ZOOBOT_DEFAULTS["dropout_rate"]), **encoder)
        return ImportPlan("pretrained", model, schema, None, None, renames, head_names, head_rows, True, record)
    common = {"n_blocks": "all" if hparams.get("training_mode") == "full" else 0,
              "lr_decay": hparams.get("layer_decay", _ZOOBOT_DEFAULTS["layer_decay"]),
              "dropout_rate": hparams.get("head_dropout_prob", _ZOOBOT_DEFAULTS["head_dropout_prob"])}
    label_col = str(hparams.get("label_col") or _ZOOBOT_DEFAULTS["label_col"])
    schema, head_rows, class_names = None, None, None
    if task == "dirichlet":
        if request.schema is None:
            raise CheckpointImportError(f"{source}: a FinetuneableZoobotTree records its tree as an object, which is "
                                        f"never unpickled; give the tree with --schema")
        schema, _, head_rows = _tree(request, {}, rows)
        finetune = _config(FinetuneConfig, hp_source, task="dirichlet", schema_name=request.schema, **common)
    elif task == "classification":
        n_classes = hparams.get("num_classes", rows)
        class_names = request.class_names or tuple(str(i) for i in range(rows))
        if n_classes != rows or len(class_names) != rows or rows < 2:
            raise CheckpointImportError(f"{source}: the head has {rows} outputs, num_classes is {n_classes!r} and "
                                        f"{len(class_names)} class names are given; they must agree (2 or more)")
        finetune = _config(FinetuneConfig, hp_source, task="classification", label_columns=(label_col,), **common)
    else:
        if hparams.get("unit_interval"):
            raise CheckpointImportError(f"{hp_source}: unit_interval=True (a sigmoid on the regression head) is not "
                                        "supported: this project's regression head is linear")
        if rows != 1:
            raise CheckpointImportError(f"{source}: a Zoobot regressor has 1 output, this head has {rows}")
        finetune = _config(FinetuneConfig, hp_source, task="regression", label_columns=(label_col,), **common)
    model = _config(ModelConfig, hp_source, **encoder)
    return ImportPlan("finetuned", model, schema, finetune, class_names, renames, head_names, head_rows, True,
                      record)


def plan_encoder(request: ImportRequest, config: Mapping[str, Any], names: Iterable[str]) -> ImportPlan:
    """The plan for an encoder in timm's layout: its ``config.json`` and the names of its weights."""
    source = f"{request.source / ENCODER_CONFIG}"
    if request.task not in (None, "pretrained") or request.class_names:
        raise CheckpointImportError(f"{request.source}: an encoder has no head; --task {request.task} and "
                                    "--class-name apply to Lightning checkpoints (finetune the encoder instead)")
    args = _supported(config.get("model_args") or {}, _ENCODER_ARGS, "model_args", source)
    num_classes = args.get("num_classes", config.get("num_classes", 0))
    pool = args.get("global_pool", config.get("global_pool", "avg"))
    if num_classes != 0 or pool != "avg":
        raise CheckpointImportError(f"{source}: num_classes={num_classes!r}, global_pool={pool!r}: expected an "
                                    "encoder (num_classes 0, average pooling), as Zoobot publishes them")
    schema_name = request.schema or "decals_dr5"
    model = _config(ModelConfig, source, schema_name=schema_name,
                    architecture=_architecture(request, config.get("architecture"), f"{source} architecture"),
                    in_channels=_in_channels(request, args.get("in_chans"), f"{source} model_args.in_chans"),
                    input_size=request.preprocessing.input_size,
                    **{key: args[key] for key in _TIMM_KWARGS if key in args})
    schema = get_schema(schema_name)
    renames = {name: f"encoder.{name}" for name in names}
    record = _record(request, request.source / ENCODER_WEIGHTS, "timm-encoder", "encoder",
                     head="none: zero weights, every concentration 2 until finetuned")
    return ImportPlan("pretrained", model, schema, None, None, renames, ("head.linear.weight", "head.linear.bias"),
                      None, False, record)


def check_request(request: ImportRequest) -> None:
    """Refuse, before reading the source, options that can never fit: an unknown task, a tree that cannot be read,
    repeated class names."""
    if request.task is not None:
        check_name(request.task, IMPORT_TASKS, "--task")
    if request.schema is not None:
        try:
            get_schema(request.schema)
        except ZoobotPipelineError as err:
            raise type(err)(f"--schema: {err}") from None
    if request.class_names is not None and len(set(request.class_names)) != len(request.class_names):
        raise CheckpointImportError(f"--class-name: repeated names in {list(request.class_names)}")
