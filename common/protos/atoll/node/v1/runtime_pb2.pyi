from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Caller(_message.Message):
    __slots__ = ("run_id", "node_id", "message_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    node_id: int
    message_id: str
    def __init__(self, run_id: _Optional[str] = ..., node_id: _Optional[int] = ..., message_id: _Optional[str] = ...) -> None: ...

class RunSettings(_message.Message):
    __slots__ = ("contract_hash", "model", "local_epochs", "sample_rate", "learning_rate", "max_grad_norm", "noise_multiplier", "target_epsilon", "delta", "total_rounds", "eval_noise", "eval_bins", "proximal_mu", "server_round", "evaluate_incoming", "optimizer", "final_eval_noise", "drift_reference_noise", "drift_bins", "app_manifest", "app_manifest_signature", "learning_rate_final")
    CONTRACT_HASH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    EVAL_NOISE_FIELD_NUMBER: _ClassVar[int]
    EVAL_BINS_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_INCOMING_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    FINAL_EVAL_NOISE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_REFERENCE_NOISE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_BINS_FIELD_NUMBER: _ClassVar[int]
    APP_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    APP_MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FINAL_FIELD_NUMBER: _ClassVar[int]
    contract_hash: str
    model: str
    local_epochs: int
    sample_rate: float
    learning_rate: float
    max_grad_norm: float
    noise_multiplier: float
    target_epsilon: float
    delta: float
    total_rounds: int
    eval_noise: float
    eval_bins: int
    proximal_mu: float
    server_round: int
    evaluate_incoming: bool
    optimizer: str
    final_eval_noise: float
    drift_reference_noise: float
    drift_bins: int
    app_manifest: str
    app_manifest_signature: bytes
    learning_rate_final: float
    def __init__(self, contract_hash: _Optional[str] = ..., model: _Optional[str] = ..., local_epochs: _Optional[int] = ..., sample_rate: _Optional[float] = ..., learning_rate: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., total_rounds: _Optional[int] = ..., eval_noise: _Optional[float] = ..., eval_bins: _Optional[int] = ..., proximal_mu: _Optional[float] = ..., server_round: _Optional[int] = ..., evaluate_incoming: _Optional[bool] = ..., optimizer: _Optional[str] = ..., final_eval_noise: _Optional[float] = ..., drift_reference_noise: _Optional[float] = ..., drift_bins: _Optional[int] = ..., app_manifest: _Optional[str] = ..., app_manifest_signature: _Optional[bytes] = ..., learning_rate_final: _Optional[float] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Weights(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("epsilon_run", "epsilon_total", "epsilon_cap", "epsilon_remaining", "delta")
    EPSILON_RUN_FIELD_NUMBER: _ClassVar[int]
    EPSILON_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CAP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    epsilon_run: float
    epsilon_total: float
    epsilon_cap: float
    epsilon_remaining: float
    delta: float
    def __init__(self, epsilon_run: _Optional[float] = ..., epsilon_total: _Optional[float] = ..., epsilon_cap: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class RollCallRequest(_message.Message):
    __slots__ = ("caller", "settings")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    settings: RunSettings
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., settings: _Optional[_Union[RunSettings, _Mapping]] = ...) -> None: ...

class Joined(_message.Message):
    __slots__ = ("node_name", "contract_hash", "planned_epsilon", "noise_multiplier", "size_bucket", "budget")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_HASH_FIELD_NUMBER: _ClassVar[int]
    PLANNED_EPSILON_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SIZE_BUCKET_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    contract_hash: str
    planned_epsilon: float
    noise_multiplier: float
    size_bucket: str
    budget: Budget
    def __init__(self, node_name: _Optional[str] = ..., contract_hash: _Optional[str] = ..., planned_epsilon: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., size_bucket: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class RollCallReply(_message.Message):
    __slots__ = ("joined", "refusal")
    JOINED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    joined: Joined
    refusal: Refusal
    def __init__(self, joined: _Optional[_Union[Joined, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("caller", "settings", "weights")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    settings: RunSettings
    weights: Weights
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., settings: _Optional[_Union[RunSettings, _Mapping]] = ..., weights: _Optional[_Union[Weights, _Mapping]] = ...) -> None: ...

class Trained(_message.Message):
    __slots__ = ("weights", "noise_multiplier", "sample_rate", "steps", "budget", "incoming")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    weights: Weights
    noise_multiplier: float
    sample_rate: float
    steps: int
    budget: Budget
    incoming: Evaluated
    def __init__(self, weights: _Optional[_Union[Weights, _Mapping]] = ..., noise_multiplier: _Optional[float] = ..., sample_rate: _Optional[float] = ..., steps: _Optional[int] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., incoming: _Optional[_Union[Evaluated, _Mapping]] = ...) -> None: ...

class TrainReply(_message.Message):
    __slots__ = ("trained", "refusal")
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    trained: Trained
    refusal: Refusal
    def __init__(self, trained: _Optional[_Union[Trained, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("caller", "settings", "weights")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    settings: RunSettings
    weights: Weights
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., settings: _Optional[_Union[RunSettings, _Mapping]] = ..., weights: _Optional[_Union[Weights, _Mapping]] = ...) -> None: ...

class Evaluated(_message.Message):
    __slots__ = ("hist_pos", "hist_neg", "noise", "budget")
    HIST_POS_FIELD_NUMBER: _ClassVar[int]
    HIST_NEG_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    hist_pos: _containers.RepeatedScalarFieldContainer[float]
    hist_neg: _containers.RepeatedScalarFieldContainer[float]
    noise: float
    budget: Budget
    def __init__(self, hist_pos: _Optional[_Iterable[float]] = ..., hist_neg: _Optional[_Iterable[float]] = ..., noise: _Optional[float] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class EvaluateReply(_message.Message):
    __slots__ = ("evaluated", "refusal")
    EVALUATED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    evaluated: Evaluated
    refusal: Refusal
    def __init__(self, evaluated: _Optional[_Union[Evaluated, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("caller", "settings", "weights")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    settings: RunSettings
    weights: Weights
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., settings: _Optional[_Union[RunSettings, _Mapping]] = ..., weights: _Optional[_Union[Weights, _Mapping]] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("node_name", "budget", "final", "drift_reference", "drift_reference_noise")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    DRIFT_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_REFERENCE_NOISE_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    budget: Budget
    final: Evaluated
    drift_reference: _containers.RepeatedScalarFieldContainer[float]
    drift_reference_noise: float
    def __init__(self, node_name: _Optional[str] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., final: _Optional[_Union[Evaluated, _Mapping]] = ..., drift_reference: _Optional[_Iterable[float]] = ..., drift_reference_noise: _Optional[float] = ...) -> None: ...

class FinishReply(_message.Message):
    __slots__ = ("finished", "refusal")
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    finished: Finished
    refusal: Refusal
    def __init__(self, finished: _Optional[_Union[Finished, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("field", "values", "low", "high")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    field: str
    values: _containers.RepeatedScalarFieldContainer[str]
    low: float
    high: float
    def __init__(self, field: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class QuerySpec(_message.Message):
    __slots__ = ("kind", "field", "group_by", "filters", "bins", "quantiles", "noise_multiplier", "target_epsilon", "contract_hash")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_HASH_FIELD_NUMBER: _ClassVar[int]
    kind: str
    field: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    bins: int
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    noise_multiplier: float
    target_epsilon: float
    contract_hash: str
    def __init__(self, kind: _Optional[str] = ..., field: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ..., bins: _Optional[int] = ..., quantiles: _Optional[_Iterable[float]] = ..., noise_multiplier: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., contract_hash: _Optional[str] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("caller", "spec", "app_manifest", "app_manifest_signature")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    APP_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    APP_MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    caller: Caller
    spec: QuerySpec
    app_manifest: str
    app_manifest_signature: bytes
    def __init__(self, caller: _Optional[_Union[Caller, _Mapping]] = ..., spec: _Optional[_Union[QuerySpec, _Mapping]] = ..., app_manifest: _Optional[str] = ..., app_manifest_signature: _Optional[bytes] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("key", "values", "noise_std")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    key: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    noise_std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, key: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ..., noise_std: _Optional[_Iterable[float]] = ...) -> None: ...

class Answered(_message.Message):
    __slots__ = ("node_name", "value_names", "cells", "noise_multiplier", "sensitivity", "epsilon", "budget")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    value_names: _containers.RepeatedScalarFieldContainer[str]
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    noise_multiplier: float
    sensitivity: float
    epsilon: float
    budget: Budget
    def __init__(self, node_name: _Optional[str] = ..., value_names: _Optional[_Iterable[str]] = ..., cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ..., noise_multiplier: _Optional[float] = ..., sensitivity: _Optional[float] = ..., epsilon: _Optional[float] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class QueryReply(_message.Message):
    __slots__ = ("answered", "refusal")
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    answered: Answered
    refusal: Refusal
    def __init__(self, answered: _Optional[_Union[Answered, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ...) -> None: ...
