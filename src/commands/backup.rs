//! `lifeboat backup`: one backup of one app.
//!
//! Where it sits: The binary's edge: a plan from `plans` (flags and the config file) for
//! `lifeboat::backup::run_and_prune`, between notifications, and the result printed.

pub use super::plans::BackupArgs;
use lifeboat::config::ConfigFile;
use std::process::ExitCode;

pub async fn run(args: BackupArgs, file: ConfigFile, verbose: bool) -> anyhow::Result<ExitCode> {
    let cancel = lifeboat::shutdown::cancel_on_signals();
    let progress = lifeboat::progress::Progress::on_terminal();
    let shown = verbose || progress.is_shown();
    let started = std::time::Instant::now();
    let (manifest, store) = super::plans::notified(args, file, progress, &cancel).await?;
    if shown {
        println!(
            "{}",
            lifeboat::notify::summary(&manifest, &store, started.elapsed())
        );
    }
    Ok(ExitCode::SUCCESS)
}
