//! Helper containers and volumes: a created-never-started container (from a tiny local image)
//! that mounts a volume at [`HELPER_PATH`] so restore can reach volumes no app container
//! mounts, empty them, copy trees between them (safety copies), and create or remove volumes.
//! Helpers carry their owner, so ones a killed run left behind are removed.
//!
//! Where it sits: Inside `docker`, an adapter: uses `archive` for its copies, and
//! `pipeline::tar_check` to read a copied tree's root entry.

use super::{extract_into, set_dir_meta, tar_of};
use anyhow::{Context, Result, anyhow};
use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};

/// Where a helper container mounts the one volume it serves.
pub const HELPER_PATH: &str = "/volume";

const HELPER_LABEL: &str = "io.lifeboat.helper";

/// The helper image: a rootfs holding one empty directory, imported through the API (no
/// registry, no shell, nothing to run). Helper containers are created from it and never
/// started: the archive API mounts their volume for each copy.
///
/// Returns the image's id: Podman's Docker API names an imported image `localhost/…` and
/// resolves a short name in a create request to `docker.io/library/…`; an id means one image
/// on every engine.
async fn ensure_helper_image(docker: &Docker) -> Result<String> {
    let tag = env!("CARGO_PKG_VERSION");
    let image = format!("lifeboat-helper:{tag}");
    let id_of = |found: bollard::models::ImageInspect| found.id.unwrap_or_else(|| image.clone());
    if let Ok(found) = docker.inspect_image(&image).await {
        return Ok(id_of(found));
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
    let progress = docker
        .create_image(
            Some(options),
            Some(bollard::body_full(Bytes::from(rootfs))),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| anyhow!("cannot create the helper image {image}: {e}"))?;
    // The import answers with the new image's id (Podman ignores the tag it is given).
    let imported = progress
        .iter()
        .flat_map(|p| [p.id.as_deref(), p.status.as_deref()])
        .flatten()
        .map(|text| text.trim().trim_start_matches("sha256:"))
        .find(|text| text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|hex| format!("sha256:{hex}"));
    if let Some(id) = imported {
        return Ok(id);
    }
    let found = docker
        .inspect_image(&image)
        .await
        .map_err(|e| anyhow!("the helper image {image} was imported but cannot be found: {e}"))?;
    Ok(id_of(found))
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
    if let Some(root) = crate::pipeline::tar_check::root_meta(&block) {
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

/// Whether this host sees the engine's volumes at the mountpoints it reports, as the engine
/// writes them: a probe volume is made, a file of unique contents owned by 4242:4242 is written
/// into it through the archive API, and it must appear at the probe's mountpoint here, with
/// that owner. A remote engine behind a forwarded socket, a copy of the data root, a rootless or
/// user-namespaced engine (ids shifted) or a container that cannot see the volumes all fail
/// this. The probe goes again whatever happens.
pub async fn volumes_visible_here(docker: &Docker) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let unique = format!("{}-{nanos}", std::process::id());
    let name = format!("lifeboat-probe-{unique}");
    let labels = BTreeMap::from([(HELPER_LABEL.to_string(), "probe".to_string())]);
    create_volume(docker, &name, Some("local"), &labels).await?;
    let probed = async {
        let mountpoint = volume_info(docker, &name).await?.mountpoint;
        let helper = Helper::create(docker, &HelperMount::Volume(name.clone()), false).await?;
        let mut header = tokio_tar::Header::new_ustar();
        header.set_path("probe")?;
        header.set_size(unique.len() as u64);
        header.set_mode(0o600);
        header.set_uid(4242);
        header.set_gid(4242);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(unique.as_bytes());
        tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
        let written = super::extract_into(
            docker,
            &helper.id,
            HELPER_PATH,
            futures::stream::once(async { Ok(bytes::Bytes::from(tar)) }),
        )
        .await;
        helper.remove(docker).await;
        written?;
        let here = std::path::Path::new(&mountpoint).join("probe");
        Ok::<_, anyhow::Error>(
            std::fs::symlink_metadata(&here).is_ok_and(|m| (m.uid(), m.gid()) == (4242, 4242))
                && std::fs::read(&here).is_ok_and(|seen| seen == unique.as_bytes()),
        )
    }
    .await;
    if let Err(e) = remove_volume(docker, &name).await {
        tracing::warn!("{e:#}");
    }
    probed
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
        options: volume.options.len(),
    })
}

/// What `docker volume inspect` says about a volume.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    /// The volume's directory on the Docker host.
    pub mountpoint: String,
    /// How many driver options it has (`type`, `device`, `o`: a mount made when a container
    /// starts, not a plain directory).
    pub options: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
