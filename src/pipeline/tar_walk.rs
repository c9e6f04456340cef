//! The chain of tar headers, followed without copying: a header block, the entry's data rounded
//! up to 512 bytes, the next header, and so on to the end-of-archive marker. Shared by the
//! backup-side end check ([`super::tar_end`]) and the restore-side entry policy
//! ([`super::tar_check::PolicyReader`]), which differ only in what they do with each header.
//!
//! Also here: the header fields both of those read, parsed the strict way — only encodings that
//! Go's archive/tar (what dockerd extracts with) and tokio-tar read as the same value.
//!
//! Where it sits: Inside `pipeline`, under `tar_check` and `tar_policy`: the header walk they
//! share.

use std::io;

pub(crate) const BLOCK: usize = 512;

/// What follows a header, as the visitor decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// This many bytes of entry data, passed over.
    Skip(u64),
    /// This many bytes of metadata (a PAX header's records, a GNU long name), collected and
    /// handed to [`Visit::payload`]. The visitor bounds it.
    Collect(u64),
}

/// What the walker tells about the archive as it goes.
pub(crate) trait Visit {
    /// A header block (not all zeros) starting at byte `at`.
    fn header(&mut self, block: &[u8; BLOCK], at: u64) -> io::Result<Body>;
    /// The data of the last header that asked for [`Body::Collect`], without its padding.
    fn payload(&mut self, data: &[u8]) -> io::Result<()>;
    /// A zero block where a header was due: the end-of-archive marker starts at `at`.
    fn end_marker(&mut self, at: u64) -> io::Result<()>;
    /// The error for a stream that is not a well-formed tar (the visitor picks its type).
    fn malformed(&self, message: String) -> io::Error;
}

/// Where in the archive the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Collecting a 512-byte header block.
    Header,
    /// Passing over this many bytes of entry data and padding.
    Skip(u64),
    /// Collecting metadata: this many bytes still to come, then this much padding.
    Collect { left: u64, padding: u64 },
    /// After a zero block where a header was due, with the number of zero bytes seen. Only
    /// zeros may follow (the marker's second block, record padding).
    End(u64),
}

/// Follows the headers of a tar stream fed to it piece by piece.
pub(crate) struct Walker {
    position: Position,
    block: [u8; BLOCK],
    filled: usize,
    payload: Vec<u8>,
    offset: u64,
}

impl Default for Walker {
    fn default() -> Self {
        Self {
            position: Position::Header,
            block: [0; BLOCK],
            filled: 0,
            payload: Vec::new(),
            offset: 0,
        }
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl Walker {
    /// Bytes seen so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the stream may end here: after both zero blocks of the end-of-archive marker.
    pub fn complete(&self) -> bool {
        matches!(self.position, Position::End(zeros) if zeros >= 2 * BLOCK as u64)
    }

    /// Whether the first zero block of the end-of-archive marker was seen.
    pub fn at_end_marker(&self) -> bool {
        matches!(self.position, Position::End(_))
    }

    pub fn advance<V: Visit>(&mut self, mut data: &[u8], visitor: &mut V) -> io::Result<()> {
        while !data.is_empty() {
            match self.position {
                Position::Skip(left) => {
                    let take = left.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.offset += take;
                    self.position = if left == take {
                        Position::Header
                    } else {
                        Position::Skip(left - take)
                    };
                }
                Position::Collect { left, padding } => {
                    let take = left.min(data.len() as u64);
                    self.payload.extend_from_slice(&data[..take as usize]);
                    data = &data[take as usize..];
                    self.offset += take;
                    if left == take {
                        self.finish_payload(padding, visitor)?;
                    } else {
                        self.position = Position::Collect {
                            left: left - take,
                            padding,
                        };
                    }
                }
                Position::End(zeros) => {
                    if let Some(at) = data.iter().position(|b| *b != 0) {
                        return Err(visitor.malformed(format!(
                            "data after the end-of-archive marker at byte {}",
                            self.offset + at as u64
                        )));
                    }
                    self.offset += data.len() as u64;
                    self.position = Position::End(zeros + data.len() as u64);
                    return Ok(());
                }
                Position::Header => {
                    let take = (BLOCK - self.filled).min(data.len());
                    self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
                    self.filled += take;
                    self.offset += take as u64;
                    data = &data[take..];
                    if self.filled < BLOCK {
                        continue;
                    }
                    self.filled = 0;
                    let at = self.offset - BLOCK as u64;
                    if self.block.iter().all(|b| *b == 0) {
                        self.position = Position::End(BLOCK as u64);
                        visitor.end_marker(at)?;
                        continue;
                    }
                    match visitor.header(&self.block, at)? {
                        Body::Skip(size) => {
                            let padded = size.checked_add(padding(size)).ok_or_else(|| {
                                visitor.malformed(format!("entry size overflow at byte {at}"))
                            })?;
                            if padded > 0 {
                                self.position = Position::Skip(padded);
                            }
                        }
                        Body::Collect(size) => {
                            self.payload.clear();
                            if size == 0 {
                                self.finish_payload(0, visitor)?;
                            } else {
                                self.position = Position::Collect {
                                    left: size,
                                    padding: padding(size),
                                };
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn finish_payload<V: Visit>(&mut self, padding: u64, visitor: &mut V) -> io::Result<()> {
        self.position = if padding > 0 {
            Position::Skip(padding)
        } else {
            Position::Header
        };
        let payload = std::mem::take(&mut self.payload);
        let result = visitor.payload(&payload);
        self.payload = payload;
        self.payload.clear();
        result
    }
}

/// The magic of a header, as both readers tell formats apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `ustar\0` `00`: POSIX ustar, which PAX extends; the name may have a prefix.
    Ustar,
    /// `ustar ` ` \0`: the GNU format; no prefix, atime and ctime in its place.
    Gnu,
}

/// The header's format, or why it is one the two readers could read differently: Go's
/// archive/tar takes `ustar\0` with any version as ustar (joining the prefix to the name) where
/// tokio-tar wants version `00`; a `tar\0` trailer makes Go read the shorter star prefix; a
/// header with neither magic is pre-POSIX tar, which nothing lifeboat restores writes.
pub(crate) fn format(block: &[u8; BLOCK]) -> Result<Format, &'static str> {
    let (magic, version) = (&block[257..263], &block[263..265]);
    match (magic, version) {
        (b"ustar\0", b"00") if &block[508..512] == b"tar\0" => {
            Err("it is a star header (its prefix field is read differently by tar readers)")
        }
        (b"ustar\0", b"00") => Ok(Format::Ustar),
        (b"ustar ", b" \0") => Ok(Format::Gnu),
        (b"ustar\0", _) => Err("it has the ustar magic with a version other than 00"),
        _ => Err("it is neither a ustar nor a GNU tar header"),
    }
}

/// Whether the checksum field holds the unsigned sum of the header's bytes (Go also accepts a
/// signed sum, tokio-tar does not; Docker writes the unsigned one).
pub(crate) fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let computed: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum();
    octal(&block[148..156]) == Some(computed)
}

/// A numeric header field in octal, or in GNU base-256 (the first byte `0x80`, for sizes of
/// 8 GiB and more and large ids): `None` for anything else, including encodings Go and
/// tokio-tar read as different values (tokio-tar reads only the last 8 bytes of a base-256
/// field, Go all of them; Go trims leading NULs, tokio-tar stops at the first) and negative
/// numbers.
pub(crate) fn numeric(field: &[u8]) -> Option<u64> {
    if field.first()? & 0x80 != 0 {
        if field[0] != 0x80 {
            return None;
        }
        let rest = &field[1..];
        let (high, low) = rest.split_at(rest.len().saturating_sub(8));
        if high.iter().any(|b| *b != 0) || (low.len() == 8 && low[0] & 0x80 != 0) {
            return None;
        }
        return Some(low.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)));
    }
    octal(field)
}

/// Octal digits, optionally led by spaces and followed only by spaces and NULs; a field of only
/// spaces and NULs is 0.
pub(crate) fn octal(field: &[u8]) -> Option<u64> {
    let start = field.iter().position(|b| *b != b' ').unwrap_or(field.len());
    let digits = field[start..]
        .iter()
        .position(|b| !(b'0'..=b'7').contains(b))
        .unwrap_or(field.len() - start);
    let rest = &field[start + digits..];
    if !rest.iter().all(|b| *b == b' ' || *b == 0) {
        return None;
    }
    if digits == 0 {
        return field.iter().all(|b| *b == b' ' || *b == 0).then_some(0);
    }
    let text = std::str::from_utf8(&field[start..start + digits]).ok()?;
    u64::from_str_radix(text, 8).ok()
}

/// The bytes of a NUL-terminated header string field.
pub(crate) fn c_string(field: &[u8]) -> &[u8] {
    field
        .iter()
        .position(|b| *b == 0)
        .map_or(field, |end| &field[..end])
}

/// The records of a PAX extended header, `"<length> <key>=<value>\n"` each, read strictly:
/// a decimal length without sign or leading zero that covers the whole record, a newline at its
/// end, a non-empty key before the first `=`.
pub(crate) fn pax_records(data: &[u8]) -> PaxRecords<'_> {
    PaxRecords { rest: data }
}

pub(crate) struct PaxRecords<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PaxRecords<'a> {
    /// `(key, value)` or why the record is malformed.
    type Item = Result<(&'a [u8], &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let record = split_record(self.rest);
        self.rest = match record {
            Ok((_, _, rest)) => rest,
            Err(_) => &[],
        };
        Some(record.map(|(key, value, _)| (key, value)))
    }
}

#[allow(clippy::type_complexity)]
fn split_record(data: &[u8]) -> Result<(&[u8], &[u8], &[u8]), &'static str> {
    const BAD_LENGTH: &str = "a PAX record has a malformed length";
    let space = data
        .iter()
        .take(20)
        .position(|b| *b == b' ')
        .ok_or(BAD_LENGTH)?;
    let digits = &data[..space];
    if digits.is_empty() || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD_LENGTH);
    }
    let len: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(BAD_LENGTH)?;
    if len < 5 || len > data.len() || len < space + 2 {
        return Err("a PAX record's length does not fit the header");
    }
    let (record, rest) = data.split_at(len);
    let body = record
        .strip_suffix(b"\n")
        .ok_or("a PAX record does not end with a newline")?;
    let body = &body[space + 1..];
    let equals = body
        .iter()
        .position(|b| *b == b'=')
        .ok_or("a PAX record has no '='")?;
    if equals == 0 {
        return Err("a PAX record has an empty key");
    }
    Ok((&body[..equals], &body[equals + 1..], rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_only_when_both_readers_agree() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"  644 \0"), Some(0o644));
        assert_eq!(octal(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(octal(b"00000000012\0"), Some(10));
        // Go trims leading NULs, tokio-tar stops at the first: they differ.
        assert_eq!(octal(b"\0\x000644"), None);
        assert_eq!(octal(b"0644 x\0"), None);
        assert_eq!(octal(b"0648\0"), None);
        assert_eq!(octal(b"+644\0"), None);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(numeric(&big), Some(10 << 30));
        // tokio-tar ignores bytes 1..4 of a 12-byte base-256 field; Go does not.
        big[2] = 1;
        assert_eq!(numeric(&big), None);
        // Negative numbers.
        assert_eq!(numeric(&[0xff; 12]), None);
        assert_eq!(numeric(&[0xc0, 0, 0, 0, 0, 0, 0, 0]), None);
        let mut id = [0u8; 8];
        id[0] = 0x80;
        id[7] = 5;
        assert_eq!(numeric(&id), Some(5));
    }

    #[test]
    fn pax_records_are_read_strictly() {
        let ok: Vec<_> = pax_records(b"11 size=42\n20 path=a/long/name\n")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            ok,
            vec![
                (&b"size"[..], &b"42"[..]),
                (&b"path"[..], &b"a/long/name"[..])
            ]
        );
        for bad in [
            &b"12 size=42\n"[..],
            b"011 size=42\n",
            b"+11 size=42\n",
            b"10 size42\n",
            b"7 =42\n\n",
            b"11 size=42x",
            b"size=42\n",
            b"3 a\n",
        ] {
            let first = pax_records(bad).next().unwrap();
            assert!(first.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(pax_records(b"").count(), 0);
    }
}
