//! The chunk-list reader (format 5: the text of a list object, which the signed manifest binds
//! by sha256, read only after that check) on arbitrary bytes: an error or chunks, never a
//! panic; and what it accepts is exactly what lifeboat writes for those chunks, byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat::format::{list_text, parse_list};

fuzz_target!(|data: &[u8]| {
    if let Ok(chunks) = parse_list(data) {
        assert_eq!(list_text(&chunks), data);
    }
});
