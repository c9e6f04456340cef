//! The restore operation: pick a backup, refuse a different app version before downloading
//! anything, map each backed-up volume to a target, verify every object end to end, and only
//! then stop the app, stream each volume back in, and start again what was running.

use crate::docker::{self, App, AppSelector, Helper, HelperMount, VOLUME_LABEL};
use crate::hooks::{HookContext, HookEvent};
use crate::keys::BoxIdentity;
use crate::manifest::{self, AppVersion, Manifest, ServiceImage, SourceKind, VolumeRecord};
use crate::pipeline::PipelineError;
use crate::pipeline::tally::TallyReader;
use crate::pipeline::tar_check::RootMeta;
use crate::store::Store;
use crate::verify;
use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use futures::TryStreamExt;
use std::collections::BTreeMap;
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

/// Where one volume goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub record: VolumeRecord,
    pub mount: HelperMount,
    /// The target volume's name, or the bind mount's host path.
    pub destination: String,
    /// Set when the volume does not exist yet: created with this driver and these labels.
    pub create: Option<(Option<String>, BTreeMap<String, String>)>,
}

/// Maps every volume of the backup to a volume here: `overrides` (OLD=NEW) first, then the
/// volume an app container mounts under the same compose volume name, then
/// `<project>_<compose volume>`, then the backed-up name. Volumes that do not exist are created
/// with the recorded driver and labels (the compose project label set to this project), so a
/// later `docker compose up` adopts them. Bind mounts map to the host path the same service
/// mounts at the same container path.
pub async fn plan_targets(
    docker: &Docker,
    app: &App,
    project: Option<&str>,
    manifest: &Manifest,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<Target>> {
    let mut mounted = Vec::new();
    for container in &app.containers {
        for mount in container.mounts.iter().filter(|m| m.kind == "volume") {
            if let Some(name) = &mount.name {
                let labels = docker::volume_info(docker, name).await?.labels;
                mounted.push((name.clone(), labels.get(VOLUME_LABEL).cloned()));
            }
        }
    }
    let mut targets: Vec<Target> = Vec::new();
    for record in &manifest.volumes {
        if record.kind == SourceKind::Bind {
            let container = app.by_key(&record.service).ok_or_else(|| {
                anyhow!("bind mount {} belongs to service {}, which the app here does not have; create its containers first", record.container_path, record.service)
            })?;
            let mount = container
                .mounts
                .iter()
                .find(|m| m.destination == record.container_path)
                .ok_or_else(|| {
                    anyhow!(
                        "service {} here mounts nothing at {}",
                        record.service,
                        record.container_path
                    )
                })?;
            targets.push(Target {
                record: record.clone(),
                mount: HelperMount::HostPath(mount.source.clone()),
                destination: mount.source.clone(),
                create: None,
            });
            continue;
        }
        let overridden = overrides
            .get(&record.name)
            .or_else(|| {
                record
                    .compose_volume
                    .as_ref()
                    .and_then(|c| overrides.get(c))
            })
            .cloned();
        let name = overridden
            .or_else(|| {
                let compose = record.compose_volume.as_ref()?;
                mounted
                    .iter()
                    .find(|(_, c)| c.as_ref() == Some(compose))
                    .map(|(n, _)| n.clone())
            })
            .or_else(|| Some(format!("{}_{}", project?, record.compose_volume.as_ref()?)))
            .unwrap_or_else(|| record.name.clone());
        if targets.iter().any(|t| t.destination == name) {
            return Err(crate::error::usage(format!(
                "two volumes of the backup map to volume {name}; use --map-volume OLD=NEW to tell them apart"
            )));
        }
        let create = if docker::volume_exists(docker, &name).await? {
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
        targets.push(Target {
            record: record.clone(),
            mount: HelperMount::Volume(name.clone()),
            destination: name,
            create,
        });
    }
    Ok(targets)
}

/// Everything a restore needs, validated.
pub struct RestorePlan {
    pub app_name: String,
    pub selector: AppSelector,
    pub backup_id: Option<String>,
    pub identities: Arc<Vec<BoxIdentity>>,
    pub allow_version_mismatch: bool,
    pub verify_first: bool,
    pub map_volumes: BTreeMap<String, String>,
    pub stop_timeout_secs: u32,
    pub version_from: Option<String>,
    pub hooks: Arc<crate::hooks::Hooks>,
}

/// What a restore did.
pub struct RestoreReport {
    pub manifest: Manifest,
    pub targets: Vec<Target>,
    pub downtime: std::time::Duration,
}

pub async fn run(
    docker: &Docker,
    store: &Store,
    plan: &RestorePlan,
    cancel: &CancellationToken,
) -> Result<RestoreReport> {
    let manifest = manifest::read(
        &store.objects,
        &store.layout,
        &plan.app_name,
        plan.backup_id.as_deref(),
    )
    .await?;
    tracing::info!(backup = %manifest.backup_id, app = %manifest.app, "restoring");
    let lock = crate::lock::acquire(store, &plan.app_name, "restore").await?;
    let result: Result<RestoreReport> = async {
        docker::remove_stale_helpers(docker).await;
        crate::state::recover(docker, &crate::state::state_dir(), &plan.app_name).await?;
        let app = App::discover_or_empty(docker, &plan.selector).await?;

        let current_version = match (&manifest.app_version.version_source, &plan.version_from) {
            (_, Some(source)) | (Some(source), None) => {
                Some(crate::backup::read_version(docker, &app, source).await?)
            }
            (None, None) => None,
        };
        let differences = compare_versions(
            &manifest.app_version,
            &app.images(),
            current_version.as_deref(),
        );
        if !differences.is_empty() {
            if !plan.allow_version_mismatch {
                return Err(VersionMismatch {
                    backup_id: manifest.backup_id.clone(),
                    differences,
                    none_here: app.containers.is_empty(),
                }
                .into());
            }
            tracing::warn!(
                "restoring across versions as --allow-version-mismatch asks: {}",
                differences.join("; ")
            );
        }
        let project = match &plan.selector {
            AppSelector::Project(project) => Some(project.as_str()),
            AppSelector::Containers(_) => None,
        };
        let targets = plan_targets(docker, &app, project, &manifest, &plan.map_volumes).await?;

        if plan.verify_first {
            for target in &targets {
                if cancel.is_cancelled() {
                    return Err(crate::error::interrupted());
                }
                let started = Instant::now();
                let summary = tokio::select! {
                    summary = verify::verify_volume(store, &manifest, &target.record, Some(&plan.identities)) => summary,
                    _ = cancel.cancelled() => return Err(crate::error::interrupted()),
                }
                .map_err(anyhow::Error::new)
                .with_context(|| format!("verifying volume {} of backup {} (nothing was changed)", target.record.name, manifest.backup_id))?;
                tracing::info!(volume = %target.record.name, entries = summary.map(|s| s.entries), secs = started.elapsed().as_secs_f64(), "verified");
            }
        } else {
            tracing::warn!("--no-verify: volumes are replaced without verifying the backup first");
        }

        let work = {
            let (docker, store, manifest) = (docker.clone(), store.clone(), manifest.clone());
            let (targets, identities, cancel) = (targets.clone(), Arc::clone(&plan.identities), cancel.clone());
            async move {
                // Past this point a signal no longer stops the restore: the data is verified,
                // and stopping between (or inside) volumes would leave the app with a mix of
                // old and restored data. It is announced, and the restore finishes.
                let announce = tokio::spawn(async move {
                    cancel.cancelled().await;
                    tracing::warn!("finishing the restore before stopping: the volumes are being replaced, and stopping now would leave the app with a mix of old and restored data");
                });
                let result = async {
                    for target in &targets {
                        restore_volume(&docker, &store, &manifest, target, &identities)
                            .await
                            .with_context(|| format!("restoring volume {} into {}", target.record.name, target.destination))?;
                    }
                    Ok(())
                }
                .await;
                announce.abort();
                result
            }
        };
        let mut context = HookContext {
            app: plan.app_name.clone(),
            backup_id: manifest.backup_id.clone(),
            ..Default::default()
        };
        plan.hooks
            .run(docker, Some(&app), HookEvent::BeforeRestore, &context)
            .await
            .context("nothing was stopped or changed")?;
        let window = crate::stopped::while_stopped(docker, &app, &plan.app_name, "restore", plan.stop_timeout_secs, cancel, work).await?;
        let (outcome, restarted, downtime) = (window.outcome, window.restarted, window.downtime);
        let result = match (outcome, restarted) {
            (Ok(()), Ok(())) => Ok(RestoreReport {
                manifest,
                targets,
                downtime,
            }),
            (Ok(()), Err(e)) => {
                Err(e.context("the volumes are restored, but the app is not fully running"))
            }
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(restart)) => Err(e.context(format!("and also: {restart:#}"))),
        };
        context.failure = Some(result.as_ref().err().map(|e| format!("{e:#}")));
        let after = plan.hooks.run(docker, Some(&app), HookEvent::AfterRestore, &context).await;
        match (result, after) {
            (Ok(report), Err(hook_error)) => Err(hook_error.context(format!(
                "backup {} is restored, but an after-restore hook failed",
                report.manifest.backup_id
            ))),
            (result, _) => result,
        }
    }
    .await;
    lock.release().await;
    result
}

async fn restore_volume(
    docker: &Docker,
    store: &Store,
    manifest: &Manifest,
    target: &Target,
    identities: &[BoxIdentity],
) -> Result<()> {
    if let Some((driver, labels)) = &target.create {
        tracing::info!(volume = %target.destination, "creating the volume");
        docker::create_volume(docker, &target.destination, driver.as_deref(), labels).await?;
    }
    let helper = Helper::create(docker, &target.mount, false).await?;
    let result = replace_contents(docker, store, manifest, target, identities, &helper).await;
    helper.remove(docker).await;
    result
}

/// Empties the volume, streams the backup into it, and sets the root directory's metadata.
async fn replace_contents(
    docker: &Docker,
    store: &Store,
    manifest: &Manifest,
    target: &Target,
    identities: &[BoxIdentity],
    helper: &Helper,
) -> Result<()> {
    let started = Instant::now();
    let tar = verify::open_volume_tar(store, manifest, &target.record, identities).await?;
    docker::empty_dir(docker, &helper.id, docker::HELPER_PATH).await?;
    let (tar, tally) = TallyReader::new(tar);
    let body = tokio_util::io::ReaderStream::with_capacity(tar, 256 * 1024);
    // A failure inside the stream (hash mismatch at the end, bad chunk) is the real cause; the
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
    let root = target
        .record
        .root
        .or_else(|| RootMeta::from_first_block(&tally.first_block()));
    if let Some(root) = root {
        docker::set_dir_meta(docker, &helper.id, docker::HELPER_PATH, &root)
            .await
            .context("restoring the mode, owner and mtime of the volume root")?;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(volume = %target.destination, tar_bytes = tally.bytes(), mib_per_s = format!("{:.1}", tally.bytes() as f64 / secs / 1048576.0), "volume restored");
    Ok(())
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
