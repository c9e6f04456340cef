//! Docker: everything lifeboat asks of the engine, and the only module that talks to it. It
//! sees the bucket format (`format`) and nothing above it.
//!
//! - [`app`]: finding the app's containers, their start order, the volume inventory backup and
//!   restore plan from, the version record.
//! - [`lifecycle`]: stopping and starting them, restart policies, commands inside them.
//! - [`archive`]: volume trees in and out as tar streams through the archive API.
//! - [`helper`]: helper containers that reach volumes no app container mounts, and volumes.
//!
//! This file connects to the engine and tells an engine that does not answer from one that
//! refuses.

pub mod app;
pub mod archive;
pub mod helper;
pub mod lifecycle;

pub use app::{App, AppContainer, AppMount, AppSelector, Mounted, read_version, start_order};
pub use archive::{DockerStreamError, extract_into, first_block, read_file, set_dir_meta, tar_of};
pub use helper::{
    HELPER_PATH, Helper, HelperMount, VolumeInfo, copy_tree, create_volume, empty_dir, is_empty,
    remove_stale_helpers, remove_volume, volume_exists, volume_info, volumes_visible_here,
};
pub use lifecycle::{
    Stopped, exec, restarts_with_the_engine, set_restart_policy, start_again, stop_running,
};

use anyhow::{Result, anyhow};
use bollard::Docker;
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

/// Whether the engine is Podman (its Docker-compatible API): its archive API gives every file
/// of a volume the owner root:root, so a backup through it does not keep file owners.
pub async fn is_podman(docker: &Docker) -> bool {
    docker.version().await.is_ok_and(|v| {
        v.components
            .unwrap_or_default()
            .iter()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"))
    })
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
