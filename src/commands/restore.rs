//! `lifeboat restore`: verify a backup, then stream it back into the app's volumes.

use lifeboat::config::{AppOptions, ConfigFile, Merge, RestoreOptions, StoreOptions};
use lifeboat::restore::RestorePlan;
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
    /// The backup to restore [default: the newest complete one]
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Restore even though the app's images differ from the ones the backup recorded
    #[arg(long)]
    pub allow_version_mismatch: bool,
    /// Skip the verification pass (download, decrypt, decompress, check every tar entry) that
    /// runs before any volume is touched. Only for a backup `lifeboat verify` checked already:
    /// a damaged object is then found while its volume is half replaced
    #[arg(long)]
    pub no_verify: bool,
    /// Restore backed-up volume OLD (full or compose name) into the volume NEW (repeatable)
    #[arg(long, value_name = "OLD=NEW")]
    pub map_volume: Vec<String>,
    /// Where to read the app version string here: label:KEY, env:NAME or file:SERVICE:/path
    /// [default: where the backup read it]
    #[arg(long, value_name = "SOURCE")]
    pub version_from: Option<String>,
}

pub async fn run(args: RestoreArgs, file: ConfigFile, verbose: bool) -> anyhow::Result<ExitCode> {
    let app = args.app.or(file.app);
    let store_options = args.store.or(file.store);
    let options = args.restore.or(file.restore);
    let identity = options.identity.ok_or_else(|| {
        lifeboat::error::usage(
            "restore needs the identity that decrypts the backup: pass --identity key.txt",
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
    let plan = RestorePlan {
        app_name: app.app_name()?,
        selector: app.selector()?,
        backup_id: args.backup,
        identities: std::sync::Arc::new(lifeboat::keys::read_identities(&identity)?),
        allow_version_mismatch: args.allow_version_mismatch,
        verify_first: !args.no_verify,
        map_volumes,
        stop_timeout_secs: app.stop_timeout(),
        version_from: args.version_from,
        hooks: std::sync::Arc::new(lifeboat::hooks::Hooks::from_config(&file.hook)?),
    };
    let store = lifeboat::store::open(&store_options).await?;
    let docker = lifeboat::docker::connect().await?;
    let cancel = lifeboat::shutdown::cancel_on_signals();
    let report = lifeboat::restore::run(&docker, &store, &plan, &cancel).await?;
    if verbose || std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!(
            "restored backup {} of {}: {} volumes, downtime {:.1} s",
            report.manifest.backup_id,
            report.manifest.app,
            report.targets.len(),
            report.downtime.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
