//! The gRPC codec of every netctl service: prost's, with an encoder that
//! sends each message as soon as it is encoded instead of gathering ready
//! messages into one buffer of up to 32 KB. The buffer a stream encodes
//! into lives as long as the stream and keeps the size of its largest
//! batch: a manager watched by a thousand nodes kept 30 MB of them.
//! Watch messages are cut to fit the first 8 KiB
//! (`netctl_manager::desired::fanout`).

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Where a stream's messages are encoded: 8 KiB to start with (tonic's
/// default), and a batch is sent once it holds one message.
fn encoder_buffers() -> BufferSettings {
    BufferSettings::new(8 * 1024, 1)
}

/// prost's codec with [`encoder_buffers`].
#[derive(Debug)]
pub struct NetctlCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for NetctlCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> Codec for NetctlCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(encoder_buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}
