//! gRPC message streams over HTTP/2 bodies, one message at a time: each read into (or encoded
//! into) a buffer of its own size, freed once the message is decoded (or sent).
//!
//! tonic keeps, for the life of a stream, read and decompression buffers (and on the sending
//! side, encoding and compression buffers) each as large as the largest message seen, with
//! growth slack. A zone's first response of Dataplanes is its whole population in one message,
//! and a burst of policies is one message to every zone, so global would hold about a megabyte
//! per connected zone of 1,000 Dataplanes for as long as the zone stays connected: more than
//! the Dataplanes themselves. Global serves the zones' sync streams with this instead.

use std::io::Read;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::Body as _;
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;

/// The 5-byte prefix of every gRPC message: compressed flag, then the length (big endian).
const PREFIX: usize = 5;

/// A stream of `M`s from a gRPC request body.
pub(crate) struct Messages<M> {
    body: Body,
    /// Whether the request said `grpc-encoding: gzip` (compressed messages may then come).
    gzip: bool,
    /// Largest message accepted, compressed or not.
    limit: usize,
    /// Received and not yet consumed.
    chunk: Bytes,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// The message being read once its prefix is complete: compressed?, bytes, length.
    message: Option<(bool, Vec<u8>, usize)>,
    ended: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> Messages<M> {
    /// Messages of `body`; `gzip` when the request's `grpc-encoding` is `gzip`.
    pub(crate) fn new(body: Body, gzip: bool, limit: usize) -> Self {
        Messages {
            body,
            gzip,
            limit,
            chunk: Bytes::new(),
            prefix: [0; PREFIX],
            prefix_len: 0,
            message: None,
            ended: false,
            _message: PhantomData,
        }
    }
}

impl<M: prost::Message + Default> Messages<M> {
    /// Takes what it can from the current chunk; a message once one is complete.
    fn take(&mut self) -> Result<Option<M>, Status> {
        if self.message.is_none() {
            let n = (PREFIX - self.prefix_len).min(self.chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&self.chunk[..n]);
            self.chunk.advance(n);
            self.prefix_len += n;
            if self.prefix_len < PREFIX {
                return Ok(None);
            }
            self.prefix_len = 0;
            let compressed = match self.prefix[0] {
                0 => false,
                1 if self.gzip => true,
                1 => {
                    return Err(Status::internal(
                        "a compressed message on a stream without grpc-encoding",
                    ));
                }
                flag => {
                    return Err(Status::internal(format!(
                        "invalid compression flag {flag} (valid: 0 and 1)"
                    )));
                }
            };
            let len = u32::from_be_bytes([
                self.prefix[1],
                self.prefix[2],
                self.prefix[3],
                self.prefix[4],
            ]) as usize;
            if len > self.limit {
                return Err(too_large(len, self.limit));
            }
            self.message = Some((compressed, Vec::with_capacity(len), len));
        }
        let Some((_, bytes, len)) = &mut self.message else {
            return Ok(None);
        };
        let n = (*len - bytes.len()).min(self.chunk.len());
        bytes.extend_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        if bytes.len() < *len {
            return Ok(None);
        }
        let Some((compressed, bytes, _)) = self.message.take() else {
            return Ok(None);
        };
        let decoded = if compressed {
            M::decode(gunzip(&bytes, self.limit)?.as_slice())
        } else {
            M::decode(bytes.as_slice())
        };
        decoded
            .map(Some)
            .map_err(|e| Status::internal(format!("a message does not decode: {e}")))
    }
}

impl<M: prost::Message + Default> Stream for Messages<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            while !this.chunk.is_empty() {
                match this.take() {
                    Ok(Some(m)) => return Poll::Ready(Some(Ok(m))),
                    Ok(None) => {}
                    Err(e) => {
                        this.ended = true;
                        this.chunk.clear();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                // Trailers carry nothing a sync stream reads.
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.chunk = data;
                    }
                }
                Some(Err(status)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.ended = true;
                    if this.message.is_some() || this.prefix_len > 0 {
                        return Poll::Ready(Some(Err(Status::internal(
                            "the stream ended inside a message",
                        ))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// `messages` as a gRPC response body (gzipped when `gzip`); its trailers carry the status the
/// stream ends with (OK when `messages` ends, or its first error).
pub(crate) fn response_body<M, S>(messages: S, gzip: bool, limit: usize) -> Body
where
    M: prost::Message + 'static,
    S: Stream<Item = Result<M, Status>> + Send + Unpin + 'static,
{
    Body::new(http_body_util::StreamBody::new(Frames {
        messages,
        gzip,
        limit,
        ended: false,
    }))
}

/// The HTTP/2 frames of a response stream (see [`response_body`]).
struct Frames<S> {
    messages: S,
    gzip: bool,
    limit: usize,
    ended: bool,
}

impl<M, S> Stream for Frames<S>
where
    M: prost::Message,
    S: Stream<Item = Result<M, Status>> + Unpin,
{
    type Item = Result<http_body::Frame<Bytes>, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(Pin::new(&mut this.messages).poll_next(cx)) {
            Some(Ok(m)) => match encode(&m, this.gzip, this.limit) {
                Ok(bytes) => return Poll::Ready(Some(Ok(http_body::Frame::data(bytes)))),
                Err(status) => status,
            },
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        this.ended = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(unsendable) = status.add_header(&mut trailers) {
            // Only a message that is not a header value gets here; the code still goes.
            let _ = Status::new(unsendable.code(), "").add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }
}

/// One message with its gRPC prefix, gzipped when `gzip`.
fn encode(message: &impl prost::Message, gzip: bool, limit: usize) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > limit {
        return Err(too_large(len, limit));
    }
    let prefix = [u8::from(gzip), 0, 0, 0, 0];
    let mut out = if gzip {
        let raw = message.encode_to_vec();
        let mut compressed = Vec::with_capacity(PREFIX + len / 4);
        compressed.extend_from_slice(&prefix);
        let mut enc = flate2::write::GzEncoder::new(compressed, flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &raw)
            .and_then(|()| enc.finish())
            .map_err(|e| Status::internal(format!("gzip: {e}")))?
    } else {
        let mut plain = Vec::with_capacity(PREFIX + len);
        plain.extend_from_slice(&prefix);
        message
            .encode(&mut plain)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))?;
        plain
    };
    let body_len = u32::try_from(out.len() - PREFIX).map_err(|_| too_large(out.len(), limit))?;
    out[1..PREFIX].copy_from_slice(&body_len.to_be_bytes());
    Ok(Bytes::from(out))
}

/// `bytes` gunzipped, refused past `limit` bytes.
fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, Status> {
    // gzip's trailer ends with the uncompressed size (mod 2^32): the buffer is made once.
    let size = bytes
        .len()
        .checked_sub(4)
        .map(|at| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]))
        .unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(size.min(limit));
    flate2::read::GzDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Status::internal(format!("a compressed message does not gunzip: {e}")))?;
    if out.len() > limit {
        return Err(too_large(out.len(), limit));
    }
    Ok(out)
}

fn too_large(len: usize, limit: usize) -> Status {
    Status::out_of_range(format!(
        "a message of {len} bytes or more is over the limit of {limit} bytes (multizone.global.kds.maxMsgSize)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use std::io::Write;
    use tokio_stream::StreamExt;

    fn frame(message: &DeltaDiscoveryResponse, gzip: bool) -> Vec<u8> {
        let mut bytes = prost::Message::encode_to_vec(message);
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&bytes).expect("gzip");
            bytes = enc.finish().expect("gzip");
        }
        let mut out = vec![u8::from(gzip)];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    fn response(nonce: &str) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            nonce: nonce.into(),
            type_url: "Dataplane".into(),
            ..Default::default()
        }
    }

    /// A body that yields `wire` in chunks of `size` bytes.
    fn body(wire: Vec<u8>, size: usize) -> Body {
        let chunks: Vec<Result<http_body::Frame<Bytes>, Status>> = wire
            .chunks(size)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        Body::new(http_body_util::StreamBody::new(tokio_stream::iter(chunks)))
    }

    async fn read(wire: Vec<u8>, size: usize, gzip: bool) -> Vec<Result<String, Status>> {
        Messages::<DeltaDiscoveryResponse>::new(body(wire, size), gzip, 1024)
            .map(|m| m.map(|m| m.nonce))
            .collect()
            .await
    }

    #[tokio::test]
    async fn messages_split_anywhere_and_compressed_or_not_come_out_whole() {
        let mut wire = frame(&response("a"), false);
        wire.extend(frame(&response("b"), true));
        wire.extend(frame(&response("c"), false));
        for size in [1, 2, 5, 7, 64, wire.len()] {
            let got: Vec<String> = read(wire.clone(), size, true)
                .await
                .into_iter()
                .map(|r| r.expect("message"))
                .collect();
            assert_eq!(got, ["a", "b", "c"], "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn a_response_body_reads_back_and_ends_with_its_status() {
        use http_body_util::BodyExt;
        for gzip in [false, true] {
            let sent = tokio_stream::iter(vec![Ok(response("a")), Ok(response("b"))]);
            let collected = response_body(sent, gzip, 1024)
                .collect()
                .await
                .expect("body");
            let trailers = collected.trailers().cloned().expect("trailers");
            assert_eq!(trailers.get("grpc-status").expect("status"), "0");
            let wire = collected.to_bytes().to_vec();
            assert_eq!(wire[0], u8::from(gzip), "compressed flag");
            let got: Vec<String> = read(wire, 3, true)
                .await
                .into_iter()
                .map(|r| r.expect("message"))
                .collect();
            assert_eq!(got, ["a", "b"]);
        }
        // An error ends the body with its code and message; so does a message over the limit.
        let failed = tokio_stream::iter(vec![
            Ok(response("a")),
            Err(Status::unavailable("zone went silent")),
        ]);
        let collected = response_body(failed, true, 1024)
            .collect()
            .await
            .expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").expect("status"), "14");
        assert_eq!(
            trailers.get("grpc-message").expect("message"),
            "zone%20went%20silent"
        );
        let huge = DeltaDiscoveryResponse {
            nonce: "x".repeat(4000),
            ..Default::default()
        };
        let collected = response_body(tokio_stream::iter(vec![Ok(huge)]), false, 1024)
            .collect()
            .await
            .expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").expect("status"), "11");
        assert!(collected.to_bytes().is_empty(), "nothing of it was sent");
    }

    #[tokio::test]
    async fn bad_frames_end_the_stream_with_the_reason() {
        let reason = |mut got: Vec<Result<String, Status>>| {
            let last = got.pop().expect("an item");
            last.expect_err("an error").message().to_string()
        };
        // Compressed without grpc-encoding.
        let got = read(frame(&response("a"), true), 3, false).await;
        assert!(reason(got).contains("without grpc-encoding"));
        // Over the limit, by its prefix and by what it gunzips to.
        let mut big = vec![0u8];
        big.extend_from_slice(&5000u32.to_be_bytes());
        assert!(reason(read(big, 8, false).await).contains("5000 bytes"));
        let huge = DeltaDiscoveryResponse {
            nonce: "x".repeat(4000),
            ..Default::default()
        };
        assert!(reason(read(frame(&huge, true), 64, true).await).contains("over the limit"));
        // A flag that is not 0 or 1, garbage, a stream cut inside a message.
        assert!(reason(read(vec![7, 0, 0, 0, 0], 5, true).await).contains("flag 7"));
        let garbage = vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(reason(read(garbage, 4, true).await).contains("does not decode"));
        let mut cut = frame(&response("a"), false);
        cut.pop();
        assert!(reason(read(cut, 4, true).await).contains("inside a message"));
    }
}
