//! Errors a runtime reports, written for the person who has to act on them.

use crate::RuntimeKind;

/// Anything that can go wrong talking to a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime is not installed, or its daemon/service does not answer.
    #[error("{runtime}: {reason}\n  fix: {fix}")]
    Unavailable {
        runtime: RuntimeKind,
        reason: String,
        fix: String,
    },
    /// The runtime answers but lacks something bottle needs.
    #[error("{runtime} lacks a capability bottle needs: {capability}: {detail}\n  fix: {fix}")]
    Capability {
        runtime: RuntimeKind,
        capability: String,
        detail: String,
        fix: String,
    },
    /// A call to the runtime failed.
    #[error("{runtime}: {operation} failed: {message}")]
    Call {
        runtime: RuntimeKind,
        operation: String,
        message: String,
    },
    /// An image build failed; `log_tail` holds its last output lines.
    #[error("building image {image} failed: {message}\n{log_tail}")]
    Build {
        image: String,
        message: String,
        log_tail: String,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("i/o error while {doing}: {source}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
}
