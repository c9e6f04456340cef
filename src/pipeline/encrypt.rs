//! Encryption stage: age, streamed in 64 KiB authenticated chunks.
//!
//! Encryption is a writer placed after the compressor; decryption a reader placed after the
//! download. Closing the writer writes the final chunk: without `shutdown()` the object is
//! truncated. A truncated object is only detected at its end, so readers must read to EOF.
//!
//! Where it sits: A stage in `pipeline`: sees the keys only.

use super::PipelineError;
use crate::keys::{BoxIdentity, Recipient};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite};
use tokio_util::compat::{
    FuturesAsyncReadCompatExt, FuturesAsyncWriteCompatExt, TokioAsyncReadCompatExt,
    TokioAsyncWriteCompatExt,
};

/// Wraps `inner` so that what is written to the result reaches `inner` encrypted to every
/// recipient. The header is written immediately.
pub async fn encrypting_writer<W>(
    recipients: &[Recipient],
    inner: W,
) -> Result<impl AsyncWrite + Send + Unpin + use<W>, PipelineError>
where
    W: AsyncWrite + Send + Unpin,
{
    let encryptor = age::Encryptor::with_recipients(
        recipients
            .iter()
            .map(|r| r.key.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| PipelineError::Io(std::io::Error::other(format!("cannot encrypt: {e}"))))?;
    let writer = encryptor
        .wrap_async_output(inner.compat_write())
        .await
        .map_err(PipelineError::Io)?;
    Ok(writer.compat_write())
}

/// Reads the age header from `inner` and returns a reader of the plaintext. `recipients_hint`
/// names the backup's recipients in the wrong-key message.
pub async fn decrypting_reader<R>(
    identities: &[BoxIdentity],
    inner: R,
    recipients_hint: &[String],
) -> Result<impl AsyncRead + Send + Unpin + use<R>, PipelineError>
where
    R: AsyncBufRead + Send + Unpin,
{
    let decryptor = age::Decryptor::new_async_buffered(inner.compat())
        .await
        .map_err(|e| decrypt_error(e, recipients_hint))?;
    if decryptor.is_scrypt() {
        return Err(PipelineError::Verification(
            "this object is encrypted with a passphrase, not to a recipient; lifeboat never writes such objects (replaced?)".into(),
        ));
    }
    let reader = decryptor
        .decrypt_async(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| decrypt_error(e, recipients_hint))?;
    Ok(reader.compat())
}

fn decrypt_error(err: age::DecryptError, recipients_hint: &[String]) -> PipelineError {
    match err {
        age::DecryptError::NoMatchingKeys => PipelineError::WrongKey {
            recipients: if recipients_hint.is_empty() {
                "unknown recipients".into()
            } else {
                recipients_hint.join(", ")
            },
        },
        age::DecryptError::Io(io) => PipelineError::from_read_chain(io),
        other => PipelineError::Verification(format!("not a valid age file: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate, parse_recipient};
    use std::str::FromStr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn identity_and_recipient() -> (BoxIdentity, Recipient) {
        let (file, backup) = generate();
        let secret = file.lines().last().unwrap().to_string();
        let identity = age::x25519::Identity::from_str(&secret).unwrap();
        (
            Box::new(identity),
            parse_recipient(&backup.recipient.text).unwrap(),
        )
    }

    async fn encrypt(recipient: &Recipient, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = encrypting_writer(std::slice::from_ref(recipient), &mut out)
            .await
            .unwrap();
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        out
    }

    #[tokio::test]
    async fn round_trip() {
        let (identity, recipient) = identity_and_recipient();
        let data = vec![42u8; 300_000];
        let sealed = encrypt(&recipient, &data).await;
        let mut plain = Vec::new();
        decrypting_reader(&[identity], &sealed[..], &[])
            .await
            .unwrap()
            .read_to_end(&mut plain)
            .await
            .unwrap();
        assert_eq!(plain, data);
    }

    #[tokio::test]
    async fn wrong_key_names_the_recipients() {
        let (_, recipient) = identity_and_recipient();
        let (other, _) = identity_and_recipient();
        let sealed = encrypt(&recipient, b"secret").await;
        let hint = vec![recipient.text.clone()];
        let err = decrypting_reader(&[other], &sealed[..], &hint)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, PipelineError::WrongKey { .. }));
        assert!(err.to_string().contains(&recipient.text));
    }

    #[tokio::test]
    async fn truncation_at_a_chunk_boundary_is_detected_at_the_end() {
        let (identity, recipient) = identity_and_recipient();
        let sealed = encrypt(&recipient, &vec![1u8; 200_000]).await;
        // Cut the last chunk off: header + full chunks remain.
        let header_end = sealed.len() - (200_000 % 65_536 + 16);
        let truncated = &sealed[..header_end];
        let mut reader = decrypting_reader(&[identity], truncated, &[])
            .await
            .unwrap();
        let err = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        let class = PipelineError::from_read_chain(err);
        assert!(matches!(class, PipelineError::Verification(_)), "{class:?}");
    }
}
