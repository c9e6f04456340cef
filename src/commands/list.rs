//! `lifeboat list`: the complete backups in a store, each marked by whether it is genuine.
//!
//! Where it sits: The binary's edge: prints what `Repo::list` finds.

use super::TrustArgs;
use lifeboat::config::ConfigFile;
use lifeboat::format::Manifest;
use lifeboat::manifest::Authenticity;
use lifeboat::repo::Listed;
use lifeboat::store::StoreOptions;
use lifeboat::text::{Printable, human_bytes};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub app: lifeboat::config::AppNameOptions,
    /// One JSON array on stdout, for scripts: each genuine backup's manifest with an
    /// `authenticity` field, and `{app, backup_id, authenticity: "refused", reason}` for each
    /// backup that is not
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: TrustArgs,
}

pub async fn run(args: ListArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = file.store_for(args.store)?;
    let project = args.app.app_name_if_any(&file.app)?;
    let repo = lifeboat::repo::Repo::open(&store_options).await?;
    let keys = args.keys.keys(&file)?;
    let listed = repo.list(project.as_deref(), &keys.policy).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let entries: Vec<serde_json::Value> = listed.iter().map(json_entry).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if listed.is_empty() {
        eprintln!("no complete backups in {}", repo.url());
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<22} {:<16} {:<10} {:<24} {:>7} {:>10} {:>8}",
        "ID", "APP", "AUTH", "VERSION", "VOLUMES", "STORED", "AGE"
    )?;
    let now = chrono::Utc::now();
    let mut refused = 0;
    for entry in &listed {
        match &entry.outcome {
            Ok(found) => {
                let m = &found.manifest;
                let auth = match found.authenticity {
                    Authenticity::Signed(_) => "signed",
                    Authenticity::Unsigned => "UNSIGNED",
                };
                writeln!(
                    out,
                    "{:<22} {:<16} {:<10} {:<24} {:>7} {:>10} {:>8}",
                    m.backup_id,
                    Printable(&m.app).to_string(),
                    auth,
                    Printable(&version(m)).to_string(),
                    m.volumes.len(),
                    human_bytes(m.total_stored()),
                    age(now - m.finished_at)
                )?;
            }
            Err(why) => {
                refused += 1;
                writeln!(
                    out,
                    "{:<22} {:<16} {:<10} {}",
                    Printable(&entry.backup_id).to_string(),
                    Printable(&entry.app).to_string(),
                    "FAILED",
                    why.reason
                )?;
            }
        }
    }
    if refused > 0 {
        eprintln!(
            "warning: {refused} backup(s) failed verification (FAILED): restore, verify and prune never take them for genuine"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn json_entry(entry: &Listed) -> serde_json::Value {
    match &entry.outcome {
        Ok(found) => {
            let mut value = serde_json::to_value(&found.manifest).unwrap_or_default();
            value["authenticity"] = match &found.authenticity {
                Authenticity::Signed(fingerprint) => serde_json::json!({ "signed": fingerprint }),
                Authenticity::Unsigned => "unsigned".into(),
            };
            value
        }
        Err(why) => serde_json::json!({
            "app": Printable(&entry.app).to_string(),
            "backup_id": Printable(&entry.backup_id).to_string(),
            "authenticity": "refused",
            "reason": why.reason,
        }),
    }
}

/// One version string for the table: the recorded version, else the images.
fn version(m: &Manifest) -> String {
    m.app_version.version.clone().unwrap_or_else(|| {
        let mut unique: Vec<&str> = m
            .app_version
            .services
            .values()
            .map(|s| s.image.as_str())
            .collect();
        unique.dedup();
        match unique.first() {
            Some(first) if unique.len() > 1 => format!("{first} +{}", unique.len() - 1),
            Some(first) => first.to_string(),
            None => String::new(),
        }
    })
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
