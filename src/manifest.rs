//! The manifest's rules: what makes one genuine, and whether what it says is one lifeboat
//! could have written. Where manifests lie, and reading and writing them, is `repo`'s.
//!
//! Nothing read from the bucket is believed until [`authenticate`] has checked it: the
//! signature over the exact manifest bytes under a key the operator gave ([`crate::auth`]),
//! the app and backup id against the place the manifest lies, and every name, path and digest
//! against the rules restore relies on. Format-1 manifests (written before lifeboat signed
//! anything) are accepted only when the operator names one and says so (`--allow-unsigned
//! --backup ID`): never as "the newest", never counted by prune, since a bucket writer can add
//! one today.
//!
//! Where it sits: Pure rules over `format` and `auth`; no I/O. `repo` reads manifests from the
//! store and runs them through [`authenticate`].

use crate::auth::{AuthFailure, Trust};
use crate::format::{FORMAT, FORMAT_VERSION, Manifest, SIGNED_FORMAT, SourceKind, VolumeRecord};
use serde::Deserialize;

/// Checks everything restore relies on, whoever wrote the manifest: that it lies where it
/// says (`app`, `backup_id`), and that every name, path, object and digest in it is one
/// lifeboat could have written. Returns the first problem.
pub fn check(manifest: &Manifest, app: &str, backup_id: &str) -> Result<(), String> {
    if manifest.format_version < crate::format::CHUNKED_FORMAT
        && manifest.volumes.iter().any(VolumeRecord::is_chunked)
    {
        return Err(format!(
            "its manifest is format {} but lists chunks, which only format {} has",
            manifest.format_version,
            crate::format::CHUNKED_FORMAT
        ));
    }
    if manifest.format_version < crate::format::LISTED_FORMAT
        && manifest.volumes.iter().any(|v| !v.lists.is_empty())
    {
        return Err(format!(
            "its manifest is format {} but keeps chunk lists in objects, which only format {} does",
            manifest.format_version,
            crate::format::LISTED_FORMAT
        ));
    }
    if manifest.format_version < crate::format::SEGMENTED_FORMAT
        && manifest.volumes.iter().any(|v| v.segments != 1)
    {
        return Err(format!(
            "its manifest is format {} but splits a volume into segments, which only format {} does",
            manifest.format_version,
            crate::format::SEGMENTED_FORMAT
        ));
    }
    use crate::text::{Printable, is_plain_name};
    if manifest.app != app {
        return Err(format!(
            "it names app '{}' but lies under '{app}'",
            Printable(&manifest.app)
        ));
    }
    if manifest.backup_id != backup_id {
        return Err(format!(
            "it names backup id '{}' but lies under '{backup_id}'",
            Printable(&manifest.backup_id)
        ));
    }
    if !is_plain_name(backup_id) || !is_plain_name(app) {
        return Err("its app or backup id is not a plain name".into());
    }
    if manifest.volumes.is_empty() {
        return Err("it lists no volume".into());
    }
    let mut objects = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for record in &manifest.volumes {
        check_record(record)?;
        if !objects.insert(record.object.as_str()) || !names.insert(record.name.as_str()) {
            return Err(format!(
                "volume {}: its name or object '{}' appears twice",
                Printable(&record.name),
                Printable(&record.object)
            ));
        }
    }
    Ok(())
}

/// The rules for one volume record: plain names, a clean container path, an object name of
/// the record's own codec, a sha256 in hex, and no control characters in any text.
fn check_record(record: &VolumeRecord) -> Result<(), String> {
    use crate::text::{Printable, is_clean_absolute_path, is_plain_name, is_volume_name};
    let name = Printable(&record.name);
    if !is_plain_name(&record.service) {
        return Err(format!(
            "volume {name}: service '{}' is not a plain name",
            Printable(&record.service)
        ));
    }
    if !is_clean_absolute_path(&record.container_path) {
        return Err(format!(
            "volume {name}: container path '{}' is not a clean absolute path",
            Printable(&record.container_path)
        ));
    }
    match record.kind {
        SourceKind::Volume if !is_volume_name(&record.name) => {
            return Err(format!(
                "'{name}' is not a Docker volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
            ));
        }
        SourceKind::Bind
            if record.name != format!("bind:{}:{}", record.service, record.container_path) =>
        {
            return Err(format!(
                "bind mount '{name}' does not match its service and path"
            ));
        }
        _ => {}
    }
    if let Some(compose) = &record.compose_volume
        && !is_plain_name(compose)
    {
        return Err(format!(
            "volume {name}: compose volume '{}' is not a plain name",
            Printable(compose)
        ));
    }
    let suffix = format!(".{}.age", record.compression.extension());
    if !is_plain_name(&record.object) || !record.object.ends_with(&suffix) {
        return Err(format!(
            "volume {name}: object '{}' is not a plain name ending in {suffix}",
            Printable(&record.object)
        ));
    }
    if !is_hex64(&record.sha256) {
        return Err(format!(
            "volume {name}: sha256 is not 64 lowercase hex digits"
        ));
    }
    check_chunks(record)?;
    if record.segments == 0
        || record.segments > crate::format::MAX_SEGMENTS
        || (record.segments > 1 && record.is_chunked())
        || u64::from(record.segments) > record.stored_size.max(1)
    {
        return Err(format!(
            "volume {name}: {} segments is not a number lifeboat writes",
            record.segments
        ));
    }
    let texts = record
        .labels
        .iter()
        .flat_map(|(k, v)| [k, v])
        .chain(record.driver.iter())
        .chain(record.encryption.recipients.iter());
    for text in texts {
        if text.len() > 4096 || crate::text::printable(text) != *text {
            return Err(format!(
                "volume {name}: a label, driver or recipient holds control characters"
            ));
        }
    }
    Ok(())
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A chunked record (ids and digests are hex, as they parse): sizes add up, and the record's digest covers
/// the list; only format 3 may have chunks, and only zstd or uncompressed ones (a stream of
/// zstd frames is one zstd stream).
fn check_chunks(record: &VolumeRecord) -> Result<(), String> {
    let name = crate::text::Printable(&record.name);
    if !record.is_chunked() {
        return match record.new_bytes {
            Some(_) => Err(format!(
                "volume {name}: only chunked volumes record new bytes"
            )),
            None => Ok(()),
        };
    }
    if record.new_bytes.is_some_and(|n| n > record.stored_size) {
        return Err(format!(
            "volume {name}: it records more new bytes than it stores"
        ));
    }
    if record.compression == crate::format::Compression::Gzip {
        return Err(format!("volume {name}: chunks are never gzip-compressed"));
    }
    if record.lists.is_empty() {
        return check_chunk_list(record);
    }
    if !record.chunks.is_empty() {
        return Err(format!(
            "volume {name}: it lists chunks both in the manifest and in list objects"
        ));
    }
    let mut sums = (0u64, 0u64);
    for list in &record.lists {
        if !list.is_plausible() {
            return Err(format!(
                "volume {name}: list object {} is not one lifeboat writes ({} chunks in {} bytes)",
                list.sha256, list.chunks, list.size
            ));
        }
        sums = match (
            sums.0.checked_add(list.stored),
            sums.1.checked_add(list.plain),
        ) {
            (Some(stored), Some(plain)) => (stored, plain),
            _ => (u64::MAX, u64::MAX),
        };
    }
    if sums != (record.stored_size, record.tar_size) {
        return Err(format!(
            "volume {name}: its list objects' sizes do not add up to the sizes it records"
        ));
    }
    Ok(())
}

/// A chunked record's chunks, in the manifest (format 3, 4) or read from its list objects
/// (format 5): their sizes add up to the record's, and the record's digest covers them.
pub fn check_chunk_list(record: &VolumeRecord) -> Result<(), String> {
    let name = crate::text::Printable(&record.name);
    let stored = record
        .chunks
        .iter()
        .try_fold(0u64, |t, c| t.checked_add(c.size));
    let plain = record
        .chunks
        .iter()
        .try_fold(0u64, |t, c| t.checked_add(c.plain));
    if stored != Some(record.stored_size) || plain != Some(record.tar_size) {
        return Err(format!(
            "volume {name}: its chunks' sizes do not add up to the sizes it records"
        ));
    }
    if crate::format::chunk_list_digest(&record.chunks) != record.sha256 {
        return Err(format!(
            "volume {name}: its digest does not cover its list of chunks"
        ));
    }
    Ok(())
}

/// What the operator trusts when reading backups.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// The signing keys whose manifests are genuine.
    pub trust: Trust,
    /// Accept a format-1 manifest, which carries no signature, when the operator names it
    /// (`--allow-unsigned --backup ID`).
    pub allow_unsigned: bool,
}

/// How a manifest was vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticity {
    /// Signed by the key with this fingerprint.
    Signed(String),
    /// A format-1 manifest, accepted because the operator allowed unsigned backups.
    Unsigned,
}

/// A manifest that passed [`authenticate`].
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub manifest: Manifest,
    pub authenticity: Authenticity,
}

/// Why a manifest was not accepted as genuine: exit 4.
#[derive(Debug, Clone, thiserror::Error)]
#[error("backup {backup_id} of '{app}' failed verification: {reason}")]
pub struct NotAuthentic {
    pub app: String,
    pub backup_id: String,
    pub reason: String,
    /// A format-1 manifest (that `--allow-unsigned` would accept if otherwise sound).
    pub unsigned: bool,
}

/// Checks a manifest's bytes and signature as read from `<app>/<backup_id>/`.
pub fn authenticate(
    app: &str,
    backup_id: &str,
    bytes: &[u8],
    signature: Option<&[u8]>,
    policy: &TrustPolicy,
) -> Result<Authenticated, NotAuthentic> {
    authenticate_as(app, backup_id, bytes, signature, policy, true)
}

/// [`authenticate`]; `named`: the operator named this backup (only then may an unsigned one
/// be accepted). Listing and picking the newest pass `false`.
pub fn authenticate_as(
    app: &str,
    backup_id: &str,
    bytes: &[u8],
    signature: Option<&[u8]>,
    policy: &TrustPolicy,
    named: bool,
) -> Result<Authenticated, NotAuthentic> {
    let refuse = |reason: String, unsigned: bool| NotAuthentic {
        app: crate::text::printable(app),
        backup_id: crate::text::printable(backup_id),
        reason,
        unsigned,
    };
    let version = format_version(bytes).map_err(|reason| refuse(reason, false))?;
    let authenticity = if version < SIGNED_FORMAT {
        if !(policy.allow_unsigned && named) {
            return Err(refuse(
                format!(
                    "it is a format-{} backup, written before lifeboat signed its backups, so nothing vouches that the owner made it (a bucket writer could have added it today); to trust it anyway, name it: --allow-unsigned --backup {}",
                    version,
                    crate::text::printable(backup_id)
                ),
                true,
            ));
        }
        Authenticity::Unsigned
    } else {
        let fingerprint =
            verify_signature(bytes, signature, policy).map_err(|reason| refuse(reason, false))?;
        Authenticity::Signed(fingerprint)
    };
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| refuse(format!("its manifest is not valid ({e})"), false))?;
    if manifest.format_version != version {
        return Err(refuse(
            "its manifest names two format versions".into(),
            false,
        ));
    }
    check(&manifest, app, backup_id)
        .map_err(|reason| refuse(reason, authenticity == Authenticity::Unsigned))?;
    Ok(Authenticated {
        manifest,
        authenticity,
    })
}

/// The format version a manifest claims, read before anything else of it: a manifest of another
/// format, or of a newer version than this lifeboat reads, is refused with the reason.
fn format_version(bytes: &[u8]) -> Result<u32, String> {
    #[derive(Deserialize)]
    struct Probe {
        format: String,
        format_version: u32,
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| format!("its manifest is not valid JSON ({e})"))?;
    if probe.format != FORMAT {
        return Err(format!(
            "its manifest is not a lifeboat manifest (format '{}')",
            crate::text::printable(&probe.format)
        ));
    }
    if probe.format_version > FORMAT_VERSION {
        return Err(format!(
            "its manifest has format version {}, newer than the {FORMAT_VERSION} this lifeboat reads: it was possibly written by a newer lifeboat; upgrade lifeboat to restore it",
            probe.format_version
        ));
    }
    Ok(probe.format_version)
}

/// The fingerprint of the trusted key whose signature covers `bytes`, or why there is none.
fn verify_signature(
    bytes: &[u8],
    signature: Option<&[u8]>,
    policy: &TrustPolicy,
) -> Result<String, String> {
    policy.trust.verify(bytes, signature).map_err(|failure| {
        let hint = match failure {
            AuthFailure::UnknownSigner(_) if policy.trust.is_empty() => {
                "; no key to check it with was given".to_string()
            }
            AuthFailure::UnknownSigner(_) => format!(
                " (made with another key, or forged){}",
                claimed_recipients(bytes).map_or(String::new(), |r| format!(
                    "; it says it is encrypted to {r}: if that is yours, pass that owner key with --identity"
                ))
            ),
            _ => " (forged or altered in the bucket)".to_string(),
        };
        format!("{failure}{hint}")
    })
}

/// The recipients an unauthenticated manifest claims, printable: a hint for the operator who
/// gave the wrong key, never a reason to trust anything.
fn claimed_recipients(bytes: &[u8]) -> Option<String> {
    let manifest: Manifest = serde_json::from_slice(bytes).ok()?;
    let recipients = &manifest.volumes.first()?.encryption.recipients;
    (!recipients.is_empty()).then(|| crate::text::printable(&recipients.join(", ")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::Signer;
    use crate::format::{
        AppVersion, Compression, Encryption, VolumeRecord, new_backup_id, object_name,
    };
    use chrono::Utc;
    use std::collections::BTreeMap;

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
                segments: 1,
                name: "cvat_cvat_db".into(),
                kind: SourceKind::Volume,
                compose_volume: Some("cvat_db".into()),
                driver: Some("local".into()),
                labels: BTreeMap::new(),
                service: "db".into(),
                container_path: "/var/lib/postgresql/data".into(),
                object: object_name("cvat_cvat_db", Compression::Zstd),
                stored_size: 10,
                sha256: "0".repeat(64),
                tar_size: 20,
                compression: Compression::Zstd,
                encryption: Encryption {
                    scheme: "age".into(),
                    recipients: vec!["age1x".into()],
                },
                root: None,
                chunks: vec![],
                lists: vec![],
                new_bytes: None,
            }],
            signer: None,
        }
    }

    /// The stored JSON: pretty down to the volume records, a chunk to a line, and nothing lost.
    #[test]
    fn a_manifest_is_stored_with_a_chunk_to_a_line() {
        let mut m = sample("20260102T030405.010Z");
        let mut chunked = m.volumes[0].clone();
        chunked.name = "cvat_cvat_data".into();
        chunked.chunks = (0..3u8)
            .map(|i| crate::format::ChunkRef {
                id: crate::format::Hex32([i; 32]),
                size: 300_000 + u64::from(i),
                sha256: crate::format::Hex32([i + 100; 32]),
                plain: 524_288,
            })
            .collect();
        m.volumes.push(chunked);
        let bytes = crate::format::manifest_json(&m).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        let back: Manifest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&m).unwrap()
        );
        assert!(text.starts_with("{\n  \"format\": "), "{text}");
        assert!(text.contains("\n  \"volumes\": [\n    {\n"), "{text}");
        let chunk_lines: Vec<&str> = text.lines().filter(|l| l.contains("\"id\":")).collect();
        assert_eq!(chunk_lines.len(), 3, "{text}");
        for (i, line) in chunk_lines.iter().enumerate() {
            assert!(line.starts_with("        {\"id\":\""), "{line}");
            assert!(
                line.contains(&format!("\"size\":{}", 300_000 + i)),
                "{line}"
            );
            assert!(line.contains("\"plain\":524288}"), "{line}");
            // 8 of indent, 166 of names and digests, 12 of sizes, the comma.
            assert!(line.len() <= 187, "{} bytes: {line}", line.len());
        }
        assert!(text.contains("\"recipients\": [\"age1x\"]"), "{text}");
        assert!(text.ends_with("\n}"), "{text}");
    }

    /// Format 5: a volume's chunks are in list objects; the manifest stores what it says of
    /// them and not the chunks, and lists are checked as far as the manifest alone can.
    #[test]
    fn a_listed_manifest_stores_its_lists_not_its_chunks() {
        let mut m = sample("20260102T030405.010Z");
        m.format_version = crate::format::LISTED_FORMAT;
        let chunks: Vec<crate::format::ChunkRef> = (0..3u8)
            .map(|i| crate::format::ChunkRef {
                id: crate::format::Hex32([i; 32]),
                size: 3 + u64::from(i),
                sha256: crate::format::Hex32([i + 100; 32]),
                plain: 7,
            })
            .collect();
        let record = &mut m.volumes[0];
        (record.stored_size, record.tar_size) = (12, 21);
        record.sha256 = crate::format::chunk_list_digest(&chunks);
        record.lists = vec![crate::format::ListRef {
            sha256: crate::format::Hex32([9; 32]),
            size: 200,
            chunks: 3,
            stored: 12,
            plain: 21,
        }];
        record.chunks = chunks;
        let bytes = crate::format::manifest_json(&m).unwrap();
        let back: Manifest = serde_json::from_slice(&bytes).unwrap();
        let stored = &back.volumes[0];
        assert!(stored.chunks.is_empty() && stored.lists == m.volumes[0].lists);
        // `chunks` holds one {"in_lists": n} (older lifeboats cannot parse it) and nothing else.
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#"{"in_lists":3}"#), "{text}");
        let chunk = serde_json::to_string(&m.volumes[0].chunks[0]).unwrap();
        for both in [
            r#"{"in_lists":3},{"in_lists":3}"#.to_string(),
            format!(r#"{{"in_lists":3}},{chunk}"#),
            format!(r#"{chunk},{{"in_lists":3}}"#),
            r#"{"in_lists":3,"sha256":"00"}"#.to_string(),
        ] {
            let edited = text.replace(r#"{"in_lists":3}"#, &both);
            assert!(serde_json::from_str::<Manifest>(&edited).is_err(), "{both}");
        }
        assert_eq!(stored.chunk_count(), 3);
        let id = "20260102T030405.010Z";
        assert_eq!(check(&back, "cvat", id), Ok(()));
        check_chunk_list(&m.volumes[0]).unwrap();
        let refused = |change: &dyn Fn(&mut Manifest)| {
            let mut wrong = back.clone();
            change(&mut wrong);
            check(&wrong, "cvat", id).unwrap_err()
        };
        let error = refused(&|w| w.format_version = crate::format::SEGMENTED_FORMAT);
        assert!(error.contains("keeps chunk lists in objects"), "{error}");
        let error = refused(&|w| w.volumes[0].chunks = m.volumes[0].chunks.clone());
        assert!(
            error.contains("both in the manifest and in list objects"),
            "{error}"
        );
        let error = refused(&|w| w.volumes[0].lists[0].stored = 13);
        assert!(error.contains("do not add up"), "{error}");
        let error = refused(&|w| w.volumes[0].lists[0].chunks = 0);
        assert!(error.contains("not one lifeboat writes"), "{error}");
        let error = refused(&|w| w.volumes[0].lists[0].size = 3 * 172 + 65);
        assert!(error.contains("not one lifeboat writes"), "{error}");
        // The lists read back must be the chunks the digest covers.
        let mut swapped = m.volumes[0].clone();
        swapped.chunks.swap(0, 1);
        assert!(check_chunk_list(&swapped).unwrap_err().contains("digest"));
    }

    fn signer() -> Signer {
        Signer::from_seed(&[3u8; 32])
    }

    fn policy() -> TrustPolicy {
        TrustPolicy {
            trust: Trust::new(vec![signer().public()]),
            allow_unsigned: false,
        }
    }

    #[test]
    fn ids_sort_by_time_and_names_are_safe_and_distinct() {
        let a = new_backup_id("2026-01-02T03:04:05.010Z".parse().unwrap());
        let b = new_backup_id("2026-01-02T03:04:05.200Z".parse().unwrap());
        assert_eq!(a, "20260102T030405.010Z");
        assert!(a < b);
        assert_eq!(
            object_name("cvat_cvat_db", Compression::Zstd),
            "cvat_cvat_db.tar.zst.age"
        );
        let one = object_name("bind:web:/a/b", Compression::Gzip);
        let two = object_name("bind:web:/a_b", Compression::Gzip);
        assert!(
            one.starts_with("bind_web__a_b-") && one.ends_with(".tar.gz.age"),
            "{one}"
        );
        assert_ne!(one, two, "two records never share an object");
    }

    /// Format 4 splits a large volume object into segments; a count lifeboat never writes is
    /// refused before anything is fetched.
    #[test]
    fn segments_are_format_4_and_counted_sensibly() {
        let signed = |m: &Manifest| {
            let bytes = serde_json::to_vec_pretty(m).unwrap();
            let sig = signer().sign(&bytes);
            authenticate(
                "cvat",
                &m.backup_id,
                &bytes,
                Some(sig.as_bytes()),
                &policy(),
            )
        };
        let mut m = sample("20260101T000000.000Z");
        m.format_version = crate::format::SEGMENTED_FORMAT;
        m.volumes[0].segments = 3;
        let ok = signed(&m).unwrap();
        assert_eq!(ok.manifest.volumes[0].segments, 3);
        for (segments, stored_size) in [(0, 100), (10_000, 1 << 40), (5, 4)] {
            m.volumes[0].segments = segments;
            m.volumes[0].stored_size = stored_size;
            let err = signed(&m).unwrap_err();
            assert!(
                err.reason
                    .contains("segments is not a number lifeboat writes"),
                "{segments}: {err}"
            );
        }
        // One segment is not written at all: such a manifest is what format 2 and 3 were.
        let mut one = sample("20260101T000000.000Z");
        one.volumes[0].segments = 1;
        let text = serde_json::to_string(&one).unwrap();
        assert!(!text.contains("segments"), "{text}");
    }

    #[test]
    fn only_what_the_trusted_key_signed_is_genuine() {
        let m = sample("20260101T000000.000Z");
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        let sig = signer().sign(&bytes);
        let ok = authenticate(
            "cvat",
            &m.backup_id,
            &bytes,
            Some(sig.as_bytes()),
            &policy(),
        )
        .unwrap();
        assert!(matches!(ok.authenticity, Authenticity::Signed(_)));
        // unsigned, altered, signed by another key, or moved to another id or app
        let no_sig = authenticate("cvat", &m.backup_id, &bytes, None, &policy()).unwrap_err();
        assert!(no_sig.reason.contains("no signature"), "{no_sig}");
        let mut altered = bytes.clone();
        let at = altered.len() - 5;
        altered[at] ^= 1;
        assert!(
            authenticate(
                "cvat",
                &m.backup_id,
                &altered,
                Some(sig.as_bytes()),
                &policy()
            )
            .is_err()
        );
        let forged = Signer::from_seed(&[9u8; 32]).sign(&bytes);
        let err = authenticate(
            "cvat",
            &m.backup_id,
            &bytes,
            Some(forged.as_bytes()),
            &policy(),
        )
        .unwrap_err();
        assert!(err.reason.contains("none of the given keys"), "{err}");
        let err = authenticate(
            "cvat",
            "20990101T000000.000Z",
            &bytes,
            Some(sig.as_bytes()),
            &policy(),
        )
        .unwrap_err();
        assert!(err.reason.contains("lies under"), "{err}");
        let err = authenticate(
            "other",
            &m.backup_id,
            &bytes,
            Some(sig.as_bytes()),
            &policy(),
        )
        .unwrap_err();
        assert!(err.reason.contains("lies under"), "{err}");
    }

    #[test]
    fn format_one_needs_allow_unsigned_and_newer_formats_are_refused() {
        let mut m = sample("20260101T000000.000Z");
        m.format_version = 1;
        let bytes = serde_json::to_vec(&m).unwrap();
        let err = authenticate("cvat", &m.backup_id, &bytes, None, &policy()).unwrap_err();
        assert!(
            err.unsigned && err.reason.contains("--allow-unsigned"),
            "{err}"
        );
        let allowing = TrustPolicy {
            allow_unsigned: true,
            ..policy()
        };
        let ok = authenticate("cvat", &m.backup_id, &bytes, None, &allowing).unwrap();
        assert_eq!(ok.authenticity, Authenticity::Unsigned);
        m.format_version = 9;
        let bytes = serde_json::to_vec(&m).unwrap();
        let err = authenticate("cvat", &m.backup_id, &bytes, None, &allowing).unwrap_err();
        assert!(err.reason.contains("newer lifeboat"), "{err}");
        let err = authenticate("cvat", "x", b"garbage", None, &allowing).unwrap_err();
        assert!(err.reason.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn names_paths_and_objects_are_checked_even_when_unsigned() {
        let allowing = TrustPolicy {
            allow_unsigned: true,
            ..Default::default()
        };
        type Change = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "Docker volume name",
                Box::new(|m| m.volumes[0].name = "../etc".into()),
            ),
            (
                "not a plain name",
                Box::new(|m| m.volumes[0].service = "a/b".into()),
            ),
            (
                "clean absolute path",
                Box::new(|m| m.volumes[0].container_path = "/a/../b".into()),
            ),
            (
                "object",
                Box::new(|m| m.volumes[0].object = "../x.tar.zst.age".into()),
            ),
            ("sha256", Box::new(|m| m.volumes[0].sha256 = "zz".into())),
            (
                "splits a volume into segments",
                Box::new(|m| m.volumes[0].segments = 2),
            ),
            (
                "appears twice",
                Box::new(|m| {
                    let copy = m.volumes[0].clone();
                    m.volumes.push(copy);
                }),
            ),
            (
                "does not match its service",
                Box::new(|m| {
                    m.volumes[0].kind = SourceKind::Bind;
                    m.volumes[0].name = "bind:web:/etc".into();
                }),
            ),
            (
                "control characters",
                Box::new(|m| {
                    m.volumes[0].labels.insert("k".into(), "\u{1b}[2J".into());
                }),
            ),
        ];
        for (needle, change) in cases {
            let mut m = sample("20260101T000000.000Z");
            m.format_version = 1;
            change(&mut m);
            let bytes = serde_json::to_vec(&m).unwrap();
            let err = authenticate("cvat", &m.backup_id, &bytes, None, &allowing).unwrap_err();
            assert!(err.reason.contains(needle), "{needle}: {err}");
            assert!(!err.to_string().contains('\u{1b}'), "{err}");
        }
    }
}
