//! The HTTP side of a stream: its requests decoded from the request body, and its responses
//! written as the response body, one gRPC message per data frame.
//!
//! tonic's own response encoding keeps a buffer per stream that grows to the largest message
//! the stream ever sent and stays that large: with thousands of idle streams that had each
//! received a config in 32 KiB responses, it was the largest part of an idle stream. Here each
//! response is encoded into a buffer of exactly its size when the proxy can take it, and that
//! buffer is gone once written.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Frame;
use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, header};
use tonic::codegen::{Body, StdError};
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use crate::wire::{ProstDecoder, WireMessage};

/// Requests larger than this are refused (tonic's default).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Serves one gRPC streaming call: `open` gets the call's metadata and its decoded requests and
/// returns where the responses arrive; they become the response body. A call that declares a
/// compressed request encoding is refused as tonic refuses it (none is offered).
pub(crate) fn stream_response<B, Req, Resp>(
    request: http::Request<B>,
    open: impl FnOnce(MetadataMap, Streaming<Req>) -> mpsc::Receiver<Box<Result<Resp, Status>>>,
) -> http::Response<tonic::body::Body>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
    Req: Message + Default + Send + 'static,
    Resp: WireMessage + Send + 'static,
{
    let (parts, body) = request.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding != "identity"
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        return Status::unimplemented(format!(
            "content is compressed with `{encoding}` which is not supported"
        ))
        .into_http();
    }
    let requests = Streaming::new_request(
        ProstDecoder::<Req>::default(),
        body,
        None,
        Some(MAX_REQUEST_BYTES),
    );
    let responses = open(MetadataMap::from_headers(parts.headers), requests);
    let mut response = http::Response::new(tonic::body::Body::new(ResponseBody {
        responses,
        done: false,
    }));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A stream's responses as gRPC messages; the status that ends the stream (OK when the stream
/// simply ends) as trailers.
struct ResponseBody<Resp> {
    responses: mpsc::Receiver<Box<Result<Resp, Status>>>,
    done: bool,
}

/// `response` as one gRPC message: uncompressed flag, length, then the protobuf encoding.
fn message(response: &impl WireMessage) -> Bytes {
    let len = response.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    // A response is far below 4 GiB: it carries at most 32 KiB of resources, or one resource.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    response.write(&mut buf);
    Bytes::from(buf)
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", HeaderValue::from_static("13"));
    }
    map
}

impl<Resp: WireMessage> Body for ResponseBody<Resp> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(self.responses.poll_recv(cx)) {
            Some(item) => match *item {
                Ok(response) => Frame::data(message(&response)),
                Err(status) => {
                    self.done = true;
                    Frame::trailers(trailers(&status))
                }
            },
            None => {
                self.done = true;
                Frame::trailers(trailers(&Status::ok("")))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DeltaResponse;

    /// A body and the outbox it reads.
    fn body() -> (
        mpsc::Sender<Box<Result<DeltaResponse, Status>>>,
        ResponseBody<DeltaResponse>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let body = ResponseBody {
            responses: rx,
            done: false,
        };
        (tx, body)
    }

    /// The body's next frame (`None`: it ended).
    async fn next_frame(body: &mut ResponseBody<DeltaResponse>) -> Option<Frame<Bytes>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|frame| frame.unwrap())
    }

    #[tokio::test]
    async fn responses_are_framed_one_each_then_the_ok_trailers() {
        let (tx, mut body) = body();
        let response = DeltaResponse {
            nonce: "1".into(),
            type_url: "t".into(),
            ..Default::default()
        };
        tx.send(Box::new(Ok(response.clone()))).await.unwrap();
        drop(tx);
        let data = next_frame(&mut body).await.unwrap().into_data().unwrap();
        assert_eq!(data[0], 0, "not compressed");
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(len, data.len() - 5);
        let decoded =
            envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse::decode(
                &data[5..],
            )
            .unwrap();
        assert_eq!(decoded.nonce, "1");
        assert_eq!(decoded.type_url, "t");
        let end = next_frame(&mut body).await.unwrap();
        assert_eq!(end.trailers_ref().unwrap()["grpc-status"], "0");
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_refusal_ends_the_body_with_its_status() {
        let (tx, mut body) = body();
        tx.send(Box::new(Err(Status::unauthenticated("wrong token"))))
            .await
            .unwrap();
        let end = next_frame(&mut body).await.unwrap();
        let trailers = end.trailers_ref().unwrap();
        assert_eq!(trailers["grpc-status"], "16");
        assert_eq!(trailers["grpc-message"], "wrong%20token");
        assert!(next_frame(&mut body).await.is_none());
    }
}
