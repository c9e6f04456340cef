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
pub const FORMAT_VERSION: u32 = 5;
/// The first format whose manifests are signed.
pub const SIGNED_FORMAT: u32 = 2;
/// The first format whose volumes may be stored as deduplicated chunks ([`ChunkRef`]); a
/// backup without chunks is still written as format 2, which older lifeboats read.
pub const CHUNKED_FORMAT: u32 = 3;
/// The first format whose volume objects may be split into segments ([`segment_name`]); a
/// backup whose every volume is one object (or chunks) is written as format 2 or 3.
pub const SEGMENTED_FORMAT: u32 = 4;
/// The first format whose chunked volumes keep their chunk lists in objects of their own
/// ([`ListRef`]) instead of in the manifest, which stays a few KiB however many chunks there are.
pub const LISTED_FORMAT: u32 = 5;
/// The most segments a volume object is split into: their names sort in order (four digits).
pub const MAX_SEGMENTS: u32 = 9999;
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
    #[serde(serialize_with = "stored_volumes")]
    pub volumes: Vec<VolumeRecord>,
    /// The key that signed this manifest (`ssh-ed25519 …`), for people and `ssh-keygen`; what
    /// is trusted is decided by the keys the operator gives, never by this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// The volume records as a manifest stores them ([`VolumeRecord::as_stored`]).
fn stored_volumes<S: serde::Serializer>(
    volumes: &[VolumeRecord],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    /// A format-5 record: its fields, and `chunks` as the one [`InLists`] entry.
    #[derive(Serialize)]
    struct Listed<'a> {
        #[serde(flatten)]
        record: &'a VolumeRecord,
        chunks: [InLists; 1],
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Stored<'a> {
        Record(&'a VolumeRecord),
        Listed(Listed<'a>),
    }
    let stored: Vec<std::borrow::Cow<'_, VolumeRecord>> =
        volumes.iter().map(VolumeRecord::as_stored).collect();
    serializer.collect_seq(stored.iter().map(|record| match record.lists.is_empty() {
        true => Stored::Record(record),
        false => Stored::Listed(Listed {
            record,
            chunks: [InLists {
                in_lists: record.chunk_count(),
            }],
        }),
    }))
}

/// What a format-5 record stores in `chunks`: how many chunks its list objects hold.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct InLists {
    pub in_lists: u64,
}

/// A record's `chunks` as stored: chunks (format 3, 4), or the one [`InLists`] entry of a
/// format-5 record, read as none.
fn chunks_or_in_lists<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ChunkRef>, D::Error> {
    /// Either entry, without buffering it (a format-3 list may hold millions).
    #[derive(Deserialize)]
    struct Entry {
        id: Option<Hex32>,
        size: Option<u64>,
        sha256: Option<Hex32>,
        plain: Option<u64>,
        in_lists: Option<u64>,
    }
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<ChunkRef>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of chunks, or one {\"in_lists\": n}")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut chunks = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            let mut in_lists = false;
            while let Some(entry) = seq.next_element::<Entry>()? {
                match entry {
                    Entry {
                        id: Some(id),
                        size: Some(size),
                        sha256: Some(sha256),
                        plain: Some(plain),
                        in_lists: None,
                    } if !in_lists => chunks.push(ChunkRef {
                        id,
                        size,
                        sha256,
                        plain,
                    }),
                    Entry {
                        id: None,
                        size: None,
                        sha256: None,
                        plain: None,
                        in_lists: Some(_),
                    } if chunks.is_empty() && !in_lists => in_lists = true,
                    _ => {
                        return Err(serde::de::Error::custom(
                            "a chunk entry that is neither a chunk nor the one {\"in_lists\": n}",
                        ));
                    }
                }
            }
            Ok(chunks)
        }
    }
    deserializer.deserialize_seq(Entries)
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
    ///
    /// Format 5 writes no chunks here but [`VolumeRecord::lists`]; once those are read back
    /// and checked, the chunks they hold are here in memory as for format 3.
    ///
    /// Stored, a format-5 record holds one entry here instead, `{"in_lists": <chunks>}`
    /// ([`InLists`]): a lifeboat from before format 5 then cannot parse the chunks it would
    /// otherwise take for none, and its prune stops instead of deleting them.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "chunks_or_in_lists"
    )]
    pub chunks: Vec<ChunkRef>,
    /// Format 5, deduplicated: the objects that hold the chunk list, in order ([`list_text`]);
    /// the manifest binds each by its sha256, and each binds its chunks by theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<ListRef>,
    /// Of `stored_size`, the bytes this backup uploaded (chunks no earlier backup had); the
    /// rest was reused. Chunked volumes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_bytes: Option<u64>,
    /// Format 4: the objects `object` is split into, in order ([`segment_name`]); their
    /// concatenation is the age file that `stored_size` and `sha256` describe. A store takes
    /// at most its part limit of fixed-size parts per object, so a volume larger than that
    /// continues in the next segment instead of growing its parts (and the memory they take).
    #[serde(default = "one_segment", skip_serializing_if = "is_one_segment")]
    pub segments: u32,
}

fn one_segment() -> u32 {
    1
}

fn is_one_segment(segments: &u32) -> bool {
    *segments == 1
}

/// The name of segment `index` of a volume object: the object's own name first, then
/// `<object>.0001`, `<object>.0002`, … — in the order `ls` and a shell glob list them.
pub fn segment_name(object: &str, index: u32) -> String {
    match index {
        0 => object.to_string(),
        _ => format!("{object}.{index:04}"),
    }
}

/// One chunk of a volume's tar stream: 80 bytes in memory, no allocation (a volume of a TiB
/// has about two million).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    /// Its identity for deduplication: a keyed BLAKE3 hash of its plaintext (the key derived
    /// from the owner key and the app name).
    pub id: Hex32,
    /// Bytes stored (the age file).
    pub size: u64,
    /// The sha256 of the bytes stored; the object is `<app>/chunks/<first two digits>/<sha256>`.
    pub sha256: Hex32,
    /// Bytes of tar stream it holds.
    pub plain: u64,
}

/// One object of a volume's chunk list (format 5): the zstd frame of [`list_text`] of some of
/// its chunks, stored beside them (`chunks/<ab>/<sha256>`), in plain text: it shows what a
/// format-3 manifest showed, ids that are keyed hashes and sizes, and nothing else.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListRef {
    /// The sha256 of the bytes stored, which names the object.
    pub sha256: Hex32,
    /// Bytes stored (the zstd frame).
    pub size: u64,
    /// The chunks it lists.
    pub chunks: u64,
    /// The sum of their stored sizes.
    pub stored: u64,
    /// The sum of their tar bytes.
    pub plain: u64,
}

impl ListRef {
    /// Whether it is a list lifeboat could have written: 1 to [`LIST_OBJECT_MAX`] chunks, in
    /// at most the bytes their lines take. Checked before anything is allocated for it.
    pub fn is_plausible(&self) -> bool {
        (1..=LIST_OBJECT_MAX as u64).contains(&self.chunks)
            && self.size > 0
            && self.size <= self.chunks * LIST_LINE_MAX as u64 + 64
    }

    /// The object, as a chunk is one: to fetch, copy or look for it (its `id` and `plain`
    /// are no chunk's).
    pub fn object(&self) -> ChunkRef {
        ChunkRef {
            id: Hex32([0; 32]),
            size: self.size,
            sha256: self.sha256,
            plain: 0,
        }
    }
}

/// The longest line of a chunk list: two digests, two sizes of up to 20 digits, three spaces
/// and the newline.
pub const LIST_LINE_MAX: usize = 64 + 1 + 64 + 1 + 20 + 1 + 20 + 1;
/// The most chunks one list object holds (about 1.2 MB of text).
pub const LIST_OBJECT_MAX: usize = 8192;

/// Chunks as a list object's text, one per line: `<id> <sha256> <size> <plain>`, lowercase
/// hex and decimal, so `awk '{print $2}'` gives the objects to fetch in order.
pub fn list_text(chunks: &[ChunkRef]) -> Vec<u8> {
    use std::io::Write;
    let mut text = Vec::with_capacity(chunks.len() * (LIST_LINE_MAX - 24));
    for c in chunks {
        text.extend_from_slice(&c.id.digits());
        text.push(b' ');
        text.extend_from_slice(&c.sha256.digits());
        writeln!(text, " {} {}", c.size, c.plain).expect("writing to a Vec cannot fail");
    }
    text
}

/// The chunks of a list object's text, read only as [`list_text`] writes it (a decimal
/// without leading zeros, single spaces, a newline after each line); the reason otherwise,
/// which never echoes the text.
pub fn parse_list(text: &[u8]) -> Result<Vec<ChunkRef>, String> {
    fn number(field: &[u8]) -> Option<u64> {
        let digits = field.iter().all(u8::is_ascii_digit) && !field.is_empty();
        let canonical = field.len() == 1 || field.first() != Some(&b'0');
        (digits && canonical)
            .then(|| std::str::from_utf8(field).ok()?.parse().ok())
            .flatten()
    }
    let Some(body) = text.strip_suffix(b"\n") else {
        return match text.is_empty() {
            true => Err("it lists no chunk".into()),
            false => Err("its last line does not end".into()),
        };
    };
    let mut chunks = Vec::with_capacity(text.len() / (LIST_LINE_MAX - 24));
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let bad = || format!("line {} is not `<id> <sha256> <size> <plain>`", n + 1);
        let mut fields = line.split(|&b| b == b' ');
        let mut next = || fields.next().ok_or_else(bad);
        let hex = |f: &[u8]| std::str::from_utf8(f).ok().and_then(Hex32::parse);
        let id = hex(next()?).ok_or_else(bad)?;
        let sha256 = hex(next()?).ok_or_else(bad)?;
        let size = number(next()?).ok_or_else(bad)?;
        let plain = number(next()?).ok_or_else(bad)?;
        if fields.next().is_some() {
            return Err(bad());
        }
        chunks.push(ChunkRef {
            id,
            size,
            sha256,
            plain,
        });
    }
    Ok(chunks)
}

/// Where a volume's chunk list is split into objects: after a chunk whose (keyed) id ends in
/// eleven zero bits, about every 2,048 chunks (1 GiB of tar), and at most every
/// [`LIST_OBJECT_MAX`]. A stretch of the volume that did not change since the last backup
/// gives the same objects again, which are stored once.
pub fn list_pieces(chunks: &[ChunkRef]) -> impl Iterator<Item = &[ChunkRef]> {
    let mut rest = chunks;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let window = &rest[..rest.len().min(LIST_OBJECT_MAX)];
        let end = window
            .iter()
            .position(|c| u16::from_le_bytes([c.id.0[30], c.id.0[31]]) & 0x07ff == 0)
            .map_or(window.len(), |i| i + 1);
        let (piece, after) = rest.split_at(end);
        rest = after;
        Some(piece)
    })
}

/// 32 bytes (a keyed id, a sha256) held as bytes and written as 64 lowercase hex digits, the
/// only spelling read back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hex32(pub [u8; 32]);

impl Hex32 {
    /// From exactly 64 lowercase hex digits.
    pub fn parse(text: &str) -> Option<Hex32> {
        let lowercase = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut bytes = [0u8; 32];
        (lowercase && hex::decode_to_slice(text, &mut bytes).is_ok()).then_some(Hex32(bytes))
    }

    /// The 64 digits, without allocating.
    pub fn digits(&self) -> [u8; 64] {
        let mut digits = [0u8; 64];
        hex::encode_to_slice(self.0, &mut digits).expect("64 digits for 32 bytes");
        digits
    }
}

impl std::fmt::Display for Hex32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.digits();
        f.write_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

impl std::fmt::Debug for Hex32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for Hex32 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let digits = self.digits();
        serializer.serialize_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

impl<'de> Deserialize<'de> for Hex32 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Digits;
        impl serde::de::Visitor<'_> for Digits {
            type Value = Hex32;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 lowercase hex digits (a chunk id or digest)")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Hex32, E> {
                // The text is not echoed: it comes from the bucket.
                let other = serde::de::Unexpected::Other("other text");
                Hex32::parse(text).ok_or_else(|| E::invalid_value(other, &self))
            }
        }
        deserializer.deserialize_str(Digits)
    }
}

impl VolumeRecord {
    /// Whether the volume is stored as chunks (format 3, or 5 with its lists in objects)
    /// rather than as one object.
    pub fn is_chunked(&self) -> bool {
        !self.chunks.is_empty() || !self.lists.is_empty()
    }

    /// How many chunks it has, whether its lists are read yet or not.
    pub fn chunk_count(&self) -> u64 {
        match self.lists.is_empty() {
            true => self.chunks.len() as u64,
            false => self.lists.iter().map(|l| l.chunks).sum(),
        }
    }

    /// The record as a format-5 manifest stores it: the chunks a list object holds are left
    /// out (they are only in memory).
    fn as_stored(&self) -> std::borrow::Cow<'_, VolumeRecord> {
        if self.lists.is_empty() || self.chunks.is_empty() {
            return std::borrow::Cow::Borrowed(self);
        }
        let VolumeRecord {
            name,
            kind,
            compose_volume,
            driver,
            labels,
            service,
            container_path,
            object,
            stored_size,
            sha256,
            tar_size,
            compression,
            encryption,
            root,
            chunks: _,
            lists,
            new_bytes,
            segments,
        } = self;
        std::borrow::Cow::Owned(VolumeRecord {
            name: name.clone(),
            kind: *kind,
            compose_volume: compose_volume.clone(),
            driver: driver.clone(),
            labels: labels.clone(),
            service: service.clone(),
            container_path: container_path.clone(),
            object: object.clone(),
            stored_size: *stored_size,
            sha256: sha256.clone(),
            tar_size: *tar_size,
            compression: *compression,
            encryption: encryption.clone(),
            root: *root,
            chunks: Vec::new(),
            lists: lists.clone(),
            new_bytes: *new_bytes,
            segments: *segments,
        })
    }
}

/// The digest a chunked volume record carries in `sha256`: over its chunks' digests.
pub fn chunk_list_digest(chunks: &[ChunkRef]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for chunk in chunks {
        hasher.update(chunk.sha256.digits());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Where a chunk lies under an app's folder: `chunks/<ab>/<sha256>`, named by the sha256 of
/// the bytes stored. An object is never overwritten: the same plaintext sealed again (age is
/// randomised) is another object, so what an older backup points to stays as it was.
pub fn chunk_key(sha256: &Hex32) -> String {
    format!("{CHUNKS_DIR}/{:02x}/{sha256}", sha256.0[0])
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

/// A manifest as stored: pretty JSON down to the volume records, and each entry of a list
/// inside them (a chunk, the recipients) on one line. About 187 bytes a chunk instead of the
/// 244 of pretty JSON throughout; what reads it is any JSON parser.
pub fn manifest_json(manifest: &Manifest) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = serde_json::Serializer::with_formatter(&mut out, Shallow::default());
    manifest.serialize(&mut writer)?;
    Ok(out)
}

/// serde_json's pretty formatter for the arrays and objects [`Shallow::DEPTH`] deep at most,
/// its compact one for those deeper.
#[derive(Default)]
struct Shallow {
    pretty: serde_json::ser::PrettyFormatter<'static>,
    depth: usize,
}

impl Shallow {
    /// The manifest (1), its volumes (2), a volume (3), its chunk list (4).
    const DEPTH: usize = 4;

    fn deep(&self) -> bool {
        self.depth > Self::DEPTH
    }
}

/// `$self`'s pretty formatter's `$method`, or the compact one's when this deep.
macro_rules! either {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        if $self.deep() {
            serde_json::ser::CompactFormatter.$method($($arg),*)
        } else {
            $self.pretty.$method($($arg),*)
        }
    };
}

impl serde_json::ser::Formatter for Shallow {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        either!(self.begin_array(w))
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        let written = either!(self.end_array(w));
        self.depth -= 1;
        written
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        either!(self.begin_array_value(w, first))
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        either!(self.end_array_value(w))
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        either!(self.begin_object(w))
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        let written = either!(self.end_object(w));
        self.depth -= 1;
        written
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        either!(self.begin_object_key(w, first))
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        either!(self.begin_object_value(w))
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        either!(self.end_object_value(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids and digests are read back only as they are written: 64 lowercase hex digits.
    #[test]
    fn hex32_reads_back_only_what_it_writes() {
        let value = Hex32(std::array::from_fn(|i| (i * 37) as u8));
        let text = value.to_string();
        assert_eq!(text, hex::encode(value.0));
        assert_eq!(Hex32::parse(&text), Some(value));
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Hex32>(&json).unwrap(), value);
        for bad in [
            text.to_uppercase(),
            text[..62].to_string(),
            format!("{text}00"),
            format!("{}zz", &text[..62]),
            "\u{1b}[2J".repeat(16),
        ] {
            assert_eq!(Hex32::parse(&bad), None, "{bad}");
            let error = serde_json::from_value::<Hex32>(serde_json::Value::String(bad.clone()))
                .unwrap_err()
                .to_string();
            assert!(error.contains("64 lowercase hex digits"), "{error}");
            assert!(
                !error.contains('\u{1b}') && !error.contains(&bad),
                "{error}"
            );
        }
        assert_eq!(chunk_key(&value), format!("chunks/00/{text}"));
    }

    fn chunk(i: u32) -> ChunkRef {
        ChunkRef {
            id: Hex32(*blake3::hash(&i.to_le_bytes()).as_bytes()),
            size: u64::from(i) * 1000,
            sha256: Hex32([(i % 251) as u8; 32]),
            plain: u64::MAX - u64::from(i),
        }
    }

    /// A list's text reads back as written, and only as written: nothing else a bucket
    /// writer might put there parses (the sha256 in the manifest refuses it first).
    #[test]
    fn a_chunk_list_reads_back_only_as_written() {
        let chunks: Vec<ChunkRef> = (0..5).map(chunk).collect();
        let text = list_text(&chunks);
        assert_eq!(parse_list(&text).unwrap(), chunks);
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        assert!(lines[..5].iter().all(|l| l.len() < LIST_LINE_MAX));
        let first = String::from_utf8(lines[0].to_vec()).unwrap();
        assert_eq!(
            first,
            format!("{} {} 0 {}", chunks[0].id, chunks[0].sha256, u64::MAX)
        );
        let line = |changed: String| {
            let mut all = text.clone();
            all.splice(..first.len(), changed.into_bytes());
            parse_list(&all)
        };
        for bad in [
            first.replace(" 0 ", " 00 "),
            first.replace(" 0 ", "  0 "),
            first.replace(" 0 ", " +0 "),
            first.to_uppercase(),
            format!("{first} 1"),
            first.rsplit_once(' ').unwrap().0.to_string(),
            format!("{} {}", first, "9".repeat(21)),
            first.replace(&u64::MAX.to_string(), "18446744073709551616"),
        ] {
            let error = line(bad.clone()).unwrap_err();
            assert!(error.starts_with("line 1 "), "{bad}: {error}");
            assert!(!error.contains(&bad), "{error}");
        }
        assert!(parse_list(&text[..text.len() - 1]).is_err());
        assert!(parse_list(b"").is_err());
        assert!(parse_list(b"\n").is_err());
    }

    /// List edges depend only on the chunks' keyed ids: a change before an edge moves no
    /// other edge, and no list holds more than the most.
    #[test]
    fn chunk_lists_are_cut_after_keyed_ids_and_at_most_the_most() {
        let chunks: Vec<ChunkRef> = (0..30_000).map(chunk).collect();
        let pieces: Vec<&[ChunkRef]> = list_pieces(&chunks).collect();
        assert_eq!(pieces.concat(), chunks);
        assert!(pieces.len() > 5, "{}", pieces.len());
        assert!(pieces.iter().all(|p| p.len() <= LIST_OBJECT_MAX));
        let mut inserted = chunks.clone();
        inserted.insert(100, chunk(1_000_000));
        let again: Vec<&[ChunkRef]> = list_pieces(&inserted).collect();
        assert_eq!(again.len(), pieces.len());
        assert_eq!(again[1..], pieces[1..]);
        let unkeyed: Vec<ChunkRef> = (0..20_000)
            .map(|i| ChunkRef {
                id: Hex32([0xff; 32]),
                ..chunk(i)
            })
            .collect();
        let sizes: Vec<usize> = list_pieces(&unkeyed).map(<[ChunkRef]>::len).collect();
        assert_eq!(
            sizes,
            [
                LIST_OBJECT_MAX,
                LIST_OBJECT_MAX,
                20_000 - 2 * LIST_OBJECT_MAX
            ]
        );
    }
}
