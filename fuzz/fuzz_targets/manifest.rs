//! The manifest parser (a file an attacker with bucket access can replace) on arbitrary bytes:
//! an error or a manifest, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::from_slice("fuzz/manifest.json", data);
});
