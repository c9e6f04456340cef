//! The manifest: the self-describing record of one backup, and where things live in the bucket.
//!
//! Layout under the store's prefix:
//! ```text
//! <app>/<backup id>/<volume>.<tar.zst|tar.gz|tar>.age   one object per volume, written first
//! <app>/<backup id>/manifest.json.sig                   the manifest's SSH signature
//! <app>/<backup id>/manifest.json                       written last: the commit point
//! ```
//! A backup without its manifest is incomplete and is never listed or restored. The backup id is
//! a sortable UTC timestamp (milliseconds), so the newest backup is the greatest id.
//!
//! Nothing read from the bucket is believed until [`authenticate`] has checked it: the
//! signature over the exact manifest bytes under a key the operator gave ([`crate::auth`]),
//! the app and backup id against the place the manifest lies, and every name, path and digest
//! against the rules restore relies on. Format-1 manifests (written before lifeboat signed
//! anything) are accepted only when the operator names one and says so (`--allow-unsigned
//! --backup ID`): never as "the newest", never counted by prune, since a bucket writer can add
//! one today.

use crate::auth::{AuthFailure, Signer, Trust};
use crate::format::{
    FORMAT, FORMAT_VERSION, MANIFEST_NAME, Manifest, SIGNED_FORMAT, SourceKind, VolumeRecord,
};
use crate::store::Layout;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::Deserialize;
use std::sync::Arc;

/// Checks everything restore relies on, whoever wrote the manifest: that it lies where it
/// says (`app`, `backup_id`), and that every name, path, object and digest in it is one
/// lifeboat could have written. Returns the first problem.
pub fn check(manifest: &Manifest, app: &str, backup_id: &str) -> Result<(), String> {
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
    if record.sha256.len() != 64
        || !record
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "volume {name}: sha256 is not 64 lowercase hex digits"
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

/// Writes the signature, then the manifest (the commit point); refuses to overwrite either.
pub async fn write_signed(
    store: &Arc<dyn ObjectStore>,
    layout: &Layout,
    manifest: &Manifest,
    signer: &Signer,
) -> anyhow::Result<()> {
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let key = layout.manifest(&manifest.app, &manifest.backup_id);
    let body = serde_json::to_vec_pretty(manifest)?;
    let sig_key = layout.signature(&manifest.app, &manifest.backup_id);
    store
        .put_opts(&sig_key, signer.sign(&body).into_bytes().into(), create())
        .await
        .map_err(|e| anyhow::anyhow!("cannot write the manifest's signature {sig_key}: {e}"))?;
    store
        .put_opts(&key, body.into(), create())
        .await
        .map_err(|e| anyhow::anyhow!("cannot write manifest {key}: {e}"))?;
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
/// be accepted).
fn authenticate_as(
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

/// A backup found in the store and what [`authenticate`] made of it.
pub struct Listed {
    pub app: String,
    pub backup_id: String,
    pub outcome: Result<Authenticated, NotAuthentic>,
}

/// Every complete backup under the store's prefix (optionally of one app), oldest first per
/// app, each authenticated under `policy`. Only a failure to list the store is an error.
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    layout: &Layout,
    app: Option<&str>,
    policy: &TrustPolicy,
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
        let Some((app, backup_id)) = layout.ids_of(&meta.location) else {
            continue;
        };
        let outcome = fetch(store, layout, &app, &backup_id)
            .await
            .map_err(|e| NotAuthentic {
                app: crate::text::printable(&app),
                backup_id: crate::text::printable(&backup_id),
                reason: format!("its manifest cannot be read ({e})"),
                unsigned: false,
            })
            .and_then(|(bytes, sig)| {
                authenticate_as(&app, &backup_id, &bytes, sig.as_deref(), policy, false)
            });
        listed.push(Listed {
            app,
            backup_id,
            outcome,
        });
    }
    listed.sort_by(|a, b| (&a.app, &a.backup_id).cmp(&(&b.app, &b.backup_id)));
    Ok(listed)
}

/// The newest backup of `app` that authenticates, looking at no more than a few of the newest
/// (cheap: one listing, then a manifest or two).
pub async fn newest_genuine(
    store: &Arc<dyn ObjectStore>,
    layout: &Layout,
    app: &str,
    policy: &TrustPolicy,
) -> anyhow::Result<Option<Authenticated>> {
    let dir = layout.app_dir(app);
    let listing = store
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(|e| anyhow::anyhow!("cannot list backups under '{dir}': {e}"))?;
    let mut ids: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .filter(|id| id != "locks" && crate::text::is_plain_name(id))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    for id in ids.iter().take(5) {
        if let Ok((bytes, sig)) = fetch(store, layout, app, id).await
            && let Ok(found) = authenticate_as(app, id, &bytes, sig.as_deref(), policy, false)
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The manifest's bytes and its signature's (if any).
async fn fetch(
    store: &Arc<dyn ObjectStore>,
    layout: &Layout,
    app: &str,
    backup_id: &str,
) -> Result<(bytes::Bytes, Option<bytes::Bytes>), object_store::Error> {
    let bytes = store
        .get(&layout.manifest(app, backup_id))
        .await?
        .bytes()
        .await?;
    let sig = match store.get(&layout.signature(app, backup_id)).await {
        Ok(got) => Some(got.bytes().await?),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok((bytes, sig))
}

/// Reads and authenticates one backup's manifest; `None` picks the newest backup of `app`,
/// which must be genuine: a newer backup that is not is reported (exit 4), never skipped.
pub async fn read(
    store: &Arc<dyn ObjectStore>,
    layout: &Layout,
    app: &str,
    backup_id: Option<&str>,
    policy: &TrustPolicy,
) -> anyhow::Result<Authenticated> {
    let Some(id) = backup_id else {
        let all = list(store, layout, Some(app), policy).await?;
        let newest = all.last().ok_or_else(|| {
            crate::error::usage(format!(
                "no complete backup of '{app}' under {}; check --project/--name and the store URL, or run `lifeboat list` to see what is there",
                layout.app_dir(app)
            ))
        })?;
        return match &newest.outcome {
            Ok(found) => Ok(found.clone()),
            Err(refused) => {
                let genuine = all.iter().rev().find(|l| l.outcome.is_ok());
                let hint = match genuine {
                    Some(g) => format!(
                        "; the newest genuine backup is {}: pass --backup {} to restore it",
                        g.backup_id, g.backup_id
                    ),
                    None => String::new(),
                };
                Err(crate::error::verification(format!("{refused}{hint}")))
            }
        };
    };
    if !crate::text::is_plain_name(id) {
        return Err(crate::error::usage(format!(
            "'{}' is not a backup id; run `lifeboat list` to see the backups there are",
            crate::text::printable(id)
        )));
    }
    let key = layout.manifest(app, id);
    let (bytes, sig) = match fetch(store, layout, app, id).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(crate::error::usage(format!(
                "backup '{id}' of '{app}' not found (no {key}); run `lifeboat list` to see the backups there are"
            )));
        }
        Err(e) => return Err(anyhow::anyhow!("cannot read {key}: {e}")),
    };
    authenticate(app, id, &bytes, sig.as_deref(), policy)
        .map_err(|refused| crate::error::verification(refused.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::{
        AppVersion, Compression, Encryption, VolumeRecord, new_backup_id, object_name,
    };
    use chrono::Utc;
    use object_store::memory::InMemory;
    use object_store::path::Path;
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
            }],
            signer: None,
        }
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

    fn store() -> (Arc<dyn ObjectStore>, Layout) {
        (
            Arc::new(InMemory::new()),
            Layout {
                prefix: Path::from("pre"),
            },
        )
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

    #[tokio::test]
    async fn write_list_read_newest_and_a_forged_newest_is_reported() {
        let (store, layout) = store();
        for id in [
            "20260101T000000.000Z",
            "20260301T000000.000Z",
            "20260201T000000.000Z",
        ] {
            write_signed(&store, &layout, &sample(id), &signer())
                .await
                .unwrap();
        }
        // an incomplete backup: objects, no manifest
        store
            .put(
                &layout.object("cvat", "20260401T000000.000Z", "v.tar.zst.age"),
                b"x".to_vec().into(),
            )
            .await
            .unwrap();
        let listed = list(&store, &layout, None, &policy()).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|l| l.outcome.is_ok()));
        let newest = read(&store, &layout, "cvat", None, &policy())
            .await
            .unwrap();
        assert_eq!(newest.manifest.backup_id, "20260301T000000.000Z");
        assert!(
            write_signed(&store, &layout, &sample("20260101T000000.000Z"), &signer())
                .await
                .is_err(),
            "no overwrite"
        );
        let err = read(&store, &layout, "cvat", Some("nope"), &policy())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found"), "{err}");
        let err = read(&store, &layout, "other", None, &policy())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no complete backup of 'other'"), "{err}");

        // A forged newest backup (signed by another key) is reported, with the way out.
        write_signed(
            &store,
            &layout,
            &sample("20991231T000000.000Z"),
            &Signer::from_seed(&[9u8; 32]),
        )
        .await
        .unwrap();
        let err = read(&store, &layout, "cvat", None, &policy())
            .await
            .unwrap_err();
        assert_eq!(
            crate::error::classified(&err),
            Some(crate::error::ExitClass::Verification)
        );
        let text = err.to_string();
        assert!(
            text.contains("20991231T000000.000Z") && text.contains("--backup 20260301T000000.000Z"),
            "{text}"
        );
        let listed = list(&store, &layout, Some("cvat"), &policy())
            .await
            .unwrap();
        assert_eq!(listed.iter().filter(|l| l.outcome.is_err()).count(), 1);
    }
}
