//! `lifeboat backup`: one backup of one app.
//!
//! Where it sits: The binary's edge: turns flags and the config file into a `BackupPlan` for
//! `lifeboat::backup` and prints the result.

use lifeboat::backup::{BackupPlan, VolumeSelection};
use lifeboat::config::{
    AppOptions, BackupOptions, ConfigFile, Merge, NotifyOptions, RetentionOptions,
};
use lifeboat::keys;
use lifeboat::notify::{Event, Report};
use lifeboat::pipeline::compress::CompressionSettings;
use lifeboat::store::StoreOptions;
use lifeboat::text::human_bytes;
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
    #[command(flatten)]
    pub notify: NotifyOptions,
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
    let hooks = lifeboat::hooks::Hooks::from_config(&file.hook)?;
    let app = args.app.or(file.app);
    let store_options = args.store.or(file.store);
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
        part_policy: store_options.part_policy()?,
        stop_timeout_secs: app.stop_timeout(),
        version_from: options.version_from,
        hooks: Arc::new(hooks),
        progress: lifeboat::progress::Progress::hidden(),
        spool_dir,
        spool_limit,
    };
    Ok((plan, store_options, retention))
}

/// One backup, cancelled by `cancel`, with its notifications.
pub async fn run_with(
    args: BackupArgs,
    file: ConfigFile,
    verbose: bool,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let notifier = args.notify.clone().or(file.notify.clone()).notifier()?;
    let app = args.app.clone().or(file.app.clone()).app_name()?;
    notifier
        .send(Event::Start, &Report::new(Event::Start, &app))
        .await;
    let started = std::time::Instant::now();
    let result = back_up(args, file, verbose, cancel).await;
    let event = if result.is_ok() {
        Event::Success
    } else {
        Event::Failure
    };
    let mut report = Report::new(event, &app);
    report.duration_seconds = Some(started.elapsed().as_secs_f64());
    match &result {
        Ok((manifest, store)) => {
            report.text = format!("lifeboat: {}", summary(manifest, store, started.elapsed()));
            report.backup_id = Some(manifest.backup_id.clone());
            report.volumes = Some(manifest.volumes.len());
            report.bytes_read = Some(manifest.total_tar());
            report.bytes_stored = Some(manifest.total_stored());
            report.downtime_seconds = Some(manifest.downtime_seconds);
            report.store = Some(store.clone());
        }
        Err(error) => {
            report.text = format!("lifeboat: backup of {app} on {} FAILED", report.host);
            report.error = Some(format!("{error:#}"));
        }
    }
    notifier.send(event, &report).await;
    result.map(|_| ExitCode::SUCCESS)
}

/// The one summary line of a run.
fn summary(
    manifest: &lifeboat::format::Manifest,
    store: &str,
    took: std::time::Duration,
) -> String {
    format!(
        "backup {} of {}: {} volumes, {} read, {} stored, took {:.1} s, downtime {:.1} s, in {}",
        manifest.backup_id,
        manifest.app,
        manifest.volumes.len(),
        human_bytes(manifest.total_tar()),
        human_bytes(manifest.total_stored()),
        took.as_secs_f64(),
        manifest.downtime_seconds,
        store
    )
}

/// One backup and its retention; the manifest and the store's URL.
async fn back_up(
    args: BackupArgs,
    file: ConfigFile,
    verbose: bool,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(lifeboat::format::Manifest, String)> {
    let started = std::time::Instant::now();
    let (mut plan, store_options, retention) = build_plan(args, file)?;
    plan.progress = lifeboat::progress::Progress::on_terminal();
    let store = lifeboat::store::open(&store_options).await?;
    let docker = lifeboat::docker::connect().await?;
    let manifest = lifeboat::backup::run(&docker, &store, &plan, &cancel).await?;
    if verbose || plan.progress.is_shown() {
        println!("{}", summary(&manifest, &store.url, started.elapsed()));
    }
    // [retention] in the config file: prune after a good backup. A failed prune is reported but
    // does not fail the backup, which is safe in the store.
    let policy = retention.policy()?;
    if !policy.is_empty() {
        let pruned = lifeboat::backup::prune_after(
            &store,
            &manifest,
            &plan.signer,
            &policy,
            retention.grace()?,
        )
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
    Ok((manifest, store.url.to_string()))
}
