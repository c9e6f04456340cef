//! Flags to backup plans, shared by the commands that back up: `backup`, `schedule` (a backup
//! per run) and `check-config` (the plan, checked and shown): the arguments, the plan built
//! from them and the config file, and one backup run between its notifications.
//!
//! Where it sits: The binary's edge, beside the subcommands that use it.

use lifeboat::backup::{BackupPlan, VolumeSelection};
use lifeboat::config::{
    AppOptions, BackupOptions, ConfigFile, Merge, NotifyOptions, RetentionOptions,
};
use lifeboat::keys;
use lifeboat::pipeline::compress::CompressionSettings;
use lifeboat::store::StoreOptions;
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub backup: BackupOptions,
    #[command(flatten)]
    pub notify: NotifyOptions,
}

/// One backup with its notifications (a bad flag or key is notified as a failure too).
pub async fn notified(
    args: BackupArgs,
    file: ConfigFile,
    progress: lifeboat::progress::Progress,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<(lifeboat::format::Manifest, String)> {
    let notifier = args.notify.clone().or(file.notify.clone()).notifier()?;
    let app = args.app.clone().or(file.app.clone()).app_name()?;
    notifier
        .around(&app, async {
            let (mut plan, stores, retention) = build_plan(args, file)?;
            plan.progress = progress;
            let keep = (retention.policy()?, retention.grace()?);
            lifeboat::backup::run_and_prune(&plan, &stores, keep, cancel).await
        })
        .await
}

/// Validates the backup settings and turns them into a plan, the options of every store it
/// writes to and the retention settings.
pub fn build_plan(
    args: BackupArgs,
    file: ConfigFile,
) -> anyhow::Result<(BackupPlan, Vec<StoreOptions>, RetentionOptions)> {
    let retention = file.retention.clone();
    let hooks = lifeboat::hooks::Hooks::from_config(&file.hook)?;
    let stores = file.stores_for_backup(args.store)?;
    let app = args.app.or(file.app);
    let options = args.backup.or(file.backup);

    let mut given = Vec::new();
    for text in options.recipients.iter().flatten() {
        given.push(keys::parse_recipient(text)?);
    }
    if let Some(path) = &options.recipients_file {
        given.extend(keys::read_recipients_file(path)?);
    }
    let backup_key = keys::BackupKey::find(options.backup_key.as_deref())?;
    let recipients = backup_key.recipients_with(given)?;
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
    let spool_dir = options
        .spool_dir
        .clone()
        .unwrap_or_else(|| lifeboat::state::state_dir().join("spool"));
    let spool_limit = options.spool_size_mib.map_or_else(
        || lifeboat::pipeline::spool::SpoolBudget::default_limit(&spool_dir),
        |mib| mib << 20,
    );
    if options.dedup && kind == lifeboat::format::Compression::Gzip {
        return Err(lifeboat::error::usage(
            "--dedup stores each chunk as its own zstd frame: use --compression zstd (or none) with it",
        ));
    }
    let dedup = options.dedup.then(|| Arc::new(backup_key.chunk_keys()));
    let plan = BackupPlan {
        app_name: app.app_name()?,
        selector: app.selector()?,
        selection: VolumeSelection {
            only: options.volumes.unwrap_or_default(),
            exclude: options.exclude_volumes.unwrap_or_default(),
            bind_paths: options.bind_paths.unwrap_or_default(),
        },
        recipients: Arc::new(recipients),
        signer: Arc::new(backup_key.signer()),
        compression: CompressionSettings::new(kind, options.level),
        stop_timeout_secs: app.stop_timeout(),
        version_from: options.version_from,
        hooks: Arc::new(hooks),
        progress: lifeboat::progress::Progress::hidden(),
        spool_dir,
        spool_limit,
        dedup,
        read_through_docker: options.read_through_docker,
    };
    for store in &stores {
        store.part_policy()?;
    }
    Ok((plan, stores, retention))
}
