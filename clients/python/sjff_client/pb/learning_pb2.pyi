from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_FP32: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_UINT8: _ClassVar[ImageEncoding]
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_FP32: ImageEncoding
IMAGE_ENCODING_UINT8: ImageEncoding

class LearnRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "images", "encoding", "labels", "positive", "seed", "eta", "expected_version", "id", "request_id")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    images: bytes
    encoding: ImageEncoding
    labels: _containers.RepeatedScalarFieldContainer[int]
    positive: _containers.RepeatedScalarFieldContainer[bool]
    seed: int
    eta: float
    expected_version: int
    id: str
    request_id: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., images: _Optional[bytes] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., labels: _Optional[_Iterable[int]] = ..., positive: _Optional[_Iterable[bool]] = ..., seed: _Optional[int] = ..., eta: _Optional[float] = ..., expected_version: _Optional[int] = ..., id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class LearnResponse(_message.Message):
    __slots__ = ("version", "log_odds", "id", "error_code", "error_message", "model_name", "model_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOG_ODDS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    log_odds: _containers.RepeatedScalarFieldContainer[float]
    id: str
    error_code: int
    error_message: str
    model_name: str
    model_version: str
    def __init__(self, version: _Optional[int] = ..., log_odds: _Optional[_Iterable[float]] = ..., id: _Optional[str] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "export_artifact")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPORT_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    export_artifact: bool
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., export_artifact: _Optional[bool] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("version", "path", "artifact_path", "bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    version: int
    path: str
    artifact_path: str
    bytes: int
    def __init__(self, version: _Optional[int] = ..., path: _Optional[str] = ..., artifact_path: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "limit")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    limit: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SnapshotInfo(_message.Message):
    __slots__ = ("version", "created", "bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    version: int
    created: float
    bytes: int
    def __init__(self, version: _Optional[int] = ..., created: _Optional[float] = ..., bytes: _Optional[int] = ...) -> None: ...

class VersionEvent(_message.Message):
    __slots__ = ("version", "kind", "created", "samples", "restored_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    RESTORED_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: str
    created: float
    samples: int
    restored_version: int
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[str] = ..., created: _Optional[float] = ..., samples: _Optional[int] = ..., restored_version: _Optional[int] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("current_version", "oldest_restorable", "snapshots", "history")
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_RESTORABLE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    current_version: int
    oldest_restorable: int
    snapshots: _containers.RepeatedCompositeFieldContainer[SnapshotInfo]
    history: _containers.RepeatedCompositeFieldContainer[VersionEvent]
    def __init__(self, current_version: _Optional[int] = ..., oldest_restorable: _Optional[int] = ..., snapshots: _Optional[_Iterable[_Union[SnapshotInfo, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[VersionEvent, _Mapping]]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    version: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("version", "restored_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTORED_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    restored_version: int
    def __init__(self, version: _Optional[int] = ..., restored_version: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("model_name", "model_version", "kind", "learning_version", "updates_accepted", "updates_refused", "samples_learned", "inferences", "snapshot_version", "log_bytes", "last_update", "mean_group_size", "online_accuracy", "online_samples", "learning_enabled", "weights_sha256", "learning_error")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEARNING_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    UPDATES_REFUSED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_LEARNED_FIELD_NUMBER: _ClassVar[int]
    INFERENCES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ONLINE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LEARNING_ENABLED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    LEARNING_ERROR_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    kind: str
    learning_version: int
    updates_accepted: int
    updates_refused: int
    samples_learned: int
    inferences: int
    snapshot_version: int
    log_bytes: int
    last_update: float
    mean_group_size: float
    online_accuracy: float
    online_samples: int
    learning_enabled: bool
    weights_sha256: str
    learning_error: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., kind: _Optional[str] = ..., learning_version: _Optional[int] = ..., updates_accepted: _Optional[int] = ..., updates_refused: _Optional[int] = ..., samples_learned: _Optional[int] = ..., inferences: _Optional[int] = ..., snapshot_version: _Optional[int] = ..., log_bytes: _Optional[int] = ..., last_update: _Optional[float] = ..., mean_group_size: _Optional[float] = ..., online_accuracy: _Optional[float] = ..., online_samples: _Optional[int] = ..., learning_enabled: _Optional[bool] = ..., weights_sha256: _Optional[str] = ..., learning_error: _Optional[str] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStats]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ...) -> None: ...
