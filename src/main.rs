//! The `lifeboat` command line: parses arguments, sets up logging, runs one subcommand, and
//! turns its outcome into an exit code (see `error::ExitClass` and README.md).

mod commands;

use clap::Parser;
use lifeboat::error::{ExitClass, class_of};
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
    if let Err(message) = load_secret_files() {
        eprintln!("error: {message}");
        return ExitClass::Usage.code();
    }
    let cli = commands::Cli::parse();
    commands::init_logging(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitClass::Failure.code();
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        // `lifeboat list | head -1`: the reader has what it wanted.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            class_of(&err).code()
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
