//! Exit codes a script can act on, and which error gets which.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | done (also: stdout was closed early, as by `bottle ps \| head`) |
//! | 1    | failed (a runtime call, the file system, the sidecar) |
//! | 2    | bad config or flags: fix the input and run again |
//! | 3    | `verify` found a hole (`up --verify` removed the bottle) |
//! | 4    | refused: the probe found the runtime too weak, a mount is one bottle never makes, or consent was not given |
//! | 5    | no runtime: the one asked for (or every one `auto` tried) is unavailable |
//! | 130  | interrupted (Ctrl-C); what `up` made was removed |
//!
//! `bottle exec` exits with the command's own code; codes above are for
//! bottle's own failures. The table is also in the README.

use crate::lifecycle::LifecycleError;
use crate::mounts::MountError;
use crate::plan::PlanError;
use crate::runtime_select::RefusalReason;
use crate::up::UpError;
use bottle_runtimes::RuntimeError;

/// What went wrong, as far as a script needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Done,
    Failed,
    Usage,
    Hole,
    Refused,
    Unavailable,
    Interrupted,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Hole => 3,
            Exit::Refused => 4,
            Exit::Unavailable => 5,
            Exit::Interrupted => 130,
        }
    }
}

/// The exit an error maps to.
pub trait Classify {
    fn exit(&self) -> Exit;
}

impl Classify for RuntimeError {
    fn exit(&self) -> Exit {
        match self {
            RuntimeError::Unavailable { .. } => Exit::Unavailable,
            RuntimeError::Capability { .. } => Exit::Refused,
            _ => Exit::Failed,
        }
    }
}

impl Classify for MountError {
    fn exit(&self) -> Exit {
        match self {
            MountError::Missing { .. } => Exit::Usage,
            MountError::Resolve { .. } | MountError::Prepare { .. } => Exit::Failed,
            _ => Exit::Refused,
        }
    }
}

impl Classify for RefusalReason {
    fn exit(&self) -> Exit {
        match self {
            RefusalReason::UnknownWeakness { .. } => Exit::Usage,
            _ => Exit::Refused,
        }
    }
}

impl Classify for PlanError {
    fn exit(&self) -> Exit {
        match self {
            PlanError::Mount(e) => e.exit(),
            PlanError::Roots(_) | PlanError::BadName { .. } | PlanError::Git(_) => Exit::Usage,
            PlanError::State(_) => Exit::Failed,
        }
    }
}

impl Classify for crate::materials::MaterialError {
    fn exit(&self) -> Exit {
        use crate::materials::MaterialError as M;
        match self {
            M::Secret(crate::secrets::SecretError::Missing { .. })
            | M::Secret(crate::secrets::SecretError::MissingToken { .. })
            | M::Roots { .. }
            | M::NotPem { .. }
            | M::NotAFile { .. }
            | M::TooLarge { .. } => Exit::Usage,
            _ => Exit::Failed,
        }
    }
}

impl Classify for LifecycleError {
    fn exit(&self) -> Exit {
        use LifecycleError as L;
        match self {
            L::Refused { .. } | L::HostAddress { .. } | L::MountMoved { .. } => Exit::Refused,
            L::Mount(e) => e.exit(),
            L::Interrupted | L::InterruptedTwice { .. } => Exit::Interrupted,
            L::Runtime(e) => e.exit(),
            L::Image(crate::images::ImageError::UnknownImage { .. }) => Exit::Usage,
            L::Image(crate::images::ImageError::Runtime(e)) => e.exit(),
            L::Materials(e) => e.exit(),
            LifecycleError::Provider(_) => Exit::Usage,
            _ => Exit::Failed,
        }
    }
}

impl Classify for crate::reload::ReloadError {
    fn exit(&self) -> Exit {
        use crate::reload::ReloadError as R;
        match self {
            R::NoConfig { .. } | R::Config(_) => Exit::Usage,
            R::Plan(e) => e.exit(),
            R::Lifecycle(e) => e.exit(),
            R::State(_) => Exit::Failed,
            R::Widened { .. } => Exit::Refused,
        }
    }
}

impl Classify for UpError {
    fn exit(&self) -> Exit {
        match self {
            UpError::Config(_) | UpError::Provider(_) => Exit::Usage,
            UpError::ProviderImage(_) => Exit::Failed,
            UpError::Plan(e) => e.exit(),
            UpError::Env(_) => Exit::Usage,
            UpError::Runtime(e) => e.exit(),
            UpError::NoRuntime(e) if e.refused => Exit::Refused,
            UpError::NoRuntime(_) => Exit::Unavailable,
            UpError::VerifyCouldNotRun { .. } => Exit::Failed,
            UpError::Refused(e) => e.exit(),
            UpError::Lifecycle(e) => e.exit(),
            UpError::Cwd(_) => Exit::Failed,
            UpError::Widened { .. } => Exit::Refused,
            UpError::VerifyFailed { .. } => Exit::Hole,
            UpError::Interrupted { .. } => Exit::Interrupted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_runtimes::RuntimeKind;

    #[test]
    fn codes_are_distinct_and_stable() {
        let all = [
            Exit::Done,
            Exit::Failed,
            Exit::Usage,
            Exit::Hole,
            Exit::Refused,
            Exit::Unavailable,
            Exit::Interrupted,
        ];
        let codes: Vec<i32> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 130]);
    }

    #[test]
    fn each_kind_of_failure_has_its_code() {
        let unavailable = RuntimeError::Unavailable {
            runtime: RuntimeKind::Docker,
            reason: "no socket".into(),
            fix: "start it".into(),
        };
        assert_eq!(UpError::Runtime(unavailable).exit().code(), 5);
        assert_eq!(
            UpError::NoRuntime(crate::runtime_select::NoRuntime {
                tried: vec![],
                refused: false
            })
            .exit()
            .code(),
            5
        );
        let weak = RefusalReason::Weakness {
            runtime: RuntimeKind::Smolvm,
            weakness: bottle_runtimes::Weakness::DnsForwardedUnfiltered,
            detail: "d".into(),
        };
        assert_eq!(UpError::Refused(weak).exit().code(), 4);
        let typo = RefusalReason::UnknownWeakness {
            name: "x".into(),
            known: "y".into(),
        };
        assert_eq!(UpError::Refused(typo).exit().code(), 2);
        assert_eq!(
            UpError::Widened {
                name: "b".into(),
                count: 1
            }
            .exit()
            .code(),
            4
        );
        assert_eq!(
            UpError::VerifyFailed {
                name: "b".into(),
                failed: 1,
                report: None
            }
            .exit()
            .code(),
            3
        );
        assert_eq!(
            UpError::Lifecycle(LifecycleError::Interrupted)
                .exit()
                .code(),
            130
        );
        let sensitive = MountError::Sensitive {
            canonical: "/".into(),
            via: String::new(),
            why: "the root".into(),
        };
        assert_eq!(UpError::Plan(PlanError::Mount(sensitive)).exit().code(), 4);
    }
}
