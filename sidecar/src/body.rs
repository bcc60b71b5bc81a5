//! The agent's request body on its way upstream ([`AgentBody`]): counted for
//! the audit log, cut when it stops arriving for `limits.body_timeout_secs`,
//! and watched so a failure of the *agent's* body (malformed chunked
//! encoding, a short body, a stall) is told apart from a failure of the
//! upstream.
//!
//! When the body fails, the error is passed to hyper's client, which then
//! closes the upstream connection without finishing the message (no final
//! chunk, fewer bytes than `Content-Length`): the origin never sees a
//! complete request. The handler then answers the agent 400 (malformed) or
//! 408 (stalled) instead of a 502 blaming the upstream ([`BodyFailure`]).

use crate::io::Counter;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why the agent's request body was not forwarded whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyFailure {
    #[error("the request body is malformed or ended early: {0}")]
    Malformed(String),
    #[error("the request body stopped arriving: no data for {}s (limits.body_timeout_secs)", .0.as_secs())]
    Stalled(Duration),
    /// Refused by what was found in it ([`crate::dlp`]).
    #[error("{reason}")]
    Refused {
        rule: String,
        reason: String,
        status: u16,
    },
}

impl BodyFailure {
    /// The rule name for the log and the refusal.
    pub fn rule(&self) -> &str {
        match self {
            BodyFailure::Malformed(_) => "bad-request-body",
            BodyFailure::Stalled(_) => "request-body-timeout",
            BodyFailure::Refused { rule, .. } => rule,
        }
    }

    /// The status the agent gets: its own error, never the upstream's.
    pub fn status(&self) -> hyper::StatusCode {
        match self {
            BodyFailure::Malformed(_) => hyper::StatusCode::BAD_REQUEST,
            BodyFailure::Stalled(_) => hyper::StatusCode::REQUEST_TIMEOUT,
            BodyFailure::Refused { status, .. } => {
                hyper::StatusCode::from_u16(*status).unwrap_or(hyper::StatusCode::FORBIDDEN)
            }
        }
    }
}

/// Set when the body failed; read by the handler after the upstream call.
#[derive(Debug, Clone, Default)]
pub struct Watch(Arc<OnceLock<BodyFailure>>);

impl Watch {
    pub fn failure(&self) -> Option<BodyFailure> {
        self.0.get().cloned()
    }

    /// Records why the body failed (the first reason stays).
    pub fn set(&self, failure: BodyFailure) {
        let _ = self.0.set(failure);
    }
}

/// The error [`AgentBody`] hands to hyper's client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AgentBodyError(BodyFailure);

impl From<BodyFailure> for AgentBodyError {
    fn from(f: BodyFailure) -> Self {
        AgentBodyError(f)
    }
}

/// The agent's request body, metered, gap-limited and watched.
#[derive(Debug)]
pub struct AgentBody {
    inner: Incoming,
    counter: Counter,
    watch: Watch,
    gap: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl AgentBody {
    pub fn new(inner: Incoming, counter: Counter, gap: Duration) -> (Self, Watch) {
        let watch = Watch::default();
        let body = AgentBody {
            inner,
            counter,
            watch: watch.clone(),
            gap,
            timer: None,
        };
        (body, watch)
    }

    fn fail(&mut self, failure: BodyFailure) -> AgentBodyError {
        let _ = self.watch.0.set(failure.clone());
        AgentBodyError(failure)
    }
}

impl Body for AgentBody {
    type Data = Bytes;
    type Error = AgentBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AgentBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                if let Some(data) = frame.data_ref() {
                    this.counter.add(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let err = this.fail(BodyFailure::Malformed(e.to_string()));
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // The gap is measured from the first poll that found nothing.
                let gap = this.gap;
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + gap))
                });
                if timer.as_mut().poll(cx).is_ready() {
                    let err = this.fail(BodyFailure::Stalled(gap));
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
