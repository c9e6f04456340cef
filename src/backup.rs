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
    ChunkSealer, ChunkStore, ChunkTarget, Known, SealingChunks, list_chunks, list_chunks_by_prefix,
    seal_chunks_each,
};
use crate::pipeline::chunk_list::store_lists;
use crate::pipeline::compress::CompressionSettings;
use crate::pipeline::cut::Previous;
use crate::pipeline::fan_out::StoreTokens;
use crate::pipeline::seal::{Destination, SealError, Sealed, Sealer, Sealing, seal_each};
use crate::pipeline::spool::{self, SpoolBudget};
use crate::progress::Progress;
use crate::repo::Repo;
use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use chrono::Utc;
use futures::StreamExt as _;
use std::collections::{BTreeMap, HashMap};
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
    /// Never read a volume from its host directory (see [`direct_dir`]).
    pub read_through_docker: bool,
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
    /// A local volume without driver options: its directory may be read on this host instead
    /// of through Docker (see [`direct_dir`]).
    pub plain_local: bool,
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
                    plain_local: info.driver == "local" && info.options == 0,
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
        plain_local: false,
    }
}

/// What a backup came to in each store it was written to: the manifest of each store that has
/// it, and why each other store does not.
pub struct Outcome {
    pub stored: Vec<(Repo, Manifest)>,
    pub failed: Vec<(String, anyhow::Error)>,
    /// How many stores the run was given.
    pub stores: usize,
}

impl Outcome {
    fn stored_in(&self) -> String {
        self.stored
            .iter()
            .map(|(repo, _)| repo.url().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The first store's manifest and the URLs of every store that has the backup, or an error
    /// that names each store that failed (and those that have the backup).
    pub fn into_result(mut self) -> Result<(Manifest, String)> {
        if self.failed.is_empty() && !self.stored.is_empty() {
            let urls = self.stored_in();
            let (_, manifest) = self.stored.swap_remove(0);
            return Ok((manifest, urls));
        }
        let stored_in = self.stored_in();
        if self.failed.is_empty() {
            return Err(anyhow!("the backup went to no store"));
        }
        // A signal is the run's outcome (exit 130) whichever store saw it first.
        let interrupted = |e: &anyhow::Error| {
            crate::error::classified(e) == Some(crate::error::ExitClass::Interrupted)
        };
        if let Some(at) = self.failed.iter().position(|(_, e)| interrupted(e)) {
            let first = self.failed.remove(at);
            self.failed.insert(0, first);
        }
        let (url, error) = self.failed.remove(0);
        if self.stores == 1 {
            return Err(error);
        }
        let others: String = self
            .failed
            .iter()
            .map(|(url, error)| format!("; store {url} failed too: {error:#}"))
            .collect();
        Err(match self.stored.first() {
            Some((_, manifest)) => error.context(format!(
                "backup {} is stored in {stored_in}, but store {url} failed{others}, and does not have it",
                manifest.backup_id
            )),
            None => error.context(format!("store {url} failed{others}")),
        })
    }

    /// What the after-backup hook is told failed, if anything did.
    fn failure_text(&self) -> Option<String> {
        (!self.failed.is_empty()).then(|| {
            self.failed
                .iter()
                .map(|(url, error)| format!("store {url}: {error:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// Runs a backup into every store of `repos`: the app is stopped once, every volume read once
/// and written to each store; each store gets its manifest once its own uploads are complete,
/// and a store that fails does not stop the others. `after-backup` hooks run after every
/// attempt that got as far as finding the app; when only they fail, the backup is stored and
/// the error says so.
pub async fn run(
    docker: &Docker,
    repos: &[Repo],
    left_out: Vec<(String, anyhow::Error)>,
    plan: &BackupPlan,
    cancel: &CancellationToken,
) -> Result<Outcome> {
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
    let result = attempt(
        docker,
        (repos, left_out),
        plan,
        cancel,
        &app,
        started_at,
        &backup_id,
    )
    .await;
    context.failure = Some(match &result {
        Err(e) => Some(format!("{e:#}")),
        Ok((outcome, _)) => outcome.failure_text(),
    });
    let after_hooks = plan
        .hooks
        .run(docker, Some(&app), HookEvent::AfterBackup, &context)
        .await;
    let (outcome, mut hook_failures) = result?;
    if let Err(error) = after_hooks {
        hook_failures.push(format!("{error:#}"));
    }
    if !hook_failures.is_empty() && !outcome.failed.is_empty() {
        // A store failed too: that is the error (its class, its store), the hooks beside it.
        let hooks = hook_failures.join("; ");
        return Err(outcome
            .into_result()
            .err()
            .unwrap_or_else(|| anyhow!("a store failed"))
            .context(format!("hooks failed too: {hooks}")));
    }
    if !hook_failures.is_empty() {
        return Err(anyhow!(
            "backup {backup_id} is complete and stored, but hooks failed: {} (stored in {})",
            hook_failures.join("; "),
            outcome.stored_in()
        ));
    }
    Ok(outcome)
}

/// One store a backup writes to, its lock taken.
#[derive(Clone)]
struct Target {
    repo: Repo,
    /// `stop`: a signal, or this store's lock lost; `failed`: the store refused an upload, so
    /// the volumes after it leave the store out.
    tokens: StoreTokens,
    /// Where chunks go and which this store has, when deduplicating.
    dedup: Option<Arc<Dedup>>,
}

/// One backup under the store locks: the version record, then each store (reachable, locked,
/// the backup's folder new there), then [`locked_attempt`] with the stores that are; every
/// lock is given back whatever happens. With several stores, one that cannot be taken is left
/// out; with one, its failure is the backup's.
async fn attempt(
    docker: &Docker,
    (repos, left_out): (&[Repo], Vec<(String, anyhow::Error)>),
    plan: &BackupPlan,
    cancel: &CancellationToken,
    app: &App,
    started_at: chrono::DateTime<Utc>,
    backup_id: &str,
) -> Result<(Outcome, Vec<String>)> {
    let sources = plan_sources(docker, app, &plan.selection).await?;
    let app_version = record_version(docker, app, plan).await?;
    let local = crate::state::local_claims(&plan.app_name);
    let mut outcome = Outcome {
        stored: Vec::new(),
        stores: repos.len() + left_out.len(),
        failed: left_out,
    };
    let (mut targets, mut locks) = (Vec::new(), Vec::new());
    for repo in repos {
        match take_store(repo, plan, backup_id, local.as_ref(), cancel).await {
            Ok((target, lock)) => {
                targets.push(target);
                locks.push(lock);
            }
            Err(error) if outcome.stores == 1 => return Err(error),
            Err(error) => {
                tracing::error!(store = %repo.url(), "this store is left out of the backup: {error:#}");
                outcome.failed.push((repo.url().to_string(), error));
            }
        }
    }
    if targets.is_empty() {
        let error = outcome
            .into_result()
            .err()
            .unwrap_or_else(|| anyhow!("no store"));
        return Err(error.context("no store can take the backup; nothing was stopped"));
    }
    let result = locked_attempt(
        docker,
        plan,
        app,
        &targets,
        sources,
        (backup_id, started_at),
        app_version,
        cancel,
    )
    .await;
    match result {
        Ok((results, hook_failures)) => {
            for ((target, lock), result) in targets.into_iter().zip(locks).zip(results) {
                match lock.finish(result).await {
                    Ok(manifest) => outcome.stored.push((target.repo, manifest)),
                    Err(error) => outcome.failed.push((target.repo.url().to_string(), error)),
                }
            }
            Ok((outcome, hook_failures))
        }
        Err(error) => {
            let mut lost = None;
            for lock in locks {
                lost = lost.or(lock.release().await);
            }
            let error = match lost {
                Some(lost) => anyhow::Error::new(lost).context(format!("{error:#}")),
                None => error,
            };
            // Stores left out before the run are named too.
            let left_out: Vec<String> = outcome
                .failed
                .iter()
                .map(|(url, e)| format!("store {url} was left out: {e:#}"))
                .collect();
            Err(if left_out.is_empty() {
                error
            } else {
                error.context(left_out.join("; "))
            })
        }
    }
}

/// A store for this backup: reachable, locked, without a folder of this backup's id, and (when
/// deduplicating) its chunks listed.
async fn take_store(
    repo: &Repo,
    plan: &BackupPlan,
    backup_id: &str,
    local: Option<&crate::lock::LocalClaims>,
    cancel: &CancellationToken,
) -> Result<(Target, crate::lock::Lock)> {
    check_store_reachable(repo, &plan.app_name).await?;
    let lock = repo.lock(&plan.app_name, "backup", local).await?;
    let prepared = async {
        repo.ensure_new(&plan.app_name, backup_id).await?;
        let policy = manifest::TrustPolicy {
            trust: crate::auth::Trust::new(vec![plan.signer.public()]),
            allow_unsigned: false,
        };
        let newest = repo.newest_genuine(&plan.app_name, &policy).await;
        if let Ok(Some(newest)) = &newest {
            warn_if_made_elsewhere(newest, plan);
        }
        dedup_for(repo, plan, newest).await
    }
    .await;
    match prepared {
        Ok(dedup) => Ok((
            Target {
                repo: repo.clone(),
                tokens: StoreTokens::stopped_by(lock.cancel_on_loss(cancel)),
                dedup,
            },
            lock,
        )),
        Err(error) => Err(lock
            .finish::<()>(Err(error))
            .await
            .err()
            .unwrap_or_else(|| anyhow!("the store could not be prepared"))),
    }
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

/// The backup itself, in its order: the before-backup hook with the app running; every volume
/// read while it is stopped, once for all stores; then in each store at once, its uploads
/// finished and its signed manifest written. Returns each store's result in the order of
/// `targets`. A restart that failed is reported after the data is safe.
#[allow(clippy::too_many_arguments)]
async fn locked_attempt(
    docker: &Docker,
    plan: &BackupPlan,
    app: &App,
    targets: &[Target],
    sources: Vec<Source>,
    (backup_id, started_at): (&str, chrono::DateTime<Utc>),
    app_version: AppVersion,
    cancel: &CancellationToken,
) -> Result<(Vec<Result<Manifest>>, Vec<String>)> {
    let mut job = VolumeJob {
        docker: docker.clone(),
        app: app.clone(),
        app_name: plan.app_name.clone(),
        backup_id: backup_id.to_string(),
        recipients: Arc::clone(&plan.recipients),
        compression: plan.compression,
        hooks: Arc::clone(&plan.hooks),
        progress: plan.progress.clone(),
        // Set up once the before-backup hook has run: a hook may prepare the spool's disk.
        spool: None,
        // Decided below, before the stop.
        host_view: false,
        direct: HashMap::new(),
        targets: targets.to_vec(),
        cancel: CancellationToken::new(),
    };
    // The watcher behind the job's token (several stores) ends with this run.
    let (read_cancel, _watcher) = all_stopped(targets, cancel);
    job.cancel = read_cancel;
    before_stopping(&job, plan, sources.len()).await?;
    job.host_view = !plan.read_through_docker
        && sources.iter().any(|s| s.plain_local)
        && host_view(docker).await;
    if job.host_view {
        job.direct = direct_dirs(docker, &sources).await;
    }
    // Every store's chunk listing is in before the app stops: a listing that takes long (a
    // huge or junk-filled chunks folder) costs time, never downtime.
    for target in targets {
        if let Some(dedup) = &target.dedup {
            tokio::select! {
                listed = dedup.known() => if let (Err(error), [_]) = (listed, targets) {
                    return Err(error.context("nothing was stopped and no backup was made"));
                },
                () = cancel.cancelled() => return Err(crate::error::interrupted()),
            }
        }
    }
    job.spool = plan.spool_budget();
    let spooled = job.spool.is_some();
    let window = crate::downtime::while_stopped(
        docker,
        app,
        &plan.app_name,
        "backup",
        plan.stop_timeout_secs,
        cancel,
        read_volumes(job, sources),
    )
    .await?;
    let restarted = window.restarted;
    let (read, hook_failures) = window
        .outcome
        .map_err(|error| and_also(error, &restarted))?;
    // Every volume is read: what each store may reuse is looked up no more, and its memory
    // goes before the manifests are written.
    for dedup in targets.iter().filter_map(|t| t.dedup.as_deref()) {
        if let Some(Ok(known)) = dedup.known.get() {
            known.forget();
        }
    }
    if spooled {
        tracing::info!(
            downtime_s = format!("{:.1}", window.downtime.as_secs_f64()),
            "every volume is read and the app started again; finishing the uploads from the spool"
        );
    }
    let downtime = window.downtime;
    let finishing = targets.iter().zip(read).map(|(target, read)| {
        let app_version = app_version.clone();
        async move {
            let repo = &target.repo;
            let volumes = finish_uploads(repo, &plan.app_name, backup_id, read).await?;
            let manifest =
                finish_manifest(plan, backup_id, started_at, downtime, app_version, volumes);
            // A run that lost this store's lock meanwhile (frozen past its lease) commits
            // nothing there: another run may have pruned chunks this manifest would reuse.
            if target.tokens.stop.is_cancelled() {
                return Err(crate::error::interrupted().context(format!(
                    "backup {backup_id} was not committed to {}: the run was interrupted or lost its lock",
                    repo.url()
                )));
            }
            repo.commit(&manifest, &plan.signer).await?;
            tracing::info!(store = %repo.url(), backup = %backup_id, "backup stored");
            Ok(manifest)
        }
    });
    let results = futures::future::join_all(finishing).await;
    if let Err(restart_error) = restarted {
        // The data is safe and recorded; the restart failure is what to report.
        let stored: Vec<&str> = targets
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(t, _)| t.repo.url())
            .collect();
        let failed: Vec<String> = targets
            .iter()
            .zip(&results)
            .filter_map(|(t, r)| {
                r.as_ref()
                    .err()
                    .map(|e| format!("; store {} failed: {e:#}", t.repo.url()))
            })
            .collect();
        return Err(
            match (stored.is_empty(), results.into_iter().find_map(Result::err)) {
                (true, Some(error)) => and_also(error, &Err(restart_error)),
                _ => restart_error.context(format!(
                    "backup {backup_id} is complete in {}{}, but the app is not fully running",
                    stored.join(", "),
                    failed.concat()
                )),
            },
        );
    }
    Ok((results, hook_failures))
}

/// What stops the reading: `cancel` (a signal), or every store stopped (their locks lost).
/// With one store, that store's token; with several, a token a task fires, and the guard that
/// ends the task.
fn all_stopped(
    targets: &[Target],
    cancel: &CancellationToken,
) -> (CancellationToken, Option<tokio_util::sync::DropGuard>) {
    if let [one] = targets {
        return (one.tokens.stop.clone(), None);
    }
    let token = cancel.child_token();
    let stops: Vec<CancellationToken> = targets.iter().map(|t| t.tokens.stop.clone()).collect();
    let fire = token.clone();
    tokio::spawn(async move {
        let every = futures::future::join_all(stops.iter().map(|s| s.cancelled()));
        tokio::select! {
            _ = every => fire.cancel(),
            () = fire.cancelled() => {}
        }
    });
    (token.clone(), Some(token.drop_guard()))
}

/// A failure, with the app's failed restart (if it failed too) added to its message.
fn and_also(error: anyhow::Error, restarted: &Result<()>) -> anyhow::Error {
    match restarted {
        Ok(()) => error,
        Err(restart_error) => error.context(format!("and also: {restart_error:#}")),
    }
}

/// What happens while the app still runs: the before-backup hook must pass, helpers a killed
/// run left behind go.
async fn before_stopping(job: &VolumeJob, plan: &BackupPlan, volumes: usize) -> Result<()> {
    let backup_id = &job.backup_id;
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
    let stores: Vec<&str> = job.targets.iter().map(|t| t.repo.url()).collect();
    tracing::info!(app = %plan.app_name, backup = %backup_id, volumes, stores = %stores.join(", "), "starting backup");
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
        format_version: if volumes.iter().any(|v| !v.lists.is_empty()) {
            format::LISTED_FORMAT
        } else if volumes.iter().any(|v| v.segments > 1) {
            format::SEGMENTED_FORMAT
        } else if volumes.iter().any(VolumeRecord::is_chunked) {
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
fn warn_if_made_elsewhere(newest: &manifest::Authenticated, plan: &BackupPlan) {
    let here = gethostname::gethostname().to_string_lossy().into_owned();
    if newest.manifest.host != here {
        tracing::warn!(
            "the newest backup of '{}' ({}) was made on host {}, not on this one ({here}): fine after a migration; if two hosts back up under one name by mistake, give each its own with --name",
            plan.app_name,
            newest.manifest.backup_id,
            crate::text::printable(&newest.manifest.host)
        );
    }
}

/// A backup as `lifeboat backup` and `schedule` run it: open the stores, connect to Docker,
/// back up into every store, then apply `policy` (the config file's `[retention]`; an empty
/// one keeps all) in each store that got the backup. A failed prune is logged and does not fail
/// the backup, which is safe in the store. Returns the manifest and the URLs of the stores
/// that have it; an error names each store that failed.
pub async fn run_and_prune(
    plan: &BackupPlan,
    stores: &[crate::store::StoreOptions],
    (policy, grace): (crate::retention::KeepPolicy, chrono::Duration),
    cancel: &CancellationToken,
) -> Result<(Manifest, String)> {
    let (mut repos, mut unopened) = (Vec::new(), Vec::new());
    for options in stores {
        match Repo::open(options).await {
            Ok(repo) => repos.push(repo),
            Err(error) if stores.len() == 1 => return Err(error),
            Err(error) => {
                let url = options.url_or_default();
                tracing::error!(store = %url, "this store is left out of the backup: {error:#}");
                unopened.push((url, error));
            }
        }
    }
    if repos.is_empty() {
        let (url, error) = unopened.remove(0);
        return Err(error.context(format!(
            "no store can take the backup ({url} and the others fail); nothing was stopped"
        )));
    }
    let docker = docker::connect().await?;
    let outcome = run(&docker, &repos, unopened, plan, cancel).await?;
    if !policy.is_empty() {
        for (repo, manifest) in &outcome.stored {
            match prune_after(repo, manifest, &plan.signer, &policy, grace, cancel).await {
                Ok(report) => tracing::info!(
                    store = %repo.url(),
                    removed = report.decisions.iter().filter(|d| !d.keep()).count()
                        + report.incomplete.len(),
                    "pruned"
                ),
                Err(e) => tracing::error!(
                    "the backup is complete, but pruning old backups in {} failed: {e:#}",
                    repo.url()
                ),
            }
        }
    }
    outcome.into_result()
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
    app: App,
    app_name: String,
    backup_id: String,
    recipients: Arc<Vec<Recipient>>,
    compression: CompressionSettings,
    hooks: Arc<Hooks>,
    progress: Progress,
    spool: Option<Arc<SpoolBudget>>,
    /// Whether volumes may be read from their directories here (see [`host_view`]).
    host_view: bool,
    /// The volumes found, before the stop, to be read from their directories here, by name
    /// (see [`direct_dirs`]).
    direct: HashMap<String, std::path::PathBuf>,
    /// The stores every volume is written to.
    targets: Vec<Target>,
    cancel: CancellationToken,
}

/// A deduplicating run's chunk store, sealer and the chunks it may reuse.
struct Dedup {
    store: ChunkStore,
    sealer: ChunkSealer,
    /// What this run may reuse once the store's listing is in (or why it is not): see
    /// [`Dedup::known`].
    known: tokio::sync::OnceCell<Result<Known, String>>,
    /// The listing of the store's chunks, made while the run prepares (taken by the first
    /// that awaits it), and what stops it when the run ends first.
    listing: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<Known>>>>,
    stop_listing: tokio::task::AbortHandle,
    url: String,
    /// Each volume's chunks in the newest backup, in order: where the volume is unchanged,
    /// its cuts are taken again without running the chunker's hash. Taken by the volume's
    /// read, so each list is freed once its volume is read.
    previous: std::sync::Mutex<HashMap<String, Arc<Previous>>>,
}

/// A store whose newest backup has at least this many chunks is listed a prefix at a time,
/// several at once: one page after the other, a million chunks take a thousand round trips.
/// The 256 prefixes, 16 at once, take 16 rounds at least, as many as 16,000 chunks one page
/// (1,000 keys) after the other: below that, the prefixes cost more than they save (on the
/// benchmark's S3 server, 6,100 chunks listed in 1.2 s, and by prefix in 3.3 s). The newest
/// backup's count stands for the store's, which is not known before the listing: a store that
/// keeps far more chunks than its newest backup uses (long retention of a volume that changes
/// much) is listed page by page until that backup reaches the threshold.
const LIST_BY_PREFIX: usize = 16_000;

/// What a deduplicating backup may reuse: the chunks of the newest genuine backup (its own
/// signing key's) that this run's listing of the store shows, with their recorded sizes.
async fn dedup_for(
    repo: &Repo,
    plan: &BackupPlan,
    newest: Result<Option<manifest::Authenticated>>,
) -> Result<Option<Arc<Dedup>>> {
    let Some(keys) = &plan.dedup else {
        return Ok(None);
    };
    let newest = newest?;
    let store = repo.chunk_store(&plan.app_name);
    // Only chunks sealed the way this run seals: the same compression, to the same recipients
    // (a recipient added must be able to read every chunk; one removed, none of the new ones).
    let recipients: std::collections::BTreeSet<&str> =
        plan.recipients.iter().map(|r| r.text.as_str()).collect();
    let volumes: Vec<format::VolumeRecord> = newest
        .into_iter()
        .flat_map(|n| n.manifest.volumes)
        .filter(|v| v.compression == plan.compression.kind)
        .filter(|v| {
            let theirs: std::collections::BTreeSet<&str> =
                v.encryption.recipients.iter().map(String::as_str).collect();
            theirs == recipients
        })
        .collect();
    let previous = volumes
        .iter()
        .filter(|v| v.is_chunked())
        .map(|v| (v.name.clone(), Arc::new(Previous::of(&v.chunks))))
        .collect();
    // The newest backup's chunk lists, moved (one volume's) or copied once, sized exactly,
    // into what becomes the reuse map.
    let mut earlier: Vec<format::ChunkRef> = Vec::new();
    let total: usize = volumes.iter().map(|v| v.chunks.len()).sum();
    for volume in volumes {
        if earlier.is_empty() && volume.chunks.len() == total {
            earlier = volume.chunks;
        } else {
            earlier.reserve_exact(total - earlier.len());
            earlier.extend_from_slice(&volume.chunks);
        }
    }
    // The listing (one request per thousand chunks, or per prefix at once for a large store)
    // goes on while the run prepares, and is in before anything stops; this run holds the
    // store's lock already, so nothing it lists is pruned before the manifest.
    let by_prefix = earlier.len() >= LIST_BY_PREFIX;
    let listing = tokio::spawn({
        let (store, url) = (store.clone(), repo.url().to_string());
        async move {
            let present = if by_prefix {
                list_chunks_by_prefix(&store).await
            } else {
                list_chunks(&store).await
            };
            let present = present.map_err(|e| anyhow!("cannot list the chunks in {url}: {e}"))?;
            let known = Known::confirmed(earlier, &present);
            tracing::info!(
                reusable = known.len(),
                in_store = present.len(),
                "deduplicating against the newest backup's chunks"
            );
            Ok(known)
        }
    });
    Ok(Some(Arc::new(Dedup {
        store,
        sealer: ChunkSealer {
            recipients: Arc::clone(&plan.recipients),
            compression: plan.compression.kind,
            level: plan.compression.level.unwrap_or(3),
            keys: Arc::new(keys.for_app(&plan.app_name)),
        },
        known: tokio::sync::OnceCell::new(),
        stop_listing: listing.abort_handle(),
        listing: std::sync::Mutex::new(Some(listing)),
        url: repo.url().to_string(),
        previous: std::sync::Mutex::new(previous),
    })))
}

impl Dedup {
    /// The chunks this run may reuse in this store, the listing awaited the first time; its
    /// failure, each time.
    async fn known(&self) -> Result<&Known> {
        let listed = self
            .known
            .get_or_init(|| async {
                let listing = self
                    .listing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                let failed = |e: &dyn std::fmt::Display| {
                    format!("the listing of the chunks in {} failed: {e}", self.url)
                };
                match listing {
                    None => Err(failed(&"it was stopped")),
                    Some(listing) => match listing.await {
                        Ok(listed) => listed.map_err(|e| format!("{e:#}")),
                        Err(e) => Err(failed(&e)),
                    },
                }
            })
            .await;
        listed.as_ref().map_err(|e| anyhow!("{e}"))
    }
}

impl Drop for Dedup {
    fn drop(&mut self) {
        self.stop_listing.abort();
    }
}

/// A volume read to its end, its upload still going on (from the spool, or done already).
struct ReadVolume {
    /// The record, without the stored size and hash the upload will give.
    record: VolumeRecord,
    what: String,
    sealing: Stored,
}

/// A volume's upload: one object, maybe still draining the spool; or chunks, all stored; or
/// none: its store had failed (or lost its lock) before the volume was read (`Gone`), or
/// failed while it was read (`Failed`, why).
enum Stored {
    Object(Sealing),
    Chunks(SealingChunks),
    Gone,
    Failed(anyhow::Error),
}

impl ReadVolume {
    /// Stops the upload and aborts its multipart upload (chunks stay, unreferenced, until a
    /// prune after the grace period).
    async fn abandon(self) {
        match self.sealing {
            Stored::Object(sealing) => sealing.abandon().await,
            Stored::Chunks(sealing) => sealing.abandon().await,
            Stored::Gone | Stored::Failed(_) => {}
        }
    }

    /// Whether its upload is going on (or done), not given up.
    fn is_under_way(&self) -> bool {
        matches!(self.sealing, Stored::Object(_) | Stored::Chunks(_))
    }
}

async fn abandon_all(read: impl IntoIterator<Item = ReadVolume>) {
    for volume in read {
        volume.abandon().await;
    }
}

/// The downtime part of a backup: reads the sources one after another, each between its volume
/// hooks, into uploads (one per store) that may still be draining the spool when this
/// returns. Returns them by store, and the after-volume hooks that failed; on an error,
/// abandons every upload.
async fn read_volumes(
    job: VolumeJob,
    sources: Vec<Source>,
) -> Result<(Vec<Vec<ReadVolume>>, Vec<String>)> {
    let mut read: Vec<Vec<ReadVolume>> = job.targets.iter().map(|_| Vec::new()).collect();
    let mut hook_failures = Vec::new();
    for source in &sources {
        if job.cancel.is_cancelled() {
            abandon_all(read.into_iter().flatten()).await;
            return Err(crate::error::interrupted());
        }
        if !job.targets.iter().any(|t| t.tokens.is_live()) {
            // Every store has failed: each reports its own error; nothing more is read.
            tracing::warn!(volume = %source.name, "not read: every store has failed");
            for store in read.iter_mut() {
                store.push(job.gone(source));
            }
            continue;
        }
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
        context.failure = Some(match &result {
            Err(e) => Some(format!("{e:#}")),
            Ok(volume) if !volume.iter().any(ReadVolume::is_under_way) => {
                Some("every store's upload failed".to_string())
            }
            Ok(_) => None,
        });
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
                if let Some(under_way) = volume.iter().find(|v| v.is_under_way()) {
                    let record = &under_way.record;
                    tracing::info!(
                        volume = %record.name,
                        tar_bytes = record.tar_size,
                        mib_per_s = format!("{:.1}", record.tar_size as f64 / secs / 1048576.0),
                        "volume read"
                    );
                }
                for (store, volume) in read.iter_mut().zip(volume) {
                    store.push(volume);
                }
            }
            Err(error) => {
                abandon_all(read.into_iter().flatten()).await;
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
            // The chunk list moved to the record when the volume was read.
            // Once its chunks are stored, the list of them goes in objects of its own.
            Stored::Chunks(sealing) => match sealing.finish().await {
                Ok(chunks) => store_lists(&repo.chunk_store(app), &record.chunks)
                    .await
                    .map(|lists| {
                        record.lists = lists;
                        Sealed {
                            tar_size: chunks.tar_size,
                            root: chunks.root,
                            stored_size: record.chunks.iter().map(|c| c.size).sum(),
                            sha256: format::chunk_list_digest(&record.chunks),
                            segments: 1,
                        }
                    })
                    .map_err(|e| anyhow!("the chunk list of {what} was not stored: {e}")),
                Err(e) => Err(seal_error(e, &what)),
            },
            Stored::Failed(error) => Err(error),
            Stored::Gone => Err(anyhow!(
                "{what} was not sent to {}: the store had failed or lost its lock before it was read",
                repo.url()
            )),
        };
        match stored {
            Ok(sealed) => {
                record.stored_size = sealed.stored_size;
                record.sha256 = sealed.sha256;
                record.segments = sealed.segments;
                tracing::info!(volume = %record.name, stored_bytes = sealed.stored_size, store = %repo.url(), "volume stored");
                records.push(record);
            }
            Err(error) => {
                abandon_all(pending).await;
                // Chunks stay, unreferenced, until a prune after the grace period.
                for done in records.iter().filter(|r| !r.is_chunked()) {
                    repo.delete_volume_object(app, backup_id, done).await;
                }
                return Err(error);
            }
        }
    }
    Ok(records)
}

impl VolumeJob {
    /// A volume's record as far as the read knows it: the upload fills in the stored size and
    /// hash.
    fn record(&self, source: &Source, read: (u64, Option<format::RootMeta>)) -> VolumeRecord {
        VolumeRecord {
            name: source.name.clone(),
            kind: source.kind,
            compose_volume: source.compose_volume.clone(),
            driver: source.driver.clone(),
            labels: source.labels.clone(),
            service: source.service.clone(),
            container_path: source.container_path.clone(),
            object: format::object_name(&source.name, self.compression.kind),
            stored_size: 0,
            sha256: String::new(),
            tar_size: read.0,
            compression: self.compression.kind,
            encryption: Encryption {
                scheme: "age".into(),
                recipients: self.recipients.iter().map(|r| r.text.clone()).collect(),
            },
            root: read.1,
            chunks: Vec::new(),
            lists: Vec::new(),
            new_bytes: None,
            segments: 1,
        }
    }

    fn what(source: &Source) -> String {
        format!(
            "volume {} (read through {} at {})",
            source.name, source.service, source.container_path
        )
    }

    /// The place of a volume not sent to a store that had already failed.
    fn gone(&self, source: &Source) -> ReadVolume {
        ReadVolume {
            record: self.record(source, (0, None)),
            what: Self::what(source),
            sealing: Stored::Gone,
        }
    }
}

/// Reads one volume into an upload per store still live: the same sealed bytes to each (or,
/// chunked, the chunks each store lacks). Returns one per store of the job, in its order (a
/// failed store's is [`Stored::Gone`]).
async fn read_volume(job: &VolumeJob, source: &Source) -> Result<Vec<ReadVolume>> {
    let (docker, compression) = (&job.docker, job.compression);
    let object = format::object_name(&source.name, compression.kind);
    let what = VolumeJob::what(source);
    if job.cancel.is_cancelled() {
        return Err(crate::error::interrupted());
    }
    // The listings were awaited before the stop (`locked_attempt`): this only reads them. A
    // store whose listing failed leaves the run here, as one that refused an upload.
    let mut unlisted: Vec<Option<anyhow::Error>> = Vec::new();
    for target in &job.targets {
        let listed = match &target.dedup {
            Some(dedup) if target.tokens.is_live() => dedup.known().await.err(),
            _ => None,
        };
        if listed.is_some() {
            target.tokens.failed.cancel();
        }
        unlisted.push(listed);
    }
    let out_of_run = |unlisted: &mut Option<anyhow::Error>| match unlisted.take() {
        Some(error) => ReadVolume {
            record: job.record(source, (0, None)),
            what: what.clone(),
            sealing: Stored::Failed(error),
        },
        None => job.gone(source),
    };
    let live: Vec<&Target> = job.targets.iter().filter(|t| t.tokens.is_live()).collect();
    if live.is_empty() {
        return Ok(unlisted.iter_mut().map(out_of_run).collect());
    }
    // A volume found before the stop to be read on the host needs no helper container. Any
    // other is read through a helper, unless it is found now: in a run that may read on the
    // host, a volume whose root changed between the two looks before the stop (a busy app
    // creating files in it) is looked at again, now that nothing writes to it.
    let on_host = |dir: std::path::PathBuf| {
        tracing::info!(volume = %source.name, dir = %dir.display(), "reading the volume from its directory on this host");
        futures::future::Either::Left(crate::host_tree::tar_of(dir))
    };
    let (tar, helper) = match job.direct.get(&source.name).cloned() {
        Some(dir) => (on_host(dir), None),
        None => {
            let helper = Helper::create(docker, &source.mount, true).await?;
            let dir = match job.host_view {
                true => direct_dir(docker, &helper.id, source).await,
                false => None,
            };
            let tar = match dir {
                Some(dir) => on_host(dir),
                None => futures::future::Either::Right(docker::tar_of(
                    docker,
                    &helper.id,
                    docker::HELPER_PATH,
                )),
            };
            (tar, Some(helper))
        }
    };
    let progress = job.progress.volume(
        source.compose_volume.as_deref().unwrap_or(&source.name),
        source.host_dir.clone(),
    );
    let tar = progress.count_read(tokio_util::io::StreamReader::new(tar));
    let dedup: Option<Vec<&Dedup>> = live.iter().map(|t| t.dedup.as_deref()).collect();
    let result = match dedup {
        None => {
            let to: Vec<(Destination, StoreTokens)> = live
                .iter()
                .map(|target| {
                    let at = target.repo.object(&job.app_name, &job.backup_id, &object);
                    let to = Destination {
                        objects: at.objects,
                        location: at.location,
                        attributes: target.repo.upload_attributes().clone(),
                        parts: *target.repo.part_policy(),
                        spool: job.spool.clone(),
                    };
                    (to, target.tokens.clone())
                })
                .collect();
            let sealer = Sealer {
                recipients: Arc::clone(&job.recipients),
                compression,
            };
            seal_each(tar, &sealer, &to, &progress, &job.cancel)
                .await
                .map(|each| {
                    each.into_iter()
                        .map(|s| (s.tar_size, s.root, Stored::Object(s)))
                        .collect::<Vec<_>>()
                })
        }
        Some(dedup) => {
            let to: Vec<ChunkTarget<'_>> = dedup
                .iter()
                .zip(&live)
                .map(|(d, target)| ChunkTarget {
                    known: match d.known.get() {
                        Some(Ok(known)) => known,
                        _ => unreachable!("a live store's listing is in and succeeded"),
                    },
                    store: &d.store,
                    tokens: target.tokens.clone(),
                    previous: d
                        .previous
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&source.name),
                })
                .collect();
            let sealer = &dedup[0].sealer;
            seal_chunks_each(tar, sealer, &to, job.spool.as_ref(), &job.cancel)
                .await
                .map(|each| {
                    each.into_iter()
                        .map(|c| {
                            let s = &c.sealed;
                            tracing::info!(volume = %source.name, chunks = s.chunks.len(), new_bytes = s.new_bytes, reused_bytes = s.reused_plain, "volume chunked");
                            (s.tar_size, s.root, Stored::Chunks(c))
                        })
                        .collect::<Vec<_>>()
                })
        }
    };
    drop(progress);
    if let Some(helper) = helper {
        helper.remove(docker).await;
    }
    let result = match result {
        // Several stores, each failed while the volume was read: each store says why.
        Err(SealError::EveryUpload(errors)) => Ok(errors
            .into_iter()
            .map(|e| (0, None, Stored::Failed(seal_error(e, &what))))
            .collect()),
        other => other,
    };
    let mut each = result.map_err(|e| seal_error(e, &what))?.into_iter();
    Ok(job
        .targets
        .iter()
        .zip(unlisted.iter_mut())
        .map(|(target, unlisted)| {
            if !live.iter().any(|l| std::ptr::eq(*l, target)) {
                return out_of_run(unlisted);
            }
            let (tar_size, root, mut sealing) = each.next().expect("one upload per live store");
            let mut record = job.record(source, (tar_size, root));
            if let Stored::Chunks(c) = &mut sealing {
                record.chunks = std::mem::take(&mut c.sealed.chunks);
                record.new_bytes = Some(c.sealed.new_bytes);
            }
            ReadVolume {
                record,
                what: what.clone(),
                sealing,
            }
        })
        .collect())
}

/// Whether this run may read volumes from their directories on this host
/// ([`crate::host_tree`]), decided once before the stop: an engine on this host's socket (no
/// `DOCKER_HOST` elsewhere), lifeboat running as root able to read every file (a user of the
/// docker group may reach a volume's directory but not read all of it), and a probe volume written
/// through the engine seen here as written ([`docker::volumes_visible_here`]: a remote engine
/// behind a forwarded socket, a copy of the data root, a rootless or user-namespaced engine,
/// or a sidecar that cannot see the volumes fail it).
async fn host_view(docker: &Docker) -> bool {
    if std::env::var("DOCKER_HOST").is_ok_and(|host| !host.starts_with("unix://"))
        || !reads_every_file()
    {
        return false;
    }
    match docker::volumes_visible_here(docker).await {
        Ok(seen) => {
            if !seen {
                tracing::debug!(
                    "reading through Docker: a probe volume written through the engine is not seen here as written"
                );
            }
            seen
        }
        Err(error) => {
            tracing::debug!("reading through Docker: the probe volume failed: {error:#}");
            false
        }
    }
}

/// Whether this process may read every file whatever its mode: root with `CAP_DAC_OVERRIDE` or
/// `CAP_DAC_READ_SEARCH` in effect (a sidecar with `cap_drop: ALL` is root without them).
fn reads_every_file() -> bool {
    const DAC_OVERRIDE: u64 = 1 << 1;
    const DAC_READ_SEARCH: u64 = 1 << 2;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(0);
    rustix::process::geteuid().is_root() && effective & (DAC_OVERRIDE | DAC_READ_SEARCH) != 0
}

/// The volumes to read from their directories on this host instead of through Docker's archive
/// API ([`crate::host_tree`]), in a run whose [`host_view`] holds, by name: see [`direct_dir`].
/// Decided before the app stops, several volumes at once, beside the stores' listings: Docker's
/// archive of a volume takes 70–100 ms to give its first block, which would otherwise be
/// downtime, per volume. What is compared tells which directory the engine reads; but the
/// running app may change the root's mtime between the two looks, so a volume not found here
/// is looked at again after the stop ([`read_volume`]).
async fn direct_dirs(docker: &Docker, sources: &[Source]) -> HashMap<String, std::path::PathBuf> {
    let checks = sources
        .iter()
        .filter(|s| s.plain_local)
        .map(|source| async move {
            let helper = Helper::create(docker, &source.mount, true).await.ok()?;
            let dir = direct_dir(docker, &helper.id, source).await;
            helper.remove(docker).await;
            Some((source.name.clone(), dir?))
        });
    futures::stream::iter(checks)
        .buffer_unordered(4)
        .filter_map(futures::future::ready)
        .collect()
        .await
}

/// The directory to read `source` from: a local volume without driver options whose root
/// directory's mode, owner and mtime here equal those in the first header of Docker's own
/// archive of it.
async fn direct_dir(
    docker: &Docker,
    helper_id: &str,
    source: &Source,
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = source.host_dir.as_ref().filter(|_| source.plain_local)?;
    let here = std::fs::symlink_metadata(dir).ok().filter(|m| m.is_dir())?;
    let here = format::RootMeta {
        mode: here.mode(),
        uid: here.uid().into(),
        gid: here.gid().into(),
        mtime: here.mtime().max(0).unsigned_abs(),
    };
    let block = docker::first_block(docker, helper_id, docker::HELPER_PATH)
        .await
        .ok()?;
    let theirs = crate::pipeline::tar_check::root_meta(&block);
    if theirs != Some(here) {
        tracing::debug!(volume = %source.name, ?theirs, ?here, "reading through Docker: its view of the volume's root differs from this host's");
        return None;
    }
    Some(dir.clone())
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
        SealError::EveryUpload(errors) => {
            let each: Vec<String> = errors
                .into_iter()
                .map(|e| format!("{:#}", seal_error(e, what)))
                .collect();
            anyhow!("every store's upload failed: {}", each.join("; "))
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
