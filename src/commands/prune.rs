//! `lifeboat prune`: remove the backups no keep rule keeps.
//!
//! Where it sits: The binary's edge: flags to `lifeboat::retention::prune`, under the store lock.

use super::TrustArgs;
use lifeboat::config::{ConfigFile, Merge, RetentionOptions};
use lifeboat::store::StoreOptions;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub retention: RetentionOptions,
    #[command(flatten)]
    pub app: lifeboat::config::AppNameOptions,
    /// Show what would be removed and why the rest is kept; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Only backups these keys vouch for count (and only they are removed)
    #[command(flatten)]
    pub keys: TrustArgs,
}

pub async fn run(args: PruneArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = args.store.or(file.store.clone());
    let retention = args.retention.or(file.retention.clone());
    let app = args.app.app_name(&file.app)?;
    let (policy, grace) = (retention.policy()?, retention.grace()?);
    let state_dir = lifeboat::state::state_dir();
    let _claim = if args.dry_run {
        None
    } else {
        Some(lifeboat::state::claim(&state_dir, &app)?)
    };
    lifeboat::state::refuse_if_incomplete(&state_dir, &app)?;
    let store = lifeboat::store::open(&store_options).await?;
    let keys = args.keys.keys(&file)?;
    let lock = if args.dry_run {
        None
    } else {
        Some(
            lifeboat::lock::acquire(
                &store,
                &app,
                "prune",
                lifeboat::state::local_claims(&app).as_ref(),
            )
            .await?,
        )
    };
    let result =
        lifeboat::retention::prune(&store, &app, &policy, grace, args.dry_run, &keys.policy).await;
    let report = match lock {
        Some(lock) => lock.finish(result).await?,
        None => result?,
    };
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for d in &report.decisions {
        if d.keep() {
            println!("keep          {}  ({})", d.backup_id, d.kept_by.join(", "));
        } else {
            println!("{verb:<13} {}", d.backup_id);
        }
    }
    for id in &report.incomplete {
        println!("{verb:<13} {id}  (incomplete: no manifest)");
    }
    for (id, host) in &report.future {
        println!(
            "left alone    {id}  (dated in the future: the clock of host {host} is wrong; not counted)"
        );
    }
    for (id, reason) in &report.not_authentic {
        println!(
            "left alone    {}  (failed verification, never counted: {reason})",
            lifeboat::text::printable(id)
        );
    }
    Ok(ExitCode::SUCCESS)
}
