//! `lifeboat show`: one backup's manifest, for people or scripts, once it is authenticated.
//!
//! Where it sits: The binary's edge: prints one authenticated manifest.

use super::TrustArgs;
use lifeboat::config::ConfigFile;
use lifeboat::manifest::Authenticity;
use lifeboat::store::StoreOptions;
use lifeboat::text::{Printable, human_bytes};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The backup id [default: the newest]
    pub backup: Option<String>,
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub app: lifeboat::config::AppNameOptions,
    /// The manifest as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: TrustArgs,
}

pub async fn run(args: ShowArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = file.store_for(args.store)?;
    let app = args.app.app_name(&file.app)?;
    let repo = lifeboat::repo::Repo::open(&store_options).await?;
    let keys = args.keys.keys(&file)?;
    let found = repo
        .read(&app, args.backup.as_deref(), &keys.policy)
        .await?;
    let m = &found.manifest;
    let mut out = std::io::stdout().lock();
    if args.json {
        // As stored, plus the chunks read (and checked) from each volume's list objects.
        let mut value = serde_json::to_value(m)?;
        for (record, volume) in m
            .volumes
            .iter()
            .zip(value["volumes"].as_array_mut().into_iter().flatten())
        {
            if !record.lists.is_empty() {
                volume["chunks"] = serde_json::to_value(&record.chunks)?;
            }
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let vouched = match &found.authenticity {
        Authenticity::Signed(fingerprint) => format!("signed by {fingerprint}"),
        Authenticity::Unsigned => {
            "NOT AUTHENTICATED: format 1, shown because of --allow-unsigned".into()
        }
    };
    writeln!(out, "backup     {} ({vouched})", m.backup_id)?;
    writeln!(out, "app        {}", Printable(&m.app))?;
    writeln!(out, "host       {}", Printable(&m.host))?;
    writeln!(
        out,
        "made       {} → {} (downtime {:.1} s) by lifeboat {}",
        m.started_at,
        m.finished_at,
        m.downtime_seconds,
        Printable(&m.lifeboat_version)
    )?;
    if let Some(version) = &m.app_version.version {
        writeln!(
            out,
            "version    {} (from {})",
            Printable(version),
            Printable(m.app_version.version_source.as_deref().unwrap_or("?"))
        )?;
    }
    for (service, image) in &m.app_version.services {
        writeln!(
            out,
            "service    {}: {} ({})",
            Printable(service),
            Printable(&image.image),
            Printable(&image.image_id)
        )?;
    }
    for v in &m.volumes {
        writeln!(
            out,
            "volume     {} ({} at {}:{}): {} tar → {} stored, {:?}, sha256 {}",
            Printable(&v.name),
            Printable(v.compose_volume.as_deref().unwrap_or("-")),
            Printable(&v.service),
            Printable(&v.container_path),
            human_bytes(v.tar_size),
            human_bytes(v.stored_size),
            v.compression,
            v.sha256
        )?;
        if v.is_chunked() {
            let new = v.new_bytes.unwrap_or(0);
            writeln!(
                out,
                "           {} chunks: {} new, {} reused from earlier backups; encrypted to {}",
                v.chunk_count(),
                human_bytes(new),
                human_bytes(v.stored_size.saturating_sub(new)),
                Printable(&v.encryption.recipients.join(", "))
            )?;
        } else if v.segments > 1 {
            writeln!(
                out,
                "           object {} and its {} continuations ({} … {}), encrypted to {}",
                Printable(&v.object),
                v.segments - 1,
                Printable(&lifeboat::format::segment_name(&v.object, 1)),
                Printable(&lifeboat::format::segment_name(&v.object, v.segments - 1)),
                Printable(&v.encryption.recipients.join(", "))
            )?;
        } else {
            writeln!(
                out,
                "           object {}, encrypted to {}",
                Printable(&v.object),
                Printable(&v.encryption.recipients.join(", "))
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
