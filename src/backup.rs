//! The backup operation: find the app, record its version, stop it, stream every volume to the
//! store, start again exactly the containers that were running, and write the manifest last.
//!
//! The containers are started again on every path out of this module: after success, after an
//! error in any stage, after a panic in the volume task, and after SIGINT/SIGTERM (the token
//! cancels the uploads, which abort their multipart uploads). A failed backup deletes the
//! objects it had completed, so it leaves neither a manifest nor stray volume objects.
//!
//! Where it sits: An operation, on top of the library: uses `docker`, `pipeline::seal`, `repo`,
//! `downtime`, `state` and `hooks`; only `commands/backup.rs` calls it.

use crate::docker::{self, App, Helper, HelperMount};
use crate::format::{self, AppVersion, Encryption, Manifest, SourceKind, VolumeRecord};
use crate::hooks::{HookContext, HookEvent, Hooks};
use crate::keys::Recipient;
use crate::manifest;
use crate::pipeline::chunk::{
    ChunkSealer, ChunkStore, Known, SealingChunks, list_chunks, seal_chunks,
};
use crate::pipeline::compress::CompressionSettings;
use crate::pipeline::seal::{Destination, SealError, Sealed, Sealer, Sealing, seal};
use crate::pipeline::spool::{self, SpoolBudget};
use crate::pipeline::upload::PartPolicy;
use crate::progress::Progress;
use crate::repo::Repo;
use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Which volumes to back up.
#[derive(Debug, Clone, Default)]
pub struct VolumeSelection {
    /// Only these (full or compose names); empty: every named volume.
    pub only: Vec<String>,
    pub exclude: Vec<String>,
    /// Bind mounts to include, by container path.
    pub bind_paths: Vec<String>,
}

/// Everything a backup needs, validated.
pub struct BackupPlan {
    pub app_name: String,
    pub selector: docker::AppSelector,
    pub selection: VolumeSelection,
    pub recipients: Arc<Vec<Recipient>>,
    /// Signs the manifest: the backup key's signing key.
    pub signer: Arc<crate::auth::Signer>,
    pub compression: CompressionSettings,
    pub part_policy: PartPolicy,
    /// Overrides every container's own stop timeout.
    pub stop_timeout_secs: Option<u32>,
    pub version_from: Option<String>,
    pub hooks: Arc<Hooks>,
    /// Bars on a terminal, or hidden.
    pub progress: Progress,
    /// Where encrypted output the uplink cannot take yet waits, and how much of it (0: no
    /// spool; the app then stays stopped until the uploads finish).
    pub spool_dir: std::path::PathBuf,
    pub spool_limit: u64,
    /// Deduplicate: store each volume as content-defined chunks, uploading only those the
    /// store lacks (format 3), keyed with these keys.
    pub dedup: Option<Arc<crate::keys::ChunkKeys>>,
}

impl BackupPlan {
    /// The spool for this run, or none (size 0, or its directory cannot be made).
    fn spool_budget(&self) -> Option<Arc<SpoolBudget>> {
        if self.spool_limit < spool::MIN_BUDGET {
            return None;
        }
        match SpoolBudget::new(self.spool_dir.clone(), self.spool_limit) {
            Ok(budget) => Some(budget),
            Err(e) => {
                tracing::warn!(
                    "cannot use {} for the spool ({e}); backing up without one, so the app stays stopped until the uploads finish",
                    self.spool_dir.display()
                );
                None
            }
        }
    }
}

/// Where one volume's data is read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub compose_volume: Option<String>,
    pub driver: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What the helper container mounts to read it.
    pub mount: HelperMount,
    pub service: String,
    pub container_path: String,
    /// Where the data lives on the Docker host (for the progress bar's size estimate).
    pub host_dir: Option<std::path::PathBuf>,
}

impl Source {
    fn matches(&self, wanted: &str) -> bool {
        self.name == wanted || self.compose_volume.as_deref() == Some(wanted)
    }
}

fn is_anonymous(name: &str) -> bool {
    name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit())
}

/// The volumes (and requested bind mounts) of the app, in start order of the first container
/// that mounts each.
pub async fn plan_sources(
    docker: &Docker,
    app: &App,
    selection: &VolumeSelection,
) -> Result<Vec<Source>> {
    let mut sources: Vec<Source> = Vec::new();
    for mounted in app.inventory(docker).await? {
        let (mount, service) = (&mounted.mount, mounted.service.clone());
        match (&mount.name, &mounted.info) {
            (Some(name), Some(info)) => {
                if is_anonymous(name) && !selection.only.contains(name) {
                    tracing::info!(volume = %name, service = %service, path = %mount.destination,
                        "leaving out an anonymous volume; name it in the compose file to back it up");
                    continue;
                }
                sources.push(Source {
                    name: name.clone(),
                    kind: SourceKind::Volume,
                    compose_volume: mounted.compose_name().map(str::to_string),
                    driver: Some(info.driver.clone()),
                    labels: info.labels.clone(),
                    host_dir: Some(info.mountpoint.clone().into()),
                    mount: HelperMount::Volume(name.clone()),
                    service,
                    container_path: mount.destination.clone(),
                });
            }
            _ if selection.bind_paths.contains(&mount.destination) => {
                sources.push(bind_source(&service, &mount.destination, &mount.source));
            }
            _ => {}
        }
    }
    for path in &selection.bind_paths {
        if !sources
            .iter()
            .any(|s| s.kind == SourceKind::Bind && &s.container_path == path)
        {
            return Err(crate::error::usage(format!(
                "--bind-path {path}: no container of the app has a bind mount at {path}"
            )));
        }
    }
    let available = |sources: &[Source]| {
        sources
            .iter()
            .map(|s| s.compose_volume.clone().unwrap_or_else(|| s.name.clone()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for wanted in selection.only.iter().chain(&selection.exclude) {
        if !sources.iter().any(|s| s.matches(wanted)) {
            return Err(crate::error::usage(format!(
                "volume '{wanted}' is not mounted by any container of the app; its volumes are: {}",
                available(&sources)
            )));
        }
    }
    sources.retain(|s| {
        let chosen = selection.only.is_empty()
            || s.kind == SourceKind::Bind
            || selection.only.iter().any(|w| s.matches(w));
        chosen && !selection.exclude.iter().any(|w| s.matches(w))
    });
    if sources.is_empty() {
        return Err(crate::error::usage(
            "nothing to back up: the app's containers mount no named volume (after --volume/--exclude-volume); name the volumes in the compose file or add --bind-path",
        ));
    }
    Ok(sources)
}

fn bind_source(service: &str, path: &str, host_path: &str) -> Source {
    Source {
        name: format!("bind:{service}:{path}"),
        kind: SourceKind::Bind,
        compose_volume: None,
        driver: None,
        labels: BTreeMap::new(),
        mount: HelperMount::HostPath(host_path.to_string()),
        service: service.to_string(),
        container_path: path.to_string(),
        host_dir: Some(host_path.into()),
    }
}

/// Runs a backup; returns its manifest. `after-backup` hooks run after every attempt that got
/// as far as finding the app; when only they fail, the backup is stored and the error says so.
pub async fn run(
    docker: &Docker,
    repo: &Repo,
    plan: &BackupPlan,
    cancel: &CancellationToken,
) -> Result<Manifest> {
    let started_at = Utc::now();
    let backup_id = format::new_backup_id(started_at);
    let state_dir = crate::state::state_dir();
    let _claim = crate::state::claim(&state_dir, &plan.app_name)?;
    crate::downtime::recover(docker, &state_dir, &plan.app_name).await?;
    let app = App::discover(docker, &plan.selector).await?;
    let (ids, volumes) = (app.ids(), app.mounted_names());
    crate::state::refuse_if_incomplete_touching(&state_dir, &plan.app_name, &ids, &volumes)?;
    let mut context = HookContext {
        app: plan.app_name.clone(),
        backup_id: backup_id.clone(),
        ..Default::default()
    };
    let result = attempt(docker, repo, plan, cancel, &app, started_at, &backup_id).await;
    context.failure = Some(result.as_ref().err().map(|e| format!("{e:#}")));
    let after_hooks = plan
        .hooks
        .run(docker, Some(&app), HookEvent::AfterBackup, &context)
        .await;
    let (manifest, mut hook_failures) = result?;
    if let Err(error) = after_hooks {
        hook_failures.push(format!("{error:#}"));
    }
    if !hook_failures.is_empty() {
        return Err(anyhow!(
            "backup {} is complete and stored, but hooks failed: {}",
            manifest.backup_id,
            hook_failures.join("; ")
        ));
    }
    Ok(manifest)
}

/// One backup under the store lock: the version record and the lock first, then
/// [`locked_attempt`]; the lock is given back whatever happens.
async fn attempt(
    docker: &Docker,
    repo: &Repo,
    plan: &BackupPlan,
    cancel: &CancellationToken,
    app: &App,
    started_at: chrono::DateTime<Utc>,
    backup_id: &str,
) -> Result<(Manifest, Vec<String>)> {
    let sources = plan_sources(docker, app, &plan.selection).await?;
    let app_version = record_version(docker, app, plan).await?;
    check_store_reachable(repo, &plan.app_name).await?;
    let local = crate::state::local_claims(&plan.app_name);
    repo.with_lock(&plan.app_name, "backup", local.as_ref(), cancel, |cancel| {
        let job = VolumeJob {
            docker: docker.clone(),
            repo: repo.clone(),
            app: app.clone(),
            app_name: plan.app_name.clone(),
            backup_id: backup_id.to_string(),
            recipients: Arc::clone(&plan.recipients),
            compression: plan.compression,
            policy: plan.part_policy,
            hooks: Arc::clone(&plan.hooks),
            progress: plan.progress.clone(),
            // Set up once the before-backup hook has run: a hook may prepare the spool's disk.
            spool: None,
            dedup: None,
            cancel,
        };
        locked_attempt(job, plan, sources, started_at, app_version)
    })
    .await
}

/// What the app runs: the image of each service, and the version string the operator named.
async fn record_version(docker: &Docker, app: &App, plan: &BackupPlan) -> Result<AppVersion> {
    let mut app_version = AppVersion {
        services: app.images(),
        ..Default::default()
    };
    if let Some(source) = &plan.version_from {
        app_version.version = Some(docker::read_version(docker, app, source).await?);
        app_version.version_source = Some(source.clone());
    }
    Ok(app_version)
}

/// The backup itself, in its order: checks and the before-backup hook with the app running;
/// every volume read while it is stopped; the uploads finished once it runs again; the signed
/// manifest last. A restart that failed is reported after the data is safe.
async fn locked_attempt(
    mut job: VolumeJob,
    plan: &BackupPlan,
    sources: Vec<Source>,
    started_at: chrono::DateTime<Utc>,
    app_version: AppVersion,
) -> Result<(Manifest, Vec<String>)> {
    let (docker, repo, backup_id) = (job.docker.clone(), job.repo.clone(), job.backup_id.clone());
    let (app, cancel) = (job.app.clone(), job.cancel.clone());
    before_stopping(&job, plan, sources.len()).await?;
    job.dedup = dedup_for(&repo, plan).await?;
    job.spool = plan.spool_budget();
    let spooled = job.spool.is_some();
    let window = crate::downtime::while_stopped(
        &docker,
        &app,
        &plan.app_name,
        "backup",
        plan.stop_timeout_secs,
        &cancel,
        read_volumes(job, sources),
    )
    .await?;
    let restarted = window.restarted;
    let (read, hook_failures) = window
        .outcome
        .map_err(|error| and_also(error, &restarted))?;
    if spooled {
        tracing::info!(
            downtime_s = format!("{:.1}", window.downtime.as_secs_f64()),
            "every volume is read and the app started again; finishing the uploads from the spool"
        );
    }
    let volumes = finish_uploads(&repo, &plan.app_name, &backup_id, read)
        .await
        .map_err(|error| and_also(error, &restarted))?;
    let manifest = finish_manifest(
        plan,
        &backup_id,
        started_at,
        window.downtime,
        app_version,
        volumes,
    );
    // A run that lost its lock meanwhile (frozen past its lease) commits nothing: another run
    // may have pruned chunks this manifest would reuse.
    if cancel.is_cancelled() {
        return Err(crate::error::interrupted().context(format!(
            "backup {backup_id} was not committed: the run was interrupted or lost its lock"
        )));
    }
    repo.commit(&manifest, &plan.signer).await?;
    if let Err(restart_error) = restarted {
        // The data is safe and recorded; the restart failure is what to report.
        return Err(restart_error.context(format!(
            "backup {backup_id} is complete, but the app is not fully running"
        )));
    }
    Ok((manifest, hook_failures))
}

/// A failure, with the app's failed restart (if it failed too) added to its message.
fn and_also(error: anyhow::Error, restarted: &Result<()>) -> anyhow::Error {
    match restarted {
        Ok(()) => error,
        Err(restart_error) => error.context(format!("and also: {restart_error:#}")),
    }
}

/// What happens while the app still runs: the backup's folder must be new, the before-backup
/// hook must pass, helpers a killed run left behind go.
async fn before_stopping(job: &VolumeJob, plan: &BackupPlan, volumes: usize) -> Result<()> {
    let (repo, backup_id) = (&job.repo, &job.backup_id);
    repo.ensure_new(&plan.app_name, backup_id).await?;
    warn_if_made_elsewhere(repo, plan).await;
    let context = HookContext {
        app: plan.app_name.clone(),
        backup_id: backup_id.to_string(),
        ..Default::default()
    };
    plan.hooks
        .run(
            &job.docker,
            Some(&job.app),
            HookEvent::BeforeBackup,
            &context,
        )
        .await
        .context("nothing was stopped and no backup was made")?;
    docker::remove_stale_helpers(&job.docker).await;
    if docker::is_podman(&job.docker).await {
        tracing::warn!(
            "the engine is Podman: its archive API reads every file as owned by root:root, so this backup does not keep file owners (a restore gives root-owned files); see the README's \"Engines\""
        );
    }
    tracing::info!(app = %plan.app_name, backup = %backup_id, volumes, store = %repo.url(), "starting backup");
    Ok(())
}

fn finish_manifest(
    plan: &BackupPlan,
    backup_id: &str,
    started_at: chrono::DateTime<Utc>,
    downtime: std::time::Duration,
    app_version: AppVersion,
    volumes: Vec<VolumeRecord>,
) -> Manifest {
    Manifest {
        format: format::FORMAT.into(),
        format_version: if volumes.iter().any(VolumeRecord::is_chunked) {
            format::CHUNKED_FORMAT
        } else {
            format::SIGNED_FORMAT
        },
        backup_id: backup_id.to_string(),
        app: plan.app_name.clone(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        lifeboat_version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        finished_at: Utc::now(),
        downtime_seconds: downtime.as_secs_f64(),
        app_version,
        volumes,
        signer: Some(crate::auth::openssh(&plan.signer.public())),
    }
}

/// Says so when the newest backup under this name was made on another host: a migration, or
/// two hosts backing up under one name by mistake (their backups would count against each
/// other in prune).
async fn warn_if_made_elsewhere(repo: &Repo, plan: &BackupPlan) {
    let policy = manifest::TrustPolicy {
        trust: crate::auth::Trust::new(vec![plan.signer.public()]),
        allow_unsigned: false,
    };
    let here = gethostname::gethostname().to_string_lossy().into_owned();
    if let Ok(Some(newest)) = repo.newest_genuine(&plan.app_name, &policy).await
        && newest.manifest.host != here
    {
        tracing::warn!(
            "the newest backup of '{}' ({}) was made on host {}, not on this one ({here}): fine after a migration; if two hosts back up under one name by mistake, give each its own with --name",
            plan.app_name,
            newest.manifest.backup_id,
            crate::text::printable(&newest.manifest.host)
        );
    }
}

/// A backup as `lifeboat backup` and `schedule` run it: open the store, connect to Docker,
/// back up, then apply `policy` (the config file's `[retention]`; an empty one keeps all). A
/// failed prune is logged and does not fail the backup, which is safe in the store. Returns
/// the manifest and the store's URL.
pub async fn run_and_prune(
    plan: &BackupPlan,
    store: &crate::store::StoreOptions,
    (policy, grace): (crate::retention::KeepPolicy, chrono::Duration),
    cancel: &CancellationToken,
) -> Result<(Manifest, String)> {
    let repo = Repo::open(store).await?;
    let docker = docker::connect().await?;
    let manifest = run(&docker, &repo, plan, cancel).await?;
    if !policy.is_empty() {
        match prune_after(&repo, &manifest, &plan.signer, &policy, grace, cancel).await {
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
    Ok((manifest, repo.url().to_string()))
}

/// Applies the retention policy after a good backup, under the app's claim and lock, and only
/// once the new backup's objects read back from the store with the sizes its manifest
/// records: a backup that did not really land never makes older ones go.
pub async fn prune_after(
    repo: &Repo,
    manifest: &Manifest,
    signer: &crate::auth::Signer,
    policy: &crate::retention::KeepPolicy,
    grace: chrono::Duration,
    cancel: &CancellationToken,
) -> Result<crate::retention::PruneReport> {
    repo.read_back(manifest)
        .await
        .context("the new backup did not read back, so no older backup was pruned")?;
    let trust = manifest::TrustPolicy {
        trust: crate::auth::Trust::new(vec![signer.public()]),
        allow_unsigned: false,
    };
    crate::state::exclusively(repo, &manifest.app, "prune", cancel, |_| {
        crate::retention::prune(repo, &manifest.app, policy, grace, false, &trust)
    })
    .await
}

/// Fails before anything is stopped when the store cannot be listed.
pub async fn check_store_reachable(repo: &Repo, app: &str) -> Result<()> {
    repo.reachable(app).await.map_err(|e| {
        anyhow!(
            "cannot reach the store {} ({e}); nothing was stopped. Check the URL, the endpoint, the credentials and the network",
            repo.url()
        )
    })
}

/// What the volume task needs; owned, because it runs as its own task.
struct VolumeJob {
    docker: Docker,
    repo: Repo,
    app: App,
    app_name: String,
    backup_id: String,
    recipients: Arc<Vec<Recipient>>,
    compression: CompressionSettings,
    policy: PartPolicy,
    hooks: Arc<Hooks>,
    progress: Progress,
    spool: Option<Arc<SpoolBudget>>,
    /// Where chunks go and which the store has, when deduplicating.
    dedup: Option<Arc<Dedup>>,
    cancel: CancellationToken,
}

/// A deduplicating run's chunk store, sealer and the chunks it may reuse.
struct Dedup {
    store: ChunkStore,
    sealer: ChunkSealer,
    known: Known,
}

/// What a deduplicating backup may reuse: the chunks of the newest genuine backup (its own
/// signing key's) that this run's listing of the store shows, with their recorded sizes.
async fn dedup_for(repo: &Repo, plan: &BackupPlan) -> Result<Option<Arc<Dedup>>> {
    let Some(keys) = &plan.dedup else {
        return Ok(None);
    };
    let store = repo.chunk_store(&plan.app_name);
    let policy = manifest::TrustPolicy {
        trust: crate::auth::Trust::new(vec![plan.signer.public()]),
        allow_unsigned: false,
    };
    let newest = repo.newest_genuine(&plan.app_name, &policy).await?;
    // Only chunks sealed the way this run seals: the same compression, to the same recipients
    // (a recipient added must be able to read every chunk; one removed, none of the new ones).
    let recipients: std::collections::BTreeSet<&str> =
        plan.recipients.iter().map(|r| r.text.as_str()).collect();
    let earlier: Vec<format::ChunkRef> = newest
        .iter()
        .flat_map(|n| n.manifest.volumes.iter())
        .filter(|v| v.compression == plan.compression.kind)
        .filter(|v| {
            let theirs: std::collections::BTreeSet<&str> =
                v.encryption.recipients.iter().map(String::as_str).collect();
            theirs == recipients
        })
        .flat_map(|v| v.chunks.iter().cloned())
        .collect();
    let present = list_chunks(&store)
        .await
        .map_err(|e| anyhow!("cannot list the chunks in {}: {e}", repo.url()))?;
    let known = Known::confirmed(&earlier, &present);
    tracing::info!(
        reusable = known.len(),
        in_store = present.len(),
        "deduplicating against the newest backup's chunks"
    );
    Ok(Some(Arc::new(Dedup {
        store,
        sealer: ChunkSealer {
            recipients: Arc::clone(&plan.recipients),
            compression: plan.compression.kind,
            level: plan.compression.level.unwrap_or(3),
            keys: Arc::new(keys.for_app(&plan.app_name)),
        },
        known,
    })))
}

/// A volume read to its end, its upload still going on (from the spool, or done already).
struct ReadVolume {
    /// The record, without the stored size and hash the upload will give.
    record: VolumeRecord,
    what: String,
    sealing: Stored,
}

/// A volume's upload: one object, maybe still draining the spool; or chunks, all stored.
enum Stored {
    Object(Sealing),
    Chunks(SealingChunks),
}

impl ReadVolume {
    /// Stops the upload and aborts its multipart upload (chunks stay, unreferenced, until a
    /// prune after the grace period).
    async fn abandon(self) {
        match self.sealing {
            Stored::Object(sealing) => sealing.abandon().await,
            Stored::Chunks(sealing) => sealing.abandon().await,
        }
    }
}

async fn abandon_all(read: impl IntoIterator<Item = ReadVolume>) {
    for volume in read {
        volume.abandon().await;
    }
}

/// The downtime part of a backup: reads the sources one after another, each between its volume
/// hooks, into uploads that may still be draining the spool when this returns. Returns them
/// and the after-volume hooks that failed; on an error, abandons every upload.
async fn read_volumes(
    job: VolumeJob,
    sources: Vec<Source>,
) -> Result<(Vec<ReadVolume>, Vec<String>)> {
    let mut read = Vec::with_capacity(sources.len());
    let mut hook_failures = Vec::new();
    for source in &sources {
        let started = Instant::now();
        let mut context = HookContext {
            app: job.app_name.clone(),
            backup_id: job.backup_id.clone(),
            volume: Some(source.name.clone()),
            compose_volume: source.compose_volume.clone(),
            failure: None,
        };
        let result = match job
            .hooks
            .run(
                &job.docker,
                Some(&job.app),
                HookEvent::BeforeVolume,
                &context,
            )
            .await
        {
            Ok(()) => read_volume(&job, source).await,
            Err(error) => Err(error),
        };
        context.failure = Some(result.as_ref().err().map(|e| format!("{e:#}")));
        if let Err(error) = job
            .hooks
            .run(
                &job.docker,
                Some(&job.app),
                HookEvent::AfterVolume,
                &context,
            )
            .await
        {
            hook_failures.push(format!("{error:#}"));
        }
        match result {
            Ok(volume) => {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    volume = %volume.record.name,
                    tar_bytes = volume.record.tar_size,
                    mib_per_s = format!("{:.1}", volume.record.tar_size as f64 / secs / 1048576.0),
                    "volume read"
                );
                read.push(volume);
            }
            Err(error) => {
                abandon_all(read).await;
                return Err(error);
            }
        }
    }
    Ok((read, hook_failures))
}

/// Waits for the uploads in order and completes each; on an error, abandons the rest and
/// deletes the objects already completed.
async fn finish_uploads(
    repo: &Repo,
    app: &str,
    backup_id: &str,
    read: Vec<ReadVolume>,
) -> Result<Vec<VolumeRecord>> {
    let mut records: Vec<VolumeRecord> = Vec::with_capacity(read.len());
    let mut pending = read.into_iter();
    while let Some(volume) = pending.next() {
        let ReadVolume {
            mut record,
            what,
            sealing,
        } = volume;
        let stored = match sealing {
            Stored::Object(sealing) => sealing.finish().await.map_err(|e| seal_error(e, &what)),
            Stored::Chunks(sealing) => sealing
                .finish()
                .await
                .map(|chunks| Sealed {
                    tar_size: chunks.tar_size,
                    root: chunks.root,
                    stored_size: chunks.chunks.iter().map(|c| c.size).sum(),
                    sha256: format::chunk_list_digest(&chunks.chunks),
                })
                .map_err(|e| seal_error(e, &what)),
        };
        match stored {
            Ok(sealed) => {
                record.stored_size = sealed.stored_size;
                record.sha256 = sealed.sha256;
                tracing::info!(volume = %record.name, stored_bytes = sealed.stored_size, "volume stored");
                records.push(record);
            }
            Err(error) => {
                abandon_all(pending).await;
                // Chunks stay, unreferenced, until a prune after the grace period.
                for done in records.iter().filter(|r| !r.is_chunked()) {
                    repo.delete_object(&repo.object(app, backup_id, &done.object))
                        .await;
                }
                return Err(error);
            }
        }
    }
    Ok(records)
}

async fn read_volume(job: &VolumeJob, source: &Source) -> Result<ReadVolume> {
    let (docker, compression) = (&job.docker, job.compression);
    let object = format::object_name(&source.name, compression.kind);
    let at = job.repo.object(&job.app_name, &job.backup_id, &object);
    let to = Destination {
        objects: at.objects,
        location: at.location,
        attributes: job.repo.upload_attributes().clone(),
        parts: job.policy,
        spool: job.spool.clone(),
    };
    let what = format!(
        "volume {} (read through {} at {})",
        source.name, source.service, source.container_path
    );
    let helper = Helper::create(docker, &source.mount, true).await?;
    let progress = job.progress.volume(
        source.compose_volume.as_deref().unwrap_or(&source.name),
        source.host_dir.clone(),
    );
    let tar = docker::tar_of(docker, &helper.id, docker::HELPER_PATH);
    let sealer = Sealer {
        recipients: Arc::clone(&job.recipients),
        compression,
    };
    let tar = progress.count_read(tokio_util::io::StreamReader::new(tar));
    let result = match &job.dedup {
        None => seal(tar, &sealer, &to, &progress, &job.cancel)
            .await
            .map(|s| (s.tar_size, s.root, Stored::Object(s))),
        Some(dedup) => {
            let (known, store) = (&dedup.known, &dedup.store);
            seal_chunks(tar, &dedup.sealer, known, store, job.spool.as_ref(), &job.cancel)
                .await
                .map(|c| {
                    let s = &c.sealed;
                    tracing::info!(volume = %source.name, chunks = s.chunks.len(), new_bytes = s.new_bytes, reused_bytes = s.reused_plain, "volume chunked");
                    (s.tar_size, s.root, Stored::Chunks(c))
                })
        }
    };
    drop(progress);
    helper.remove(docker).await;
    let (tar_size, root, sealing) = result.map_err(|e| seal_error(e, &what))?;
    let (chunks, new_bytes) = match &sealing {
        Stored::Chunks(c) => (c.sealed.chunks.clone(), Some(c.sealed.new_bytes)),
        Stored::Object(_) => (Vec::new(), None),
    };
    Ok(ReadVolume {
        record: VolumeRecord {
            name: source.name.clone(),
            kind: source.kind,
            compose_volume: source.compose_volume.clone(),
            driver: source.driver.clone(),
            labels: source.labels.clone(),
            service: source.service.clone(),
            container_path: source.container_path.clone(),
            object,
            stored_size: 0,
            sha256: String::new(),
            tar_size,
            compression: compression.kind,
            encryption: Encryption {
                scheme: "age".into(),
                recipients: job.recipients.iter().map(|r| r.text.clone()).collect(),
            },
            root,
            chunks,
            new_bytes,
        },
        what,
        sealing,
    })
}

/// The message of a failed volume: what was backed up, and the stage that failed.
fn seal_error(error: SealError, what: &str) -> anyhow::Error {
    match error {
        SealError::Cancelled => crate::error::interrupted(),
        SealError::Upload { location, source } => {
            anyhow::Error::new(source).context(format!("uploading {what} to {location}"))
        }
        SealError::Read(source) => anyhow::Error::new(source).context(format!("backing up {what}")),
        SealError::Spool(source) => {
            anyhow!("cannot set up the spool for {what}: {source}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_volumes_are_recognised() {
        assert!(is_anonymous(&"a".repeat(64)));
        assert!(!is_anonymous("cvat_cvat_db"));
    }
}
