//! The bucket format: the types lifeboat writes to a store and reads back, and nothing else.
//!
//! This is the bottom of the crate: it depends on no other module of lifeboat. The manifest
//! ([`Manifest`], one per backup), its volume records, the compression of each object, the
//! volume root's metadata and the format version live here; the code that writes, signs,
//! parses and checks them lives with its stage (`manifest`, `pipeline`), above.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const FORMAT: &str = "lifeboat-backup";
/// The newest format this lifeboat reads and writes.
pub const FORMAT_VERSION: u32 = 3;
/// The first format whose manifests are signed.
pub const SIGNED_FORMAT: u32 = 2;
/// The first format whose volumes may be stored as deduplicated chunks ([`ChunkRef`]); a
/// backup without chunks is still written as format 2, which older lifeboats read.
pub const CHUNKED_FORMAT: u32 = 3;
/// The folder, beside an app's backup folders, that holds its chunks: `<app>/chunks/<ab>/<id>`.
pub const CHUNKS_DIR: &str = "chunks";
pub const MANIFEST_NAME: &str = "manifest.json";
pub const SIGNATURE_NAME: &str = "manifest.json.sig";

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
    /// The key that signed this manifest (`ssh-ed25519 …`), for people and `ssh-keygen`; what
    /// is trusted is decided by the keys the operator gives, never by this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
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
    /// Format 3, deduplicated: the volume's tar is the concatenation of these chunks, in
    /// order, each its own compressed frame and age file, stored once per app under
    /// [`CHUNKS_DIR`] and shared between backups. Then `object` names no object,
    /// `stored_size` is the sum of the chunks' sizes and `sha256` is the sha256 of their
    /// digests, one lowercase hex line each (`sha256sum` of the list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// Of `stored_size`, the bytes this backup uploaded (chunks no earlier backup had); the
    /// rest was reused. Chunked volumes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_bytes: Option<u64>,
}

/// One chunk of a volume's tar stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    /// Its identity for deduplication: a keyed BLAKE3 hash of its plaintext (the key derived
    /// from the owner key and the app name), hex.
    pub id: String,
    /// Bytes stored (the age file).
    pub size: u64,
    /// Hex sha256 of the bytes stored; the object is `<app>/chunks/<first two digits>/<sha256>`.
    pub sha256: String,
    /// Bytes of tar stream it holds.
    pub plain: u64,
}

impl VolumeRecord {
    /// Whether the volume is stored as chunks (format 3) rather than as one object.
    pub fn is_chunked(&self) -> bool {
        !self.chunks.is_empty()
    }
}

/// The digest a chunked volume record carries in `sha256`: over its chunks' digests.
pub fn chunk_list_digest(chunks: &[ChunkRef]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for chunk in chunks {
        hasher.update(chunk.sha256.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Where a chunk lies under an app's folder: `chunks/<ab>/<sha256>`, named by the sha256 of
/// the bytes stored. An object is never overwritten: the same plaintext sealed again (age is
/// randomised) is another object, so what an older backup points to stays as it was.
pub fn chunk_key(sha256: &str) -> String {
    format!("{CHUNKS_DIR}/{}/{sha256}", &sha256[..2.min(sha256.len())])
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Encryption {
    /// Always `age`.
    pub scheme: String,
    /// Public recipients only.
    pub recipients: Vec<String>,
}

impl Manifest {
    pub fn total_stored(&self) -> u64 {
        self.volumes.iter().map(|v| v.stored_size).sum()
    }

    /// Bytes this backup uploaded: all of a volume stored as one object, only the new chunks
    /// of a deduplicated one.
    pub fn total_new(&self) -> u64 {
        self.volumes
            .iter()
            .map(|v| v.new_bytes.unwrap_or(v.stored_size))
            .sum()
    }

    pub fn total_tar(&self) -> u64 {
        self.volumes.iter().map(|v| v.tar_size).sum()
    }
}

/// A new backup id: the UTC time to the millisecond, sortable as a string.
pub fn new_backup_id(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// The object name of a volume: its name made safe for a key, plus the codec extensions. A
/// name that had to be changed gets a short hash of the original, so that two records never
/// share an object (`bind:web:/a/b` and `bind:web:/a_b` would otherwise).
pub fn object_name(volume: &str, compression: Compression) -> String {
    use sha2::Digest;
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
    let unique = if safe == volume {
        safe
    } else {
        let digest = sha2::Sha256::digest(volume.as_bytes());
        format!("{safe}-{}", &hex::encode(digest)[..8])
    };
    format!("{unique}.{}.age", compression.extension())
}

/// How a volume's tar stream is compressed. Recorded in the manifest per volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd, on every core (default level 3)
    #[default]
    Zstd,
    /// gzip (default level 6); slower, for tools that only know gzip
    Gzip,
    /// no compression, for data that is already compressed
    None,
}

impl Compression {
    /// The object name's extension before `.age`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "tar.zst",
            Compression::Gzip => "tar.gz",
            Compression::None => "tar",
        }
    }

    /// The valid level range, for validating settings.
    pub fn level_range(self) -> Option<std::ops::RangeInclusive<i32>> {
        match self {
            Compression::Zstd => Some(1..=19),
            Compression::Gzip => Some(1..=9),
            Compression::None => None,
        }
    }
}

/// Mode, owner and mtime of the volume's root directory (the archive's `./` entry), which the
/// Docker archive API does not apply on extraction; restore sets them separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}
