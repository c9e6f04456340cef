//! The config-file parser, with its nearest-key suggestion, on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat::config::ConfigFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ConfigFile::parse(text);
    }
});
