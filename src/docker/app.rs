//! The app as Docker shows it: its containers (by compose project or by name, lifeboat's own
//! container left out), their mounts, labels and restart policies, the order they start in, and
//! the version record read from them. Backup and restore both take their inventory from here.
//!
//! Containers are kept in a safe start order: a compose service starts after the services it
//! `depends_on` (from the `com.docker.compose.depends_on` label); stopping goes in reverse.
//!
//! Where it sits: Inside `docker`, an adapter: sees `format` (and `error`) only; reads version
//! files through `archive` and volume details through `helper`.

use super::{DEPENDS_ON_LABEL, ONEOFF_LABEL, PROJECT_LABEL, SERVICE_LABEL, read_file};
use crate::format::ServiceImage;
use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use std::collections::{BTreeMap, HashMap};

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
    /// Seconds Docker gives it between SIGTERM and SIGKILL (`docker run --stop-timeout`,
    /// compose's `stop_grace_period`), when set.
    pub stop_timeout: Option<u32>,
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

    /// The app's volume inventory, the one backup and restore both plan from: every named
    /// volume once (with the first container, in start order, that mounts it, and whether any
    /// container mounts it writable), then every bind mount, once per container and path.
    pub async fn inventory(&self, docker: &Docker) -> Result<Vec<Mounted>> {
        let mut volumes: Vec<Mounted> = Vec::new();
        for container in &self.containers {
            for mount in &container.mounts {
                let known = volumes
                    .iter_mut()
                    .find(|v| v.mount.name.is_some() && v.mount.name == mount.name);
                match (mount.kind.as_str(), &mount.name, known) {
                    ("volume", Some(_), Some(known)) => known.writable |= mount.rw,
                    ("volume", Some(name), None) => volumes.push(Mounted {
                        service: container.key().to_string(),
                        mount: mount.clone(),
                        writable: mount.rw,
                        info: Some(super::volume_info(docker, name).await?),
                    }),
                    ("bind", _, _) => volumes.push(Mounted {
                        service: container.key().to_string(),
                        mount: mount.clone(),
                        writable: mount.rw,
                        info: None,
                    }),
                    _ => {}
                }
            }
        }
        Ok(volumes)
    }

    /// Everything the app's containers mount, by volume name or host path (what an unfinished
    /// restore of another app may be touching).
    pub fn mounted_names(&self) -> Vec<String> {
        self.containers
            .iter()
            .flat_map(|c| c.mounts.iter())
            .map(|m| m.name.clone().unwrap_or_else(|| m.source.clone()))
            .collect()
    }

    /// Each container's dependency level, in start order: 0 when it depends on no container of
    /// the app, else one more than the deepest one it depends on. Containers of one level
    /// stop and start together; a level stops after every level above it and starts after
    /// every level below it.
    pub fn levels(&self) -> Vec<usize> {
        let mut levels: Vec<usize> = Vec::with_capacity(self.containers.len());
        for (i, container) in self.containers.iter().enumerate() {
            let level = container
                .depends_on
                .iter()
                .filter_map(|dep| {
                    self.containers[..i]
                        .iter()
                        .position(|c| c.key() == dep && c.key() != container.key())
                        .map(|j| levels[j] + 1)
                })
                .max()
                .unwrap_or(0);
            levels.push(level);
        }
        levels
    }

    /// The ids of the app's containers.
    pub fn ids(&self) -> Vec<String> {
        self.containers.iter().map(|c| c.id.clone()).collect()
    }
}

/// One entry of [`App::inventory`]: a named volume or a bind mount of the app.
#[derive(Debug, Clone)]
pub struct Mounted {
    /// The service (or container) that mounts it first, in start order.
    pub service: String,
    /// That container's mount of it.
    pub mount: AppMount,
    /// Whether a container of the app mounts it writable (a bind: this one).
    pub writable: bool,
    /// Docker's view of a named volume: driver, labels, directory on the host.
    pub info: Option<super::VolumeInfo>,
}

impl Mounted {
    /// The volume's compose name (`com.docker.compose.volume`), if compose made it.
    pub fn compose_name(&self) -> Option<&str> {
        self.info
            .as_ref()?
            .labels
            .get(super::VOLUME_LABEL)
            .map(String::as_str)
    }

    /// The compose project the volume is labelled with.
    pub fn project(&self) -> Option<&str> {
        self.info
            .as_ref()?
            .labels
            .get(super::PROJECT_LABEL)
            .map(String::as_str)
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
        stop_timeout: config.stop_timeout.and_then(|t| u32::try_from(t).ok()),
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
            stop_timeout: None,
            mounts: vec![],
            labels: HashMap::new(),
            env: vec![],
            restart_policy: None,
        }
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
    fn levels_follow_the_dependencies() {
        let app = App {
            containers: start_order(vec![
                container("web", "web", &["api", "cache"]),
                container("api", "api", &["db"]),
                container("db", "db", &[]),
                container("cache", "cache", &[]),
                container("worker", "worker", &["db", "gone"]),
            ]),
        };
        let levels: BTreeMap<&str, usize> = app
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .zip(app.levels())
            .collect();
        assert_eq!(
            levels,
            BTreeMap::from([
                ("api", 1),
                ("cache", 0),
                ("db", 0),
                ("web", 2),
                ("worker", 1)
            ])
        );
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
