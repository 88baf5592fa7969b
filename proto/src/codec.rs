//! The gRPC codec of every generated client and server: prost, with small initial
//! buffers. tonic's default gives each stream an 8 KiB encode and an 8 KiB decode buffer
//! up front; a controller holds one Sync stream per agent, and 16 KiB each was a third
//! of its memory per agent. Almost every message on a stream (Hello, Applied, a delta)
//! fits in 1 KiB; the buffers grow for the few that do not (a full config).

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer of a stream or call.
const BUFFER: usize = 1024;
/// Encoded bytes a stream may gather before it yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER`]-byte initial buffers.
#[derive(Debug)]
pub struct LeanCodec<T, U>(std::marker::PhantomData<fn() -> (T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
