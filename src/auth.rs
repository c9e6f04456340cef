//! Who wrote a backup: manifests are signed with Ed25519 in OpenSSH's `SSHSIG` format, so
//! `ssh-keygen -Y verify` checks them as well as lifeboat does.
//!
//! The backup host signs every manifest it writes with a key derived from its backup key
//! ([`crate::keys`]); restore, verify, list, show and prune accept a manifest only when its
//! signature verifies under a key the operator gave them (derived from the owner key or the
//! backup key), never under a key the bucket names. The manifest binds everything else: the
//! app, the backup id, each volume's object, sizes and sha256, root metadata, app version,
//! recipients and times. This module knows nothing of manifests: it signs and checks bytes.
//!
//! Where it sits: Keys layer: uses only `text`; `keys` and `manifest` build on it.

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The SSHSIG namespace of lifeboat's manifests: a signature made for anything else (a git
/// commit, a file signed with the same key) never verifies as a manifest.
pub const NAMESPACE: &str = "lifeboat-manifest";
/// The principal in `allowed_signers` lines lifeboat writes.
pub const PRINCIPAL: &str = "lifeboat";

/// Signs manifests: the backup host's Ed25519 key.
pub struct Signer {
    key: PrivateKey,
}

impl Signer {
    /// The key whose 32-byte seed is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let pair = ssh_key::private::Ed25519Keypair::from_seed(seed);
        let key = PrivateKey::new(pair.into(), PRINCIPAL).expect("an Ed25519 key is valid");
        Self { key }
    }

    /// The public key, as `ssh-ed25519 AAAA… lifeboat`.
    pub fn public(&self) -> PublicKey {
        self.key.public_key().clone()
    }

    /// An armored `-----BEGIN SSH SIGNATURE-----` signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        self.key
            .sign(NAMESPACE, HashAlg::Sha512, message)
            .and_then(|sig| sig.to_pem(LineEnding::LF))
            .expect("signing with an in-memory Ed25519 key cannot fail")
    }
}

/// The public key as one OpenSSH line, `ssh-ed25519 AAAA… lifeboat`.
pub fn openssh(key: &PublicKey) -> String {
    key.to_openssh().expect("an Ed25519 public key encodes")
}

/// The key's `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The `allowed_signers` line that lets `ssh-keygen -Y verify` check manifests by `key`.
pub fn allowed_signers_line(key: &PublicKey) -> String {
    format!("{PRINCIPAL} namespaces=\"{NAMESPACE}\" {}", openssh(key))
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("it has no signature")]
    Missing,
    #[error("its signature is not a valid SSH signature ({0})")]
    Malformed(String),
    #[error("its signature was made for '{0}', not for a lifeboat manifest")]
    WrongNamespace(String),
    #[error("it is signed by {0}, a key none of the given keys vouches for")]
    UnknownSigner(String),
    #[error("its signature does not match its content (altered after signing)")]
    BadSignature,
}

/// The keys whose signatures are accepted.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<PublicKey>,
}

impl Trust {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        let mut trust = Self::default();
        for key in keys {
            trust.add(key);
        }
        trust
    }

    pub fn add(&mut self, key: PublicKey) {
        if !self.keys.iter().any(|k| k.key_data() == key.key_data()) {
            self.keys.push(key);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Checks `signature` (armored SSHSIG) over `message`; returns the signer's fingerprint.
    pub fn verify(&self, message: &[u8], signature: Option<&[u8]>) -> Result<String, AuthFailure> {
        let signature = signature.ok_or(AuthFailure::Missing)?;
        let sig = SshSig::from_pem(signature).map_err(|e| AuthFailure::Malformed(e.to_string()))?;
        if sig.namespace() != NAMESPACE {
            return Err(AuthFailure::WrongNamespace(crate::text::printable(
                sig.namespace(),
            )));
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.key_data() == sig.public_key())
            .ok_or_else(|| {
                AuthFailure::UnknownSigner(
                    sig.public_key().fingerprint(HashAlg::Sha256).to_string(),
                )
            })?;
        key.verify(NAMESPACE, message, &sig)
            .map_err(|_| AuthFailure::BadSignature)?;
        Ok(fingerprint(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_under_the_trusted_key_and_unaltered() {
        let signer = Signer::from_seed(&[7u8; 32]);
        let trust = Trust::new(vec![signer.public()]);
        let sig = signer.sign(b"manifest");
        assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----"));
        assert_eq!(
            trust.verify(b"manifest", Some(sig.as_bytes())).unwrap(),
            fingerprint(&signer.public())
        );
        assert_eq!(
            trust.verify(b"manifesT", Some(sig.as_bytes())),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(trust.verify(b"manifest", None), Err(AuthFailure::Missing));
        assert!(matches!(
            trust.verify(b"manifest", Some(b"garbage")),
            Err(AuthFailure::Malformed(_))
        ));
        let other = Signer::from_seed(&[8u8; 32]);
        assert!(matches!(
            trust.verify(b"manifest", Some(other.sign(b"manifest").as_bytes())),
            Err(AuthFailure::UnknownSigner(_))
        ));
        // The same key signing for another purpose does not make a manifest.
        let git = signer
            .key
            .sign("git", HashAlg::Sha512, b"manifest")
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap();
        assert_eq!(
            trust.verify(b"manifest", Some(git.as_bytes())),
            Err(AuthFailure::WrongNamespace("git".into()))
        );
        assert!(Trust::default().verify(b"m", Some(sig.as_bytes())).is_err());
    }

    #[test]
    fn the_allowed_signers_line_names_the_namespace() {
        let line = allowed_signers_line(&Signer::from_seed(&[1u8; 32]).public());
        assert!(
            line.starts_with("lifeboat namespaces=\"lifeboat-manifest\" ssh-ed25519 AAAA"),
            "{line}"
        );
    }
}
