//! The manifest reader (a file an attacker with bucket access can replace) on arbitrary bytes:
//! an error or a manifest, never a panic; and whatever it accepts without a signature (format
//! 1 with --allow-unsigned) passed every name, path and object rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat::manifest::{TrustPolicy, authenticate, check};

fuzz_target!(|data: &[u8]| {
    let policy = TrustPolicy {
        allow_unsigned: true,
        ..Default::default()
    };
    if let Ok(found) = authenticate("app", "20260101T000000.000Z", data, None, &policy) {
        assert!(check(&found.manifest, "app", "20260101T000000.000Z").is_ok());
        // One path segment that cannot climb out of the backup's folder: no '/', and not "."
        // or ".." (a ".." inside a name, as in the volume "a..b", is only a name).
        for record in &found.manifest.volumes {
            let object = record.object.as_str();
            assert!(!object.contains('/') && object != "." && object != "..");
        }
    }
});
