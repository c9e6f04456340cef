//! End-of-archive check for the tar stream a backup reads from Docker: an `AsyncRead` wrapper
//! that follows the chain of tar headers (header, data rounded up to 512 bytes, next header)
//! without copying anything, and fails at end of stream unless the archive ended properly —
//! with the zero blocks that close a tar, at a header position.
//!
//! Why: when dockerd stops mid-stream (a restart, an upgrade), it finishes the HTTP response
//! cleanly, so the archive API's body simply ends early. Without this check such a truncated
//! volume would be stored as a complete backup. A zero block inside a file's data does not
//! fool it: only blocks where a header is due count.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

const BLOCK: u64 = 512;

/// Where in the archive the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Collecting a 512-byte header block.
    Header,
    /// Skipping this many bytes of entry data and padding.
    Data(u64),
    /// After a zero block where a header was due: the end-of-archive marker, with the number
    /// of zero bytes seen. Only zeros may follow (the marker's second block, record padding).
    End(u64),
}

/// Fails the stream when it ends before the tar's end-of-archive marker.
pub struct TarEndCheck<R> {
    inner: R,
    position: Position,
    header: Vec<u8>,
    offset: u64,
    entries: u64,
    /// The data of a PAX extended header being read (its records may set the next entry's
    /// size: Go's archive/tar, and so Docker, writes sizes of 8 GiB and more only there).
    pax: Option<Vec<u8>>,
    /// The length of that data without its padding.
    pax_len: usize,
    /// The size the last PAX header gave the next entry.
    pax_size: Option<u64>,
}

/// PAX headers larger than this are skipped, not parsed (Docker's are a few hundred bytes).
const MAX_PAX: u64 = 1 << 20;

impl<R> TarEndCheck<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            position: Position::Header,
            header: Vec::with_capacity(BLOCK as usize),
            offset: 0,
            entries: 0,
            pax: None,
            pax_len: 0,
            pax_size: None,
        }
    }

    fn advance(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.position {
                Position::Data(left) => {
                    let take = left.min(data.len() as u64);
                    if let Some(pax) = &mut self.pax {
                        pax.extend_from_slice(&data[..take as usize]);
                    }
                    data = &data[take as usize..];
                    self.offset += take;
                    self.position = if left == take {
                        if let Some(pax) = self.pax.take() {
                            self.pax_size = pax_size(&pax[..self.pax_len.min(pax.len())]);
                        }
                        Position::Header
                    } else {
                        Position::Data(left - take)
                    };
                }
                Position::End(zeros) => {
                    if let Some(at) = data.iter().position(|b| *b != 0) {
                        return Err(malformed(format!(
                            "data after the end-of-archive marker at byte {}",
                            self.offset + at as u64
                        )));
                    }
                    self.offset += data.len() as u64;
                    self.position = Position::End(zeros + data.len() as u64);
                    return Ok(());
                }
                Position::Header => {
                    let take = (BLOCK as usize - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    self.offset += take as u64;
                    data = &data[take..];
                    if self.header.len() < BLOCK as usize {
                        continue;
                    }
                    let at = self.offset - BLOCK;
                    if self.header.iter().all(|b| *b == 0) {
                        self.position = Position::End(BLOCK);
                        continue;
                    }
                    let ustar_size = entry_size(&self.header)
                        .ok_or_else(|| malformed(format!("no valid tar header at byte {at}")))?;
                    let kind = self.header[156];
                    self.header.clear();
                    self.entries += 1;
                    let size = if kind == b'x' {
                        // Its own data is records for the next entry.
                        self.pax = (ustar_size <= MAX_PAX).then(Vec::new);
                        self.pax_len = ustar_size as usize;
                        self.pax_size = None;
                        ustar_size
                    } else if kind == b'g' {
                        ustar_size
                    } else {
                        self.pax_size.take().unwrap_or(ustar_size)
                    };
                    let padded = size.div_ceil(BLOCK) * BLOCK;
                    if padded > 0 {
                        self.position = Position::Data(padded);
                    } else if let Some(pax) = self.pax.take() {
                        self.pax_size = pax_size(&pax);
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&self) -> io::Result<()> {
        match self.position {
            // Two zero blocks close a tar.
            Position::End(zeros) if zeros >= 2 * BLOCK => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                TruncatedTar(format!(
                    "Docker's tar stream of the volume ended early, after {} bytes and {} entries, without the end-of-archive marker (did the Docker engine restart?); nothing was stored",
                    self.offset, self.entries
                )),
            )),
        }
    }
}

/// The `size` record of a PAX header's data (`"<len> size=<n>\n"` records), if any.
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    let mut size = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return size;
        }
        let record = &rest[space + 1..len];
        if let Some(value) = record.strip_prefix(b"size=") {
            let value = value.strip_suffix(b"\n").unwrap_or(value);
            size = std::str::from_utf8(value).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    size
}

/// The archive ended early or is not a tar.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TruncatedTar(String);

fn malformed(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TruncatedTar(message))
}

/// The data size a header announces; `None` when its checksum is wrong.
fn entry_size(block: &[u8]) -> Option<u64> {
    let stored = parse_octal(&block[148..156])?;
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
    if stored != computed {
        return None;
    }
    let field = &block[124..136];
    if field[0] & 0x80 != 0 {
        // GNU base-256 for sizes of 8 GiB and more.
        let mut size = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            size = size.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(size);
    }
    parse_octal(field)
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

impl<R: AsyncRead + Unpin> AsyncRead for TarEndCheck<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if new.is_empty() {
            return Poll::Ready(this.finish());
        }
        let advanced = this.advance(new);
        if let Err(e) = advanced {
            buf.set_filled(before);
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn tar_with(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tokio_tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tokio_tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &data[..])
                .await
                .unwrap();
        }
        builder.into_inner().await.unwrap()
    }

    async fn check(data: &[u8], chunk: usize) -> io::Result<()> {
        // Deliver in small chunks to exercise block boundaries.
        let chunks: Vec<io::Result<bytes::Bytes>> = data
            .chunks(chunk)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let reader = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
        let mut checked = TarEndCheck::new(reader);
        let mut out = Vec::new();
        checked.read_to_end(&mut out).await?;
        assert_eq!(out, data);
        Ok(())
    }

    #[tokio::test]
    async fn a_complete_archive_passes_and_any_truncation_fails() {
        // A file full of zeros must not look like the end marker.
        let archive = tar_with(&[
            ("zeros", vec![0u8; 5000]),
            ("text", b"hello".to_vec()),
            ("empty", vec![]),
        ])
        .await;
        for chunk in [1, 7, 512, 100_000] {
            check(&archive, chunk).await.unwrap();
        }
        let mut padded = archive.clone();
        padded.extend_from_slice(&[0u8; 8192]);
        check(&padded, 1000).await.unwrap();
        for cut in [
            0,
            100,
            512,
            1024,
            3000,
            5632,
            archive.len() - 1024,
            archive.len() - 1,
        ] {
            let err = check(&archive[..cut], 333).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
            assert!(err.to_string().contains("ended early"), "{err}");
        }
    }

    /// A PAX header giving the next entry's size, as Go writes it for files of 8 GiB and more
    /// (the ustar size field then holds 0).
    fn pax_sized_entry(size: usize) -> Vec<u8> {
        let record = format!("size={size}\n");
        let len = record.len() + 3;
        let body = format!("{len} {record}");
        assert_eq!(body.len(), len);
        let mut pax = tokio_tar::Header::new_ustar();
        pax.set_path("PaxHeaders/f").unwrap();
        pax.set_entry_type(tokio_tar::EntryType::XHeader);
        pax.set_size(body.len() as u64);
        pax.set_cksum();
        let mut out = pax.as_bytes().to_vec();
        out.extend_from_slice(body.as_bytes());
        out.resize(out.len().div_ceil(512) * 512, 0);
        let mut file = tokio_tar::Header::new_ustar();
        file.set_path("f").unwrap();
        file.set_size(0);
        file.set_cksum();
        out.extend_from_slice(file.as_bytes());
        out.extend_from_slice(&vec![1u8; size]);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[tokio::test]
    async fn a_pax_size_is_honoured() {
        let archive = pax_sized_entry(5000);
        for chunk in [1, 100, 512, 10_000] {
            check(&archive, chunk).await.unwrap();
        }
        let err = check(&archive[..archive.len() - 1024 - 512], 512)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(pax_size(b"11 size=42\n20 path=a/long/name\n"), Some(42));
        assert_eq!(pax_size(b"20 path=a/long/name\n"), None);
    }

    #[tokio::test]
    async fn garbage_is_not_a_tar() {
        let err = check(&[b'x'; 2048], 512).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
