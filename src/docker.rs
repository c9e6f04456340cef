//! Docker: find the app's containers, stop and start them, and stream volumes in and out
//! through the archive API, which works on stopped and created-but-never-started containers
//! (the daemon mounts the container's volumes for the copy), so no helper image is needed.
//!
//! Containers are kept in a safe start order: a compose service starts after the services it
//! `depends_on` (from the `com.docker.compose.depends_on` label); stopping goes in reverse.

use crate::manifest::ServiceImage;
use crate::pipeline::tar_check::RootMeta;
use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::query_parameters::{
    DownloadFromContainerOptions, InspectContainerOptions, ListContainersOptions,
    StartContainerOptions, StopContainerOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
pub const VOLUME_LABEL: &str = "com.docker.compose.volume";
const DEPENDS_ON_LABEL: &str = "com.docker.compose.depends_on";
const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";

/// Connects to the engine named by `DOCKER_HOST` (default: the local socket) and negotiates
/// the API version, so older engines work too.
pub async fn connect() -> Result<Docker> {
    let where_ =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let hint = |e: bollard::errors::Error| {
        anyhow!(
            "cannot reach the Docker engine at {where_}: {e}; is dockerd running, and may this user use its socket? (DOCKER_HOST selects another engine)"
        )
    };
    // Archive streams of big volumes take long; the client's timeout covers whole requests.
    let docker = Docker::connect_with_defaults()
        .map_err(hint)?
        .with_timeout(Duration::from_secs(7 * 24 * 3600));
    let docker = docker.negotiate_version().await.map_err(hint)?;
    docker.ping().await.map_err(hint)?;
    Ok(docker)
}

/// How the operator named the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSelector {
    Project(String),
    Containers(Vec<String>),
}

/// A mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMount {
    /// `volume`, `bind`, `tmpfs`, …
    pub kind: String,
    /// The volume name, for volumes.
    pub name: Option<String>,
    pub source: String,
    pub destination: String,
    pub rw: bool,
}

/// One container of the app.
#[derive(Debug, Clone)]
pub struct AppContainer {
    pub id: String,
    pub name: String,
    pub service: Option<String>,
    pub image: String,
    pub image_id: String,
    pub running: bool,
    pub depends_on: Vec<String>,
    pub mounts: Vec<AppMount>,
    pub labels: HashMap<String, String>,
    pub env: Vec<String>,
}

impl AppContainer {
    /// The compose service, else the container name: how the manifest keys containers.
    pub fn key(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.name)
    }
}

/// The app's containers, in start order.
#[derive(Debug, Clone)]
pub struct App {
    pub containers: Vec<AppContainer>,
}

impl App {
    /// Finds the app's containers (running or not) and inspects them.
    pub async fn discover(docker: &Docker, selector: &AppSelector) -> Result<App> {
        let names: Vec<String> = match selector {
            AppSelector::Project(project) => {
                let filters = HashMap::from([(
                    "label".to_string(),
                    vec![format!("{PROJECT_LABEL}={project}")],
                )]);
                let options = ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                };
                let listed = docker
                    .list_containers(Some(options))
                    .await
                    .context("cannot list containers")?;
                let ids: Vec<String> = listed
                    .into_iter()
                    .filter(|c| {
                        c.labels
                            .as_ref()
                            .and_then(|l| l.get(ONEOFF_LABEL))
                            .map(String::as_str)
                            != Some("True")
                    })
                    .filter_map(|c| c.id)
                    .collect();
                if ids.is_empty() {
                    return Err(anyhow!(
                        "no containers of compose project '{project}' on this Docker host; check the name with `docker compose ls -a` or `docker ps -a --filter label={PROJECT_LABEL}={project}`, or select containers with --container"
                    ));
                }
                ids
            }
            AppSelector::Containers(names) => names.clone(),
        };
        let mut containers = Vec::with_capacity(names.len());
        for name in &names {
            containers.push(inspect(docker, name).await?);
        }
        Ok(App {
            containers: start_order(containers),
        })
    }

    /// Image reference and id per service (or container).
    pub fn images(&self) -> BTreeMap<String, ServiceImage> {
        self.containers
            .iter()
            .map(|c| {
                (
                    c.key().to_string(),
                    ServiceImage {
                        container: c.name.clone(),
                        image: c.image.clone(),
                        image_id: c.image_id.clone(),
                    },
                )
            })
            .collect()
    }

    pub fn by_key(&self, key: &str) -> Option<&AppContainer> {
        self.containers
            .iter()
            .find(|c| c.key() == key || c.name == key)
    }
}

async fn inspect(docker: &Docker, name: &str) -> Result<AppContainer> {
    let info = docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => anyhow!(
                "container '{name}' not found on this Docker host; `docker ps -a` lists the containers there are"
            ),
            e => anyhow!("cannot inspect container '{name}': {e}"),
        })?;
    let config = info.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let depends_on = labels
        .get(DEPENDS_ON_LABEL)
        .map(|v| {
            v.split(',')
                .filter_map(|dep| dep.split(':').next())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mounts = info
        .mounts
        .unwrap_or_default()
        .into_iter()
        .map(|m| AppMount {
            kind: m.typ.unwrap_or_default(),
            name: m.name,
            source: m.source.unwrap_or_default(),
            destination: m.destination.unwrap_or_default(),
            rw: m.rw.unwrap_or(true),
        })
        .collect();
    Ok(AppContainer {
        id: info.id.unwrap_or_else(|| name.to_string()),
        name: info
            .name
            .unwrap_or_else(|| name.to_string())
            .trim_start_matches('/')
            .to_string(),
        service: labels.get(SERVICE_LABEL).cloned(),
        image: config.image.unwrap_or_default(),
        image_id: info.image.unwrap_or_default(),
        running: info.state.and_then(|s| s.running).unwrap_or(false),
        depends_on,
        mounts,
        env: config.env.unwrap_or_default(),
        labels,
    })
}

/// Orders containers so that every service comes after the services it depends on; ties and
/// cycles fall back to name order.
pub fn start_order(mut containers: Vec<AppContainer>) -> Vec<AppContainer> {
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ordered: Vec<AppContainer> = Vec::with_capacity(containers.len());
    while !containers.is_empty() {
        let present: Vec<String> = containers.iter().map(|c| c.key().to_string()).collect();
        let ready = containers
            .iter()
            .position(|c| {
                c.depends_on
                    .iter()
                    .all(|d| !present.contains(d) || d == c.key())
            })
            .unwrap_or(0);
        ordered.push(containers.remove(ready));
    }
    ordered
}

/// The containers lifeboat stopped, in start order: exactly what it must start again.
#[derive(Debug, Default)]
pub struct Stopped {
    pub containers: Vec<(String, String)>,
}

/// Stops the running containers of `app`, dependents first. Returns what it stopped even when
/// a stop failed, so the caller can start those again.
pub async fn stop_running(docker: &Docker, app: &App, timeout_secs: u32) -> (Stopped, Result<()>) {
    let mut stopped = Vec::new();
    for container in app.containers.iter().rev().filter(|c| c.running) {
        tracing::info!(container = %container.name, "stopping");
        let options = StopContainerOptions {
            t: Some(timeout_secs as i32),
            ..Default::default()
        };
        match docker.stop_container(&container.id, Some(options)).await {
            Ok(()) => stopped.push((container.id.clone(), container.name.clone())),
            Err(e) => {
                // It may have stopped anyway; starting it again later is then still right.
                stopped.push((container.id.clone(), container.name.clone()));
                stopped.reverse();
                return (
                    Stopped {
                        containers: stopped,
                    },
                    Err(anyhow!("cannot stop container {}: {e}", container.name)),
                );
            }
        }
    }
    stopped.reverse();
    (
        Stopped {
            containers: stopped,
        },
        Ok(()),
    )
}

/// Starts the stopped containers in start order. Tries every one; the error names each that
/// failed.
pub async fn start_again(docker: &Docker, stopped: &Stopped) -> Result<()> {
    let mut failures = Vec::new();
    for (id, name) in &stopped.containers {
        tracing::info!(container = %name, "starting");
        if let Err(e) = docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            failures.push(format!("{name}: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "could not start again: {}; start them by hand (`docker start NAME`) and check `docker logs NAME`",
            failures.join("; ")
        ))
    }
}

/// An error from Docker in the middle of an archive stream.
#[derive(Debug, thiserror::Error)]
#[error("Docker archive stream failed: {0}")]
pub struct DockerStreamError(#[source] pub bollard::errors::Error);

/// The tree under `path` in the container as a tar stream whose root is that directory
/// (entries `./…`).
pub fn tar_of(
    docker: &Docker,
    container_id: &str,
    path: &str,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + use<> {
    let options = DownloadFromContainerOptions {
        path: format!("{}/.", path.trim_end_matches('/')),
    };
    docker
        .download_from_container(container_id, Some(options))
        .map_err(|e| std::io::Error::other(DockerStreamError(e)))
}

/// Extracts a tar stream into `path` in the container, keeping owners (`copyUIDGID`).
pub async fn extract_into(
    docker: &Docker,
    container_id: &str,
    path: &str,
    tar: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
) -> Result<()> {
    let options = UploadToContainerOptions {
        path: path.to_string(),
        copy_uidgid: Some("1".into()),
        ..Default::default()
    };
    docker
        .upload_to_container(container_id, Some(options), bollard::body_try_stream(tar))
        .await
        .map_err(|e| anyhow!("Docker could not extract into {path}: {e}"))
}

/// Sets mode, owner and mtime of the directory `path` itself, which extracting a `./` entry
/// does not: a one-entry tar is extracted into its parent.
pub async fn set_dir_meta(
    docker: &Docker,
    container_id: &str,
    path: &str,
    meta: &RootMeta,
) -> Result<()> {
    let path = path.trim_end_matches('/');
    let (parent, name) = path
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("{path} is not absolute"))?;
    if name.is_empty() {
        return Ok(());
    }
    let mut header = tokio_tar::Header::new_gnu();
    header.set_entry_type(tokio_tar::EntryType::Directory);
    header.set_path(format!("{name}/"))?;
    header.set_mode(meta.mode);
    header.set_uid(meta.uid);
    header.set_gid(meta.gid);
    header.set_mtime(meta.mtime);
    header.set_size(0);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(&[0u8; 1024]);
    let parent = if parent.is_empty() { "/" } else { parent };
    extract_into(
        docker,
        container_id,
        parent,
        futures::stream::once(async { Ok(Bytes::from(tar)) }),
    )
    .await
}

/// Reads a small text file from a container (running or not) through the archive API.
pub async fn read_file(docker: &Docker, container_id: &str, path: &str) -> Result<String> {
    let options = DownloadFromContainerOptions {
        path: path.to_string(),
    };
    let stream = docker
        .download_from_container(container_id, Some(options))
        .map_err(std::io::Error::other);
    let mut archive = tokio_tar::Archive::new(tokio_util::io::StreamReader::new(stream));
    let mut entries = archive.entries()?;
    let mut entry = entries
        .next()
        .await
        .ok_or_else(|| anyhow!("{path} is empty"))?
        .with_context(|| format!("cannot read {path}"))?;
    if entry.header().entry_type() != tokio_tar::EntryType::Regular
        || entry.effective_size() > 64 * 1024
    {
        return Err(anyhow!("{path} is not a small regular file"));
    }
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut entry, &mut text).await?;
    Ok(text.trim().to_string())
}

/// Driver and labels of a volume.
pub async fn volume_info(
    docker: &Docker,
    name: &str,
) -> Result<(String, BTreeMap<String, String>)> {
    let volume = docker
        .inspect_volume(name)
        .await
        .with_context(|| format!("cannot inspect volume {name}"))?;
    Ok((volume.driver, volume.labels.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, service: &str, deps: &[&str]) -> AppContainer {
        AppContainer {
            id: name.into(),
            name: name.into(),
            service: Some(service.into()),
            image: "img:1".into(),
            image_id: "sha256:1".into(),
            running: true,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            mounts: vec![],
            labels: HashMap::new(),
            env: vec![],
        }
    }

    #[test]
    fn dependencies_start_first() {
        let ordered = start_order(vec![
            container("a_web", "web", &["db", "redis"]),
            container("b_worker", "worker", &["web"]),
            container("z_db", "db", &[]),
            container("y_redis", "redis", &["db"]),
        ]);
        let keys: Vec<_> = ordered.iter().map(|c| c.key()).collect();
        assert_eq!(keys, ["db", "redis", "web", "worker"]);
    }

    #[test]
    fn cycles_and_missing_dependencies_do_not_hang() {
        let ordered = start_order(vec![
            container("a", "a", &["b"]),
            container("b", "b", &["a"]),
            container("c", "c", &["not-in-app"]),
        ]);
        assert_eq!(ordered.len(), 3);
    }
}
