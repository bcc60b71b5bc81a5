//! Ctrl-C, the same at every step of `up`.
//!
//! [`Interrupt::install`] takes over SIGINT before the first side effect
//! (also where the shell left it ignored, as `nohup` does), so an interrupt
//! never kills bottle half-way: the step in flight is abandoned, what `up`
//! and its probe made is removed, and bottle exits 130. A second interrupt
//! during that removal stops it; the caller then says what is left.
//!
//! Work that must stop on an interrupt runs through [`Interrupt::unless`].
//! Tests make an [`Interrupt::new`] and [`Interrupt::trigger`] it by hand.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

/// How many interrupts have arrived, shared by every clone.
#[derive(Clone, Debug)]
pub struct Interrupt {
    tx: Arc<watch::Sender<u32>>,
}

/// The work was abandoned because an interrupt arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

impl Default for Interrupt {
    fn default() -> Self {
        Self::new()
    }
}

impl Interrupt {
    /// Counts interrupts that [`Interrupt::trigger`] reports; nothing else.
    pub fn new() -> Self {
        Interrupt {
            tx: Arc::new(watch::channel(0).0),
        }
    }

    /// Counts every SIGINT from now on (must run inside a tokio runtime).
    /// From this moment SIGINT no longer ends the process by itself.
    pub fn install() -> Self {
        let me = Self::new();
        let counter = me.clone();
        // Registering the handler happens on the first poll of `ctrl_c`,
        // which the spawned task may not reach before the caller's first
        // side effect: register here, synchronously.
        let mut signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        tokio::spawn(async move {
            match signal.as_mut() {
                Ok(s) => {
                    while s.recv().await.is_some() {
                        counter.trigger();
                    }
                }
                Err(_) => {
                    // No handler could be installed: fall back to the
                    // portable one (SIGINT keeps its default until it runs).
                    while tokio::signal::ctrl_c().await.is_ok() {
                        counter.trigger();
                    }
                }
            }
        });
        me
    }

    /// Reports one interrupt.
    pub fn trigger(&self) {
        self.tx.send_modify(|n| *n += 1);
    }

    /// Interrupts so far.
    pub fn count(&self) -> u32 {
        *self.tx.borrow()
    }

    /// Resolves once `level` interrupts have arrived.
    pub async fn reached(&self, level: u32) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|n| *n >= level).await;
    }

    /// Runs `work` unless the first interrupt arrives first (or already
    /// has): then `work` is dropped where it stands.
    pub async fn unless<F: Future>(&self, work: F) -> Result<F::Output, Interrupted> {
        self.unless_level(1, work).await
    }

    /// As [`Interrupt::unless`], for the `level`-th interrupt (2 during a
    /// rollback the first one started).
    pub async fn unless_level<F: Future>(
        &self,
        level: u32,
        work: F,
    ) -> Result<F::Output, Interrupted> {
        tokio::select! {
            biased;
            _ = self.reached(level) => Err(Interrupted),
            out = work => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_to_the_end_without_an_interrupt() {
        let i = Interrupt::new();
        assert_eq!(i.unless(async { 7 }).await, Ok(7));
    }

    #[tokio::test]
    async fn an_interrupt_abandons_work_in_flight() {
        let i = Interrupt::new();
        let j = i.clone();
        let out = i
            .unless(async move {
                j.trigger();
                std::future::pending::<()>().await;
            })
            .await;
        assert_eq!(out, Err(Interrupted));
        // Already interrupted: the next step does not start.
        assert_eq!(i.unless(async { 1 }).await, Err(Interrupted));
        // A rollback listens for the second one only.
        assert_eq!(i.unless_level(2, async { 2 }).await, Ok(2));
        i.trigger();
        assert_eq!(i.unless_level(2, async { 3 }).await, Err(Interrupted));
        assert_eq!(i.count(), 2);
    }
}
