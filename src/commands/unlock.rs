//! `lifeboat unlock`: remove the lock a dead run left behind.

use lifeboat::config::{ConfigFile, Merge, StoreOptions};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub store: StoreOptions,
    /// The app name the lock belongs to (the project, or --name at backup)
    #[arg(long, short = 'p', visible_alias = "name", env = "LIFEBOAT_PROJECT")]
    pub project: Option<String>,
}

pub async fn run(args: UnlockArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = args.store.or(file.store);
    let app = super::app_name(args.project, &file.app)?;
    let store = lifeboat::store::open(&store_options).await?;
    match lifeboat::lock::unlock(&store, &app).await? {
        Some(held) => eprintln!(
            "removed the lock of '{app}' held by a {} on {} (pid {}) since {}",
            held.operation, held.host, held.pid, held.acquired_at
        ),
        None => eprintln!("'{app}' was not locked in {}", store.url),
    }
    Ok(ExitCode::SUCCESS)
}
