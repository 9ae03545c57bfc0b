"""Typed settings: one schema for every stage, layered as defaults < YAML file < CLI overrides.

Every number from the SOFT reference protocol (Tang et al. 2025, arXiv 2505.20771, and the authors' code, github.com/sssth/Self-Optimized-Fine-Tuning) is a default here, never a constant
buried in a stage. A run directory stores the resolved config (see `softrec.runs`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from softrec.errors import UserError
from softrec.methods import SCHEDULERS, TRAIN_METHODS
from softrec.suggest import did_you_mean

# transformers' schedulers that need nothing beyond warmup_steps (get_scheduler's other kwargs unset)
LrScheduler = Literal["constant_with_warmup", "constant", "linear", "cosine", "cosine_with_restarts",
                      "polynomial", "inverse_sqrt"]
LR_SCHEDULERS: tuple[str, ...] = get_args(LrScheduler)
_METRIC = re.compile(r"^(HR|NDCG)@([0-9]+)$")
# the grounding choices (eval.grounding, every --grounding): generated text -> catalogue items
GROUNDINGS: dict[str, str] = {"l2": "BIGRec (reference)", "trie": "constrained beams", "minilm": "sentence embeddings"}
# source formats data.format names; softrec.data.readers.READERS has one reader per name (a test
# checks they agree: the schema sits below the data layer and cannot import it)
FORMATS: tuple[str, ...] = ("recbole", "windows", "d3", "amazon2023", "grouplens", "csv")
# SOFT's distilled-target rules (soft.distill_mode, `softrec distill --mode`; inference/distill.py applies them)
DISTILL_MODES: dict[str, str] = {
    "raw": "the top beam as generated (reference)",
    "quoted": ('the top beam cut after its first closing quote ("A"\\n"B" or "A", "B" -> "A"; a quote followed '
               'by a word, like an inch mark, closes nothing); no closing quote: as generated'),
    "grounded": "the top beam's nearest catalogue title (L2 grounding)",
    "sample": "one sampled continuation (top-p 0.9) instead of beam search",
}
MethodName = Literal[TRAIN_METHODS]  # type: ignore[valid-type]
SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]
GroundingName = Literal[tuple(GROUNDINGS)]  # type: ignore[valid-type]
DistillMode = Literal[tuple(DISTILL_MODES)]  # type: ignore[valid-type]


def _check_metric(value: str, allowed: str) -> str:
    """HR@K / NDCG@K (exact case: the key the evaluation writes); a near miss gets a suggestion."""
    if _METRIC.match(value) or (allowed == "validity" and value == "validity"):
        return value
    guess = value.upper().replace("VALIDITY", "validity")
    hint = f"; did you mean {guess!r}?" if _METRIC.match(guess) or guess == allowed else ""
    either = " or validity (K in eval.ks)" if allowed else ""
    raise ValueError(f"expected HR@K or NDCG@K{either}{hint}")

LLARA_MAX_NEW_TOKENS = 128  # reference inference_llara.py line 205 (BIGRec: 64, inference.py line 83)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """The reference data protocol (origin_data/amazon_process.py, process.py): filtering, windows, splits and samples."""

    dataset: str = Field("demo", description="a dataset NAME (demo, ml-100k, ...) or a DIR")
    format: str | None = Field(None, description="reader name; None = detect from the files")
    k_core: int = Field(10, ge=0, description="iterative k-core on users and items (0 = off)")
    history_len: int = Field(10, ge=1, description="history items per window")
    min_history: int = Field(1, ge=1, description="shortest history kept in a window")
    stride: int = Field(1, ge=1)
    split: Literal["time", "loo"] = "time"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    train_size: int | None = Field(4096, ge=1, description="sampled train windows (None = all)")
    valid_size: int | None = Field(512, ge=1)
    test_size: int | None = Field(1000, ge=1)
    seed: int = 42
    domain: tuple[str, str, str] | None = Field(
        None, description="prompt words (item, items, verb), e.g. [book, books, read]; None = from the dataset"
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is None or value == "demo":
            return value
        if value not in FORMATS:
            raise ValueError(f"unknown format {value!r}: expected one of {', '.join(FORMATS)}{did_you_mean(value, FORMATS)}")
        return value

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> DataConfig:
        if abs(sum(self.ratios) - 1.0) > 1e-6 or min(self.ratios) < 0:
            raise ValueError(f"ratios must be non-negative and sum to 1, got {self.ratios}")
        return self


class ModelConfig(_Section):
    name: str = Field("gemma-3-270m", description="registry name, local HF dir or Hub id")
    template: Literal["alpaca", "chat"] = "alpaca"
    max_length: int = Field(700, ge=16, description="prompt + response tokens")
    backbone: Literal["bigrec", "llara"] = "bigrec"
    llara_sasrec_run: str | None = Field(
        None, description="LLaRA: SASRec run (same prepared data) whose item embeddings are projected; "
        "None = train one into RUN_DIR/sasrec"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class LoraSettings(_Section):
    enabled: bool = Field(True, description="False = full fine-tuning")
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class TrainConfig(_Section):
    """Section 4 (SFT) and the training half of section 6 (SOFT)."""

    method: MethodName = "sft"  # softrec.methods.METHODS
    lora: LoraSettings = Field(default_factory=LoraSettings)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(20, ge=0)
    lr_scheduler: LrScheduler = Field("constant_with_warmup", description="transformers learning-rate schedule")
    weight_decay: float = Field(0.0, ge=0)
    effective_batch: int = Field(256, ge=1, description="samples per optimizer step")
    micro_batch: int = Field(8, ge=1, description="samples per forward pass")
    epochs: int = Field(7, ge=1)
    patience: int = Field(2, ge=1, description="epochs without validation gain before stopping")
    seed: int = 42
    bf16: Literal["auto", "on", "off"] = Field("auto", description="bf16 autocast")
    logits_at_labels_only: bool = Field(True, description="LM head only where labels exist")
    group_by_length: bool = Field(
        False, description="False (reference): micro-batches in random order. True (softrec's earlier default): "
        "micro-batches of similar length (prompt + both targets), less padding, but long (run-on) distilled "
        "targets cluster and get a smaller share of the gradient; see docs/fidelity.md"
    )
    validate_every_epoch: bool = True
    save_total_limit: int = Field(2, ge=1)
    keep_epoch_adapters: bool = Field(
        True, description="LoRA: save every epoch's adapter (a few MB, no optimizer state) to RUN_DIR/epochs/epoch-N, "
        "the teachers of `softrec distill --epoch N`; checkpoints/ keeps only the last save_total_limit"
    )
    keep_epoch_models: bool = Field(
        False, description="full fine-tuning: save every epoch's whole model there too (hundreds of MB each)"
    )
    selection_metric: str = Field(
        "HR@10", description="validation metric that picks the best epoch (and the best alpha of a sweep): "
        "HR@K, NDCG@K (K in eval.ks) or validity"
    )
    selection_tie_break: bool = Field(
        False, description="False (reference): only a strictly higher selection_metric is a gain (keeps the "
        "epoch, resets patience). True (softrec's earlier rule): a tie is broken by NDCG at the same cut-off, "
        "then validity, and the winner counts as a gain"
    )
    train_samples: int | None = Field(
        None, ge=1, description="train on a seeded subset of this many prepared train samples (None = all)"
    )
    valid_samples: int | None = Field(
        None, ge=1, description="validate on a seeded subset of this many valid samples (None = all)"
    )
    checkpoint_every: int = Field(
        1, ge=0, description="optimizer steps between mid-epoch checkpoints for --resume (0 = epoch ends only)"
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers fed with the training logs: tensorboard (RUN_DIR/logs), wandb, mlflow "
        "(each needs its package installed); [] = none, RUN_DIR/logs/metrics.jsonl is always written",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None or value == "none":
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("selection_metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        return _check_metric(value, "validity")

    @field_validator("bf16", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        # YAML (and so --set train.bf16=off) reads on/off as booleans
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class SoftConfig(_Section):
    """Section 6: self-distillation and the curriculum scheduler."""

    scheduler: SchedulerName = "adaptive"  # softrec.methods.SCHEDULERS
    alpha: float = Field(1.0, gt=0, description="pace of the adaptive scheduler")
    alpha_sweep: list[float] = Field(default_factory=lambda: [100.0, 10.0, 1.0, 0.1])
    fixed_lambda: float = Field(0.5, ge=0, le=1)
    probe_size: int = Field(256, ge=1)
    probe_seed: int = 42
    distill_beams: int = Field(4, ge=1)
    distill_max_new_tokens: int = Field(64, ge=1, description="also the probe's decoding length; reference: "
                                        "64 (BIGRec), 128 (LLaRA; set by Config like eval.max_new_tokens)")
    distill_mode: DistillMode = Field("raw", description="the self-distilled target: " + "; ".join(
        f"{name} = {text}" for name, text in DISTILL_MODES.items()))


class EvalConfig(_Section):
    """Section 5: decoding, grounding and metrics."""

    grounding: GroundingName = "l2"  # GROUNDINGS
    num_beams: int = Field(4, ge=1)
    max_new_tokens: int = Field(64, ge=1, description="reference: 64 (BIGRec), 128 (LLaRA; set by Config "
                                "when model.backbone is llara and this is not given)")
    length_penalty: float = 1.0
    batch_size: int = Field(32, ge=1, description="prompts decoded together (each with num_beams rows); "
                            "larger batches amortise the LM head, see benchmarks/results/generation-*")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="decoding dtype; auto = bf16 where the hardware computes it natively (AMX or "
        "AVX512-BF16 CPUs, GPUs), else float32; float32 gives plain `generate`'s beams exactly, bf16 moves "
        "near-tied beams but not the metrics measurably (benchmarks/results/eval-dtype-2026-12-05)")
    ks: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 5, 10, 20, 50], min_length=1, description="cut-offs K of HR@K and NDCG@K"
    )
    exclude_history: bool = False
    top_n: int = Field(50, ge=1, description="ranked items kept per sample in predictions")
    response_rule: Literal["whole", "first-line"] = Field(
        "whole", description="the text read from a generation for grounding, validity, the probe distance "
        "and distillation's exact-title share: whole (reference) = the whole generation, quotes and spaces "
        "stripped; first-line (softrec's earlier rule) = its first line only; see docs/fidelity.md"
    )


class ClassicConfig(_Section):
    """Classic sequential recommenders (SASRec, GRU4Rec: the paper's traditional baselines), trained on the whole
    training pool (train_full). Defaults follow RecBole's SASRec: 64-d, 2 layers, 2 heads, CE loss."""

    hidden: int = Field(64, ge=1, description="item embedding / model width (LLaRA reads these 64-d vectors)")
    layers: int = Field(2, ge=1, description="Transformer blocks (SASRec) or GRU layers (GRU4Rec)")
    heads: int = Field(2, ge=1, description="attention heads (SASRec); hidden must divide by it")
    inner: int = Field(256, ge=1, description="feed-forward width (SASRec)")
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(50, ge=1, description="most recent history items the model reads")
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1, description="epochs without validation gain before stopping")
    loss: Literal["ce", "bpr"] = Field("ce", description="ce = softmax over the full catalogue; bpr = one sampled negative")
    train_positions: Literal["all", "last"] = Field(
        "all", description="all = every position of the users' sequences (rebuilt from the windows) predicts "
        "its successor (SASRec paper); last = each window predicts only its target (RecBole; slower)")
    valid_metric: str = Field("NDCG@10", description="early-stopping metric: HR@K or NDCG@K")
    seed: int = 42

    @field_validator("valid_metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        return _check_metric(value, "")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ClassicConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    soft: SoftConfig = Field(default_factory=SoftConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    classic: ClassicConfig = Field(default_factory=ClassicConfig)

    @model_validator(mode="after")
    def _selection_metric_is_computed(self) -> Config:
        match = _METRIC.match(self.train.selection_metric)
        if match and int(match.group(2)) not in self.eval.ks:
            raise ValueError(
                f"train.selection_metric {self.train.selection_metric} needs {match.group(2)} in eval.ks {self.eval.ks}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _backbone_decoding_length(cls, data: Any) -> Any:
        """The reference decodes LLaRA with up to 128 new tokens (inference_llara.py line 205), BIGRec
        with 64 (inference.py line 83): the LLaRA default unless a length is given."""
        if not isinstance(data, dict):
            return data
        model = data.get("model")
        backbone = model.get("backbone") if isinstance(model, dict) else getattr(model, "backbone", None)
        if backbone != "llara":
            return data
        data = dict(data)
        for section, name in (("eval", "max_new_tokens"), ("soft", "distill_max_new_tokens")):
            values = data.get(section)
            if values is None:
                data[section] = {name: LLARA_MAX_NEW_TOKENS}
            elif isinstance(values, dict) and values.get(name) is None:
                data[section] = {**values, name: LLARA_MAX_NEW_TOKENS}
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def with_(self, **sections: dict[str, Any]) -> Config:
        """A copy with some fields of some sections replaced, validated:
        `config.with_(train={"method": "sft"}, soft={"alpha": 0.5})`."""
        tree = self.model_dump()
        for section, values in sections.items():
            tree[section].update(values)
        return Config.model_validate(tree)


def as_prepared(config: Config, dataset: Any) -> Config:
    """`config` with its data section replaced by what `dataset` (a PreparedDataset) was actually
    prepared with, for a run's config.yaml: a run trained on a prepared directory records the source's
    name and the preparation settings, not the data defaults it never used (the prepared directory
    itself is run.json's `dataset`). Split sizes the dataset does not record are its sample counts."""
    recorded = dict(dataset.meta.get("settings") or {})
    data = {k: v for k, v in recorded.items() if k in DataConfig.model_fields}
    data["dataset"] = str(dataset.meta.get("name") or Path(dataset.path).name)
    if not recorded:
        for split in ("train", "valid", "test"):
            data[f"{split}_size"] = len(dataset.split(split)) or None
    try:
        return config.with_(data=data)
    except ValidationError:  # an older or hand-written dataset.json: keep the path at least
        return config.with_(data={"dataset": data["dataset"]})


def check_trackers(report_to: list[str]) -> None:
    """UserError for a train.report_to tracker whose package is missing (checked when training starts,
    not in the schema: a run's config.yaml must stay loadable where the tracker is not installed)."""
    import importlib.util

    for tracker in report_to:
        if importlib.util.find_spec(tracker) is None:
            raise UserError(f"train.report_to: {tracker} is not installed (pip install {tracker}), "
                            "or drop it (--set train.report_to=[tensorboard])")


def _parse_scalar(text: str) -> Any:
    """`--set a.b=VALUE`: VALUE is read as YAML, so 1e-4, true, [q_proj, v_proj] all work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {dotted}: '{key}' is not a section")
    node[keys[-1]] = value


def _section_fields(loc: tuple) -> list[str]:
    """The field names allowed where `loc` (a pydantic error location) points."""
    model: Any = Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(getattr(model, "model_fields", {}))


def _format_validation_error(err: ValidationError, source: str | dict[str, str]) -> str:
    """One line for the first error: where it came from, the field, what is wrong, a suggestion."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    field = ".".join(str(p) for p in loc) or "(root)"
    if isinstance(source, dict):  # dotted key -> the layer that set it
        source = next((source[k] for k in (field, *(".".join(map(str, loc[:i])) for i in range(len(loc) - 1, 0, -1)))
                       if k in source), source.get("", "settings"))
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        allowed = _section_fields(loc)
        hint = did_you_mean(str(loc[-1]), allowed) if allowed else ""
        where = ".".join(str(p) for p in loc[:-1]) or "the top level"
        return f"{source}: unknown setting '{field}' (not a field of {where}){hint}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "literal_error":
        choices = re.findall(r"'([^']*)'", str(first.get("ctx", {}).get("expected", "")))
        message += did_you_mean(str(value), choices) if isinstance(value, str) else ""
    more = len(err.errors()) - 1
    got = f" (got {value!r})" if loc else ""
    return f"{source}: field '{field}': {message}{got}" + (f" [+{more} more]" if more else "")


def setting_keys(model: Any = None, prefix: str = "") -> list[str]:
    """Every dotted settings key (`train.lora.r`, ...), for suggestions and `config show`."""
    model = model or Config
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += setting_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> Config:
    """Build a Config from defaults, an optional YAML file, `key.sub=value` strings and a dict of
    dotted keys (the dedicated CLI flags). Later layers win."""
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {"": "settings"}  # dotted key -> which layer set it (for errors)
    if path is not None:
        path = Path(path)
        sources[""] = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of sections at the top level")
        tree.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. train.learning_rate=2e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in setting_keys() and not any(k.startswith(key + ".") for k in setting_keys()):
            raise UserError(f"--set {key}: unknown setting{did_you_mean(key, setting_keys())} "
                            "(`softrec config show` lists them all)")
        _set_path(tree, key, _parse_scalar(raw))
        sources[key] = f"--set {key}"
    for key, value in (values or {}).items():
        if value is not None:
            _set_path(tree, key, value)
            sources[key] = "command-line option"
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, sources)) from None


# ---------------------------------------------------------------- command-line layers
def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (sections: data, model, train, soft, eval)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override any setting, e.g. --set train.learning_rate=2e-4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace, flags: dict[str, Any] | None = None) -> Config:
    """defaults < --config < --set < dedicated flags (`flags` maps dotted keys to flag values)."""
    return load_config(getattr(args, "config", None), getattr(args, "overrides", []), flags or {})
