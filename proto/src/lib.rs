//! The `blangko.v1` protobuf contract: messages, the `CounterService` and `StockService` clients
//! and servers, and the encoded file descriptor set that server reflection publishes.
//!
//! The `.proto` files under `proto/blangko/v1/` are the source of truth; this crate only compiles
//! them (with `protox`, so no system `protoc` is needed).
#![forbid(unsafe_code)]

/// Package `blangko.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("blangko.v1");
}

/// The encoded `FileDescriptorSet` of every `blangko.v1` file (and its imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("blangko_v1_descriptor");

/// The protobuf package this crate speaks.
pub const API_VERSION: &str = "blangko.v1";

/// The canonical upper-case name of a gRPC status code, as every gRPC implementation spells it
/// (`INVALID_ARGUMENT`), for metrics labels, logs and the counter client's messages.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
