//! The backup-side end-of-archive check on arbitrary bytes: it passes every byte through
//! unchanged and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat::pipeline::tar_end::TarEndCheck;
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    let mut checked = TarEndCheck::new(data);
    let mut out = Vec::new();
    if futures::executor::block_on(checked.read_to_end(&mut out)).is_ok() {
        assert_eq!(out, data);
    }
});
