//! The `lifeboat` command line: parses arguments, sets up logging, runs one subcommand, and
//! turns its outcome into an exit code (see `error::ExitClass` and README.md).
//!
//! Where it sits: The top: the only place that knows every error type, and so the one exit path.

mod commands;

use clap::Parser;
use lifeboat::error::{ClassifiedError, ExitClass};
use std::process::ExitCode;

/// Secrets that may be given as files (Docker secrets): `NAME_FILE=/run/secrets/x` sets `NAME`
/// to the file's content when `NAME` itself is unset.
const SECRET_FILE_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "LIFEBOAT_WEBHOOK_URL",
    "LIFEBOAT_HEALTHCHECKS_URL",
];

fn load_secret_files() -> Result<(), String> {
    for name in SECRET_FILE_VARIABLES {
        let Some(path) = std::env::var_os(format!("{name}_FILE")) else {
            continue;
        };
        if std::env::var_os(name).is_some() {
            return Err(format!("both {name} and {name}_FILE are set; keep one"));
        }
        lifeboat::config::refuse_open_secret_file(
            std::path::Path::new(&path),
            &format!("secret file {name}_FILE"),
        )
        .map_err(|e| e.to_string())?;
        let value = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{name}_FILE: cannot read {}: {e}",
                std::path::Path::new(&path).display()
            )
        })?;
        // SAFETY: called first thing in main, before the runtime or any other thread exists,
        // so nothing reads the environment concurrently.
        unsafe { std::env::set_var(name, value.trim()) };
    }
    Ok(())
}

/// Memory goes back to the system when lifeboat is done with it. glibc otherwise gives each
/// thread that allocates (tokio workers, zstd, the spool) an arena of its own, and raises its
/// mmap threshold after the first large free, so freed multi-MiB upload parts stay in the
/// arenas: a 10 GiB backup peaked at 184 MiB. Two arenas, and buffers of 1 MiB and more always
/// mapped (and unmapped when freed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    match run() {
        Ok(code) => code,
        // `lifeboat list | head -1`: the reader has what it wanted.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            class_of(&err).code()
        }
    }
}

/// Everything but the exit: every error, from the secret files to the subcommand, comes back
/// here to [`main`], the one place that turns it into a message and an exit code.
fn run() -> anyhow::Result<ExitCode> {
    load_secret_files().map_err(lifeboat::error::usage)?;
    let cli = commands::Cli::parse();
    commands::init_logging(&cli.global);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(commands::run(cli))
}

/// The exit class of an error: the first error in its chain that carries one. This is the only
/// place that knows every error type of every layer, so the layers need not know each other's.
pub(crate) fn class_of(err: &anyhow::Error) -> ExitClass {
    use lifeboat::{lock, pipeline::PipelineError, restore::VersionMismatch, state::ClaimHeld};
    err.chain()
        .find_map(|cause| {
            if let Some(e) = cause.downcast_ref::<ClassifiedError>() {
                Some(e.class)
            } else if let Some(e) = cause.downcast_ref::<PipelineError>() {
                Some(e.class())
            } else if cause.is::<VersionMismatch>() {
                Some(ExitClass::VersionMismatch)
            } else if cause.is::<lock::LockHeld>()
                || cause.is::<lock::LockLost>()
                || cause.is::<ClaimHeld>()
            {
                Some(ExitClass::Locked)
            } else {
                None
            }
        })
        .unwrap_or(ExitClass::Failure)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn class_survives_context() {
        let err = Err::<(), _>(lifeboat::error::verification("bad chunk"))
            .context("restoring volume db")
            .unwrap_err();
        assert_eq!(class_of(&err), ExitClass::Verification);
        assert_eq!(class_of(&anyhow::anyhow!("plain")), ExitClass::Failure);
        let held = anyhow::Error::new(lifeboat::state::ClaimHeld {
            app: "cvat".into(),
            path: "/x".into(),
        })
        .context("restore");
        assert_eq!(class_of(&held), ExitClass::Locked);
    }
}
