//! `lifeboat verify`: the whole read path of one or all backups, touching no volume.

use lifeboat::config::{ConfigFile, Merge, StoreOptions};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreOptions,
    /// The app name the backups are stored under
    #[arg(long, short = 'p', visible_alias = "name", env = "LIFEBOAT_PROJECT")]
    pub project: Option<String>,
    /// The backup to verify [default: the newest]
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    pub backup: Option<String>,
    /// Verify every complete backup of the app
    #[arg(long)]
    pub all: bool,
    /// With an identity, objects are decrypted, decompressed and every tar entry checked;
    /// without, only stored sizes and sha256
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY_FILE", value_name = "PATH")]
    pub identity: Option<std::path::PathBuf>,
}

pub async fn run(args: VerifyArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = args.store.or(file.store);
    let app = super::app_name(args.project, &file.app)?;
    let identity = args.identity.or(file.restore.identity);
    let identities = identity
        .as_deref()
        .map(lifeboat::keys::read_identities)
        .transpose()?;
    let store = lifeboat::store::open(&store_options).await?;
    let manifests = if args.all {
        lifeboat::manifest::list(&store.objects, &store.layout, Some(&app))
            .await?
            .into_iter()
            .map(|l| l.manifest.map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        vec![
            lifeboat::manifest::read(&store.objects, &store.layout, &app, args.backup.as_deref())
                .await?,
        ]
    };
    let mut failures = 0;
    let mut worst = None;
    for manifest in &manifests {
        for record in &manifest.volumes {
            match lifeboat::verify::verify_volume(&store, manifest, record, identities.as_deref())
                .await
            {
                Ok(Some(summary)) => println!(
                    "ok    {} {}: {} entries, {} bytes of files, sha256 matches",
                    manifest.backup_id, record.name, summary.entries, summary.file_bytes
                ),
                Ok(None) => println!(
                    "ok    {} {}: size and sha256 match (no identity: not decrypted)",
                    manifest.backup_id, record.name
                ),
                Err(e) => {
                    println!("FAIL  {} {}: {e}", manifest.backup_id, record.name);
                    failures += 1;
                    worst.get_or_insert(e.class());
                }
            }
        }
    }
    match worst {
        None => Ok(ExitCode::SUCCESS),
        Some(class) => {
            eprintln!("error: {failures} volume object(s) failed verification");
            Ok(class.code())
        }
    }
}
