//! `lifeboat restore`: verify a backup, then stream it back into the app's volumes; or show
//! the plan (`--dry-run`), or roll back a restore that did not finish (`--rollback`), or write
//! it into a host directory without touching the app (`--to-dir`, `lifeboat::extract`).
//!
//! Where it sits: The binary's edge: flags to a `RestoreRequest` for `lifeboat::restore`, and the
//! result printed.

use lifeboat::config::{AppOptions, ConfigFile, Merge, RestoreOptions};
use lifeboat::restore::RestoreRequest;
use lifeboat::store::StoreOptions;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub app: AppOptions,
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub restore: RestoreOptions,
    /// The backup to restore [default: the one an unfinished restore was restoring, else the
    /// newest]
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Restore even though the app's images differ from the ones the backup recorded
    #[arg(long)]
    pub allow_version_mismatch: bool,
    /// Restore the format-1 backup named with --backup, which carries no signature, trusting
    /// whoever could write to the store
    #[arg(long, requires = "backup")]
    pub allow_unsigned: bool,
    /// Print the plan (backup, authenticity, version check, every target, safety copies,
    /// downtime) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Put back what an unfinished restore replaced, from its safety copies, and start the app
    #[arg(long, conflicts_with_all = ["backup", "dry_run"])]
    pub rollback: bool,
    /// Restore backed-up volume OLD (full or compose name) into the volume NEW (repeatable)
    #[arg(long, value_name = "OLD=NEW")]
    pub map_volume: Vec<String>,
    /// Allow writing the backed-up bind mount at this container path into the host directory
    /// the app mounts there (repeatable); host directories are never written otherwise
    #[arg(long = "bind-path", value_name = "PATH")]
    pub bind_paths: Vec<String>,
    /// Do not copy what non-empty targets hold before replacing it (saves the time and disk
    /// of the copy, and loses the way back if the restore fails half way)
    #[arg(long)]
    pub no_safety_copy: bool,
    /// Where to read the app version string here: label:KEY, env:NAME or file:SERVICE:/path
    /// [default: where the backup read it]
    #[arg(long, value_name = "SOURCE")]
    pub version_from: Option<String>,
    /// Directory for the verified ciphertext between download and write (only ciphertext, in
    /// unlinked files) [default: [backup] spool_dir, else the state directory's spool/]
    #[arg(long, env = "LIFEBOAT_SPOOL_DIR", value_name = "PATH")]
    pub spool_dir: Option<std::path::PathBuf>,
    /// Kept for scripts: restore always verifies every object before it writes, from one
    /// download
    #[arg(long, hide = true)]
    pub no_verify: bool,
    /// Write the backed-up tree into this host directory instead (DIR/<volume>/, each new or
    /// empty), verified like a restore; neither stops nor touches the app, needs no Docker
    #[arg(long, value_name = "DIR", conflicts_with_all = ["rollback", "dry_run", "map_volume", "bind_paths"])]
    pub to_dir: Option<std::path::PathBuf>,
    /// With --to-dir: only this volume (full or compose name; repeatable) [default: all]
    #[arg(long = "volume", value_name = "NAME", requires = "to_dir")]
    pub volumes: Vec<String>,
    /// With --to-dir: only this path in the volume, and what lies under it (repeatable)
    #[arg(long = "include", value_name = "PATH", requires = "to_dir")]
    pub includes: Vec<String>,
}

pub async fn run(args: RestoreArgs, file: ConfigFile, verbose: bool) -> anyhow::Result<ExitCode> {
    let app = args.app.clone().or(file.app.clone());
    let store_options = file.store_for(args.store.clone())?;
    if args.rollback {
        return rollback(&app, &store_options).await;
    }
    if args.no_verify {
        tracing::warn!(
            "--no-verify is ignored: restore downloads every object once and verifies it before writing anything"
        );
    }
    if let Some(dir) = args.to_dir.clone() {
        let (volumes, includes) = (args.volumes.clone(), args.includes.clone());
        let request = request(args, &file, &app)?;
        return to_dir(&request, &store_options, &dir, &volumes, &includes).await;
    }
    let (dry_run, request) = (args.dry_run, request(args, &file, &app)?);
    let repo = lifeboat::repo::Repo::open(&store_options).await?;
    let docker = lifeboat::docker::connect().await?;
    let cancel = lifeboat::shutdown::cancel_on_signals();
    match lifeboat::restore::run(&docker, &repo, &request, dry_run, &cancel).await? {
        Err(plan) => println!("{plan}\n(dry run: nothing was changed)"),
        Ok(report) => {
            if verbose || std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!(
                    "restored backup {} of {}: {} volumes, downtime {:.1} s",
                    report.backup_id,
                    report.app,
                    report.targets,
                    report.downtime.as_secs_f64()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--to-dir`: the backup (or parts of it) into a host directory; the app is left alone.
async fn to_dir(
    request: &RestoreRequest,
    store_options: &StoreOptions,
    dir: &std::path::Path,
    volumes: &[String],
    includes: &[String],
) -> anyhow::Result<ExitCode> {
    let repo = lifeboat::repo::Repo::open(store_options).await?;
    let backup = repo
        .read(
            &request.app_name,
            request.backup_id.as_deref(),
            &request.trust,
        )
        .await?;
    let manifest = &backup.manifest;
    let records = lifeboat::extract::select(manifest, volumes)?;
    let written = lifeboat::extract::to_dir(
        &repo,
        manifest,
        &records,
        &request.owner.identities,
        &request.spool_dir,
        dir,
        includes,
    )
    .await?;
    for done in &written {
        println!(
            "wrote volume {} of backup {} into {}: {} entries",
            lifeboat::text::printable(&done.volume),
            manifest.backup_id,
            done.dir.display(),
            done.entries
        );
        if done.skipped_devices > 0 {
            println!(
                "  left out {} device node(s): a host directory gets none",
                done.skipped_devices
            );
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "note: not run as root, so the files belong to this user; run as root to keep their owners"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--rollback`: puts the safety copies of an unfinished restore back.
async fn rollback(app: &AppOptions, store_options: &StoreOptions) -> anyhow::Result<ExitCode> {
    let repo = lifeboat::repo::Repo::open(store_options).await?;
    let docker = lifeboat::docker::connect().await?;
    let app_name = app.app_name()?;
    let put_back = lifeboat::restore::rollback(
        &docker,
        &repo,
        &app_name,
        &app.selector()?,
        app.stop_timeout(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    println!(
        "rolled back the unfinished restore of {app_name}: {} hold what they held before, and the app is started",
        put_back.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// The flags and the config file as one restore request.
fn request(
    args: RestoreArgs,
    file: &ConfigFile,
    app: &AppOptions,
) -> anyhow::Result<RestoreRequest> {
    let options = args.restore.or(file.restore.clone());
    let identity = options.identity.ok_or_else(|| {
        lifeboat::error::usage(
            "restore needs the owner key, which decrypts the backup and vouches for it: pass --identity key.txt",
        )
    })?;
    let mut map_volumes = BTreeMap::new();
    for mapping in &args.map_volume {
        let (old, new) = mapping
            .split_once('=')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty())
            .ok_or_else(|| {
                lifeboat::error::usage(format!("--map-volume '{mapping}' is not OLD=NEW"))
            })?;
        map_volumes.insert(old.to_string(), new.to_string());
    }
    let owner = lifeboat::keys::OwnerKey::read(&identity)?;
    let trust = lifeboat::manifest::TrustPolicy {
        trust: owner.trust(),
        allow_unsigned: args.allow_unsigned,
    };
    let spool_dir = args
        .spool_dir
        .or_else(|| file.backup.spool_dir.clone())
        .unwrap_or_else(|| lifeboat::state::state_dir().join("spool"));
    Ok(RestoreRequest {
        app_name: app.app_name()?,
        selector: app.selector()?,
        backup_id: args.backup,
        owner: std::sync::Arc::new(owner),
        trust,
        allow_version_mismatch: args.allow_version_mismatch,
        map_volumes,
        bind_paths: args.bind_paths,
        stop_timeout_secs: app.stop_timeout(),
        version_from: args.version_from,
        hooks: std::sync::Arc::new(lifeboat::hooks::Hooks::from_config(&file.hook)?),
        spool_dir,
        safety_copy: !args.no_safety_copy,
    })
}
