//! The HTTP/2 transport of the gRPC calls: tonic's [`Channel`], with each request's body read
//! before it is sent.
//!
//! A unary call's body is one message, ready at once, but hyper learns that it has ended only
//! by polling it again, after it has waited for send capacity: it then pipes the body from a
//! task of its own, spawned per call, and the request leaves in three writes (HEADERS, DATA,
//! an empty DATA with END_STREAM), each a system call and a wake-up. A body read whole first
//! says it has ended as soon as its one chunk is taken, so the request goes out in one write
//! with no task beside it (README, "Plugins that reach outside: what they cost").

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tonic::body::Body;
use tonic::transport::channel::ResponseFuture;
use tonic::transport::Channel;

/// A [`Channel`] whose requests' bodies are read whole before they are sent.
#[derive(Debug, Clone)]
pub(crate) struct Unary(pub(crate) Channel);

impl tower_service::Service<http::Request<Body>> for Unary {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        self.0.call(http::Request::from_parts(parts, Body::new(ReadAhead::of(body))))
    }
}

/// A body with what was ready of it read ahead: the frames, then (if it was not all there)
/// the rest of the body.
struct ReadAhead {
    ready: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
}

impl ReadAhead {
    /// Reads `body` as far as it is ready without waiting (for a unary call, to its end).
    fn of(mut body: Body) -> ReadAhead {
        let mut ready = VecDeque::new();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => ready.push_back(frame),
                Poll::Ready(None) => return ReadAhead { ready, rest: None },
                // An error, or not ready: the rest of the body gives it when it is asked.
                Poll::Ready(Some(Err(_))) | Poll::Pending => {
                    // The error is lost with this poll: a body that failed once ends with the
                    // frames it gave (tonic's encoder only fails on a message it cannot
                    // encode, which these are not).
                    return ReadAhead { ready, rest: Some(body) };
                }
            }
        }
    }
}

impl http_body::Body for ReadAhead {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(frame) = self.ready.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let ready: u64 = self.ready.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(ready),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower() + ready);
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + ready);
                }
                sum
            }
        }
    }
}
