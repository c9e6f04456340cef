//! The restore operation, planned and then executed (as rustic's restore does).
//!
//! [`plan`] takes the lock's place in line, authenticates the backup ([`crate::manifest`]),
//! compares the app's version, and decides each target: only the app's own volumes (mounted by
//! its containers or labelled with its compose project, or named with `--map-volume`), and
//! bind-mounted host directories only when named with `--bind-path` and mounted writable by
//! the app. `--dry-run` prints the plan and stops there.
//!
//! [`execute`] then, with the app still running, downloads every object once into a spool of
//! ciphertext while verifying it end to end; stops the app; copies what non-empty targets hold
//! to safety-copy volumes; marks the local state record "replacing" (from here on a failure
//! leaves the app stopped, see [`crate::state`]); replaces each target from the spool — the
//! bytes written are the bytes verified; and starts the app again. [`rollback`] puts the
//! safety copies back after a restore that did not finish.
//!
//! Where it sits: An operation, on top of the library: uses `docker`, `pipeline::open`, `store`,
//! `manifest`, `lock`, `stopped`, `state` and `hooks`; only `commands/restore.rs` calls it.

use crate::docker::{self, App, AppSelector, Helper, HelperMount};
use crate::downtime::Downtime;
use crate::format::{AppVersion, Manifest, ServiceImage, SourceKind, VolumeRecord};
use crate::hooks::{HookContext, HookEvent};
use crate::keys::OwnerKey;
use crate::manifest::{Authenticated, Authenticity, TrustPolicy};
use crate::pipeline::PipelineError;
use crate::pipeline::open::{self, Spooled};
use crate::pipeline::tally::TallyReader;
use crate::repo::Repo;
use crate::state::{RestoreState, RestoreTarget, StoppedRecord};
use crate::text::Printable;
use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The target app runs other images than the backup recorded.
#[derive(Debug, thiserror::Error)]
pub struct VersionMismatch {
    pub backup_id: String,
    pub differences: Vec<String>,
    /// The app has no containers here at all.
    pub none_here: bool,
}

impl std::fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "the app here is not the version backup {} was made from:",
            self.backup_id
        )?;
        for difference in &self.differences {
            writeln!(f, "  - {difference}")?;
        }
        write!(
            f,
            "Install the version the backup recorded (set those images in the compose file, then `docker compose up --no-start`), restore, then upgrade the app the way its documentation describes. Nothing was changed. To restore into these images anyway, pass --allow-version-mismatch."
        )?;
        if self.none_here {
            write!(
                f,
                " (No container of the app exists here; --allow-version-mismatch restores only the volumes, creating them, for an app you create afterwards.)"
            )?;
        }
        Ok(())
    }
}

/// Every way the current app differs from the recorded one.
pub fn compare_versions(
    recorded: &AppVersion,
    current: &BTreeMap<String, ServiceImage>,
    current_version: Option<&str>,
) -> Vec<String> {
    let mut differences = Vec::new();
    for (service, then) in &recorded.services {
        match current.get(service) {
            None => differences.push(format!(
                "service {service}: backed up with {} but there is no such service here",
                then.image
            )),
            Some(now) if now.image != then.image => differences.push(format!(
                "service {service}: backup ran {}, this host runs {}",
                then.image, now.image
            )),
            Some(now) if now.image_id != then.image_id => differences.push(format!(
                "service {service}: same tag {} but a different image (backup {}, here {})",
                then.image,
                short_id(&then.image_id),
                short_id(&now.image_id)
            )),
            Some(_) => {}
        }
    }
    if let (Some(then), Some(now)) = (&recorded.version, current_version)
        && then != now
    {
        differences.push(format!("app version: backup {then}, here {now}"));
    }
    differences
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// What the operator asked for: a restore's settings, validated.
pub struct RestoreRequest {
    pub app_name: String,
    pub selector: AppSelector,
    /// The backup to restore; `None`: the one an unfinished restore was restoring, else the
    /// newest.
    pub backup_id: Option<String>,
    pub owner: Arc<OwnerKey>,
    pub trust: TrustPolicy,
    pub allow_version_mismatch: bool,
    /// Backed-up volume (full or compose name) → the volume here it goes into.
    pub map_volumes: BTreeMap<String, String>,
    /// Container paths of bind mounts the operator allows this restore to write.
    pub bind_paths: Vec<String>,
    /// Overrides every container's own stop timeout.
    pub stop_timeout_secs: Option<u32>,
    pub version_from: Option<String>,
    pub hooks: Arc<crate::hooks::Hooks>,
    /// Where the verified ciphertext waits between download and write.
    pub spool_dir: PathBuf,
    /// Copy what non-empty targets hold before replacing it.
    pub safety_copy: bool,
}

impl RestoreRequest {
    /// How the operator named the app: what to type to finish or roll back this restore.
    fn app_args(&self) -> String {
        let which = match &self.selector {
            AppSelector::Project(project) => format!("--project {project}"),
            AppSelector::Containers(names) => names
                .iter()
                .map(|n| format!("--container {n}"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        let named = match &self.selector {
            AppSelector::Project(project) if project == &self.app_name => String::new(),
            _ => format!(" --name {}", self.app_name),
        };
        format!("{which}{named}")
    }
}

/// Where one backed-up volume goes, and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub record: VolumeRecord,
    pub mount: HelperMount,
    /// The target volume's name, or the bind mount's host path.
    pub destination: String,
    /// Set when the volume does not exist yet: created with this driver and these labels.
    pub create: Option<(Option<String>, BTreeMap<String, String>)>,
    /// The target holds nothing now.
    pub empty: bool,
    /// The volume that keeps (or, finishing an earlier restore, keeps already) what the target
    /// held before.
    pub safety_copy: Option<String>,
}

impl Target {
    fn is_bind(&self) -> bool {
        matches!(self.mount, HelperMount::HostPath(_))
    }

    fn describe(&self) -> String {
        let what = if self.is_bind() {
            format!("host directory {}", Printable(&self.destination))
        } else {
            format!("volume {}", Printable(&self.destination))
        };
        let action = if self.create.is_some() {
            "create".to_string()
        } else if self.empty {
            "fill (empty now)".to_string()
        } else {
            "replace its contents".to_string()
        };
        let copy = match (&self.safety_copy, self.empty || self.create.is_some()) {
            (Some(copy), _) => format!("; what it holds now is kept in volume {copy}"),
            (None, true) => String::new(),
            (None, false) => "; NO safety copy of what it holds now".to_string(),
        };
        format!(
            "{what} ← {} (read through {}:{}): {action}, {}{copy}",
            Printable(&self.record.name),
            Printable(&self.record.service),
            Printable(&self.record.container_path),
            crate::text::human_bytes(self.record.tar_size)
        )
    }
}

/// What a restore will do, decided before anything is read or changed.
pub struct RestorePlan {
    pub backup: Authenticated,
    pub app: App,
    /// How the app here differs from the recorded version (empty: the same).
    pub differences: Vec<String>,
    pub targets: Vec<Target>,
    /// The record of an earlier restore that did not finish, which this one finishes.
    pub resuming: Option<StoppedRecord>,
    /// Free space of the spool directory, when known.
    pub spool_free: Option<u64>,
}

impl RestorePlan {
    /// The plan for people: `--dry-run` prints it, `-v` logs it.
    pub fn describe(&self, request: &RestoreRequest) -> String {
        let m = &self.backup.manifest;
        let mut lines = Vec::new();
        let vouched = match &self.backup.authenticity {
            Authenticity::Signed(fingerprint) => format!("authenticated: signed by {fingerprint}"),
            Authenticity::Unsigned => {
                "NOT authenticated: a format-1 backup, trusted because of --allow-unsigned".into()
            }
        };
        lines.push(format!(
            "backup    {} of {}, made on {} at {}; {vouched}",
            m.backup_id,
            Printable(&m.app),
            Printable(&m.host),
            m.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        lines.push(if self.differences.is_empty() {
            "version   the app here runs the images the backup recorded".into()
        } else if request.allow_version_mismatch {
            format!(
                "version   differs, restoring anyway (--allow-version-mismatch): {}",
                self.differences.join("; ")
            )
        } else {
            format!(
                "version   differs, so the restore would stop here (exit 3): {}",
                self.differences.join("; ")
            )
        });
        if let Some(record) = &self.resuming {
            lines.push(format!(
                "resuming  an unfinished restore begun {} (its safety copies are kept as they are)",
                record.since.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        for target in &self.targets {
            lines.push(format!("target    {}", target.describe()));
        }
        let stored: u64 = self.targets.iter().map(|t| t.record.stored_size).sum();
        lines.push(format!(
            "spool     {} of ciphertext in {}{}",
            crate::text::human_bytes(stored),
            request.spool_dir.display(),
            self.spool_free.map_or(String::new(), |free| format!(
                " ({} free)",
                crate::text::human_bytes(free)
            ))
        ));
        let running: Vec<&str> = self
            .app
            .containers
            .iter()
            .filter(|c| c.running)
            .map(|c| c.name.as_str())
            .collect();
        let copies = self
            .targets
            .iter()
            .filter(|t| t.safety_copy.is_some() && self.resuming.is_none())
            .count();
        lines.push(format!(
            "downtime  download and verify every object (the app runs); stop {}; {}replace {} target(s) from the spool; start again what was stopped",
            if running.is_empty() {
                "nothing (no container runs)".to_string()
            } else {
                running.join(", ")
            },
            if copies > 0 {
                format!("copy {copies} target(s) to safety copies; ")
            } else {
                String::new()
            },
            self.targets.len()
        ));
        lines.join("\n")
    }
}

/// What a restore did.
pub struct RestoreReport {
    pub backup_id: String,
    pub app: String,
    pub targets: usize,
    pub downtime: std::time::Duration,
}

/// Takes the lock, plans, and (unless `dry_run`) executes. A dry run prints nothing itself: it
/// returns the plan's description.
pub async fn run(
    docker: &Docker,
    repo: &Repo,
    request: &RestoreRequest,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<Result<RestoreReport, String>> {
    if dry_run {
        let plan = plan(docker, repo, request, true).await?;
        return Ok(Err(plan.describe(request)));
    }
    crate::state::exclusively(
        repo,
        &request.app_name,
        "restore",
        cancel,
        |cancel| async move {
            let plan = plan(docker, repo, request, false).await?;
            tracing::info!("restore plan:\n{}", plan.describe(request));
            execute(docker, repo, request, plan, &cancel).await
        },
    )
    .await
    .map(Ok)
}

/// Decides what the restore will do; reads only the manifest and Docker's view of the app. A
/// `dry_run` also leaves alone what an earlier run left behind (it only reports it).
pub async fn plan(
    docker: &Docker,
    repo: &Repo,
    request: &RestoreRequest,
    dry_run: bool,
) -> Result<RestorePlan> {
    let dir = crate::state::state_dir();
    let resuming = unfinished_restore(docker, &dir, &request.app_name, dry_run).await?;
    let earlier = resuming.as_ref().and_then(|r| r.restore.as_ref());
    let backup_id = (request.backup_id.clone()).or_else(|| earlier.map(|r| r.backup_id.clone()));
    let backup = repo
        .read(&request.app_name, backup_id.as_deref(), &request.trust)
        .await?;
    if backup.authenticity == Authenticity::Unsigned {
        tracing::warn!(
            "backup {} is a format-1 backup with no signature: restoring it only because --allow-unsigned says to trust whoever could write to {}",
            backup.manifest.backup_id,
            repo.url()
        );
    }
    let app = App::discover_or_empty(docker, &request.selector).await?;
    let (ids, volumes) = (app.ids(), app.mounted_names());
    crate::state::refuse_if_incomplete_touching(&dir, &request.app_name, &ids, &volumes)?;
    let differences = version_differences(docker, &app, request, &backup.manifest).await?;
    let mut targets = plan_targets(docker, &app, request, &backup.manifest.volumes).await?;
    for target in &mut targets {
        target.empty = target.create.is_some() || is_empty_target(docker, target).await?;
        // `resuming` always carries its restore record (every `IncompleteRestore` is made from
        // one that was replacing), so `earlier` is `Some` exactly when finishing.
        target.safety_copy = match earlier {
            // Finishing: the copies the unfinished restore made, none new.
            Some(earlier) => earlier
                .targets
                .iter()
                .find(|t| t.destination == target.destination)
                .and_then(|t| t.safety_copy.clone()),
            None if request.safety_copy && !target.empty => {
                Some(safety_copy_name(&target.destination, target.is_bind()))
            }
            None => None,
        };
    }
    if let Some(restore) = earlier {
        check_resume(restore, &backup.manifest.backup_id, &targets)?;
    }
    Ok(RestorePlan {
        backup,
        app,
        differences,
        targets,
        resuming,
        spool_free: crate::pipeline::spool::free_bytes(&request.spool_dir),
    })
}

/// The record of a restore of this app that stopped while replacing, if there is one: that
/// restore must be finished (or rolled back) first. Anything else a killed run left behind
/// (stopped containers, helpers) is put right here, unless this is a dry run.
async fn unfinished_restore(
    docker: &Docker,
    dir: &std::path::Path,
    app_name: &str,
    dry_run: bool,
) -> Result<Option<StoppedRecord>> {
    if dry_run {
        return Ok(crate::state::read(dir, app_name)?
            .filter(|r| r.restore.as_ref().is_some_and(|s| s.replacing)));
    }
    docker::remove_stale_helpers(docker).await;
    match crate::downtime::recover(docker, dir, app_name).await {
        Ok(_) => Ok(None),
        Err(e) => match e.downcast::<crate::state::IncompleteRestore>() {
            Ok(incomplete) => Ok(Some(incomplete.record)),
            Err(other) => Err(other),
        },
    }
}

/// How the app that runs now differs from the one the backup recorded.
async fn version_differences(
    docker: &Docker,
    app: &App,
    request: &RestoreRequest,
    manifest: &Manifest,
) -> Result<Vec<String>> {
    let current_version = match (&manifest.app_version.version_source, &request.version_from) {
        (_, Some(source)) | (Some(source), None) if !app.containers.is_empty() => {
            Some(docker::read_version(docker, app, source).await?)
        }
        _ => None,
    };
    Ok(compare_versions(
        &manifest.app_version,
        &app.images(),
        current_version.as_deref(),
    ))
}

/// Whether an existing target holds nothing (then it needs no safety copy).
async fn is_empty_target(docker: &Docker, target: &Target) -> Result<bool> {
    let helper = Helper::create(docker, &target.mount, true).await?;
    let empty = docker::is_empty(docker, &helper.id).await;
    helper.remove(docker).await;
    empty
}

/// Finishing an unfinished restore means the same backup into the same targets: anything else
/// would start the app on targets still half-written, or write targets with no safety copy.
fn check_resume(earlier: &RestoreState, backup_id: &str, targets: &[Target]) -> Result<()> {
    let mut before: Vec<&str> = earlier
        .targets
        .iter()
        .map(|t| t.destination.as_str())
        .collect();
    let mut now: Vec<&str> = targets.iter().map(|t| t.destination.as_str()).collect();
    before.sort_unstable();
    now.sort_unstable();
    if earlier.backup_id != backup_id || before != now {
        return Err(crate::error::usage(format!(
            "an unfinished restore of backup {} into {} must be finished first: run it again with the same --backup and --map-volume ({} into {} was asked now), or roll it back with --rollback",
            earlier.backup_id,
            before.join(", "),
            backup_id,
            now.join(", ")
        )));
    }
    Ok(())
}

/// The volume that keeps what a target held before a restore.
fn safety_copy_name(destination: &str, host_path: bool) -> String {
    use sha2::Digest;
    if host_path {
        let digest = hex::encode(sha2::Sha256::digest(destination.as_bytes()));
        format!("lifeboat-safety-copy-of-bind-{}", &digest[..12])
    } else {
        format!("{destination}.lifeboat-safety-copy")
    }
}

/// Maps every volume of the backup to a target here, writing only where the app lives.
///
/// A named volume goes, in this order, into: the volume `--map-volume` names; the volume an app
/// container mounts under the same compose volume name; `<project>_<compose volume>`; the
/// backed-up name. A volume that exists must be the app's own — mounted by one of its
/// containers, labelled with its compose project, or named with `--map-volume` — and one that
/// does not is created with the recorded driver and labels (the compose project label set to
/// this project), so a later `docker compose up` adopts it. A bind mount goes into the host
/// directory that the same service mounts, writable, at the same container path, and only when
/// the operator named that path with `--bind-path`.
async fn plan_targets(
    docker: &Docker,
    app: &App,
    request: &RestoreRequest,
    records: &[VolumeRecord],
) -> Result<Vec<Target>> {
    let project = match &request.selector {
        AppSelector::Project(project) => Some(project.as_str()),
        AppSelector::Containers(_) => None,
    };
    // The volumes the app's containers mount writable: what it writes itself.
    let mounted: Vec<Mounted> = app
        .inventory(docker)
        .await?
        .into_iter()
        .filter(|m| m.writable && m.info.is_some())
        .filter_map(|m| {
            Some(Mounted {
                compose: m.compose_name().map(str::to_string),
                project: m.project().map(str::to_string),
                name: m.mount.name?,
            })
        })
        .collect();
    for path in &request.bind_paths {
        if !records
            .iter()
            .any(|r| r.kind == SourceKind::Bind && &r.container_path == path)
        {
            return Err(crate::error::usage(format!(
                "--bind-path {path}: the backup holds no bind mount at {path}"
            )));
        }
    }
    let mut targets: Vec<Target> = Vec::new();
    for record in records {
        let target = match record.kind {
            SourceKind::Bind => bind_target(app, request, record)?,
            SourceKind::Volume => volume_target(docker, project, &mounted, request, record).await?,
        };
        if targets.iter().any(|t| t.destination == target.destination) {
            return Err(crate::error::usage(format!(
                "two volumes of the backup map to {}; use --map-volume OLD=NEW to tell them apart",
                Printable(&target.destination)
            )));
        }
        targets.push(target);
    }
    Ok(targets)
}

fn bind_target(app: &App, request: &RestoreRequest, record: &VolumeRecord) -> Result<Target> {
    let (service, path) = (
        Printable(&record.service),
        Printable(&record.container_path),
    );
    if !request.bind_paths.contains(&record.container_path) {
        return Err(crate::error::usage(format!(
            "the backup holds the bind mount {service}:{path}, a directory on the host; restore writes into host directories only when told to: add --bind-path {path}"
        )));
    }
    let container = app.by_key(&record.service).ok_or_else(|| {
        crate::error::usage(format!(
            "bind mount {path} belongs to service {service}, which the app here does not have; create its containers first"
        ))
    })?;
    let mount = container
        .mounts
        .iter()
        .find(|m| m.kind == "bind" && m.destination == record.container_path)
        .ok_or_else(|| {
            crate::error::usage(format!(
                "--bind-path {path}: service {service} here has no bind mount at {path}"
            ))
        })?;
    if !mount.rw {
        return Err(crate::error::usage(format!(
            "--bind-path {path}: service {service} mounts {} there read-only; lifeboat writes no directory the app itself may not write",
            Printable(&mount.source)
        )));
    }
    Ok(Target {
        record: record.clone(),
        mount: HelperMount::HostPath(mount.source.clone()),
        destination: mount.source.clone(),
        create: None,
        empty: false,
        safety_copy: None,
    })
}

/// A volume an app container mounts writable, with its compose labels (from the inventory).
struct Mounted {
    name: String,
    compose: Option<String>,
    project: Option<String>,
}

async fn volume_target(
    docker: &Docker,
    project: Option<&str>,
    mounted: &[Mounted],
    request: &RestoreRequest,
    record: &VolumeRecord,
) -> Result<Target> {
    let mapped = request
        .map_volumes
        .get(&record.name)
        .or_else(|| {
            record
                .compose_volume
                .as_ref()
                .and_then(|c| request.map_volumes.get(c))
        })
        .cloned();
    let name = match mapped.clone() {
        Some(name) => name,
        None if mounted.iter().any(|m| m.name == record.name) => record.name.clone(),
        None => match by_compose_name(project, mounted, record)? {
            Some(name) => name,
            None => match (project, &record.compose_volume) {
                (Some(project), Some(compose)) => format!("{project}_{compose}"),
                _ => record.name.clone(),
            },
        },
    };
    if !crate::text::is_volume_name(&name) {
        return Err(crate::error::usage(format!(
            "'{}' is not a Docker volume name",
            Printable(&name)
        )));
    }
    let create = if docker::volume_exists(docker, &name).await? {
        let owned = mapped.is_some()
            || mounted.iter().any(|m| m.name == name)
            || (project.is_some() && volume_project(docker, &name).await?.as_deref() == project);
        if !owned {
            return Err(crate::error::usage(format!(
                "volume {name} exists but is not the app's: no container of '{}' mounts it writable{}; lifeboat restores only into the app's own volumes. If it is meant, name it: --map-volume {}={name}",
                request.app_name,
                project.map_or(String::new(), |p| format!(
                    " and it is not labelled with compose project '{p}'"
                )),
                Printable(record.compose_volume.as_deref().unwrap_or(&record.name))
            )));
        }
        None
    } else {
        let mut labels = record.labels.clone();
        if let Some(project) = project
            && labels.contains_key(docker::PROJECT_LABEL)
        {
            labels.insert(docker::PROJECT_LABEL.into(), project.into());
        }
        Some((record.driver.clone(), labels))
    };
    Ok(Target {
        record: record.clone(),
        mount: HelperMount::Volume(name.clone()),
        destination: name,
        create,
        empty: false,
        safety_copy: None,
    })
}

/// The app's volume with the record's compose volume name: of this compose project when the
/// app is one; more than one such volume is ambiguous and refused.
fn by_compose_name(
    project: Option<&str>,
    mounted: &[Mounted],
    record: &VolumeRecord,
) -> Result<Option<String>> {
    let Some(compose) = &record.compose_volume else {
        return Ok(None);
    };
    let candidates: Vec<&str> = mounted
        .iter()
        .filter(|m| m.compose.as_ref() == Some(compose))
        .filter(|m| project.is_none() || m.project.as_deref() == project)
        .map(|m| m.name.as_str())
        .collect();
    match candidates[..] {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        _ => Err(crate::error::usage(format!(
            "the app mounts several volumes named '{}' in compose ({}); say which one volume {} goes into with --map-volume {}=NAME",
            Printable(compose),
            candidates.join(", "),
            Printable(&record.name),
            Printable(compose)
        ))),
    }
}

/// The compose project label of a volume.
async fn volume_project(docker: &Docker, name: &str) -> Result<Option<String>> {
    Ok(docker::volume_info(docker, name)
        .await?
        .labels
        .get(docker::PROJECT_LABEL)
        .cloned())
}

/// Runs the plan: verify into the spool, stop, safety copies, replace, start.
pub async fn execute(
    docker: &Docker,
    repo: &Repo,
    request: &RestoreRequest,
    plan: RestorePlan,
    cancel: &CancellationToken,
) -> Result<RestoreReport> {
    let manifest = &plan.backup.manifest;
    if !plan.differences.is_empty() {
        if !request.allow_version_mismatch {
            return Err(VersionMismatch {
                backup_id: manifest.backup_id.clone(),
                differences: plan.differences.clone(),
                none_here: plan.app.containers.is_empty(),
            }
            .into());
        }
        tracing::warn!(
            "restoring across versions as --allow-version-mismatch asks: {}",
            plan.differences.join("; ")
        );
    }
    let spooled = fetch_all(repo, request, &plan, cancel).await?;
    let mut context = HookContext {
        app: request.app_name.clone(),
        backup_id: manifest.backup_id.clone(),
        ..Default::default()
    };
    request
        .hooks
        .run(docker, Some(&plan.app), HookEvent::BeforeRestore, &context)
        .await
        .context("nothing was stopped or changed")?;
    let result = replace_while_stopped(docker, request, &plan, spooled, cancel).await;
    context.failure = Some(result.as_ref().err().map(|e| format!("{e:#}")));
    let after = request
        .hooks
        .run(docker, Some(&plan.app), HookEvent::AfterRestore, &context)
        .await;
    let downtime = result?;
    let report = RestoreReport {
        backup_id: manifest.backup_id.clone(),
        app: manifest.app.clone(),
        targets: plan.targets.len(),
        downtime,
    };
    after.map_err(|hook_error| {
        hook_error.context(format!(
            "backup {} is restored, but an after-restore hook failed",
            report.backup_id
        ))
    })?;
    Ok(report)
}

/// Downloads every object once into the spool, verifying each end to end, with the app still
/// running; a signal stops it with nothing changed.
async fn fetch_all(
    repo: &Repo,
    request: &RestoreRequest,
    plan: &RestorePlan,
    cancel: &CancellationToken,
) -> Result<Vec<Spooled>> {
    let manifest = &plan.backup.manifest;
    let needed: u64 = plan.targets.iter().map(|t| t.record.stored_size).sum();
    if let Some(free) = plan.spool_free
        && free < needed.saturating_add(64 << 20)
    {
        return Err(crate::error::usage(format!(
            "restoring backup {} downloads {} of ciphertext into {} first (it is verified there before any volume is touched), but only {} is free; point --spool-dir at a disk with room. Nothing was changed",
            manifest.backup_id,
            crate::text::human_bytes(needed),
            request.spool_dir.display(),
            crate::text::human_bytes(free)
        )));
    }
    let mut spooled = Vec::with_capacity(plan.targets.len());
    for target in &plan.targets {
        let started = Instant::now();
        let at = repo.volume_at(&manifest.app, &manifest.backup_id, &target.record);
        let location = &at;
        let fetch = open::fetch_verified(
            &at,
            &target.record,
            &request.owner.identities,
            &request.spool_dir,
        );
        let fetched = tokio::select! {
            fetched = fetch => fetched,
            _ = cancel.cancelled() => return Err(crate::error::interrupted()),
        };
        let (spool, summary) = fetched.map_err(anyhow::Error::new).with_context(|| {
            format!(
                "verifying volume {} of backup {}, {location} (nothing was changed)",
                Printable(&target.record.name),
                manifest.backup_id
            )
        })?;
        tracing::info!(volume = %Printable(&target.record.name), entries = summary.entries, stored_bytes = spool.size, secs = started.elapsed().as_secs_f64(), "verified");
        spooled.push(spool);
    }
    Ok(spooled)
}

/// The downtime of a restore. Until the first target is written, any failure starts the app
/// again with nothing changed; after, a failure leaves the app stopped and the local record
/// saying so, with the safety copies to roll back to.
async fn replace_while_stopped(
    docker: &Docker,
    request: &RestoreRequest,
    plan: &RestorePlan,
    spooled: Vec<Spooled>,
    cancel: &CancellationToken,
) -> Result<std::time::Duration> {
    let dir = crate::state::state_dir();
    let (mut downtime, stopped) = match crate::state::resume(&dir, &request.app_name)? {
        Some(record) if plan.resuming.is_some() => {
            Downtime::resume(docker, &plan.app, record, request.stop_timeout_secs).await?
        }
        _ => {
            Downtime::begin(
                docker,
                &plan.app,
                &request.app_name,
                "restore",
                request.stop_timeout_secs,
            )
            .await?
        }
    };
    let prepared = match stopped {
        Ok(()) if cancel.is_cancelled() => Err(crate::error::interrupted()),
        Ok(()) => prepare_targets(docker, plan, &request.app_args(), &mut downtime).await,
        Err(stop_error) => Err(stop_error),
    };
    if let Err(error) = prepared {
        let (restarted, _) = downtime.end(docker).await;
        let error = error.context("nothing was restored, and the app's data is as it was");
        return Err(match restarted {
            Ok(()) => error,
            Err(restart) => error.context(format!("and also: {restart:#}")),
        });
    }
    // Past this point a signal no longer stops the restore: stopping between (or inside)
    // volumes would leave the app with a mix of old and restored data. It is announced, and
    // the restore finishes.
    let announce = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            tracing::warn!(
                "finishing the restore before stopping: the volumes are being replaced, and stopping now would leave the app with a mix of old and restored data"
            );
        }
    });
    let replaced = replace_targets(docker, request, plan, &spooled, &mut downtime).await;
    announce.abort();
    if let Err(error) = replaced {
        let record = downtime.record().clone();
        downtime.keep();
        let incomplete = crate::state::IncompleteRestore {
            app: request.app_name.clone(),
            record,
        };
        return Err(error.context(incomplete.to_string()));
    }
    finish(docker, downtime).await
}

/// Records the targets, then takes the safety copies (the app is stopped, nothing is replaced).
async fn prepare_targets(
    docker: &Docker,
    plan: &RestorePlan,
    app_args: &str,
    downtime: &mut Downtime,
) -> Result<()> {
    if plan.resuming.is_some() {
        return Ok(());
    }
    for copy in plan.targets.iter().filter_map(|t| t.safety_copy.as_deref()) {
        if docker::volume_exists(docker, copy).await? {
            return Err(anyhow!(
                "the safety-copy volume {copy} exists already (left by an earlier restore?); look at it, and remove it with `docker volume rm {copy}` once it is not needed"
            ));
        }
    }
    let targets = plan
        .targets
        .iter()
        .map(|t| RestoreTarget {
            destination: t.destination.clone(),
            host_path: t.is_bind(),
            created: t.create.is_some(),
            was_empty: t.empty,
            safety_copy: t.safety_copy.clone(),
        })
        .collect();
    downtime.update(|r| {
        r.restore = Some(RestoreState {
            backup_id: plan.backup.manifest.backup_id.clone(),
            replacing: false,
            targets,
            app_args: app_args.to_string(),
            restart_policies: vec![],
        })
    })?;
    let mut made = Vec::new();
    let copied = async {
        for target in plan.targets.iter().filter(|t| t.safety_copy.is_some()) {
            let copy = target.safety_copy.as_deref().unwrap_or_default();
            let started = Instant::now();
            let labels = BTreeMap::from([
                ("io.lifeboat.safety-copy-of".to_string(), target.destination.clone()),
                (
                    "io.lifeboat.restore-of-backup".to_string(),
                    plan.backup.manifest.backup_id.clone(),
                ),
            ]);
            docker::create_volume(docker, copy, None, &labels).await?;
            made.push(copy.to_string());
            let bytes = copy_between(docker, &target.mount, &HelperMount::Volume(copy.into()))
                .await
                .with_context(|| {
                    format!("taking a safety copy of {} into {copy}", target.destination)
                })?;
            tracing::info!(target = %target.destination, copy, bytes, secs = started.elapsed().as_secs_f64(), "safety copy taken");
        }
        Ok(())
    }
    .await;
    if copied.is_err() {
        for copy in &made {
            if let Err(e) = docker::remove_volume(docker, copy).await {
                tracing::warn!("could not remove the partial safety copy {copy}: {e:#}");
            }
        }
        downtime.update(|r| r.restore = None)?;
    }
    copied
}

/// Copies the tree of one mount into another (which must be empty).
async fn copy_between(docker: &Docker, from: &HelperMount, to: &HelperMount) -> Result<u64> {
    let source = Helper::create(docker, from, true).await?;
    let destination = match Helper::create(docker, to, false).await {
        Ok(helper) => helper,
        Err(e) => {
            source.remove(docker).await;
            return Err(e);
        }
    };
    let result = docker::copy_tree(docker, &source, &destination).await;
    source.remove(docker).await;
    destination.remove(docker).await;
    result
}

/// Marks the record "replacing", keeps dockerd from starting the app by itself meanwhile, and
/// writes every target from the spool.
async fn replace_targets(
    docker: &Docker,
    request: &RestoreRequest,
    plan: &RestorePlan,
    spooled: &[Spooled],
    downtime: &mut Downtime,
) -> Result<()> {
    let always: Vec<(String, String, serde_json::Value)> = plan
        .app
        .containers
        .iter()
        .filter(|c| docker::restarts_with_the_engine(c.restart_policy.as_ref()))
        .map(|c| {
            let policy = serde_json::to_value(&c.restart_policy).unwrap_or_default();
            (c.id.clone(), c.name.clone(), policy)
        })
        .collect();
    downtime.update(|r| {
        if let Some(restore) = &mut r.restore {
            restore.replacing = true;
            for entry in &always {
                if !restore
                    .restart_policies
                    .iter()
                    .any(|(id, ..)| id == &entry.0)
                {
                    restore.restart_policies.push(entry.clone());
                }
            }
        }
    })?;
    for (id, name, _) in &always {
        let never = bollard::models::RestartPolicy {
            name: Some(bollard::models::RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        };
        docker::set_restart_policy(docker, id, never)
            .await
            .with_context(|| {
                format!("keeping dockerd from starting {name} while its data is replaced")
            })?;
    }
    for (target, spool) in plan.targets.iter().zip(spooled) {
        restore_target(
            docker,
            request,
            &plan.backup.manifest.backup_id,
            target,
            spool,
        )
        .await
        .with_context(|| {
            format!(
                "restoring volume {} into {}",
                Printable(&target.record.name),
                Printable(&target.destination)
            )
        })?;
    }
    Ok(())
}

async fn restore_target(
    docker: &Docker,
    request: &RestoreRequest,
    backup_id: &str,
    target: &Target,
    spool: &Spooled,
) -> Result<()> {
    if let Some((driver, labels)) = &target.create
        && !docker::volume_exists(docker, &target.destination).await?
    {
        tracing::info!(volume = %target.destination, "creating the volume");
        docker::create_volume(docker, &target.destination, driver.as_deref(), labels).await?;
    }
    let helper = Helper::create(docker, &target.mount, false).await?;
    tracing::info!(target = %target.destination, backup = backup_id, "replacing");
    let result = write_from_spool(docker, request, target, spool, &helper).await;
    helper.remove(docker).await;
    result
}

/// Empties the target, streams the verified tar from the spool into it, and sets the root
/// directory's metadata.
async fn write_from_spool(
    docker: &Docker,
    request: &RestoreRequest,
    target: &Target,
    spool: &Spooled,
    helper: &Helper,
) -> Result<()> {
    let started = Instant::now();
    let tar = open::open_spooled(spool, &target.record, &request.owner.identities).await?;
    docker::empty_dir(docker, &helper.id, docker::HELPER_PATH).await?;
    let (tar, tally) = TallyReader::counting(tar);
    let body = tokio_util::io::ReaderStream::with_capacity(tar, 256 * 1024);
    // A failure inside the stream (a refused entry, a damaged spool) is the real cause; the
    // error Docker reports for the cut-off body is only a consequence.
    let (first_error_tx, mut first_error_rx) = tokio::sync::mpsc::channel::<PipelineError>(1);
    let body = body.inspect_err(move |e| {
        let error = PipelineError::from_read_chain_ref(e)
            .unwrap_or_else(|| PipelineError::Io(std::io::Error::new(e.kind(), e.to_string())));
        let _ = first_error_tx.try_send(error);
    });
    let extracted = docker::extract_into(docker, &helper.id, docker::HELPER_PATH, body).await;
    if let Ok(stream_error) = first_error_rx.try_recv() {
        return Err(stream_error.into());
    }
    extracted?;
    if tally.bytes() != target.record.tar_size {
        return Err(anyhow!(
            "wrote {} bytes of tar where the backup holds {}",
            tally.bytes(),
            target.record.tar_size
        ));
    }
    let root = target
        .record
        .root
        .or_else(|| crate::pipeline::tar_check::root_meta(&tally.first_block()));
    if let Some(root) = root {
        docker::set_dir_meta(docker, &helper.id, docker::HELPER_PATH, &root)
            .await
            .context("restoring the mode, owner and mtime of the volume root")?;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(target = %target.destination, tar_bytes = tally.bytes(), mib_per_s = format!("{:.1}", tally.bytes() as f64 / secs / 1048576.0), "restored");
    Ok(())
}

/// Every target holds its new tree: put the restart policies back, start the app, and drop the
/// safety copies.
async fn finish(docker: &Docker, mut downtime: Downtime) -> Result<std::time::Duration> {
    let restore = downtime.record().restore.clone();
    put_back_restart_policies(docker, restore.as_ref()).await;
    downtime.update(|r| r.restore = None)?;
    for copy in restore
        .iter()
        .flat_map(|r| r.targets.iter().filter_map(|t| t.safety_copy.as_deref()))
    {
        match docker::remove_volume(docker, copy).await {
            Ok(()) => tracing::info!(copy, "removed the safety copy"),
            Err(e) => tracing::warn!(
                "could not remove the safety copy {copy}: {e:#}; remove it with `docker volume rm {copy}`"
            ),
        }
    }
    let (restarted, took) = downtime.end(docker).await;
    restarted.context("the volumes are restored, but the app is not fully running")?;
    Ok(took)
}

async fn put_back_restart_policies(docker: &Docker, restore: Option<&RestoreState>) {
    for (id, name, policy) in restore.iter().flat_map(|r| r.restart_policies.iter()) {
        let policy: bollard::models::RestartPolicy =
            serde_json::from_value(policy.clone()).unwrap_or_default();
        let named = policy
            .name
            .map_or_else(|| "always".to_string(), |n| n.to_string());
        if let Err(e) = docker::set_restart_policy(docker, id, policy).await {
            tracing::error!(
                "could not put back the restart policy of {name} ({e:#}); set it again with `docker update --restart {named} {name}`"
            );
        }
    }
}

/// Puts back what the targets of an unfinished restore held before it, from its safety
/// copies, and starts the app again.
pub async fn rollback(
    docker: &Docker,
    repo: &Repo,
    app_name: &str,
    selector: &AppSelector,
    stop_timeout_secs: Option<u32>,
    cancel: &CancellationToken,
) -> Result<Vec<String>> {
    crate::state::exclusively(repo, app_name, "restore", cancel, |_| {
        roll_back_locked(docker, app_name, selector, stop_timeout_secs)
    })
    .await
}

async fn roll_back_locked(
    docker: &Docker,
    app_name: &str,
    selector: &AppSelector,
    stop_timeout_secs: Option<u32>,
) -> Result<Vec<String>> {
    let dir = crate::state::state_dir();
    let record = crate::state::resume(&dir, app_name)?
        .filter(|r| r.get().restore.as_ref().is_some_and(|s| s.replacing))
        .ok_or_else(|| {
            crate::error::usage(format!(
                "no unfinished restore of '{}' to roll back on this host (nothing recorded in {})",
                app_name,
                dir.display()
            ))
        })?;
    let restore = record
        .get()
        .restore
        .clone()
        .unwrap_or_else(|| unreachable!());
    let lost: Vec<&str> = restore
        .targets
        .iter()
        .filter(|t| t.safety_copy.is_none() && !t.was_empty && !t.created)
        .map(|t| t.destination.as_str())
        .collect();
    if !lost.is_empty() {
        return Err(crate::error::usage(format!(
            "cannot roll back: no safety copy was taken of {} (--no-safety-copy); finish the restore instead (run it again)",
            lost.join(", ")
        )));
    }
    for copy in restore
        .targets
        .iter()
        .filter_map(|t| t.safety_copy.as_deref())
    {
        if !docker::volume_exists(docker, copy).await? {
            return Err(anyhow!(
                "cannot roll back: the safety copy {copy} is gone (removed by hand or by a volume prune?); nothing was changed. Finish the restore instead (run it again)"
            ));
        }
    }
    let app = App::discover_or_empty(docker, selector).await?;
    let (downtime, stopped) = Downtime::resume(docker, &app, record, stop_timeout_secs).await?;
    stopped?;
    let mut put_back = Vec::new();
    for target in &restore.targets {
        let mount = if target.host_path {
            HelperMount::HostPath(target.destination.clone())
        } else {
            HelperMount::Volume(target.destination.clone())
        };
        let helper = Helper::create(docker, &mount, false).await?;
        let emptied = docker::empty_dir(docker, &helper.id, docker::HELPER_PATH).await;
        helper.remove(docker).await;
        emptied.with_context(|| format!("emptying {} to roll it back", target.destination))?;
        if let Some(copy) = &target.safety_copy {
            copy_between(docker, &HelperMount::Volume(copy.clone()), &mount)
                .await
                .with_context(|| format!("putting {copy} back into {}", target.destination))?;
        }
        put_back.push(target.destination.clone());
    }
    finish(docker, downtime).await?;
    Ok(put_back)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(image: &str, id: &str) -> ServiceImage {
        ServiceImage {
            container: "c".into(),
            image: image.into(),
            image_id: id.into(),
        }
    }

    #[test]
    fn version_differences_name_each_service() {
        let recorded = AppVersion {
            services: BTreeMap::from([
                ("db".to_string(), image("postgres:15", "sha256:aaa")),
                ("web".to_string(), image("cvat/server:v2.5", "sha256:bbb")),
                ("gone".to_string(), image("x:1", "sha256:ccc")),
            ]),
            version: Some("2.5.0".into()),
            version_source: Some("label:v".into()),
        };
        let current = BTreeMap::from([
            ("db".to_string(), image("postgres:15", "sha256:aaa")),
            ("web".to_string(), image("cvat/server:v2.6", "sha256:ddd")),
        ]);
        let diffs = compare_versions(&recorded, &current, Some("2.6.0"));
        assert_eq!(diffs.len(), 3, "{diffs:?}");
        assert!(diffs[0].contains("gone"));
        assert!(diffs[1].contains("cvat/server:v2.5") && diffs[1].contains("cvat/server:v2.6"));
        assert!(diffs[2].contains("2.5.0"));
        let same = BTreeMap::from([
            ("db".to_string(), image("postgres:15", "sha256:aaa")),
            ("web".to_string(), image("cvat/server:v2.5", "sha256:bbb")),
            ("gone".to_string(), image("x:1", "sha256:ccc")),
        ]);
        assert!(compare_versions(&recorded, &same, Some("2.5.0")).is_empty());
        let retagged = BTreeMap::from([("db".to_string(), image("postgres:15", "sha256:fff"))]);
        let one = AppVersion {
            services: BTreeMap::from([("db".to_string(), image("postgres:15", "sha256:aaa"))]),
            ..Default::default()
        };
        assert!(compare_versions(&one, &retagged, None)[0].contains("different image"));
    }
}
