//! Tar check stage: validates a volume's tar stream before anything is written into a live
//! volume.
//!
//! The policy itself is [`PolicyReader`], a pass-through reader that can sit on the stream
//! going into Docker (see the `tar_policy` module docs for the rules). [`check_archive`] reads
//! a whole archive through it and, as a second opinion, parses the same bytes with tokio-tar:
//! both must accept, and both must see the same entries (path, link target, type, size) —
//! Docker extracts with yet another parser (Go's archive/tar), and whatever tar readers read
//! differently is where a check and an extraction can part ways.
//!
//! Where it sits: A stage in `pipeline`: sees `format` for the root metadata it reads.

use super::PipelineError;
pub use super::tar_policy::{
    EntryPolicy, EntryRules, PAX_KEY_PREFIXES, PAX_KEYS, PolicyHandle, PolicyReader,
    PolicyViolation, TargetKind,
};
use super::tar_policy::{SeenEntry, normalize, size_disagreement};
use crate::format::RootMeta;
use futures::StreamExt;
use std::borrow::Cow;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tar::{Archive, EntryType, Header};

/// Reads the root entry from the first 512-byte block of a volume tar, if the archive starts
/// with a plain `./` directory header.
pub fn root_meta(block: &[u8]) -> Option<RootMeta> {
    if block.len() < 512 {
        return None;
    }
    let header = Header::from_byte_slice(&block[..512]);
    if header.entry_type() != EntryType::Directory {
        return None;
    }
    let path = header.path().ok()?;
    if !normalize(&path).ok()?.as_os_str().is_empty() {
        return None;
    }
    Some(RootMeta {
        mode: header.mode().ok()?,
        uid: header.uid().ok()?,
        gid: header.gid().ok()?,
        mtime: header.mtime().ok()?,
    })
}

/// What a checked archive held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarSummary {
    pub entries: u64,
    /// Bytes of file content.
    pub file_bytes: u64,
    /// Bytes of the whole tar stream.
    pub tar_bytes: u64,
}

/// A tar parse error is damaged data unless it came from the store below.
fn tar_error(err: std::io::Error) -> PipelineError {
    match PipelineError::from_read_chain(err) {
        PipelineError::Io(e)
            if !e
                .get_ref()
                .is_some_and(|inner| inner.is::<super::download::StoreReadError>()) =>
        {
            PipelineError::Verification(format!("the tar stream is malformed: {e}"))
        }
        other => other,
    }
}

fn describe(entry: &SeenEntry) -> String {
    let link = entry
        .link
        .as_deref()
        .map(|l| format!(" -> '{}'", String::from_utf8_lossy(l)))
        .unwrap_or_default();
    format!(
        "'{}'{link} (type '{}', {} bytes)",
        String::from_utf8_lossy(&entry.path),
        char::from(entry.kind).escape_default(),
        entry.size
    )
}

/// Reads the whole archive through a [`PolicyReader`] and, as a second opinion, tokio-tar's
/// parser, then reads on to the end of the stream so that the stages before it
/// (decompression, decryption, the hash check) see all of it.
pub async fn check_archive<R>(reader: R, rules: EntryRules) -> Result<TarSummary, PipelineError>
where
    R: AsyncRead + Unpin + Send,
{
    let (policed, handle) = PolicyReader::recording(reader, rules);
    // The policy reader's own message when it refused; tokio-tar's otherwise.
    let failed = |e: std::io::Error| match handle.violation() {
        Some(reason) => PipelineError::Verification(reason),
        None => tar_error(e),
    };
    let mut archive = Archive::new(policed);
    let mut index = 0u64;
    {
        let mut entries = archive.entries().map_err(failed)?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(failed)?;
            let theirs = SeenEntry {
                path: entry.path_bytes().map_err(failed)?.into_owned(),
                link: entry
                    .link_name_bytes()
                    .map_err(failed)?
                    .map(Cow::into_owned),
                kind: entry.header().entry_type().as_byte(),
                size: entry.effective_size(),
            };
            let ustar_size = entry.header().raw_entry_size().map_err(failed)?;
            if let Some(reason) = size_disagreement(ustar_size, theirs.size) {
                return Err(PipelineError::Verification(format!(
                    "bad tar entry '{}': {reason}",
                    String::from_utf8_lossy(&theirs.path)
                )));
            }
            match handle.next_seen() {
                Some(ours) if ours == theirs => {}
                ours => {
                    return Err(PipelineError::Verification(format!(
                        "the tar stream reads differently to different tar parsers: entry {index} is {} to lifeboat's and {} to tokio-tar's",
                        ours.as_ref().map_or("missing".into(), describe),
                        describe(&theirs)
                    )));
                }
            }
            index += 1;
        }
    }
    let mut rest = archive
        .into_inner()
        .map_err(|_| PipelineError::Io(std::io::Error::other("tar reader still shared")))?;
    let mut sink = [0u8; 8192];
    while rest.read(&mut sink).await.map_err(failed)? > 0 {}
    if let Some(ours) = handle.next_seen() {
        return Err(PipelineError::Verification(format!(
            "the tar stream reads differently to different tar parsers: tokio-tar ends after {index} entries, lifeboat's reader goes on with {}",
            describe(&ours)
        )));
    }
    Ok(TarSummary {
        entries: handle.entries(),
        file_bytes: handle.file_bytes(),
        tar_bytes: handle.tar_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (path, type, content, link target) of a test archive entry.
    type TestEntry<'a> = (&'a str, EntryType, &'a [u8], Option<&'a str>);

    fn header(path: &str, kind: EntryType, size: u64, link: Option<&str>) -> Header {
        let mut h = Header::new_gnu();
        // set_path refuses '..' itself, so write the raw name like a hostile archive would.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        h
    }

    async fn archive(entries: &[TestEntry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, kind, data, link) in entries {
            let h = header(path, *kind, data.len() as u64, *link);
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    async fn check(entries: &[TestEntry<'_>]) -> Result<TarSummary, PipelineError> {
        let bytes = archive(entries).await;
        check_archive(&bytes[..], EntryRules::default()).await
    }

    /// A PAX header block carrying `records`, as a hostile archive would write it.
    fn pax_block(records: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (key, value) in records {
            let line_len = key.len() + value.len() + 3;
            let mut len = line_len + line_len.to_string().len();
            if len.to_string().len() != line_len.to_string().len() {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
        }
        let mut h = Header::new_ustar();
        h.set_path("PaxHeaders/x").unwrap();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&body);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[tokio::test]
    async fn pax_headers_that_disagree_with_ustar_are_refused() {
        // TARmageddon: ustar says 0 bytes, PAX says 1024 — a parser that trusts the ustar
        // field would read the file's data as the next header.
        let mut bytes = pax_block(&[("size", "1024")]);
        bytes.extend_from_slice(header("./f", EntryType::Regular, 0, None).as_bytes());
        bytes.extend_from_slice(&[b'x'; 1024]);
        bytes.extend_from_slice(&[0u8; 1024]);
        let err = check_archive(&bytes[..], EntryRules::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("disagrees with its ustar size"), "{err}");

        // A PAX path is what Docker (Go) extracts too, so it is the one validated.
        let mut bytes = pax_block(&[("path", "../../etc/cron.d/x")]);
        bytes.extend_from_slice(header("./harmless", EntryType::Regular, 1, None).as_bytes());
        bytes.extend_from_slice(&[b'x'; 512]);
        bytes.extend_from_slice(&[0u8; 1024]);
        let err = check_archive(&bytes[..], EntryRules::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("contains '..'"), "{err}");
    }

    #[tokio::test]
    async fn huge_or_negative_sizes_are_refused() {
        for size_field in [*b"77777777777\0", [0xff; 12]] {
            let mut h = header("./f", EntryType::Regular, 0, None);
            h.as_old_mut().size = size_field;
            h.set_cksum();
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(&[b'x'; 512]);
            bytes.extend_from_slice(&[0u8; 1024]);
            assert!(
                check_archive(&bytes[..], EntryRules::default())
                    .await
                    .is_err()
            );
        }
    }

    #[tokio::test]
    async fn a_docker_style_archive_passes() {
        let summary = check(&[
            ("./", EntryType::Directory, b"", None),
            ("./a/", EntryType::Directory, b"", None),
            ("./a/f", EntryType::Regular, b"hello", None),
            ("./a/l", EntryType::Symlink, b"", Some("/etc/passwd")),
            ("./hl", EntryType::Link, b"", Some("./a/f")),
            ("./fifo", EntryType::Fifo, b"", None),
        ])
        .await
        .unwrap();
        assert_eq!(summary.entries, 6);
        assert_eq!(summary.file_bytes, 5);
        assert_eq!(summary.tar_bytes, 7 * 512 + 1024);
    }

    #[tokio::test]
    async fn the_target_kind_reaches_the_policy() {
        let bytes = archive(&[("./dev/null", EntryType::Char, b"", None)]).await;
        let volume = EntryRules {
            target: TargetKind::Volume,
        };
        let bind = EntryRules {
            target: TargetKind::Bind,
        };
        assert_eq!(check_archive(&bytes[..], volume).await.unwrap().entries, 1);
        let err = check_archive(&bytes[..], bind).await.unwrap_err();
        assert!(
            matches!(&err, PipelineError::Verification(m) if m.contains("device node")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn the_policy_reader_explains_its_refusal_through_tokio_tar() {
        // tokio-tar alone reads this GNU.sparse-renamed entry as './f'; Go as 'evil'.
        let mut bytes = pax_block(&[("GNU.sparse.name", "../evil"), ("GNU.sparse.map", "0,1")]);
        bytes.extend_from_slice(header("./f", EntryType::Regular, 1, None).as_bytes());
        bytes.extend_from_slice(&[b'x'; 512]);
        bytes.extend_from_slice(&[0u8; 1024]);
        let err = check_archive(&bytes[..], EntryRules::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("GNU sparse"), "{err}");
    }

    #[tokio::test]
    async fn hostile_entries_are_refused() {
        let cases: Vec<(&str, Vec<TestEntry>)> = vec![
            ("..", vec![("./../escape", EntryType::Regular, b"x", None)]),
            (
                "absolute",
                vec![("/etc/cron.d/x", EntryType::Regular, b"x", None)],
            ),
            (
                "symlink",
                vec![
                    ("./l", EntryType::Symlink, b"", Some("/etc")),
                    ("./l/passwd", EntryType::Regular, b"x", None),
                ],
            ),
            (
                "hardlink",
                vec![("./h", EntryType::Link, b"", Some("/etc/shadow"))],
            ),
            (
                "hardlink",
                vec![("./h", EntryType::Link, b"", Some("./later"))],
            ),
            ("root", vec![("./", EntryType::Regular, b"x", None)]),
        ];
        for (what, entries) in cases {
            let err = check(&entries)
                .await
                .err()
                .unwrap_or_else(|| panic!("{what} accepted"));
            assert!(
                matches!(err, PipelineError::Verification(_)),
                "{what}: {err:?}"
            );
            assert!(err.to_string().contains("bad tar entry"), "{what}: {err}");
        }
    }

    #[tokio::test]
    async fn a_symlink_replaced_by_a_directory_is_fine() {
        check(&[
            ("./l", EntryType::Symlink, b"", Some("/tmp")),
            ("./l/", EntryType::Directory, b"", None),
            ("./l/f", EntryType::Regular, b"x", None),
        ])
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn garbage_and_truncation_fail_as_verification() {
        let err = check_archive(&[0x55u8; 2048][..], EntryRules::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, PipelineError::Verification(_)), "{err:?}");
        let full = archive(&[("./f", EntryType::Regular, &[1u8; 5000], None)]).await;
        let err = check_archive(&full[..1500], EntryRules::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, PipelineError::Verification(_)), "{err:?}");
    }

    #[tokio::test]
    async fn root_meta_is_read_from_the_first_block() {
        let mut h = header("./", EntryType::Directory, 0, None);
        h.set_mode(0o700);
        h.set_uid(999);
        h.set_gid(998);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        let meta = root_meta(h.as_bytes()).unwrap();
        assert_eq!(
            meta,
            RootMeta {
                mode: 0o700,
                uid: 999,
                gid: 998,
                mtime: 1_600_000_000
            }
        );
        let file = header("./f", EntryType::Regular, 0, None);
        assert!(root_meta(file.as_bytes()).is_none());
    }
}
