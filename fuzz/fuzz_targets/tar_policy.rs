//! The restore-side policy reader as a pass-through on arbitrary bytes (the first byte picks
//! the target kind and the read size): it never panics, an accepted stream comes out
//! byte for byte, and a refused one keeps failing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat::pipeline::tar_check::{EntryRules, PolicyReader, TargetKind};
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    let Some((&first, archive)) = data.split_first() else {
        return;
    };
    let target = if first & 1 == 1 {
        TargetKind::Bind
    } else {
        TargetKind::Volume
    };
    let chunk = usize::from(first >> 1) + 1;
    let (mut reader, handle) = PolicyReader::new(archive, EntryRules { target });
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    let verdict = futures::executor::block_on(async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    });
    match verdict {
        Ok(()) => {
            assert_eq!(out, archive);
            assert_eq!(handle.tar_bytes(), archive.len() as u64);
            assert!(handle.entries() > 0);
            assert_eq!(handle.first_block(), archive[..512.min(archive.len())].to_vec());
        }
        Err(first) => {
            assert!(archive.starts_with(&out), "only a prefix passed");
            let again = futures::executor::block_on(reader.read(&mut buf)).unwrap_err();
            assert_eq!(again.to_string(), first.to_string());
            assert_eq!(handle.violation(), Some(first.to_string()));
        }
    }
});
