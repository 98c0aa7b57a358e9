//! The wire codec of the request/response protocol `/cairn/rpc/1.0.0`.
//!
//! Each message (request or response) is one frame on its own libp2p stream:
//!
//! ```text
//! +----------------------+---------------------------------------------+
//! | length: u32, LE      | body: `length` bytes, rmp-serde encoded      |
//! +----------------------+---------------------------------------------+
//! ```
//!
//! A request body is [`WireRequest`] (sender node id, opaque payload); a response body is
//! [`WireResponse`] (payload, or an error message). The length is checked against the configured
//! maximum *before* anything is allocated or read, so a peer cannot make us buffer more than
//! `max_message_size` plus the envelope overhead.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

/// Protocol name negotiated on every request stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/rpc/1.0.0");

/// Bytes allowed on top of the payload maximum for the envelope (node id, msgpack headers).
pub const ENVELOPE_OVERHEAD: usize = 1024;

/// A request on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRequest {
    /// Sender node id (authenticated by the connection's peer id where the table knows it).
    pub from: String,
    /// Opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A response on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireResponse {
    /// The receiver's reply payload.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The receiver could not handle the request (overloaded, shutting down, dropped).
    Err(String),
}

/// Length-prefixed rmp-serde codec with an explicit maximum frame size.
#[derive(Debug, Clone)]
pub struct RpcCodec {
    /// Largest accepted frame body (payload maximum plus [`ENVELOPE_OVERHEAD`]).
    pub max_frame: usize,
}

impl RpcCodec {
    /// A codec for payloads up to `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        RpcCodec { max_frame: max_message_size.saturating_add(ENVELOPE_OVERHEAD) }
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the maximum of {max}"),
        ));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes one frame. `frame` holds 4 reserved bytes followed by the body (see [`encode`]); the
/// length goes into the reserved bytes so that the whole frame is handed to the stream in one
/// write: on a yamux stream every write becomes a frame of its own, and every frame one flush
/// down through Noise and pnet to a `send` system call, so one write per message saves a
/// system call on each side (measured in docs/benchmarks.md).
async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    mut frame: Vec<u8>,
    max: usize,
) -> io::Result<()> {
    let body_len = frame.len().saturating_sub(LEN_PREFIX);
    if body_len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {body_len} bytes exceeds the maximum of {max}"),
        ));
    }
    let len = u32::try_from(body_len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    frame[..LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
    io.write_all(&frame).await?;
    io.flush().await?;
    io.close().await
}

/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;

fn decode<M: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<M> {
    rmp_serde::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encodes `msg` after [`LEN_PREFIX`] reserved bytes (filled in by [`write_frame`]), so the
/// frame needs no second buffer.
fn encode<M: Serialize>(msg: &M) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; LEN_PREFIX];
    rmp_serde::encode::write(&mut buf, msg)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(buf)
}

impl libp2p::request_response::Codec for RpcCodec {
    type Protocol = StreamProtocol;
    type Request = WireRequest;
    type Response = WireResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WireRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, self.max_frame).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WireResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, self.max_frame).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: WireRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, encode(&req)?, self.max_frame).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: WireResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, encode(&res)?, self.max_frame).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn round_trip_and_limits() {
        let mut c = RpcCodec::new(100);
        let req = WireRequest { from: "n1".into(), payload: vec![7; 100] };
        let mut buf = Vec::new();
        block(c.write_request(&PROTOCOL, &mut futures::io::Cursor::new(&mut buf), req.clone()))
            .unwrap();
        assert_eq!(u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize, buf.len() - 4);
        let got = block(c.read_request(&PROTOCOL, &mut futures::io::Cursor::new(&buf))).unwrap();
        assert_eq!(got, req);

        // A reader with a smaller limit refuses the frame from its length alone.
        let mut small = RpcCodec { max_frame: 50 };
        let err = block(small.read_request(&PROTOCOL, &mut futures::io::Cursor::new(&buf)));
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A writer refuses to send an oversize frame.
        let big = WireResponse::Ok(vec![0; 2000]);
        let mut out = Vec::new();
        let err = block(c.write_response(&PROTOCOL, &mut futures::io::Cursor::new(&mut out), big));
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidInput);

        // A truncated frame is an error, not a hang or a short message.
        let cut = &buf[..buf.len() - 1];
        assert!(block(c.read_request(&PROTOCOL, &mut futures::io::Cursor::new(cut))).is_err());
    }
}
