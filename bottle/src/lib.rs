//! bottle: runs an AI coding agent in a sandbox it cannot talk its way out of.
//!
//! The library behind the `bottle` binary. The flow of `bottle up` is
//! config ([`config`]) → plan ([`plan`], no side effects, printable with
//! `--dry-run`) → images and probe → lifecycle ([`lifecycle`]) on a
//! [`bottle_runtimes::Runtime`]. The policy the sidecar enforces is
//! [`bottle_policy::Policy`], rendered into the bottle's state dir ([`state`]).

#![forbid(unsafe_code)]

pub mod attach;
pub mod budget;
pub mod ca;
pub mod cli;
pub mod config;
pub mod edit;
pub mod exit;
pub mod gitconfig;
pub mod hardening;
pub mod host;
pub mod images;
pub mod interrupt;
pub mod lifecycle;
pub mod logview;
pub mod materials;
pub mod mounts;
pub mod pin;
pub mod plan;
pub mod probe_cache;
pub mod provider;
pub mod provider_image;
pub mod reload;
pub mod render;
pub mod report;
pub mod requests;
pub mod run;
pub mod runtime_select;
pub mod save_rule;
pub mod secrets;
pub mod state;
pub mod trust;
pub mod up;
pub mod verify;
pub mod watch;
