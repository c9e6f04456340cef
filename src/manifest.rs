//! The manifest: the self-describing record of one backup, and where things live in the bucket.
//!
//! Layout under the store's prefix:
//! ```text
//! <app>/<backup id>/<volume>.<tar.zst|tar.gz|tar>.age   one object per volume, written first
//! <app>/<backup id>/manifest.json                       written last: the commit point
//! ```
//! A backup without its manifest is incomplete and is never listed or restored. The backup id is
//! a sortable UTC timestamp (milliseconds), so the newest backup is the greatest id.

use crate::pipeline::compress::Compression;
use crate::pipeline::tar_check::RootMeta;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const FORMAT: &str = "lifeboat-backup";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_NAME: &str = "manifest.json";

/// One backup, as recorded in `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub backup_id: String,
    /// The compose project (or the name given with --name).
    pub app: String,
    pub host: String,
    pub lifeboat_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Seconds from stopping the first container to starting the last one again.
    pub downtime_seconds: f64,
    pub app_version: AppVersion,
    pub volumes: Vec<VolumeRecord>,
}

/// What the app ran when it was backed up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AppVersion {
    /// Per compose service (or container name when not in a compose project).
    pub services: BTreeMap<String, ServiceImage>,
    /// One version string read from a label, an env var or a file, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where `version` was read (e.g. `label:org.opencontainers.image.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_source: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceImage {
    pub container: String,
    /// The image reference the container was created from (`repo:tag`).
    pub image: String,
    /// The image id (`sha256:…`).
    pub image_id: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A Docker named volume.
    Volume,
    /// A bind-mounted host directory, backed up on request by container path.
    Bind,
}

/// One volume (or bind mount) of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeRecord {
    /// The Docker volume name (`cvat_cvat_db`), or `bind:<service>:<path>` for a bind mount.
    pub name: String,
    pub kind: SourceKind,
    /// The compose volume name (`cvat_db`), the key restore maps volumes by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The service (or container) and the path the data was read through.
    pub service: String,
    pub container_path: String,
    /// Object key relative to the backup's folder.
    pub object: String,
    pub stored_size: u64,
    pub sha256: String,
    /// Size of the uncompressed tar stream.
    pub tar_size: u64,
    pub compression: Compression,
    pub encryption: Encryption,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Encryption {
    /// Always `age`.
    pub scheme: String,
    /// Public recipients only.
    pub recipients: Vec<String>,
}

/// Problems reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {key} is not valid JSON for a lifeboat backup: {source}")]
    Invalid {
        key: String,
        source: serde_json::Error,
    },
    #[error("{key} is not a lifeboat manifest (format '{format}')")]
    NotOurs { key: String, format: String },
    #[error(
        "manifest {key} has format version {found}, newer than the {FORMAT_VERSION} this lifeboat reads: it was possibly written by a newer lifeboat; upgrade lifeboat to restore it"
    )]
    TooNew { key: String, found: u32 },
}

impl Manifest {
    /// Parses and checks the format of a manifest read from `key`.
    pub fn from_slice(key: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct Probe {
            format: String,
            format_version: u32,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Invalid {
                key: key.into(),
                source,
            })?;
        if probe.format != FORMAT {
            return Err(ManifestError::NotOurs {
                key: key.into(),
                format: probe.format,
            });
        }
        if probe.format_version > FORMAT_VERSION {
            return Err(ManifestError::TooNew {
                key: key.into(),
                found: probe.format_version,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Invalid {
            key: key.into(),
            source,
        })
    }

    pub fn total_stored(&self) -> u64 {
        self.volumes.iter().map(|v| v.stored_size).sum()
    }

    pub fn total_tar(&self) -> u64 {
        self.volumes.iter().map(|v| v.tar_size).sum()
    }
}

/// A new backup id: the UTC time to the millisecond, sortable as a string.
pub fn new_backup_id(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// Where the backups of one app live in a store.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: Path,
}

impl Layout {
    pub fn app_dir(&self, app: &str) -> Path {
        self.prefix.clone().join(app)
    }

    pub fn backup_dir(&self, app: &str, backup_id: &str) -> Path {
        self.app_dir(app).join(backup_id)
    }

    pub fn manifest(&self, app: &str, backup_id: &str) -> Path {
        self.backup_dir(app, backup_id).join(MANIFEST_NAME)
    }

    pub fn object(&self, app: &str, backup_id: &str, object: &str) -> Path {
        self.backup_dir(app, backup_id).join(object)
    }
}

/// The object name of a volume: its name made safe for a key, plus the codec extensions.
pub fn object_name(volume: &str, compression: Compression) -> String {
    let safe: String = volume
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.{}.age", compression.extension())
}

/// Writes the manifest; refuses to overwrite an existing one.
pub async fn write(
    store: &Arc<dyn ObjectStore>,
    layout: &Layout,
    manifest: &Manifest,
) -> anyhow::Result<()> {
    let key = layout.manifest(&manifest.app, &manifest.backup_id);
    let body = serde_json::to_vec_pretty(manifest)?;
    store
        .put_opts(
            &key,
            body.into(),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot write manifest {key}: {e}"))?;
    Ok(())
}

/// A manifest found in the store, or why one could not be read.
pub struct Listed {
    pub key: Path,
    pub manifest: Result<Manifest, String>,
}

/// Every complete backup under the store's prefix (optionally of one app), oldest first.
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    layout: &Layout,
    app: Option<&str>,
) -> anyhow::Result<Vec<Listed>> {
    let root = match app {
        Some(app) => layout.app_dir(app),
        None => layout.prefix.clone(),
    };
    let prefix = if root.as_ref().is_empty() {
        None
    } else {
        Some(&root)
    };
    let metas: Vec<_> = store
        .list(prefix)
        .try_filter(|meta| futures::future::ready(meta.location.filename() == Some(MANIFEST_NAME)))
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list backups under '{root}': {e}"))?;
    let mut listed = Vec::with_capacity(metas.len());
    for meta in metas {
        let manifest = match store.get(&meta.location).await {
            Ok(got) => match got.bytes().await {
                Ok(bytes) => {
                    Manifest::from_slice(meta.location.as_ref(), &bytes).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        listed.push(Listed {
            key: meta.location,
            manifest,
        });
    }
    listed.sort_by(|a, b| a.key.as_ref().cmp(b.key.as_ref()));
    Ok(listed)
}

/// Reads one backup's manifest; `None` picks the newest complete backup of `app`.
pub async fn read(
    store: &Arc<dyn ObjectStore>,
    layout: &Layout,
    app: &str,
    backup_id: Option<&str>,
) -> anyhow::Result<Manifest> {
    let key = match backup_id {
        Some(id) => layout.manifest(app, id),
        None => {
            let all = list(store, layout, Some(app)).await?;
            let newest = all.into_iter().rev().find(|l| l.manifest.is_ok()).ok_or_else(|| {
                crate::error::usage(format!(
                    "no complete backup of '{app}' under {}; check --project/--name and the store URL, or run `lifeboat list` to see what is there",
                    layout.app_dir(app)
                ))
            })?;
            return newest.manifest.map_err(anyhow::Error::msg);
        }
    };
    let bytes = match store.get(&key).await {
        Ok(got) => got.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(crate::error::usage(format!(
                "backup '{}' of '{app}' not found (no {key}); run `lifeboat list` to see the backups there are",
                backup_id.unwrap_or_default()
            )));
        }
        Err(e) => return Err(anyhow::anyhow!("cannot read {key}: {e}")),
    };
    Ok(Manifest::from_slice(key.as_ref(), &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    pub fn sample(id: &str) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            backup_id: id.into(),
            app: "cvat".into(),
            host: "h".into(),
            lifeboat_version: "0.1.0".into(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            downtime_seconds: 1.5,
            app_version: AppVersion::default(),
            volumes: vec![VolumeRecord {
                name: "cvat_cvat_db".into(),
                kind: SourceKind::Volume,
                compose_volume: Some("cvat_db".into()),
                driver: Some("local".into()),
                labels: BTreeMap::new(),
                service: "db".into(),
                container_path: "/var/lib/postgresql/data".into(),
                object: object_name("cvat_cvat_db", Compression::Zstd),
                stored_size: 10,
                sha256: "00".into(),
                tar_size: 20,
                compression: Compression::Zstd,
                encryption: Encryption {
                    scheme: "age".into(),
                    recipients: vec!["age1x".into()],
                },
                root: None,
            }],
        }
    }

    #[test]
    fn ids_sort_by_time_and_names_are_safe() {
        let a = new_backup_id("2026-01-02T03:04:05.010Z".parse().unwrap());
        let b = new_backup_id("2026-01-02T03:04:05.200Z".parse().unwrap());
        assert_eq!(a, "20260102T030405.010Z");
        assert!(a < b);
        assert_eq!(
            object_name("bind:web:/etc/gitlab", Compression::Gzip),
            "bind_web__etc_gitlab.tar.gz.age"
        );
    }

    #[test]
    fn format_is_checked() {
        let json = serde_json::to_vec(&sample("1")).unwrap();
        assert_eq!(
            Manifest::from_slice("k", &json).unwrap(),
            sample_with_times(&json)
        );
        let newer = String::from_utf8(json.clone())
            .unwrap()
            .replace("\"format_version\":1", "\"format_version\":9");
        let err = Manifest::from_slice("k", newer.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer lifeboat"), "{err}");
        let err = Manifest::from_slice("k", b"{\"format\":\"x\",\"format_version\":1}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a lifeboat manifest"), "{err}");
        assert!(Manifest::from_slice("k", b"garbage").is_err());
    }

    fn sample_with_times(json: &[u8]) -> Manifest {
        serde_json::from_slice(json).unwrap()
    }

    #[tokio::test]
    async fn write_list_read_newest() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let layout = Layout {
            prefix: Path::from("pre"),
        };
        for id in ["20260101T000000Z", "20260301T000000Z", "20260201T000000Z"] {
            write(&store, &layout, &sample(id)).await.unwrap();
        }
        // an incomplete backup: objects, no manifest
        store
            .put(
                &layout.object("cvat", "20260401T000000Z", "v.tar.zst.age"),
                b"x".to_vec().into(),
            )
            .await
            .unwrap();
        let listed = list(&store, &layout, None).await.unwrap();
        assert_eq!(listed.len(), 3);
        let newest = read(&store, &layout, "cvat", None).await.unwrap();
        assert_eq!(newest.backup_id, "20260301T000000Z");
        assert!(
            write(&store, &layout, &sample("20260101T000000Z"))
                .await
                .is_err(),
            "no overwrite"
        );
        let err = read(&store, &layout, "cvat", Some("nope"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found"), "{err}");
        let err = read(&store, &layout, "other", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no complete backup of 'other'"), "{err}");
    }
}
