//! `lifeboat prune`: remove the backups no keep rule keeps.
//!
//! Where it sits: The binary's edge: flags to `lifeboat::retention::prune`, under the app's claim
//! and store lock (`state::exclusively`); a dry run takes neither.

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
    let store_options = file.store_for(args.store)?;
    let retention = args.retention.or(file.retention.clone());
    let app = args.app.app_name(&file.app)?;
    let (policy, grace) = (retention.policy()?, retention.grace()?);
    let state_dir = lifeboat::state::state_dir();
    let repo = lifeboat::repo::Repo::open(&store_options).await?;
    let keys = args.keys.keys(&file)?;
    // An unfinished restore may still need the backup it was restoring.
    let (repo, app, state_dir) = (&repo, &app, &state_dir);
    let prune = |dry_run| async move {
        lifeboat::state::refuse_if_incomplete(state_dir, app)?;
        lifeboat::retention::prune(repo, app, &policy, grace, dry_run, &keys.policy).await
    };
    let report = if args.dry_run {
        prune(true).await?
    } else {
        // Not cancelled by a signal: SIGINT ends a prune as it always did (the manifest of a
        // backup goes first, so a prune cut short leaves only incomplete backups behind).
        let cancel = tokio_util::sync::CancellationToken::new();
        lifeboat::state::exclusively(repo, app, "prune", &cancel, |_| prune(false)).await?
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
    if report.chunks_removed > 0 {
        println!(
            "{verb:<13} {} unreferenced chunk(s), {}",
            report.chunks_removed,
            lifeboat::text::human_bytes(report.chunk_bytes_freed)
        );
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
