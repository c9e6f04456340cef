//! Compression stage: zstd (multithreaded, the default), gzip, or none.
//!
//! The compressor is a writer (it sits in front of the encryptor), the decompressor a reader.
//! Decoders read every frame up to the end of their input, so the stages below them (age, the
//! hash check) always see end of stream and can detect truncation.

use async_compression::Level;
use async_compression::tokio::{bufread, write};
use async_compression::zstd::CParameter;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite};

/// How a volume's tar stream is compressed. Recorded in the manifest per volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd, on every core (default level 3)
    #[default]
    Zstd,
    /// gzip (default level 6); slower, for tools that only know gzip
    Gzip,
    /// no compression, for data that is already compressed
    None,
}

impl Compression {
    /// The object name's extension before `.age`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "tar.zst",
            Compression::Gzip => "tar.gz",
            Compression::None => "tar",
        }
    }

    /// The valid level range, for validating settings.
    pub fn level_range(self) -> Option<std::ops::RangeInclusive<i32>> {
        match self {
            Compression::Zstd => Some(1..=19),
            Compression::Gzip => Some(1..=9),
            Compression::None => None,
        }
    }
}

/// Settings of the compressor.
#[derive(Debug, Clone, Copy)]
pub struct CompressionSettings {
    pub kind: Compression,
    /// None: the codec's default.
    pub level: Option<i32>,
    /// zstd worker threads; 0 compresses on the calling thread.
    pub threads: u32,
}

impl CompressionSettings {
    pub fn new(kind: Compression, level: Option<i32>) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self {
            kind,
            level,
            threads,
        }
    }
}

/// Wraps `inner` so that what is written to the result reaches `inner` compressed. The caller
/// must `shutdown()` the result to flush the last frame.
pub fn compressing_writer<'a, W>(
    inner: W,
    settings: CompressionSettings,
) -> Box<dyn AsyncWrite + Send + Unpin + 'a>
where
    W: AsyncWrite + Send + Unpin + 'a,
{
    let level = settings.level.map_or(Level::Default, Level::Precise);
    match settings.kind {
        Compression::Zstd => {
            let params = [CParameter::nb_workers(settings.threads)];
            Box::new(write::ZstdEncoder::with_quality_and_params(
                inner, level, &params,
            ))
        }
        Compression::Gzip => Box::new(write::GzipEncoder::with_quality(inner, level)),
        Compression::None => Box::new(inner),
    }
}

/// Wraps `inner` so that reading from the result yields the decompressed stream.
pub fn decompressing_reader<'a, R>(
    inner: R,
    kind: Compression,
) -> Box<dyn AsyncRead + Send + Unpin + 'a>
where
    R: AsyncBufRead + Send + Unpin + 'a,
{
    match kind {
        Compression::Zstd => {
            let mut decoder = bufread::ZstdDecoder::new(inner);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
        Compression::Gzip => {
            let mut decoder = bufread::GzipDecoder::new(inner);
            decoder.multiple_members(true);
            Box::new(decoder)
        }
        Compression::None => Box::new(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

    async fn round_trip(kind: Compression) {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (writer, reader) = tokio::io::duplex(64 * 1024);
        let input = data.clone();
        let producer = tokio::spawn(async move {
            let mut w = compressing_writer(writer, CompressionSettings::new(kind, None));
            w.write_all(&input).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut out = Vec::new();
        decompressing_reader(BufReader::new(reader), kind)
            .read_to_end(&mut out)
            .await
            .unwrap();
        producer.await.unwrap();
        assert_eq!(out, data, "{kind:?}");
    }

    #[tokio::test]
    async fn every_codec_round_trips() {
        for kind in [Compression::Zstd, Compression::Gzip, Compression::None] {
            round_trip(kind).await;
        }
    }

    #[tokio::test]
    async fn truncated_zstd_fails() {
        let mut compressed = Vec::new();
        {
            let mut w = compressing_writer(
                &mut compressed,
                CompressionSettings::new(Compression::Zstd, None),
            );
            w.write_all(&[1u8; 200_000]).await.unwrap();
            w.shutdown().await.unwrap();
        }
        compressed.truncate(compressed.len() - 3);
        let err = decompressing_reader(&compressed[..], Compression::Zstd)
            .read_to_end(&mut Vec::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ),
            "{err}"
        );
    }
}
