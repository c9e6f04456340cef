//! The restore-side tar validation on arbitrary bytes (the first byte picks the target kind):
//! it must return, never panic or hang, and whatever it accepts must obey the policy — checked
//! here independently, on tokio-tar's reading of the accepted bytes.
#![no_main]

use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use lifeboat::pipeline::tar_check::{EntryRules, TargetKind, check_archive};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use tokio_tar::{Archive, EntryType};

#[derive(Clone, Copy, PartialEq)]
enum Node {
    File,
    Symlink,
    Other,
}

fn relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            other => panic!("accepted a path with {other:?}: {}", path.display()),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, archive)) = data.split_first() else {
        return;
    };
    let target = if first & 1 == 1 {
        TargetKind::Bind
    } else {
        TargetKind::Volume
    };
    let rules = EntryRules { target };
    let Ok(summary) = futures::executor::block_on(check_archive(archive, rules)) else {
        return;
    };
    assert_eq!(summary.tar_bytes, archive.len() as u64);
    assert!(summary.entries > 0);
    futures::executor::block_on(async {
        let mut parsed = Archive::new(archive);
        let mut entries = parsed.entries().expect("re-parse");
        // Non-directories the archive created, as Docker would have them.
        let mut tree: BTreeMap<PathBuf, Node> = BTreeMap::new();
        let mut count = 0;
        while let Some(entry) = entries.next().await {
            let mut entry = entry.expect("tokio-tar reads what the check accepted");
            count += 1;
            let header = entry.header().clone();
            let kind = header.entry_type();
            assert!(
                !matches!(
                    kind,
                    EntryType::XGlobalHeader | EntryType::GNUSparse | EntryType::Continuous
                ),
                "accepted a {kind:?} entry"
            );
            if let Some(pax) = entry.pax_extensions().await.expect("PAX records") {
                for record in pax {
                    let key = record.expect("PAX record").key_bytes().to_vec();
                    assert!(!key.starts_with(b"GNU.sparse."), "accepted GNU.sparse");
                    if target == TargetKind::Bind {
                        assert_ne!(&key[..], b"SCHILY.xattr.security.capability");
                    }
                }
            }
            if target == TargetKind::Bind {
                assert!(!matches!(kind, EntryType::Char | EntryType::Block));
                assert_eq!(header.mode().unwrap() & 0o6000, 0, "setuid/setgid");
            }
            if !matches!(kind, EntryType::Regular) {
                assert_eq!(entry.effective_size(), 0, "data on a {kind:?}");
            }
            let path = relative(&entry.path().unwrap());
            for ancestor in path.ancestors().skip(1) {
                assert!(
                    tree.get(ancestor).is_none(),
                    "accepted {} below a non-directory",
                    path.display()
                );
            }
            if path.as_os_str().is_empty() {
                assert_eq!(kind, EntryType::Directory, "root is not a directory");
                continue;
            }
            if kind == EntryType::Directory {
                tree.remove(&path);
                continue;
            }
            let stale: Vec<PathBuf> = tree
                .keys()
                .filter(|p| p.starts_with(&path))
                .cloned()
                .collect();
            for p in stale {
                tree.remove(&p);
            }
            let node = match kind {
                EntryType::Link => {
                    let target = relative(&entry.link_name().unwrap().expect("link target"));
                    // Any earlier non-directory; the link is what its target is.
                    *tree.get(&target).unwrap_or_else(|| {
                        panic!(
                            "hardlink {} to {}, not an earlier non-directory",
                            path.display(),
                            target.display()
                        )
                    })
                }
                EntryType::Regular => Node::File,
                EntryType::Symlink => Node::Symlink,
                _ => Node::Other,
            };
            tree.insert(path, node);
        }
        assert_eq!(count, summary.entries);
    });
});
