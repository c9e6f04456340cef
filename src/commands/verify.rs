//! `lifeboat verify`: the whole read path of one or all backups, touching no volume.
//!
//! Where it sits: The binary's edge: runs `lifeboat::pipeline::open` over a backup's objects and
//! prints a line per volume.

use super::TrustArgs;
use lifeboat::config::ConfigFile;
use lifeboat::store::StoreOptions;
use lifeboat::text::Printable;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub app: lifeboat::config::AppNameOptions,
    /// The backup to verify [default: the newest]
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    pub backup: Option<String>,
    /// Verify every complete backup of the app
    #[arg(long)]
    pub all: bool,
    /// Deduplicated volumes: download every chunk and check it (size, sha256, and with the
    /// owner key decryption and every tar entry); without it, only that every chunk the
    /// backup lists is in the store with its size (one listing). Volumes stored as one object
    /// are always read in full
    #[arg(long)]
    pub read_data: bool,
    /// With the owner key (--identity), objects are decrypted, decompressed and every tar entry
    /// checked; with only a backup key, each manifest's signature and each object's size and
    /// sha256
    #[command(flatten)]
    pub keys: TrustArgs,
}

pub async fn run(args: VerifyArgs, file: ConfigFile) -> anyhow::Result<ExitCode> {
    let store_options = file.store_for(args.store)?;
    let app = args.app.app_name(&file.app)?;
    let repo = lifeboat::repo::Repo::open(&store_options).await?;
    let keys = args.keys.keys(&file)?;
    let identities = keys.owner.as_ref().map(|o| &o.identities);
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    let mut worst = None;
    let backups = if args.all {
        let listed = repo.list(Some(&app), &keys.policy).await?;
        let mut genuine = Vec::new();
        for entry in listed {
            match entry.outcome {
                Ok(found) => genuine.push(found),
                Err(refused) => {
                    writeln!(out, "FAIL  {}: {}", entry.backup_id, refused.reason)?;
                    failures += 1;
                    worst = Some(lifeboat::error::ExitClass::Verification);
                }
            }
        }
        genuine
    } else {
        vec![
            repo.read(&app, args.backup.as_deref(), &keys.policy)
                .await?,
        ]
    };
    let chunked = backups
        .iter()
        .any(|b| b.manifest.volumes.iter().any(|v| v.is_chunked()));
    let present = if chunked && !args.read_data {
        let store = repo.chunk_store(&app);
        let listed = lifeboat::pipeline::chunk::list_chunks(&store).await;
        Some(listed.map_err(|e| anyhow::anyhow!("cannot list the chunks of {app}: {e}"))?)
    } else {
        None
    };
    for mut found in backups {
        // One backup's chunk lists at a time (format 5): read and checked here, dropped after.
        if let Err(error) = repo.read_lists(&mut found.manifest).await {
            writeln!(out, "FAIL  {}: {error:#}", found.manifest.backup_id)?;
            failures += 1;
            worst.get_or_insert(
                lifeboat::error::classified(&error).unwrap_or(lifeboat::error::ExitClass::Failure),
            );
            continue;
        }
        let found = &found;
        let how = How {
            identities,
            present: present.as_ref(),
        };
        for class in verify_objects(&mut out, &repo, found, &how).await? {
            failures += 1;
            worst.get_or_insert(class);
        }
    }
    match worst {
        None => Ok(ExitCode::SUCCESS),
        Some(class) => {
            eprintln!("error: {failures} backup(s) or volume object(s) failed verification");
            Ok(class.code())
        }
    }
}

/// Reads every object of one genuine backup through the read chain, printing a line per
/// volume; returns the exit classes of the ones that failed.
/// How deep to verify: with the owner key or not; the store's chunks (id → size) for the
/// quick check of deduplicated volumes, or `None` to read their data.
struct How<'a> {
    identities: Option<&'a std::sync::Arc<Vec<lifeboat::keys::BoxIdentity>>>,
    present: Option<&'a std::collections::HashMap<lifeboat::format::Hex32, u64>>,
}

async fn verify_objects(
    out: &mut impl Write,
    repo: &lifeboat::repo::Repo,
    found: &lifeboat::manifest::Authenticated,
    how: &How<'_>,
) -> anyhow::Result<Vec<lifeboat::error::ExitClass>> {
    let manifest = &found.manifest;
    let vouched = match &found.authenticity {
        lifeboat::manifest::Authenticity::Signed(fp) => format!("signed by {fp}"),
        lifeboat::manifest::Authenticity::Unsigned => "UNSIGNED (format 1)".into(),
    };
    let mut failed = Vec::new();
    for record in &manifest.volumes {
        let name = Printable(&record.name);
        if let (true, Some(present)) = (record.is_chunked(), how.present) {
            match lifeboat::pipeline::chunk::missing(&record.chunks, present) {
                None => writeln!(
                    out,
                    "ok    {} {name}: all {} chunks in the store with their sizes, {vouched} (quick: --read-data downloads and checks them)",
                    manifest.backup_id,
                    record.chunks.len()
                )?,
                Some(problem) => {
                    writeln!(out, "FAIL  {} {name}: {problem}", manifest.backup_id)?;
                    failed.push(lifeboat::error::ExitClass::Verification);
                }
            }
            continue;
        }
        let at = repo.volume_at(&manifest.app, &manifest.backup_id, record);
        let verified = lifeboat::pipeline::open::verify_volume(&at, record, how.identities).await;
        match verified {
            Ok(Some(summary)) => writeln!(
                out,
                "ok    {} {name}: {} entries, {} bytes of files, sha256 matches, {vouched}",
                manifest.backup_id, summary.entries, summary.file_bytes
            )?,
            Ok(None) => writeln!(
                out,
                "ok    {} {name}: size and sha256 match, {vouched} (no owner key: not decrypted)",
                manifest.backup_id
            )?,
            Err(e) => {
                writeln!(out, "FAIL  {} {name}: {e}", manifest.backup_id)?;
                failed.push(e.class());
            }
        }
    }
    Ok(failed)
}
