//! Resource limits the sidecar enforces for one bottle: how many connections
//! a client may hold, how long each phase of a connection may take, and how
//! large the audit log may grow. Pure data; `bottle-sidecar` enforces it.
//!
//! Every field has a default, so a policy file without `limits` (or with only
//! some of them) is valid. Zero is never a valid limit: it would either refuse
//! everything or mean "no limit" depending on the reader, so
//! [`Limits::validate`] rejects it.

use serde::{Deserialize, Serialize};

/// The `limits` section of the rendered policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections from clients open at once, all listeners together (the
    /// explicit proxy, :80, :443 and DNS over TCP). Over the cap a new
    /// connection is refused at once (HTTP listeners answer a short 503).
    pub max_connections: u32,
    /// Connections open at once from one source IP address.
    pub max_connections_per_client: u32,
    /// Seconds for each phase before a request can be decided: accept until
    /// the protocol is chosen (TLS or HTTP inside a tunnel), the TLS
    /// handshake, and reading a full request head. A total deadline per
    /// phase, not per read.
    pub handshake_timeout_secs: u64,
    /// Seconds a tunnel, WebSocket or kept-alive connection may go with no
    /// bytes in either direction before it is closed.
    pub idle_timeout_secs: u64,
    /// Longest gap, in seconds, between two pieces of a request body; a
    /// body that stops arriving is cut and the upstream request aborted.
    pub body_timeout_secs: u64,
    /// Size in bytes past which the audit log (`egress.jsonl`) is rotated to
    /// `egress.jsonl.1` (one old file is kept, so the log uses at most about
    /// twice this).
    pub audit_max_bytes: u64,
    /// HTTP/2 streams one agent connection may have open at once (the
    /// sidecar's `SETTINGS_MAX_CONCURRENT_STREAMS`); more are refused with
    /// `REFUSED_STREAM`.
    pub h2_max_streams: u32,
    /// Largest decoded header list, in bytes, the sidecar accepts on one
    /// HTTP/2 request (`SETTINGS_MAX_HEADER_LIST_SIZE`): bounds HPACK bombs
    /// and CONTINUATION floods.
    pub h2_max_header_list_bytes: u32,
    /// HTTP/2 flow-control window of one stream, in bytes: how much of a
    /// body the agent may send before the sidecar has passed it on.
    pub h2_stream_window_bytes: u32,
    /// HTTP/2 flow-control window of a whole connection, in bytes.
    pub h2_connection_window_bytes: u32,
}

/// Largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
pub const H2_MAX_WINDOW: u32 = (1 << 31) - 1;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_client: 256,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 900,
            body_timeout_secs: 30,
            audit_max_bytes: 64 * 1024 * 1024,
            h2_max_streams: 32,
            h2_max_header_list_bytes: 64 * 1024,
            h2_stream_window_bytes: 1024 * 1024,
            h2_connection_window_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A limit that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("limits.{0} is 0; every limit must be at least 1 (leave it out for the default)")]
    Zero(&'static str),
    #[error("limits.{0} is {1}; an HTTP/2 window is at least 65535 and at most 2147483647 bytes")]
    Window(&'static str, u32),
}

impl Limits {
    /// Rejects a zero in any field (all of them are reported).
    pub fn validate(&self) -> Result<(), Vec<LimitsError>> {
        let fields: [(&'static str, u64); 10] = [
            ("max_connections", u64::from(self.max_connections)),
            (
                "max_connections_per_client",
                u64::from(self.max_connections_per_client),
            ),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("body_timeout_secs", self.body_timeout_secs),
            ("audit_max_bytes", self.audit_max_bytes),
            ("h2_max_streams", u64::from(self.h2_max_streams)),
            (
                "h2_max_header_list_bytes",
                u64::from(self.h2_max_header_list_bytes),
            ),
            (
                "h2_stream_window_bytes",
                u64::from(self.h2_stream_window_bytes),
            ),
            (
                "h2_connection_window_bytes",
                u64::from(self.h2_connection_window_bytes),
            ),
        ];
        let mut errors: Vec<LimitsError> = fields
            .iter()
            .filter(|(_, v)| *v == 0)
            .map(|(name, _)| LimitsError::Zero(name))
            .collect();
        for (name, window) in [
            ("h2_stream_window_bytes", self.h2_stream_window_bytes),
            (
                "h2_connection_window_bytes",
                self.h2_connection_window_bytes,
            ),
        ] {
            if window != 0 && !(65_535..=H2_MAX_WINDOW).contains(&window) {
                errors.push(LimitsError::Window(name, window));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_defaults_and_unknown_ones_are_refused() {
        let l: Limits = serde_json::from_str(r#"{"max_connections": 8}"#).unwrap();
        assert_eq!(
            l,
            Limits {
                max_connections: 8,
                ..Limits::default()
            }
        );
        assert_eq!(Limits::default().audit_max_bytes, 64 << 20);
        assert!(serde_json::from_str::<Limits>(r#"{"max_conns": 8}"#).is_err());
    }

    #[test]
    fn zeros_are_rejected_all_at_once() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let l = Limits {
            max_connections: 0,
            body_timeout_secs: 0,
            ..Limits::default()
        };
        let errors = l.validate().unwrap_err();
        assert_eq!(
            errors,
            [
                LimitsError::Zero("max_connections"),
                LimitsError::Zero("body_timeout_secs")
            ]
        );
        assert!(errors[0]
            .to_string()
            .contains("limits.max_connections is 0"));
    }

    #[test]
    fn h2_windows_stay_within_the_protocol() {
        let l = Limits {
            h2_stream_window_bytes: 1024,
            h2_connection_window_bytes: H2_MAX_WINDOW + 1,
            ..Limits::default()
        };
        assert_eq!(
            l.validate().unwrap_err(),
            [
                LimitsError::Window("h2_stream_window_bytes", 1024),
                LimitsError::Window("h2_connection_window_bytes", H2_MAX_WINDOW + 1)
            ]
        );
    }
}
