//! `lifeboat unlock`: remove the lock a dead run left behind.
//!
//! Where it sits: The binary's edge: `Repo::unlock`, printed.

use lifeboat::config::ConfigFile;
use lifeboat::store::StoreOptions;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub app: lifeboat::config::AppNameOptions,
}

pub async fn run(args: UnlockArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = file.store_for(args.store)?;
    let app = args.app.app_name(&file.app)?;
    let repo = lifeboat::repo::Repo::open(&store_options).await?;
    let removed = repo.unlock(&app).await?;
    if removed.is_empty() {
        eprintln!("'{app}' was not locked in {}", repo.url());
    }
    for held in removed {
        eprintln!(
            "removed the lock of '{app}' held by a {} on {} (pid {}, run {}) since {}",
            held.operation, held.host, held.pid, held.run_id, held.acquired_at
        );
    }
    Ok(ExitCode::SUCCESS)
}
