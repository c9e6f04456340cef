//! Error classes that decide lifeboat's exit code.
//!
//! Modules return their own typed errors; the edges wrap them in `anyhow` with context. The exit
//! code is found by looking for an [`ExitClass`]-carrying error anywhere in the chain, so context
//! added on the way up never hides the class.

use std::process::ExitCode;

/// Exit codes, documented in README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// Anything else that went wrong at run time (Docker, store, I/O).
    Failure = 1,
    /// Bad flags, config file, URL, key file: the operator must fix the input.
    Usage = 2,
    /// The target app's version differs from the one the backup recorded.
    VersionMismatch = 3,
    /// Stored data failed verification: wrong key, corrupted, truncated, bad tar entry.
    Verification = 4,
    /// Another lifeboat run holds the app's lock in this store.
    Locked = 5,
    /// Interrupted by SIGINT or SIGTERM; containers were started again.
    Interrupted = 130,
}

impl ExitClass {
    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

/// An error that carries its exit class. Create one with the constructors below and let it
/// travel up inside `anyhow::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ClassifiedError {
    pub class: ExitClass,
    pub message: String,
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    ClassifiedError {
        class: ExitClass::Usage,
        message: message.into(),
    }
    .into()
}

pub fn verification(message: impl Into<String>) -> anyhow::Error {
    ClassifiedError {
        class: ExitClass::Verification,
        message: message.into(),
    }
    .into()
}

pub fn interrupted() -> anyhow::Error {
    ClassifiedError {
        class: ExitClass::Interrupted,
        message: "interrupted by a signal".into(),
    }
    .into()
}

/// The class of an error: the first classified error in its chain, else `Failure`.
pub fn class_of(err: &anyhow::Error) -> ExitClass {
    err.chain()
        .find_map(|cause| {
            cause
                .downcast_ref::<ClassifiedError>()
                .map(|c| c.class)
                .or_else(|| {
                    cause
                        .downcast_ref::<crate::pipeline::PipelineError>()
                        .map(|e| e.class())
                })
                .or_else(|| {
                    cause
                        .downcast_ref::<crate::restore::VersionMismatch>()
                        .map(|_| ExitClass::VersionMismatch)
                })
                .or_else(|| {
                    cause
                        .downcast_ref::<crate::lock::LockHeld>()
                        .map(|_| ExitClass::Locked)
                })
                .or_else(|| {
                    cause
                        .downcast_ref::<crate::state::ClaimHeld>()
                        .map(|_| ExitClass::Locked)
                })
                .or_else(|| {
                    cause
                        .downcast_ref::<crate::lock::LockLost>()
                        .map(|_| ExitClass::Locked)
                })
        })
        .unwrap_or(ExitClass::Failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn class_survives_context() {
        let err = Err::<(), _>(verification("bad chunk"))
            .context("restoring volume db")
            .unwrap_err();
        assert_eq!(class_of(&err), ExitClass::Verification);
        assert_eq!(class_of(&anyhow::anyhow!("plain")), ExitClass::Failure);
    }
}
