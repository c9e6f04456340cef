//! `lifeboat list`: the complete backups in a store.

use super::human_bytes;
use lifeboat::config::{ConfigFile, Merge, StoreOptions};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreOptions,
    /// Only the backups stored under this app name (the project, or --name at backup)
    #[arg(long, short = 'p', visible_alias = "name", env = "LIFEBOAT_PROJECT")]
    pub project: Option<String>,
    /// One JSON array of manifests on stdout, for scripts
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ListArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = args.store.or(file.store);
    let project = args
        .project
        .or_else(|| file.app.name.clone())
        .or_else(|| file.app.project.clone());
    let store = lifeboat::store::open(&store_options).await?;
    let listed =
        lifeboat::manifest::list(&store.objects, &store.layout, project.as_deref()).await?;
    let mut manifests = Vec::new();
    for entry in listed {
        match entry.manifest {
            Ok(manifest) => manifests.push(manifest),
            Err(why) => tracing::warn!("ignoring {}: {why}", entry.key),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
        return Ok(ExitCode::SUCCESS);
    }
    if manifests.is_empty() {
        eprintln!("no complete backups in {}", store.url);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<22} {:<16} {:<24} {:>7} {:>10} {:>8}",
        "ID", "APP", "VERSION", "VOLUMES", "STORED", "AGE"
    );
    let now = chrono::Utc::now();
    for m in &manifests {
        let version = m.app_version.version.clone().unwrap_or_else(|| {
            let images: Vec<_> = m
                .app_version
                .services
                .values()
                .map(|s| s.image.as_str())
                .collect();
            let mut unique = images.clone();
            unique.dedup();
            unique
                .first()
                .map(|first| {
                    if unique.len() > 1 {
                        format!("{first} +{}", unique.len() - 1)
                    } else {
                        first.to_string()
                    }
                })
                .unwrap_or_default()
        });
        println!(
            "{:<22} {:<16} {:<24} {:>7} {:>10} {:>8}",
            m.backup_id,
            m.app,
            version,
            m.volumes.len(),
            human_bytes(m.total_stored()),
            age(now - m.finished_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn age(delta: chrono::TimeDelta) -> String {
    let secs = delta.num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
