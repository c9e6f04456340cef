//! Error classes that decide lifeboat's exit code.
//!
//! The bottom of the crate, with `format` and `text`: it imports no other module. Modules return
//! their own typed errors; the edges wrap them in `anyhow` with context. The binary's exit path
//! (`main.rs`) finds the exit code by looking for a classified or typed error anywhere in the
//! chain, so context added on the way up never hides the class.

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

/// The class carried by the first [`ClassifiedError`] in `err`'s chain, if any. The typed errors
/// of the layers above (a held lock, a version mismatch, a pipeline failure) have their classes
/// too; the binary's single exit path, which knows every error type, maps those.
pub fn classified(err: &anyhow::Error) -> Option<ExitClass> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<ClassifiedError>().map(|c| c.class))
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
        assert_eq!(classified(&err), Some(ExitClass::Verification));
        assert_eq!(classified(&anyhow::anyhow!("plain")), None);
    }
}
