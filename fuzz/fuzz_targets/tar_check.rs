//! The restore-side tar validation (entry policy, PAX/ustar agreement, truncation) on
//! arbitrary bytes: it must return, never panic or hang, and never accept an archive whose
//! entries break the policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat::pipeline::tar_check::check_archive;

fuzz_target!(|data: &[u8]| {
    let _ = futures::executor::block_on(check_archive(data));
});
