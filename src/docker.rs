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
    /// The restart policy (`always` restarts a stopped container when dockerd restarts).
    pub restart_policy: Option<bollard::models::RestartPolicy>,
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
    /// Like [`App::discover`], but a compose project without containers is an empty app (a
    /// restore onto a fresh host).
    pub async fn discover_or_empty(docker: &Docker, selector: &AppSelector) -> Result<App> {
        if let AppSelector::Project(project) = selector
            && project_containers(docker, project).await?.is_empty()
        {
            return Ok(App { containers: vec![] });
        }
        Self::discover(docker, selector).await
    }

    /// Finds the app's containers (running or not) and inspects them.
    pub async fn discover(docker: &Docker, selector: &AppSelector) -> Result<App> {
        let names: Vec<String> = match selector {
            AppSelector::Project(project) => {
                let ids = project_containers(docker, project).await?;
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
            let container = inspect(docker, name).await?;
            if is_own_container(&container.id) {
                // lifeboat as a sidecar in the app's own compose project: never stop itself.
                tracing::info!(container = %container.name, "leaving out lifeboat's own container");
                continue;
            }
            containers.push(container);
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

/// Ids of the containers of a compose project, one-off `compose run` containers left out.
async fn project_containers(docker: &Docker, project: &str) -> Result<Vec<String>> {
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
    Ok(listed
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(ONEOFF_LABEL))
                .map(String::as_str)
                != Some("True")
        })
        .filter_map(|c| c.id)
        .collect())
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
    let restart_policy = info.host_config.and_then(|h| h.restart_policy);
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
        restart_policy,
    })
}

/// Whether `id` is the container lifeboat itself runs in.
fn is_own_container(id: &str) -> bool {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        container_id_from_mountinfo(&mountinfo).or_else(|| {
            // Inside Docker the hostname is the id's first 12 characters, unless overridden.
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            (host.len() == 12 && host.chars().all(|c| c.is_ascii_hexdigit())).then_some(host)
        })
    })
    .as_ref()
    .is_some_and(|own| id.starts_with(own.as_str()))
}

/// Docker bind-mounts /etc/hostname, /etc/hosts and /etc/resolv.conf from
/// `<data root>/containers/<64-hex id>/`, also with `--network host`.
fn container_id_from_mountinfo(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (_, rest) = line.split_once("/containers/")?;
        let id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        (id.len() == 64 && rest[64..].starts_with('/')).then_some(id)
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
        let asked = std::time::Instant::now();
        match docker.stop_container(&container.id, Some(options)).await {
            Ok(()) => {
                if asked.elapsed() >= Duration::from_secs(timeout_secs.into()) {
                    tracing::warn!(container = %container.name,
                        "did not stop within {timeout_secs} s of SIGTERM and was killed; raise --stop-timeout if it needs longer to shut down cleanly");
                }
                stopped.push((container.id.clone(), container.name.clone()))
            }
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
        if let Err(e) = start_retrying(docker, id, name).await {
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

/// Runs `argv` in a running container (`docker exec`), waits for it, and returns its exit code
/// and its output lines (stdout and stderr interleaved).
pub async fn exec(
    docker: &Docker,
    container: &str,
    argv: Vec<String>,
    env: Vec<String>,
    user: Option<String>,
) -> Result<(i64, Vec<String>)> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(argv),
                env: Some(env),
                user,
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow!("docker exec in {container}: {e}"))?;
    let mut text = Vec::new();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| anyhow!("docker exec in {container}: {e}"))?
    {
        while let Some(chunk) = output.next().await {
            let chunk = chunk.map_err(|e| anyhow!("docker exec in {container}: {e}"))?;
            text.extend_from_slice(&chunk.into_bytes());
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| anyhow!("docker exec in {container}: {e}"))?
        .exit_code
        .unwrap_or(-1);
    let lines = String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_string)
        .collect();
    Ok((code, lines))
}

/// How long a start keeps retrying while the Docker engine does not answer (restarting).
const ENGINE_RETURN_WAIT: Duration = Duration::from_secs(120);

/// Starts one container; while the engine cannot be reached (dockerd restarting), retries for
/// up to [`ENGINE_RETURN_WAIT`]. An answer from the engine (even an error) is final.
async fn start_retrying(
    docker: &Docker,
    id: &str,
    name: &str,
) -> Result<(), bollard::errors::Error> {
    let deadline = std::time::Instant::now() + ENGINE_RETURN_WAIT;
    let mut delay = Duration::from_millis(250);
    loop {
        match docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if engine_unreachable(&e) && std::time::Instant::now() < deadline => {
                tracing::warn!(container = %name, "the Docker engine does not answer ({e}); retrying the start");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether an error means the engine did not answer at all (as opposed to refusing).
pub fn engine_unreachable(error: &bollard::errors::Error) -> bool {
    use bollard::errors::Error;
    match error {
        Error::DockerResponseServerError { message, .. } => {
            // dockerd answers this while it is shutting down or coming back.
            message.contains("is restarting") || message.contains("shutting down")
        }
        Error::IOError { .. }
        | Error::HyperResponseError { .. }
        | Error::RequestTimeoutError
        | Error::HyperLegacyError { .. } => true,
        _ => false,
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

/// Reads the one app version string `label:KEY`, `env:NAME` or `file:SERVICE:/path` names.
pub async fn read_version(docker: &Docker, app: &App, source: &str) -> Result<String> {
    let bad = || {
        crate::error::usage(format!(
            "version source '{source}' is not one of label:KEY, env:NAME or file:SERVICE:/path"
        ))
    };
    let (kind, rest) = source.split_once(':').ok_or_else(bad)?;
    let found = match kind {
        "label" => app
            .containers
            .iter()
            .find_map(|c| c.labels.get(rest).cloned()),
        "env" => app.containers.iter().find_map(|c| {
            c.env.iter().find_map(|e| {
                e.strip_prefix(rest)
                    .and_then(|v| v.strip_prefix('='))
                    .map(str::to_string)
            })
        }),
        "file" => {
            let (service, path) = rest.split_once(':').ok_or_else(bad)?;
            let container = app.by_key(service).ok_or_else(|| {
                crate::error::usage(format!(
                    "version source '{source}': the app has no service or container '{service}'"
                ))
            })?;
            Some(
                read_file(docker, &container.id, path)
                    .await
                    .with_context(|| format!("reading the app version from {source}"))?,
            )
        }
        _ => return Err(bad()),
    };
    found.ok_or_else(|| anyhow!("version source '{source}' found nothing in the app's containers"))
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

/// Where a helper container mounts the one volume it serves.
pub const HELPER_PATH: &str = "/volume";
const HELPER_LABEL: &str = "io.lifeboat.helper";

/// The helper image: a rootfs holding one empty directory, imported through the API (no
/// registry, no shell, nothing to run). Helper containers are created from it and never
/// started: the archive API mounts their volume for each copy.
async fn ensure_helper_image(docker: &Docker) -> Result<String> {
    let tag = env!("CARGO_PKG_VERSION");
    let image = format!("lifeboat-helper:{tag}");
    if docker.inspect_image(&image).await.is_ok() {
        return Ok(image);
    }
    let mut header = tokio_tar::Header::new_gnu();
    header.set_entry_type(tokio_tar::EntryType::Directory);
    header.set_path("volume/")?;
    header.set_mode(0o755);
    header.set_size(0);
    header.set_cksum();
    let mut rootfs = header.as_bytes().to_vec();
    rootfs.extend_from_slice(&[0u8; 1024]);
    let options = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some("lifeboat-helper".into()),
        tag: Some(tag.into()),
        ..Default::default()
    };
    docker
        .create_image(
            Some(options),
            Some(bollard::body_full(Bytes::from(rootfs))),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| anyhow!("cannot create the helper image {image}: {e}"))?;
    Ok(image)
}

/// What a helper container mounts at [`HELPER_PATH`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperMount {
    Volume(String),
    /// A host directory (a bind mount of the app).
    HostPath(String),
}

/// A created, never-started container that mounts exactly one volume at [`HELPER_PATH`]:
/// the path through which lifeboat reads and writes a volume, whatever the app's images hold
/// and however the app mounts it (read-only, nested under other mounts, read-only rootfs).
pub struct Helper {
    pub id: String,
}

impl Helper {
    pub async fn create(docker: &Docker, mount: &HelperMount, read_only: bool) -> Result<Helper> {
        let image = ensure_helper_image(docker).await?;
        let source = match mount {
            HelperMount::Volume(name) | HelperMount::HostPath(name) => name,
        };
        let bind = format!(
            "{source}:{HELPER_PATH}{}",
            if read_only { ":ro" } else { "" }
        );
        let body = bollard::models::ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec!["/lifeboat-helper-is-never-started".into()]),
            labels: Some(HashMap::from([
                (HELPER_LABEL.to_string(), "1".to_string()),
                (HELPER_OWNER_LABEL.to_string(), helper_owner()),
            ])),
            network_disabled: Some(true),
            host_config: Some(bollard::models::HostConfig {
                binds: Some(vec![bind]),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(|e| anyhow!("cannot create a helper container for {source}: {e}"))?;
        Ok(Helper { id: created.id })
    }

    /// Removes the helper container (never its volume).
    pub async fn remove(self, docker: &Docker) {
        let options = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            v: false,
            ..Default::default()
        };
        if let Err(e) = docker.remove_container(&self.id, Some(options)).await {
            tracing::warn!(container = %self.id, "could not remove a lifeboat helper container: {e}");
        }
    }
}

const HELPER_OWNER_LABEL: &str = "io.lifeboat.helper.owner";

/// `host:pid` of this process, recorded on its helper containers.
fn helper_owner() -> String {
    format!(
        "{}:{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    )
}

/// Whether a helper's owner is a process of this host that no longer exists.
fn owner_is_gone(owner: &str) -> bool {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    match owner.rsplit_once(':') {
        Some((owner_host, pid)) if owner_host == host => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

/// Removes helper containers that runs killed with SIGKILL left behind on this host (never
/// those of a lifeboat that is still running).
pub async fn remove_stale_helpers(docker: &Docker) {
    let filters = HashMap::from([("label".to_string(), vec![format!("{HELPER_LABEL}=1")])]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    if let Ok(listed) = docker.list_containers(Some(options)).await {
        let stale = listed.into_iter().filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(HELPER_OWNER_LABEL))
                .is_some_and(|owner| owner_is_gone(owner))
        });
        for id in stale.filter_map(|c| c.id) {
            tracing::info!(container = %id, "removing a helper container left by an earlier run");
            Helper { id }.remove(docker).await;
        }
    }
}

/// Empties the directory `path` of the container (a mount point), keeping the directory.
///
/// The archive API cannot delete, but when an archive entry replaces a directory with a file,
/// Docker removes the directory recursively first (never following symlinks). For a mount
/// point that removes every entry inside and then fails with "device or resource busy" on the
/// mount point itself. The outcome is checked by listing the directory afterwards.
pub async fn empty_dir(docker: &Docker, container_id: &str, path: &str) -> Result<()> {
    let path = path.trim_end_matches('/');
    let (parent, name) = path
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("{path} is not absolute"))?;
    let mut header = tokio_tar::Header::new_gnu();
    header.set_entry_type(tokio_tar::EntryType::Regular);
    header.set_path(name)?;
    header.set_mode(0o600);
    header.set_size(0);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(&[0u8; 1024]);
    let parent = if parent.is_empty() { "/" } else { parent };
    let attempt = extract_into(
        docker,
        container_id,
        parent,
        futures::stream::once(async { Ok(Bytes::from(tar)) }),
    )
    .await;
    let left = list_entries(docker, container_id, path, 3).await?;
    if left.iter().any(|entry| entry != "./" && entry != ".") {
        return Err(anyhow!(
            "could not empty {path} before restoring into it ({}); still there: {}",
            attempt
                .err()
                .map_or_else(|| "no error".to_string(), |e| format!("{e:#}")),
            left.join(", ")
        ));
    }
    Ok(())
}

/// The first `limit` entry names of the tar of `path`.
async fn list_entries(
    docker: &Docker,
    container_id: &str,
    path: &str,
    limit: usize,
) -> Result<Vec<String>> {
    let reader = tokio_util::io::StreamReader::new(tar_of(docker, container_id, path));
    let mut archive = tokio_tar::Archive::new(reader);
    let mut entries = archive.entries()?;
    let mut names = Vec::new();
    while let Some(entry) = entries.next().await {
        let entry = entry.with_context(|| format!("cannot list {path}"))?;
        names.push(entry.path()?.to_string_lossy().into_owned());
        if names.len() >= limit {
            break;
        }
    }
    Ok(names)
}

/// Whether dockerd may start this container by itself when it restarts, even though it was
/// stopped: `always`, and `on-failure` (a container stopped by a signal exited non-zero).
pub fn restarts_with_the_engine(policy: Option<&bollard::models::RestartPolicy>) -> bool {
    use bollard::models::RestartPolicyNameEnum::{ALWAYS, ON_FAILURE};
    matches!(policy.and_then(|p| p.name), Some(ALWAYS | ON_FAILURE))
}

/// Sets a container's restart policy (`docker update --restart`).
pub async fn set_restart_policy(
    docker: &Docker,
    id: &str,
    policy: bollard::models::RestartPolicy,
) -> Result<()> {
    let body = bollard::models::ContainerUpdateBody {
        restart_policy: Some(policy),
        ..Default::default()
    };
    docker
        .update_container(id, body)
        .await
        .map_err(|e| anyhow!("cannot change the restart policy of container {id}: {e}"))
}

/// Whether the directory the helper serves holds anything.
pub async fn is_empty(docker: &Docker, helper_id: &str) -> Result<bool> {
    let entries = list_entries(docker, helper_id, HELPER_PATH, 2).await?;
    Ok(entries.iter().all(|e| e == "./" || e == "."))
}

/// Copies the tree one helper serves into the (empty) directory another serves, with owners,
/// modes and the root directory's own metadata: a safety copy, or a safety copy put back.
/// Returns the bytes of tar streamed.
pub async fn copy_tree(docker: &Docker, from: &Helper, to: &Helper) -> Result<u64> {
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let first = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let (count, head) = (counted.clone(), first.clone());
    let stream = tar_of(docker, &from.id, HELPER_PATH).inspect_ok(move |chunk| {
        count.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut head = head.lock().unwrap_or_else(|p| p.into_inner());
        if head.len() < 512 {
            let take = (512 - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
    });
    extract_into(docker, &to.id, HELPER_PATH, stream).await?;
    let block = first.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(root) = RootMeta::from_first_block(&block) {
        set_dir_meta(docker, &to.id, HELPER_PATH, &root).await?;
    }
    Ok(counted.load(std::sync::atomic::Ordering::Relaxed))
}

/// Removes a volume.
pub async fn remove_volume(docker: &Docker, name: &str) -> Result<()> {
    docker
        .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
        .await
        .map_err(|e| anyhow!("cannot remove volume {name}: {e}"))
}

/// Whether a volume exists.
pub async fn volume_exists(docker: &Docker, name: &str) -> Result<bool> {
    match docker.inspect_volume(name).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(anyhow!("cannot inspect volume {name}: {e}")),
    }
}

/// Creates a volume with a driver and labels.
pub async fn create_volume(
    docker: &Docker,
    name: &str,
    driver: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    let request = bollard::models::VolumeCreateRequest {
        name: Some(name.to_string()),
        driver: driver.map(str::to_string),
        labels: Some(labels.clone().into_iter().collect()),
        ..Default::default()
    };
    docker.create_volume(request).await.map_err(|e| {
        anyhow!(
            "cannot create volume {name} (driver {}): {e}",
            driver.unwrap_or("local")
        )
    })?;
    Ok(())
}

/// Driver and labels of a volume.
pub async fn volume_info(docker: &Docker, name: &str) -> Result<VolumeInfo> {
    let volume = docker
        .inspect_volume(name)
        .await
        .with_context(|| format!("cannot inspect volume {name}"))?;
    Ok(VolumeInfo {
        driver: volume.driver,
        labels: volume.labels.into_iter().collect(),
        mountpoint: volume.mountpoint,
    })
}

/// What `docker volume inspect` says about a volume.
pub struct VolumeInfo {
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    /// The volume's directory on the Docker host.
    pub mountpoint: String,
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
            restart_policy: None,
        }
    }

    #[test]
    fn only_helpers_of_dead_local_processes_are_stale() {
        assert!(!owner_is_gone(&helper_owner()), "this process is alive");
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        assert!(owner_is_gone(&format!("{host}:4294967")), "no such pid");
        assert!(
            !owner_is_gone("another-host:1"),
            "other hosts' helpers are left alone"
        );
    }

    #[test]
    fn the_own_container_is_found_in_mountinfo() {
        let id = "a".repeat(64);
        let line = format!(
            "677 660 254:0 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw"
        );
        assert_eq!(
            container_id_from_mountinfo(&format!("1 2 3 / / rw\n{line}\n")),
            Some(id)
        );
        assert_eq!(
            container_id_from_mountinfo("22 1 0:21 / /proc rw - proc proc rw\n"),
            None
        );
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
