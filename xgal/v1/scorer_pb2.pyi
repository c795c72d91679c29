from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_RANDOM: _ClassVar[Strategy]
    STRATEGY_UNCERTAINTY: _ClassVar[Strategy]
    STRATEGY_MISALIGNMENT: _ClassVar[Strategy]
    STRATEGY_XGAL: _ClassVar[Strategy]

class UncertaintyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNCERTAINTY_UNSPECIFIED: _ClassVar[UncertaintyKind]
    UNCERTAINTY_ENTROPY: _ClassVar[UncertaintyKind]
    UNCERTAINTY_MARGIN: _ClassVar[UncertaintyKind]
    UNCERTAINTY_LEAST_CONFIDENCE: _ClassVar[UncertaintyKind]
    UNCERTAINTY_MEAN_ENTROPY: _ClassVar[UncertaintyKind]
    UNCERTAINTY_BALD: _ClassVar[UncertaintyKind]

class MissingRoiPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISSING_ROI_UNSPECIFIED: _ClassVar[MissingRoiPolicy]
    MISSING_ROI_MAX: _ClassVar[MissingRoiPolicy]
    MISSING_ROI_IGNORE: _ClassVar[MissingRoiPolicy]
    MISSING_ROI_EXCLUDE: _ClassVar[MissingRoiPolicy]

class FlatCamPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLAT_CAM_UNSPECIFIED: _ClassVar[FlatCamPolicy]
    FLAT_CAM_MAX: _ClassVar[FlatCamPolicy]
    FLAT_CAM_IGNORE: _ClassVar[FlatCamPolicy]

class Normalisation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALISATION_UNSPECIFIED: _ClassVar[Normalisation]
    NORMALISATION_NONE: _ClassVar[Normalisation]
    NORMALISATION_MINMAX: _ClassVar[Normalisation]
    NORMALISATION_RANK: _ClassVar[Normalisation]

class Balance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BALANCE_UNSPECIFIED: _ClassVar[Balance]
    BALANCE_NONE: _ClassVar[Balance]
    BALANCE_PREDICTED: _ClassVar[Balance]
    BALANCE_ORACLE: _ClassVar[Balance]

class Selection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_UNSPECIFIED: _ClassVar[Selection]
    SELECTION_TOP: _ClassVar[Selection]
    SELECTION_SOFTMAX: _ClassVar[Selection]
    SELECTION_POWER: _ClassVar[Selection]

class RoiSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROI_UNSPECIFIED: _ClassVar[RoiSource]
    ROI_EXPERT: _ClassVar[RoiSource]
    ROI_BODY: _ClassVar[RoiSource]
    ROI_EXPERT_ELSE_BODY: _ClassVar[RoiSource]
    ROI_LEARNED: _ClassVar[RoiSource]
    ROI_EXPERT_ELSE_LEARNED: _ClassVar[RoiSource]

class RowRoi(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROW_ROI_NONE: _ClassVar[RowRoi]
    ROW_ROI_EXPERT: _ClassVar[RowRoi]
    ROW_ROI_BODY: _ClassVar[RowRoi]
    ROW_ROI_LEARNED: _ClassVar[RowRoi]

class Diversity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIVERSITY_UNSPECIFIED: _ClassVar[Diversity]
    DIVERSITY_NONE: _ClassVar[Diversity]
    DIVERSITY_SPREAD: _ClassVar[Diversity]
    DIVERSITY_TYPICAL: _ClassVar[Diversity]

class OnBadSample(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_BAD_SAMPLE_UNSPECIFIED: _ClassVar[OnBadSample]
    ON_BAD_SAMPLE_FAIL: _ClassVar[OnBadSample]
    ON_BAD_SAMPLE_SKIP: _ClassVar[OnBadSample]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_RANDOM: Strategy
STRATEGY_UNCERTAINTY: Strategy
STRATEGY_MISALIGNMENT: Strategy
STRATEGY_XGAL: Strategy
UNCERTAINTY_UNSPECIFIED: UncertaintyKind
UNCERTAINTY_ENTROPY: UncertaintyKind
UNCERTAINTY_MARGIN: UncertaintyKind
UNCERTAINTY_LEAST_CONFIDENCE: UncertaintyKind
UNCERTAINTY_MEAN_ENTROPY: UncertaintyKind
UNCERTAINTY_BALD: UncertaintyKind
MISSING_ROI_UNSPECIFIED: MissingRoiPolicy
MISSING_ROI_MAX: MissingRoiPolicy
MISSING_ROI_IGNORE: MissingRoiPolicy
MISSING_ROI_EXCLUDE: MissingRoiPolicy
FLAT_CAM_UNSPECIFIED: FlatCamPolicy
FLAT_CAM_MAX: FlatCamPolicy
FLAT_CAM_IGNORE: FlatCamPolicy
NORMALISATION_UNSPECIFIED: Normalisation
NORMALISATION_NONE: Normalisation
NORMALISATION_MINMAX: Normalisation
NORMALISATION_RANK: Normalisation
BALANCE_UNSPECIFIED: Balance
BALANCE_NONE: Balance
BALANCE_PREDICTED: Balance
BALANCE_ORACLE: Balance
SELECTION_UNSPECIFIED: Selection
SELECTION_TOP: Selection
SELECTION_SOFTMAX: Selection
SELECTION_POWER: Selection
ROI_UNSPECIFIED: RoiSource
ROI_EXPERT: RoiSource
ROI_BODY: RoiSource
ROI_EXPERT_ELSE_BODY: RoiSource
ROI_LEARNED: RoiSource
ROI_EXPERT_ELSE_LEARNED: RoiSource
ROW_ROI_NONE: RowRoi
ROW_ROI_EXPERT: RowRoi
ROW_ROI_BODY: RowRoi
ROW_ROI_LEARNED: RowRoi
DIVERSITY_UNSPECIFIED: Diversity
DIVERSITY_NONE: Diversity
DIVERSITY_SPREAD: Diversity
DIVERSITY_TYPICAL: Diversity
ON_BAD_SAMPLE_UNSPECIFIED: OnBadSample
ON_BAD_SAMPLE_FAIL: OnBadSample
ON_BAD_SAMPLE_SKIP: OnBadSample

class PublishModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PublishHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[PublishHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PublishHeader(_message.Message):
    __slots__ = ("name", "sha256", "size_bytes", "load")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size_bytes: int
    load: bool
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., load: _Optional[bool] = ...) -> None: ...

class PublishModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "sha256", "class_names", "input_shape", "pixel_dtype", "target_layer", "head", "round", "loaded", "providers", "precision", "graph_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    sha256: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    pixel_dtype: str
    target_layer: str
    head: str
    round: int
    loaded: bool
    providers: _containers.RepeatedScalarFieldContainer[str]
    precision: str
    graph_sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., input_shape: _Optional[_Iterable[int]] = ..., pixel_dtype: _Optional[str] = ..., target_layer: _Optional[str] = ..., head: _Optional[str] = ..., round: _Optional[int] = ..., loaded: _Optional[bool] = ..., providers: _Optional[_Iterable[str]] = ..., precision: _Optional[str] = ..., graph_sha256: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribePoolRequest(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: str
    def __init__(self, pool: _Optional[str] = ...) -> None: ...

class PoolDescription(_message.Message):
    __slots__ = ("pool", "count", "image_shape", "pixel_dtype", "class_names", "has_labels")
    POOL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    HAS_LABELS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    count: int
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    pixel_dtype: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    has_labels: bool
    def __init__(self, pool: _Optional[str] = ..., count: _Optional[int] = ..., image_shape: _Optional[_Iterable[int]] = ..., pixel_dtype: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., has_labels: _Optional[bool] = ...) -> None: ...

class Acquisition(_message.Message):
    __slots__ = ("strategy", "lam", "uncertainty", "entropy_over_log_k", "missing_roi", "normalisation", "balance", "seed", "selection", "beta", "flat_cam", "roi", "diversity", "candidates")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    LAM_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_OVER_LOG_K_FIELD_NUMBER: _ClassVar[int]
    MISSING_ROI_FIELD_NUMBER: _ClassVar[int]
    NORMALISATION_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    FLAT_CAM_FIELD_NUMBER: _ClassVar[int]
    ROI_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    strategy: Strategy
    lam: float
    uncertainty: UncertaintyKind
    entropy_over_log_k: bool
    missing_roi: MissingRoiPolicy
    normalisation: Normalisation
    balance: Balance
    seed: int
    selection: Selection
    beta: float
    flat_cam: FlatCamPolicy
    roi: RoiSource
    diversity: Diversity
    candidates: int
    def __init__(self, strategy: _Optional[_Union[Strategy, str]] = ..., lam: _Optional[float] = ..., uncertainty: _Optional[_Union[UncertaintyKind, str]] = ..., entropy_over_log_k: _Optional[bool] = ..., missing_roi: _Optional[_Union[MissingRoiPolicy, str]] = ..., normalisation: _Optional[_Union[Normalisation, str]] = ..., balance: _Optional[_Union[Balance, str]] = ..., seed: _Optional[int] = ..., selection: _Optional[_Union[Selection, str]] = ..., beta: _Optional[float] = ..., flat_cam: _Optional[_Union[FlatCamPolicy, str]] = ..., roi: _Optional[_Union[RoiSource, str]] = ..., diversity: _Optional[_Union[Diversity, str]] = ..., candidates: _Optional[int] = ...) -> None: ...

class ScorePoolRequest(_message.Message):
    __slots__ = ("pool", "model", "acquisition", "top_k", "exclude_ids", "start", "stop", "return_all", "on_bad_sample")
    POOL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACQUISITION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    RETURN_ALL_FIELD_NUMBER: _ClassVar[int]
    ON_BAD_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    pool: str
    model: ModelRef
    acquisition: Acquisition
    top_k: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    start: int
    stop: int
    return_all: bool
    on_bad_sample: OnBadSample
    def __init__(self, pool: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., acquisition: _Optional[_Union[Acquisition, _Mapping]] = ..., top_k: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ..., return_all: _Optional[bool] = ..., on_bad_sample: _Optional[_Union[OnBadSample, str]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("done", "total", "images_per_s")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_S_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    images_per_s: float
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., images_per_s: _Optional[float] = ...) -> None: ...

class ScoredSample(_message.Message):
    __slots__ = ("id", "uncertainty", "misalignment", "score", "predicted", "probs", "has_roi", "group", "flat_cam", "embedding", "roi_source")
    ID_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    MISALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    HAS_ROI_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    FLAT_CAM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ROI_SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    uncertainty: float
    misalignment: float
    score: float
    predicted: int
    probs: _containers.RepeatedScalarFieldContainer[float]
    has_roi: bool
    group: int
    flat_cam: bool
    embedding: _containers.RepeatedScalarFieldContainer[float]
    roi_source: RowRoi
    def __init__(self, id: _Optional[str] = ..., uncertainty: _Optional[float] = ..., misalignment: _Optional[float] = ..., score: _Optional[float] = ..., predicted: _Optional[int] = ..., probs: _Optional[_Iterable[float]] = ..., has_roi: _Optional[bool] = ..., group: _Optional[int] = ..., flat_cam: _Optional[bool] = ..., embedding: _Optional[_Iterable[float]] = ..., roi_source: _Optional[_Union[RowRoi, str]] = ...) -> None: ...

class SkippedSample(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("model", "top", "all", "scored", "excluded", "seconds", "skipped", "with_roi")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    WITH_ROI_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    top: _containers.RepeatedCompositeFieldContainer[ScoredSample]
    all: _containers.RepeatedCompositeFieldContainer[ScoredSample]
    scored: int
    excluded: int
    seconds: float
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedSample]
    with_roi: int
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., top: _Optional[_Iterable[_Union[ScoredSample, _Mapping]]] = ..., all: _Optional[_Iterable[_Union[ScoredSample, _Mapping]]] = ..., scored: _Optional[int] = ..., excluded: _Optional[int] = ..., seconds: _Optional[float] = ..., skipped: _Optional[_Iterable[_Union[SkippedSample, _Mapping]]] = ..., with_roi: _Optional[int] = ...) -> None: ...

class ScoreRows(_message.Message):
    __slots__ = ("top", "all", "skipped")
    TOP_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    top: _containers.RepeatedCompositeFieldContainer[ScoredSample]
    all: _containers.RepeatedCompositeFieldContainer[ScoredSample]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedSample]
    def __init__(self, top: _Optional[_Iterable[_Union[ScoredSample, _Mapping]]] = ..., all: _Optional[_Iterable[_Union[ScoredSample, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[SkippedSample, _Mapping]]] = ...) -> None: ...

class ScorePoolResponse(_message.Message):
    __slots__ = ("progress", "result", "rows")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: ScoreResult
    rows: ScoreRows
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[ScoreResult, _Mapping]] = ..., rows: _Optional[_Union[ScoreRows, _Mapping]] = ...) -> None: ...

class ScoreStreamRequest(_message.Message):
    __slots__ = ("model", "acquisition", "ids", "images", "rois", "want_cam", "pixel_dtype")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACQUISITION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ROIS_FIELD_NUMBER: _ClassVar[int]
    WANT_CAM_FIELD_NUMBER: _ClassVar[int]
    PIXEL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    acquisition: Acquisition
    ids: _containers.RepeatedScalarFieldContainer[str]
    images: bytes
    rois: bytes
    want_cam: bool
    pixel_dtype: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., acquisition: _Optional[_Union[Acquisition, _Mapping]] = ..., ids: _Optional[_Iterable[str]] = ..., images: _Optional[bytes] = ..., rois: _Optional[bytes] = ..., want_cam: _Optional[bool] = ..., pixel_dtype: _Optional[str] = ...) -> None: ...

class ScoreStreamResponse(_message.Message):
    __slots__ = ("samples", "cams", "cam_shape")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CAMS_FIELD_NUMBER: _ClassVar[int]
    CAM_SHAPE_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[ScoredSample]
    cams: bytes
    cam_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, samples: _Optional[_Iterable[_Union[ScoredSample, _Mapping]]] = ..., cams: _Optional[bytes] = ..., cam_shape: _Optional[_Iterable[int]] = ...) -> None: ...
