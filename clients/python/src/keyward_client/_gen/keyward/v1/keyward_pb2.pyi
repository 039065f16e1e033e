import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Purpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PURPOSE_UNSPECIFIED: _ClassVar[Purpose]
    PURPOSE_MODEL_INFERENCE: _ClassVar[Purpose]
    PURPOSE_CUSTOMER_SUPPORT: _ClassVar[Purpose]
    PURPOSE_ABUSE_INVESTIGATION: _ClassVar[Purpose]
    PURPOSE_LEGAL_HOLD: _ClassVar[Purpose]
    PURPOSE_DATA_EXPORT: _ClassVar[Purpose]
    PURPOSE_SYSTEM_MAINTENANCE: _ClassVar[Purpose]

class SettingSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SETTING_SOURCE_UNSPECIFIED: _ClassVar[SettingSource]
    SETTING_SOURCE_TENANT_POLICY: _ClassVar[SettingSource]
    SETTING_SOURCE_SERVER: _ClassVar[SettingSource]

class ProviderKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_KIND_UNSPECIFIED: _ClassVar[ProviderKind]
    PROVIDER_KIND_LOCAL: _ClassVar[ProviderKind]
    PROVIDER_KIND_AWS_KMS: _ClassVar[ProviderKind]
    PROVIDER_KIND_GCP_KMS: _ClassVar[ProviderKind]
    PROVIDER_KIND_AZURE_KEY_VAULT: _ClassVar[ProviderKind]
    PROVIDER_KIND_PKCS11: _ClassVar[ProviderKind]

class KekState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEK_STATE_UNSPECIFIED: _ClassVar[KekState]
    KEK_STATE_ACTIVE: _ClassVar[KekState]
    KEK_STATE_REVOKED: _ClassVar[KekState]
    KEK_STATE_UNAVAILABLE: _ClassVar[KekState]
    KEK_STATE_RESTORED: _ClassVar[KekState]
    KEK_STATE_DESTROYED: _ClassVar[KekState]
    KEK_STATE_RETIRED: _ClassVar[KekState]
PURPOSE_UNSPECIFIED: Purpose
PURPOSE_MODEL_INFERENCE: Purpose
PURPOSE_CUSTOMER_SUPPORT: Purpose
PURPOSE_ABUSE_INVESTIGATION: Purpose
PURPOSE_LEGAL_HOLD: Purpose
PURPOSE_DATA_EXPORT: Purpose
PURPOSE_SYSTEM_MAINTENANCE: Purpose
SETTING_SOURCE_UNSPECIFIED: SettingSource
SETTING_SOURCE_TENANT_POLICY: SettingSource
SETTING_SOURCE_SERVER: SettingSource
PROVIDER_KIND_UNSPECIFIED: ProviderKind
PROVIDER_KIND_LOCAL: ProviderKind
PROVIDER_KIND_AWS_KMS: ProviderKind
PROVIDER_KIND_GCP_KMS: ProviderKind
PROVIDER_KIND_AZURE_KEY_VAULT: ProviderKind
PROVIDER_KIND_PKCS11: ProviderKind
KEK_STATE_UNSPECIFIED: KekState
KEK_STATE_ACTIVE: KekState
KEK_STATE_REVOKED: KekState
KEK_STATE_UNAVAILABLE: KekState
KEK_STATE_RESTORED: KekState
KEK_STATE_DESTROYED: KekState
KEK_STATE_RETIRED: KekState

class EncryptStreamRequest(_message.Message):
    __slots__ = ("tenant_id", "encryption_context", "scope", "frame_size", "plaintext", "justification")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    FRAME_SIZE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    encryption_context: _containers.ScalarMap[str, str]
    scope: str
    frame_size: int
    plaintext: bytes
    justification: Justification
    def __init__(self, tenant_id: _Optional[str] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., scope: _Optional[str] = ..., frame_size: _Optional[int] = ..., plaintext: _Optional[bytes] = ..., justification: _Optional[_Union[Justification, _Mapping]] = ...) -> None: ...

class EncryptStreamResponse(_message.Message):
    __slots__ = ("envelope", "dek_id")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    DEK_ID_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    dek_id: str
    def __init__(self, envelope: _Optional[bytes] = ..., dek_id: _Optional[str] = ...) -> None: ...

class DecryptStreamRequest(_message.Message):
    __slots__ = ("tenant_id", "encryption_context", "envelope", "justification")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    encryption_context: _containers.ScalarMap[str, str]
    envelope: bytes
    justification: Justification
    def __init__(self, tenant_id: _Optional[str] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., envelope: _Optional[bytes] = ..., justification: _Optional[_Union[Justification, _Mapping]] = ...) -> None: ...

class DecryptStreamResponse(_message.Message):
    __slots__ = ("plaintext", "final")
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    final: bool
    def __init__(self, plaintext: _Optional[bytes] = ..., final: _Optional[bool] = ...) -> None: ...

class RewrapRequest(_message.Message):
    __slots__ = ("tenant_id", "envelope", "encryption_context", "target_scope", "justification")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCOPE_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    envelope: bytes
    encryption_context: _containers.ScalarMap[str, str]
    target_scope: str
    justification: Justification
    def __init__(self, tenant_id: _Optional[str] = ..., envelope: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., target_scope: _Optional[str] = ..., justification: _Optional[_Union[Justification, _Mapping]] = ...) -> None: ...

class RewrapResponse(_message.Message):
    __slots__ = ("envelope", "dek_id")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    DEK_ID_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    dek_id: str
    def __init__(self, envelope: _Optional[bytes] = ..., dek_id: _Optional[str] = ...) -> None: ...

class RewrapBatchRequest(_message.Message):
    __slots__ = ("tenant_id", "items", "justification")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    items: _containers.RepeatedCompositeFieldContainer[RewrapBatchItem]
    justification: Justification
    def __init__(self, tenant_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RewrapBatchItem, _Mapping]]] = ..., justification: _Optional[_Union[Justification, _Mapping]] = ...) -> None: ...

class RewrapBatchItem(_message.Message):
    __slots__ = ("envelope", "encryption_context", "target_scope")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    encryption_context: _containers.ScalarMap[str, str]
    target_scope: str
    def __init__(self, envelope: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., target_scope: _Optional[str] = ...) -> None: ...

class RewrapBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RewrapBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RewrapBatchResult, _Mapping]]] = ...) -> None: ...

class RewrapBatchResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: RewrapResponse
    error: BatchItemError
    def __init__(self, ok: _Optional[_Union[RewrapResponse, _Mapping]] = ..., error: _Optional[_Union[BatchItemError, _Mapping]] = ...) -> None: ...

class EncryptBatchRequest(_message.Message):
    __slots__ = ("tenant_id", "items", "justification")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    items: _containers.RepeatedCompositeFieldContainer[EncryptBatchItem]
    justification: Justification
    def __init__(self, tenant_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[EncryptBatchItem, _Mapping]]] = ..., justification: _Optional[_Union[Justification, _Mapping]] = ...) -> None: ...

class EncryptBatchItem(_message.Message):
    __slots__ = ("plaintext", "encryption_context", "scope")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    encryption_context: _containers.ScalarMap[str, str]
    scope: str
    def __init__(self, plaintext: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., scope: _Optional[str] = ...) -> None: ...

class EncryptBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EncryptBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EncryptBatchResult, _Mapping]]] = ...) -> None: ...

class EncryptBatchResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: EncryptResponse
    error: BatchItemError
    def __init__(self, ok: _Optional[_Union[EncryptResponse, _Mapping]] = ..., error: _Optional[_Union[BatchItemError, _Mapping]] = ...) -> None: ...

class DecryptBatchRequest(_message.Message):
    __slots__ = ("tenant_id", "items", "justification")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    items: _containers.RepeatedCompositeFieldContainer[DecryptBatchItem]
    justification: Justification
    def __init__(self, tenant_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[DecryptBatchItem, _Mapping]]] = ..., justification: _Optional[_Union[Justification, _Mapping]] = ...) -> None: ...

class DecryptBatchItem(_message.Message):
    __slots__ = ("envelope", "encryption_context")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    encryption_context: _containers.ScalarMap[str, str]
    def __init__(self, envelope: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DecryptBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DecryptBatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DecryptBatchResult, _Mapping]]] = ...) -> None: ...

class DecryptBatchResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: DecryptResponse
    error: BatchItemError
    def __init__(self, ok: _Optional[_Union[DecryptResponse, _Mapping]] = ..., error: _Optional[_Union[BatchItemError, _Mapping]] = ...) -> None: ...

class BatchItemError(_message.Message):
    __slots__ = ("code", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    message: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EncryptRequest(_message.Message):
    __slots__ = ("tenant_id", "plaintext", "encryption_context", "scope", "justification")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    plaintext: bytes
    encryption_context: _containers.ScalarMap[str, str]
    scope: str
    justification: Justification
    def __init__(self, tenant_id: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., scope: _Optional[str] = ..., justification: _Optional[_Union[Justification, _Mapping]] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("envelope", "dek_id")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    DEK_ID_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    dek_id: str
    def __init__(self, envelope: _Optional[bytes] = ..., dek_id: _Optional[str] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("tenant_id", "envelope", "encryption_context", "justification")
    class EncryptionContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    envelope: bytes
    encryption_context: _containers.ScalarMap[str, str]
    justification: Justification
    def __init__(self, tenant_id: _Optional[str] = ..., envelope: _Optional[bytes] = ..., encryption_context: _Optional[_Mapping[str, str]] = ..., justification: _Optional[_Union[Justification, _Mapping]] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("plaintext",)
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    def __init__(self, plaintext: _Optional[bytes] = ...) -> None: ...

class Justification(_message.Message):
    __slots__ = ("purpose", "reference")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    purpose: Purpose
    reference: str
    def __init__(self, purpose: _Optional[_Union[Purpose, str]] = ..., reference: _Optional[str] = ...) -> None: ...

class RekeyTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "max_tenant_keys", "requested_by")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TENANT_KEYS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    max_tenant_keys: int
    requested_by: str
    def __init__(self, tenant_id: _Optional[str] = ..., max_tenant_keys: _Optional[int] = ..., requested_by: _Optional[str] = ...) -> None: ...

class GetRekeyStatusRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class RekeyStatus(_message.Message):
    __slots__ = ("target", "tenant_keys_current", "tenant_keys_remaining", "deks_remaining", "pending_bindings", "retired_bindings", "rewrapped", "retired", "done", "last_error")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TENANT_KEYS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    TENANT_KEYS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    DEKS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    PENDING_BINDINGS_FIELD_NUMBER: _ClassVar[int]
    RETIRED_BINDINGS_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    target: KekBinding
    tenant_keys_current: int
    tenant_keys_remaining: int
    deks_remaining: int
    pending_bindings: _containers.RepeatedCompositeFieldContainer[KekBinding]
    retired_bindings: _containers.RepeatedCompositeFieldContainer[KekBinding]
    rewrapped: int
    retired: int
    done: bool
    last_error: str
    def __init__(self, target: _Optional[_Union[KekBinding, _Mapping]] = ..., tenant_keys_current: _Optional[int] = ..., tenant_keys_remaining: _Optional[int] = ..., deks_remaining: _Optional[int] = ..., pending_bindings: _Optional[_Iterable[_Union[KekBinding, _Mapping]]] = ..., retired_bindings: _Optional[_Iterable[_Union[KekBinding, _Mapping]]] = ..., rewrapped: _Optional[int] = ..., retired: _Optional[int] = ..., done: _Optional[bool] = ..., last_error: _Optional[str] = ...) -> None: ...

class ExportKeyHierarchyRequest(_message.Message):
    __slots__ = ("tenant_id", "requested_by")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    requested_by: str
    def __init__(self, tenant_id: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class ExportKeyHierarchyChunk(_message.Message):
    __slots__ = ("header", "tenant_key", "data_key", "tombstone", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    TENANT_KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: ExportHeader
    tenant_key: ExportedTenantKey
    data_key: ExportedDataKey
    tombstone: ExportedTombstone
    trailer: ExportTrailer
    def __init__(self, header: _Optional[_Union[ExportHeader, _Mapping]] = ..., tenant_key: _Optional[_Union[ExportedTenantKey, _Mapping]] = ..., data_key: _Optional[_Union[ExportedDataKey, _Mapping]] = ..., tombstone: _Optional[_Union[ExportedTombstone, _Mapping]] = ..., trailer: _Optional[_Union[ExportTrailer, _Mapping]] = ...) -> None: ...

class ExportTrailer(_message.Message):
    __slots__ = ("tenant_keys", "data_keys", "tombstones", "audit_seq")
    TENANT_KEYS_FIELD_NUMBER: _ClassVar[int]
    DATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    tenant_keys: int
    data_keys: int
    tombstones: int
    audit_seq: int
    def __init__(self, tenant_keys: _Optional[int] = ..., data_keys: _Optional[int] = ..., tombstones: _Optional[int] = ..., audit_seq: _Optional[int] = ...) -> None: ...

class ExportHeader(_message.Message):
    __slots__ = ("format_version", "tenant_id", "exported_at", "audit_seq", "audit_head_hash")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    tenant_id: str
    exported_at: _timestamp_pb2.Timestamp
    audit_seq: int
    audit_head_hash: str
    def __init__(self, format_version: _Optional[int] = ..., tenant_id: _Optional[str] = ..., exported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., audit_seq: _Optional[int] = ..., audit_head_hash: _Optional[str] = ...) -> None: ...

class ExportedTenantKey(_message.Message):
    __slots__ = ("id", "provider", "key_ref", "binding_id", "binding_state", "wrapped", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KEY_REF_FIELD_NUMBER: _ClassVar[int]
    BINDING_ID_FIELD_NUMBER: _ClassVar[int]
    BINDING_STATE_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    provider: ProviderKind
    key_ref: str
    binding_id: int
    binding_state: KekState
    wrapped: bytes
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., provider: _Optional[_Union[ProviderKind, str]] = ..., key_ref: _Optional[str] = ..., binding_id: _Optional[int] = ..., binding_state: _Optional[_Union[KekState, str]] = ..., wrapped: _Optional[bytes] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExportedDataKey(_message.Message):
    __slots__ = ("id", "tenant_key_id", "scope", "wrapped", "created_at", "retired_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_key_id: str
    scope: str
    wrapped: bytes
    created_at: _timestamp_pb2.Timestamp
    retired_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., tenant_key_id: _Optional[str] = ..., scope: _Optional[str] = ..., wrapped: _Optional[bytes] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExportedTombstone(_message.Message):
    __slots__ = ("id", "tenant_key_id", "scope_hmac", "created_at", "shredded_at", "shredded_by", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_HMAC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SHREDDED_AT_FIELD_NUMBER: _ClassVar[int]
    SHREDDED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_key_id: str
    scope_hmac: str
    created_at: _timestamp_pb2.Timestamp
    shredded_at: _timestamp_pb2.Timestamp
    shredded_by: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., tenant_key_id: _Optional[str] = ..., scope_hmac: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., shredded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., shredded_by: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ShredScopeRequest(_message.Message):
    __slots__ = ("tenant_id", "scope", "reason", "requested_by")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    scope: str
    reason: str
    requested_by: str
    def __init__(self, tenant_id: _Optional[str] = ..., scope: _Optional[str] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class ShredScopeResponse(_message.Message):
    __slots__ = ("deks_shredded", "shredded_at")
    DEKS_SHREDDED_FIELD_NUMBER: _ClassVar[int]
    SHREDDED_AT_FIELD_NUMBER: _ClassVar[int]
    deks_shredded: int
    shredded_at: _timestamp_pb2.Timestamp
    def __init__(self, deks_shredded: _Optional[int] = ..., shredded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ShredScopesRequest(_message.Message):
    __slots__ = ("tenant_id", "created_before", "scope_prefix", "dry_run", "max_scopes", "reason", "requested_by")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MAX_SCOPES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    created_before: _timestamp_pb2.Timestamp
    scope_prefix: str
    dry_run: bool
    max_scopes: int
    reason: str
    requested_by: str
    def __init__(self, tenant_id: _Optional[str] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope_prefix: _Optional[str] = ..., dry_run: _Optional[bool] = ..., max_scopes: _Optional[int] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class ShredScopesResponse(_message.Message):
    __slots__ = ("scopes", "deks", "scopes_remaining")
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    DEKS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_REMAINING_FIELD_NUMBER: _ClassVar[int]
    scopes: int
    deks: int
    scopes_remaining: int
    def __init__(self, scopes: _Optional[int] = ..., deks: _Optional[int] = ..., scopes_remaining: _Optional[int] = ...) -> None: ...

class ListKeyBindingsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListKeyBindingsResponse(_message.Message):
    __slots__ = ("bindings",)
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    bindings: _containers.RepeatedCompositeFieldContainer[KeyBindingUsage]
    def __init__(self, bindings: _Optional[_Iterable[_Union[KeyBindingUsage, _Mapping]]] = ...) -> None: ...

class KeyBindingUsage(_message.Message):
    __slots__ = ("binding", "replaced_at", "deks", "scopes", "deks_shredded", "bound_by")
    BINDING_FIELD_NUMBER: _ClassVar[int]
    REPLACED_AT_FIELD_NUMBER: _ClassVar[int]
    DEKS_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    DEKS_SHREDDED_FIELD_NUMBER: _ClassVar[int]
    BOUND_BY_FIELD_NUMBER: _ClassVar[int]
    binding: KekBinding
    replaced_at: _timestamp_pb2.Timestamp
    deks: int
    scopes: int
    deks_shredded: int
    bound_by: str
    def __init__(self, binding: _Optional[_Union[KekBinding, _Mapping]] = ..., replaced_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deks: _Optional[int] = ..., scopes: _Optional[int] = ..., deks_shredded: _Optional[int] = ..., bound_by: _Optional[str] = ...) -> None: ...

class SetTenantPolicyRequest(_message.Message):
    __slots__ = ("tenant_id", "policy", "requested_by")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    policy: TenantPolicy
    requested_by: str
    def __init__(self, tenant_id: _Optional[str] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ..., requested_by: _Optional[str] = ...) -> None: ...

class TenantPolicy(_message.Message):
    __slots__ = ("cache_ttl_seconds", "monitor_interval_seconds", "auto_rekey", "decrypt_purposes")
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUTO_REKEY_FIELD_NUMBER: _ClassVar[int]
    DECRYPT_PURPOSES_FIELD_NUMBER: _ClassVar[int]
    cache_ttl_seconds: int
    monitor_interval_seconds: int
    auto_rekey: bool
    decrypt_purposes: _containers.RepeatedScalarFieldContainer[Purpose]
    def __init__(self, cache_ttl_seconds: _Optional[int] = ..., monitor_interval_seconds: _Optional[int] = ..., auto_rekey: _Optional[bool] = ..., decrypt_purposes: _Optional[_Iterable[_Union[Purpose, str]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "reason", "requested_by")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    reason: str
    requested_by: str
    def __init__(self, tenant_id: _Optional[str] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class RestoreKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "reason", "requested_by", "binding_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    BINDING_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    reason: str
    requested_by: str
    binding_id: int
    def __init__(self, tenant_id: _Optional[str] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., binding_id: _Optional[int] = ...) -> None: ...

class ReportKeyEventRequest(_message.Message):
    __slots__ = ("provider", "key_ref", "event")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KEY_REF_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    provider: ProviderKind
    key_ref: str
    event: str
    def __init__(self, provider: _Optional[_Union[ProviderKind, str]] = ..., key_ref: _Optional[str] = ..., event: _Optional[str] = ...) -> None: ...

class ReportKeyEventResponse(_message.Message):
    __slots__ = ("tenants_checked", "tenants_revoked")
    TENANTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    TENANTS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    tenants_checked: int
    tenants_revoked: int
    def __init__(self, tenants_checked: _Optional[int] = ..., tenants_revoked: _Optional[int] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "display_name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    display_name: str
    def __init__(self, tenant_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class RegisterKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "local", "aws_kms", "pkcs11", "gcp_kms", "azure_key_vault")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    AWS_KMS_FIELD_NUMBER: _ClassVar[int]
    PKCS11_FIELD_NUMBER: _ClassVar[int]
    GCP_KMS_FIELD_NUMBER: _ClassVar[int]
    AZURE_KEY_VAULT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    local: LocalKey
    aws_kms: AwsKmsKey
    pkcs11: Pkcs11Key
    gcp_kms: GcpKmsKey
    azure_key_vault: AzureKeyVaultKey
    def __init__(self, tenant_id: _Optional[str] = ..., local: _Optional[_Union[LocalKey, _Mapping]] = ..., aws_kms: _Optional[_Union[AwsKmsKey, _Mapping]] = ..., pkcs11: _Optional[_Union[Pkcs11Key, _Mapping]] = ..., gcp_kms: _Optional[_Union[GcpKmsKey, _Mapping]] = ..., azure_key_vault: _Optional[_Union[AzureKeyVaultKey, _Mapping]] = ...) -> None: ...

class GcpKmsKey(_message.Message):
    __slots__ = ("crypto_key",)
    CRYPTO_KEY_FIELD_NUMBER: _ClassVar[int]
    crypto_key: str
    def __init__(self, crypto_key: _Optional[str] = ...) -> None: ...

class AzureKeyVaultKey(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class Pkcs11Key(_message.Message):
    __slots__ = ("uri",)
    URI_FIELD_NUMBER: _ClassVar[int]
    uri: str
    def __init__(self, uri: _Optional[str] = ...) -> None: ...

class AwsKmsKey(_message.Message):
    __slots__ = ("key_arn", "role_arn", "external_id")
    KEY_ARN_FIELD_NUMBER: _ClassVar[int]
    ROLE_ARN_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    key_arn: str
    role_arn: str
    external_id: str
    def __init__(self, key_arn: _Optional[str] = ..., role_arn: _Optional[str] = ..., external_id: _Optional[str] = ...) -> None: ...

class LocalKey(_message.Message):
    __slots__ = ("key_name",)
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    def __init__(self, key_name: _Optional[str] = ...) -> None: ...

class GetTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant_id", "display_name", "created_at", "active_key", "policy", "previous_keys", "effective_policy")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_KEY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_KEYS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_POLICY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    display_name: str
    created_at: _timestamp_pb2.Timestamp
    active_key: KekBinding
    policy: TenantPolicy
    previous_keys: _containers.RepeatedCompositeFieldContainer[KekBinding]
    effective_policy: EffectivePolicy
    def __init__(self, tenant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active_key: _Optional[_Union[KekBinding, _Mapping]] = ..., policy: _Optional[_Union[TenantPolicy, _Mapping]] = ..., previous_keys: _Optional[_Iterable[_Union[KekBinding, _Mapping]]] = ..., effective_policy: _Optional[_Union[EffectivePolicy, _Mapping]] = ...) -> None: ...

class EffectivePolicy(_message.Message):
    __slots__ = ("cache_ttl_seconds", "cache_ttl_source", "monitor_interval_seconds", "monitor_interval_source")
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MONITOR_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_INTERVAL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    cache_ttl_seconds: int
    cache_ttl_source: SettingSource
    monitor_interval_seconds: int
    monitor_interval_source: SettingSource
    def __init__(self, cache_ttl_seconds: _Optional[int] = ..., cache_ttl_source: _Optional[_Union[SettingSource, str]] = ..., monitor_interval_seconds: _Optional[int] = ..., monitor_interval_source: _Optional[_Union[SettingSource, str]] = ...) -> None: ...

class KekBinding(_message.Message):
    __slots__ = ("provider", "key_ref", "state", "tenant_key_id", "bound_at", "binding_id", "state_cause", "state_changed_at")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KEY_REF_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TENANT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BOUND_AT_FIELD_NUMBER: _ClassVar[int]
    BINDING_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_CAUSE_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    provider: ProviderKind
    key_ref: str
    state: KekState
    tenant_key_id: str
    bound_at: _timestamp_pb2.Timestamp
    binding_id: int
    state_cause: str
    state_changed_at: _timestamp_pb2.Timestamp
    def __init__(self, provider: _Optional[_Union[ProviderKind, str]] = ..., key_ref: _Optional[str] = ..., state: _Optional[_Union[KekState, str]] = ..., tenant_key_id: _Optional[str] = ..., bound_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., binding_id: _Optional[int] = ..., state_cause: _Optional[str] = ..., state_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RotateSigningKeyRequest(_message.Message):
    __slots__ = ("requested_by",)
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    requested_by: str
    def __init__(self, requested_by: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("tenant_id", "event_type", "to", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    event_type: str
    to: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., event_type: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., **kwargs) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("seq", "time", "event_type", "tenant_id", "canonical_json", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_JSON_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    event_type: str
    tenant_id: str
    canonical_json: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_type: _Optional[str] = ..., tenant_id: _Optional[str] = ..., canonical_json: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportAuditRequest(_message.Message):
    __slots__ = ("tenant_id", "to")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    to: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., **kwargs) -> None: ...

class ExportAuditChunk(_message.Message):
    __slots__ = ("jsonl",)
    JSONL_FIELD_NUMBER: _ClassVar[int]
    jsonl: bytes
    def __init__(self, jsonl: _Optional[bytes] = ...) -> None: ...

class GetAuditPublicKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditPublicKey(_message.Message):
    __slots__ = ("public_key", "key_id")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    key_id: str
    def __init__(self, public_key: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...
