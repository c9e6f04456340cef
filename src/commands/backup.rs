//! `lifeboat backup`: one backup of one app.

use super::human_bytes;
use lifeboat::backup::{BackupPlan, VolumeSelection};
use lifeboat::config::{
    AppOptions, BackupOptions, ConfigFile, Merge, RetentionOptions, StoreOptions,
};
use lifeboat::keys;
use lifeboat::pipeline::compress::CompressionSettings;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub backup: BackupOptions,
}

pub async fn run(args: BackupArgs, file: ConfigFile, verbose: bool) -> anyhow::Result<ExitCode> {
    run_with(args, file, verbose, lifeboat::shutdown::cancel_on_signals()).await
}

/// Validates the backup settings and turns them into a plan, the store options and the
/// retention settings.
pub fn build_plan(
    args: BackupArgs,
    file: ConfigFile,
) -> anyhow::Result<(BackupPlan, StoreOptions, RetentionOptions)> {
    let retention = file.retention.clone();
    let app = args.app.or(file.app);
    let store_options = args.store.or(file.store);
    let options = args.backup.or(file.backup);

    let mut recipients = Vec::new();
    for text in options.recipients.iter().flatten() {
        recipients.push(keys::parse_recipient(text)?);
    }
    if let Some(path) = &options.recipients_file {
        recipients.extend(keys::read_recipients_file(path)?);
    }
    if recipients.is_empty() {
        return Err(lifeboat::error::usage(
            "no recipient to encrypt to: pass --recipient age1… (from `lifeboat keygen`) or --recipients-file, or set [backup] recipients in the config file",
        ));
    }
    let kind = options.compression.unwrap_or_default();
    if let (Some(level), Some(range)) = (options.level, kind.level_range())
        && !range.contains(&level)
    {
        return Err(lifeboat::error::usage(format!(
            "compression level {level} is out of range for {kind:?}: use {}..={}",
            range.start(),
            range.end()
        )));
    }
    let plan = BackupPlan {
        app_name: app.app_name()?,
        selector: app.selector()?,
        selection: VolumeSelection {
            only: options.volumes.unwrap_or_default(),
            exclude: options.exclude_volumes.unwrap_or_default(),
            bind_paths: options.bind_paths.unwrap_or_default(),
        },
        recipients: Arc::new(recipients),
        compression: CompressionSettings::new(kind, options.level),
        part_policy: store_options.part_policy()?,
        stop_timeout_secs: app.stop_timeout(),
        version_from: options.version_from,
    };
    Ok((plan, store_options, retention))
}

/// One backup, cancelled by `cancel`.
pub async fn run_with(
    args: BackupArgs,
    file: ConfigFile,
    verbose: bool,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let (plan, store_options, retention) = build_plan(args, file)?;
    let store = lifeboat::store::open(&store_options).await?;
    let docker = lifeboat::docker::connect().await?;
    let manifest = lifeboat::backup::run(&docker, &store, &plan, &cancel).await?;
    if verbose || std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!(
            "backup {} of {}: {} volumes, {} read, {} stored, downtime {:.1} s, in {}",
            manifest.backup_id,
            manifest.app,
            manifest.volumes.len(),
            human_bytes(manifest.total_tar()),
            human_bytes(manifest.total_stored()),
            manifest.downtime_seconds,
            store.url
        );
    }
    // [retention] in the config file: prune after a good backup. A failed prune is reported but
    // does not fail the backup, which is safe in the store.
    let policy = retention.policy()?;
    if !policy.is_empty() {
        let pruned = async {
            let lock = lifeboat::lock::acquire(&store, &manifest.app, "prune").await?;
            let result = lifeboat::retention::prune(
                &store,
                &manifest.app,
                &policy,
                retention.grace()?,
                false,
            )
            .await;
            lock.release().await;
            result
        }
        .await;
        match pruned {
            Ok(report) => tracing::info!(
                removed =
                    report.decisions.iter().filter(|d| !d.keep()).count() + report.incomplete.len(),
                "pruned"
            ),
            Err(e) => {
                tracing::error!("the backup is complete, but pruning old backups failed: {e:#}")
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
