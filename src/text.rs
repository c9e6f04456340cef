//! Text from the bucket, made safe to print: names and paths in a manifest are chosen by
//! whoever wrote the manifest, and a terminal interprets escape sequences in what it prints.
//! Every manifest string that `list`, `show`, `verify` or an error message prints goes through
//! [`printable`] first. A leaf module: it depends on nothing in the crate.

use std::fmt;

/// `text` with control characters (C0, DEL, C1) and the Unicode characters that reorder or
/// hide text (bidi overrides, zero-width marks) escaped as `\u{…}`; everything else as is.
pub fn printable(text: &str) -> String {
    Printable(text).to_string()
}

/// Displays a string with [`printable`]'s escaping, without allocating.
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if is_unsafe(c) {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c as u32, 0x200b..=0x200f | 0x202a..=0x202e | 0x2066..=0x2069 | 0xfeff)
}

/// Whether `name` follows Docker's rule for volume names, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn is_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 255
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Whether `name` is a plain name: compose services, container names and backup ids, which
/// become parts of object keys and messages. ASCII letters, digits, `_`, `.`, `-`; not `.`
/// or `..`; at most 255 bytes.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Whether `path` is an absolute container path without `.`/`..` components, empty
/// components, or control characters.
pub fn is_clean_absolute_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 4096
        && !path.chars().any(is_unsafe)
        && (path == "/"
            || path[1..]
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != ".."))
}

/// `text` with every URL cut to its scheme and host (`https://hooks.example/…`): paths,
/// queries and user info often carry tokens. For text that leaves lifeboat (notifications).
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
            .map_or(0, |i| i + 1);
        let after = &rest[at + 3..];
        let end = after
            .find(|c: char| c.is_whitespace() || "\"'<>`)".contains(c))
            .unwrap_or(after.len());
        let authority = &after[..end];
        let host_part = authority.split(['/', '?', '#']).next().unwrap_or("");
        let host = host_part.rsplit('@').next().unwrap_or("");
        out.push_str(&rest[..scheme_start]);
        out.push_str(&rest[scheme_start..at]);
        out.push_str("://");
        out.push_str(host);
        if authority.len() > host_part.len() || host_part.contains('@') {
            out.push('…');
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `text` cut to at most `max` bytes (at a character boundary), saying so.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// Bytes for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_never_reach_the_terminal() {
        assert_eq!(printable("plain name-1.2"), "plain name-1.2");
        assert_eq!(printable("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("line\nfeed\r"), "line\\u{a}feed\\u{d}");
        assert_eq!(printable("\u{202e}txt.exe"), "\\u{202e}txt.exe");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("ünïcödé"), "ünïcödé");
    }

    #[test]
    fn urls_lose_everything_but_their_host() {
        assert_eq!(
            redact_urls("failed: https://user:pw@hooks.example/T/B/x?token=1 then http://h:8/p"),
            "failed: https://hooks.example… then http://h:8…"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(redact_urls("s3://bucket"), "s3://bucket");
        assert_eq!(bounded("héllo", 2), "h… (5 more bytes)");
        assert_eq!(bounded("ok", 10), "ok");
    }

    #[test]
    fn names_and_paths() {
        for good in ["cvat_cvat_db", "a1", "x.y-z_0"] {
            assert!(is_volume_name(good), "{good}");
        }
        for bad in ["", "a", "_a", "a/b", "..", "a b", "a\x1b", &"a".repeat(256)] {
            assert!(!is_volume_name(bad), "{bad}");
        }
        assert!(is_plain_name("web") && is_plain_name("20261122T030000.123Z"));
        for bad in ["", ".", "..", "a/b", "a b", "a\n"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
        for good in ["/", "/etc/gitlab", "/var/lib/postgresql/data"] {
            assert!(is_clean_absolute_path(good), "{good}");
        }
        for bad in ["", "etc", "/etc/../x", "/etc//x", "/etc/", "/./x", "/a\x1b"] {
            assert!(!is_clean_absolute_path(bad), "{bad}");
        }
    }
}
