//! `lifeboat show`: one backup's manifest, for people or scripts.

use super::human_bytes;
use lifeboat::config::{ConfigFile, Merge, StoreOptions};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The backup id [default: the newest]
    pub backup: Option<String>,
    #[command(flatten)]
    pub store: StoreOptions,
    /// The app name the backup is stored under (the project, or --name at backup)
    #[arg(long, short = 'p', visible_alias = "name", env = "LIFEBOAT_PROJECT")]
    pub project: Option<String>,
    /// The manifest as JSON
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ShowArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = args.store.or(file.store);
    let app = super::app_name(args.project, &file.app)?;
    let store = lifeboat::store::open(&store_options).await?;
    let m = lifeboat::manifest::read(&store.objects, &store.layout, &app, args.backup.as_deref())
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("backup     {}", m.backup_id);
    println!("app        {}", m.app);
    println!("host       {}", m.host);
    println!(
        "made       {} → {} (downtime {:.1} s) by lifeboat {}",
        m.started_at, m.finished_at, m.downtime_seconds, m.lifeboat_version
    );
    if let Some(version) = &m.app_version.version {
        println!(
            "version    {version} (from {})",
            m.app_version.version_source.as_deref().unwrap_or("?")
        );
    }
    for (service, image) in &m.app_version.services {
        println!("service    {service}: {} ({})", image.image, image.image_id);
    }
    for v in &m.volumes {
        println!(
            "volume     {} ({} at {}:{}): {} tar → {} stored, {:?}, sha256 {}",
            v.name,
            v.compose_volume.as_deref().unwrap_or("-"),
            v.service,
            v.container_path,
            human_bytes(v.tar_size),
            human_bytes(v.stored_size),
            v.compression,
            v.sha256
        );
        println!(
            "           object {}, encrypted to {}",
            v.object,
            v.encryption.recipients.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
