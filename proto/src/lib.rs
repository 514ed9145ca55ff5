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

/// The codec of every `blangko.v1` client and server: prost's, with smaller buffers.
///
/// tonic gives each call an 8 KiB buffer to decode its request into and another to encode its
/// answer into. A `blangko.v1` message is a few hundred bytes, and in glibc's malloc a block of
/// 8 KiB is a "large" one: each such allocation first consolidates the freed small blocks,
/// which a busy server has many of. That was about 2% of the server's CPU per Reserve
/// (BENCHMARKS.md). With 512-byte buffers (a small block) a message that does not fit makes the
/// buffer grow by 512 bytes at a time, as tonic grows any buffer.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::ProstCodec;

    /// The buffer each call starts with, for decoding and for encoding (tonic's default: 8 KiB).
    pub const BUFFER_BYTES: usize = 512;
    /// tonic's default: a stream hands on what it encoded once it holds 32 KiB.
    pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

    /// [`ProstCodec`] with [`BUFFER_BYTES`] buffers.
    #[derive(Debug, Clone)]
    pub struct BlangkoCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for BlangkoCodec<T, U> {
        fn default() -> Self {
            BlangkoCodec(PhantomData)
        }
    }

    fn settings() -> BufferSettings {
        BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }

    impl<T, U> Codec for BlangkoCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
        type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(settings())
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(settings())
        }
    }
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
