//! Keys. Two files, made together by `lifeboat keygen`:
//!
//! - The **owner key** (`key.txt`, kept offline): a standard age X25519 identity file, so
//!   `age -d -i key.txt` reads every backup with stock tools. It is the one secret a restore
//!   needs: it decrypts, and everything else is derived from it.
//! - The **backup key** (on the backup host, `~/.config/lifeboat/backup.key`): the owner's
//!   public recipient plus the *put secret*, which the owner key derives with HKDF-SHA256. The
//!   put secret yields the Ed25519 key that signs every manifest ([`crate::auth`]). The backup
//!   host can therefore make backups that restore accepts, but it holds no key that decrypts
//!   one, and a stolen backup key reveals no data. The owner key can always make the backup
//!   key again (`lifeboat keygen --from-owner-key`), so a new backup host needs nothing else.
//!
//! Extra recipients (age `age1…` or SSH public keys) may be added to a backup; they can decrypt
//! but not vouch for a backup.
//!
//! Where it sits: Keys layer: uses `auth` and `error`; the pipeline and the operations use it.

use crate::auth::{Signer, Trust};
use anyhow::{Context, Result};
use hkdf::Hkdf;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use zeroize::Zeroizing;

pub type BoxRecipient = Box<dyn age::Recipient + Send + Sync>;
pub type BoxIdentity = Box<dyn age::Identity + Send + Sync>;

/// A parsed recipient together with its text, which the manifest records.
pub struct Recipient {
    pub text: String,
    pub key: BoxRecipient,
}

/// Parses one recipient string.
pub fn parse_recipient(text: &str) -> Result<Recipient> {
    let text = text.trim();
    let key: BoxRecipient = if text.starts_with("age1") {
        Box::new(age::x25519::Recipient::from_str(text).map_err(|e| {
            crate::error::usage(format!(
                "recipient '{text}' is not a valid age X25519 public key ({e}); it looks like age1… (see `lifeboat keygen`)"
            ))
        })?)
    } else if text.starts_with("ssh-") {
        Box::new(age::ssh::Recipient::from_str(text).map_err(|e| {
            crate::error::usage(format!(
                "recipient '{}' is not a usable SSH public key ({e:?}); use ssh-ed25519 or ssh-rsa",
                abbreviate(text)
            ))
        })?)
    } else if text.starts_with("AGE-SECRET-KEY-") {
        return Err(crate::error::usage(
            "a secret key was given where a recipient (public key) belongs; pass the age1… public key that `lifeboat keygen` printed, and keep the secret key off the backup host",
        ));
    } else {
        return Err(crate::error::usage(format!(
            "recipient '{}' is neither an age public key (age1…) nor an SSH public key (ssh-ed25519 …)",
            abbreviate(text)
        )));
    };
    Ok(Recipient {
        text: text.to_string(),
        key,
    })
}

/// Reads a recipients file: one recipient per line, blank lines and `#` comments ignored.
pub fn read_recipients_file(path: &Path) -> Result<Vec<Recipient>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read recipients file {}", path.display()))?;
    let recipients = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(parse_recipient)
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("in recipients file {}", path.display()))?;
    if recipients.is_empty() {
        return Err(crate::error::usage(format!(
            "recipients file {} holds no recipient",
            path.display()
        )));
    }
    Ok(recipients)
}

/// The secret the owner key and the backup key share, from which the backup side's keys are
/// derived (today the manifest signing key).
#[derive(Clone)]
pub struct PutSecret(Zeroizing<[u8; 32]>);

/// Labels of the derivations: changing one changes every key derived with it.
const OWNER_SALT: &[u8] = b"lifeboat owner key v1";
const PUT_INFO: &[u8] = b"lifeboat put secret v1";
const SIGNING_INFO: &[u8] = b"lifeboat manifest signing key v1";
const CHUNK_ID_INFO: &[u8] = b"lifeboat chunk id key v1";
const CHUNK_CUT_INFO: &[u8] = b"lifeboat chunk boundary key v1";

/// The keys of deduplication, derived from the put secret, so the owner key and every backup
/// key made from it share them (a new backup host goes on deduplicating against old chunks):
/// one keys the chunk ids (BLAKE3), one the chunker's gear table.
pub struct ChunkKeys {
    id: Zeroizing<[u8; 32]>,
    seed: u64,
}

impl ChunkKeys {
    /// The address of a chunk: keyed BLAKE3 of its plaintext.
    pub fn id_bytes(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.id, data).as_bytes()
    }

    /// The gear seed of the chunker (never 0: 0 means unkeyed).
    pub fn seed(&self) -> u64 {
        self.seed.max(1)
    }

    /// The keys of one app: equal content in two apps gets unrelated ids and boundaries.
    pub fn for_app(&self, app: &str) -> ChunkKeys {
        let derive = |label: &str| {
            let mut input = label.as_bytes().to_vec();
            input.push(0);
            input.extend_from_slice(app.as_bytes());
            blake3::keyed_hash(&self.id, &input)
        };
        let cut = derive("boundaries");
        let seed = u64::from_le_bytes(cut.as_bytes()[..8].try_into().expect("8 bytes")) ^ self.seed;
        ChunkKeys {
            id: Zeroizing::new(*derive("ids").as_bytes()),
            seed,
        }
    }

    /// Keys for tests.
    pub fn for_tests(byte: u8) -> Self {
        PutSecret(Zeroizing::new([byte; 32])).chunk_keys()
    }
}

impl PutSecret {
    /// The put secret of an owner identity.
    fn of_owner(identity: &age::x25519::Identity) -> Self {
        use age::secrecy::ExposeSecret;
        let secret = identity.to_string();
        let hkdf = Hkdf::<Sha256>::new(Some(OWNER_SALT), secret.expose_secret().as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf.expand(PUT_INFO, &mut out[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(out)
    }

    /// A 32-byte key for `purpose`, derived from the put secret.
    fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hkdf = Hkdf::<Sha256>::from_prk(&self.0[..]).expect("a 32-byte PRK is valid");
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf.expand(info, &mut out[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// The key that signs manifests.
    pub fn signer(&self) -> Signer {
        Signer::from_seed(&self.derive(SIGNING_INFO))
    }

    /// The keys of deduplication.
    pub fn chunk_keys(&self) -> ChunkKeys {
        let cut = self.derive(CHUNK_CUT_INFO);
        let seed = u64::from_le_bytes(cut[..8].try_into().expect("8 bytes"));
        ChunkKeys {
            id: self.derive(CHUNK_ID_INFO),
            seed,
        }
    }

    fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }

    fn from_hex(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).ok()?);
        let array: [u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(Self(Zeroizing::new(array)))
    }
}

/// The owner key: decrypts backups and vouches for the ones its backup key signed.
pub struct OwnerKey {
    pub path: PathBuf,
    /// Every identity in the file (age X25519, or an SSH key for backups made to one).
    pub identities: std::sync::Arc<Vec<BoxIdentity>>,
    /// The X25519 identities' recipients and put secrets.
    owners: Vec<(String, PutSecret)>,
}

impl OwnerKey {
    /// Reads an owner key: an age identity file, as `lifeboat keygen` or `age-keygen` writes
    /// it, or an unencrypted SSH private key (which decrypts backups made to it but cannot
    /// vouch for any).
    pub fn read(path: &Path) -> Result<Self> {
        let data = Zeroizing::new(std::fs::read(path).map_err(|e| {
            crate::error::usage(format!(
                "cannot read the owner key {}: {e}; pass the key file `lifeboat keygen` wrote with --identity",
                path.display()
            ))
        })?);
        let text = String::from_utf8_lossy(&data);
        if text.contains("AGE-SECRET-KEY-") {
            refuse_if_readable_by_others(path, "owner key")?;
            return Self::from_age_file(path, &data, &text);
        }
        if text.contains("PRIVATE KEY") {
            refuse_if_readable_by_others(path, "owner key")?;
            let identity =
                age::ssh::Identity::from_buffer(&data[..], Some(path.display().to_string()))
                    .map_err(|e| {
                        crate::error::usage(format!(
                            "SSH key {} is not readable: {e}",
                            path.display()
                        ))
                    })?;
            return match identity {
                age::ssh::Identity::Unencrypted(_) => Ok(Self {
                    path: path.to_path_buf(),
                    identities: std::sync::Arc::new(vec![Box::new(identity)]),
                    owners: vec![],
                }),
                age::ssh::Identity::Encrypted(_) => Err(crate::error::usage(format!(
                    "SSH key {} is passphrase-protected, which lifeboat cannot prompt for; use an age identity or an unencrypted copy of the key",
                    path.display()
                ))),
                age::ssh::Identity::Unsupported(kind) => Err(crate::error::usage(format!(
                    "SSH key {} is of an unsupported kind ({kind:?}); use ssh-ed25519 or ssh-rsa",
                    path.display()
                ))),
            };
        }
        if data.starts_with(b"age-encryption.org/v1") || text.contains("BEGIN AGE ENCRYPTED FILE") {
            return Err(crate::error::usage(format!(
                "identity file {} is itself age-encrypted (a passphrase-protected key), which lifeboat cannot prompt for; decrypt it first, e.g. `--identity <(age -d {})`",
                path.display(),
                path.display()
            )));
        }
        if text.contains(BACKUP_KEY_TAG) {
            return Err(crate::error::usage(format!(
                "{} is a backup key, which can make backups but never read them; restore and verify need the owner key (the file `lifeboat keygen` wrote to stdout or --output)",
                path.display()
            )));
        }
        Err(crate::error::usage(format!(
            "{} holds no identity: expected an age identity (AGE-SECRET-KEY-…) or an SSH private key; lifeboat decrypts with keys, not passphrases",
            path.display()
        )))
    }

    fn from_age_file(path: &Path, data: &[u8], text: &str) -> Result<Self> {
        let invalid = |e: &dyn std::fmt::Display| {
            crate::error::usage(format!(
                "identity file {} is not valid: {e}",
                path.display()
            ))
        };
        let file = age::IdentityFile::from_buffer(data).map_err(|e| invalid(&e))?;
        let identities = file.into_identities().map_err(|e| invalid(&e))?;
        let mut owners = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with("AGE-SECRET-KEY-1")
                && let Ok(identity) = age::x25519::Identity::from_str(line)
            {
                owners.push((
                    identity.to_public().to_string(),
                    PutSecret::of_owner(&identity),
                ));
            }
        }
        let key = Self {
            path: path.to_path_buf(),
            identities: std::sync::Arc::new(
                identities.into_iter().map(|i| i as BoxIdentity).collect(),
            ),
            owners,
        };
        // A signing key written beside the identity (by keygen) must be the derived one: a
        // mismatch means the file was edited or two keys were mixed up.
        for line in text.lines() {
            if let Some(recorded) = line.strip_prefix(ALLOWED_SIGNERS_COMMENT) {
                let derived: Vec<String> = key
                    .trust()
                    .keys()
                    .iter()
                    .map(crate::auth::allowed_signers_line)
                    .collect();
                if !derived.iter().any(|d| d == recorded.trim()) {
                    return Err(crate::error::usage(format!(
                        "owner key {}: its '{}' line does not belong to the identity in it (edited, or lines of two keys mixed?); make the file anew with `lifeboat keygen` or remove that line",
                        path.display(),
                        ALLOWED_SIGNERS_COMMENT.trim_end_matches(": ")
                    )));
                }
            }
        }
        Ok(key)
    }

    /// The signing keys of the backup keys this owner key makes.
    pub fn trust(&self) -> Trust {
        Trust::new(
            self.owners
                .iter()
                .map(|(_, put)| put.signer().public())
                .collect(),
        )
    }

    /// The backup key of the first X25519 identity.
    pub fn backup_key(&self) -> Result<BackupKey> {
        let (recipient, put) = self.owners.first().ok_or_else(|| {
            crate::error::usage(format!(
                "{} holds no age X25519 identity, so no backup key can be made from it; make an owner key with `lifeboat keygen`",
                self.path.display()
            ))
        })?;
        Ok(BackupKey {
            recipient: parse_recipient(recipient)?,
            put: put.clone(),
            path: None,
        })
    }

    /// The owner recipients (`age1…`) of the file.
    pub fn recipients(&self) -> Vec<String> {
        self.owners.iter().map(|(r, _)| r.clone()).collect()
    }
}

/// The first line of a backup key file.
const BACKUP_KEY_TAG: &str = "# lifeboat backup key";
/// The comment of an owner key file that carries its signing key for `ssh-keygen -Y verify`.
pub const ALLOWED_SIGNERS_COMMENT: &str = "# lifeboat allowed_signers: ";

/// The backup key: encrypts to the owner and signs manifests; decrypts nothing.
pub struct BackupKey {
    /// The owner's recipient: every backup is encrypted to it.
    pub recipient: Recipient,
    put: PutSecret,
    /// Where it was read from.
    pub path: Option<PathBuf>,
}

impl BackupKey {
    /// Reads a backup key file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            crate::error::usage(format!(
                "cannot read the backup key {}: {e}",
                path.display()
            ))
        })?);
        refuse_if_readable_by_others(path, "backup key")?;
        if text.contains("AGE-SECRET-KEY-") {
            return Err(crate::error::usage(format!(
                "{} is the owner key, which must stay off the backup host; give backup the backup key `lifeboat keygen` wrote (default {}), or make one from the owner key with `lifeboat keygen --from-owner-key {} --backup-key-output FILE`",
                path.display(),
                default_backup_key_path().display(),
                path.display()
            )));
        }
        let field = |name: &str| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
                .ok_or_else(|| {
                    crate::error::usage(format!(
                        "{} is not a lifeboat backup key (no '{name}' line); make one with `lifeboat keygen`",
                        path.display()
                    ))
                })
        };
        let recipient = parse_recipient(field("recipient:")?)
            .with_context(|| format!("in backup key {}", path.display()))?;
        if !recipient.text.starts_with("age1") {
            return Err(crate::error::usage(format!(
                "backup key {}: its recipient must be an age X25519 key (age1…)",
                path.display()
            )));
        }
        let put = PutSecret::from_hex(field("put-secret:")?).ok_or_else(|| {
            crate::error::usage(format!(
                "backup key {}: 'put-secret:' is not 64 hex digits (damaged file?)",
                path.display()
            ))
        })?;
        Ok(Self {
            recipient,
            put,
            path: Some(path.to_path_buf()),
        })
    }

    /// The key given with `--backup-key` (or its variable or config key), else the one at
    /// [`default_backup_key_path`]; says how to make one when there is none.
    pub fn find(given: Option<&Path>) -> Result<Self> {
        if let Some(path) = given {
            return Self::read(path);
        }
        let default = default_backup_key_path();
        if !default.exists() {
            return Err(crate::error::usage(format!(
                "no backup key at {}: run `lifeboat keygen --output key.txt` once (it writes the owner key to key.txt, to keep offline, and this backup key), or make one from an existing owner key with `lifeboat keygen --from-owner-key key.txt`; or pass --backup-key FILE",
                default.display()
            )));
        }
        Self::read(&default)
    }

    /// The recipients of a backup: the owner's first, then any extra ones given. Recipients
    /// given without the owner's are refused: a backup is always readable by the owner key
    /// that vouches for it.
    pub fn recipients_with(self: &BackupKey, given: Vec<Recipient>) -> Result<Vec<Recipient>> {
        if !given.is_empty() && !given.iter().any(|r| r.text == self.recipient.text) {
            return Err(crate::error::usage(format!(
                "the recipients given ({}) do not include the owner of the backup key {} ({}); every backup is encrypted to the owner key that vouches for it. Drop --recipient/--recipients-file, add the owner's recipient to them, or use the backup key of the owner you meant (`lifeboat keygen --from-owner-key KEY`)",
                given
                    .iter()
                    .map(|r| abbreviate(&r.text))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.path
                    .as_deref()
                    .map_or_else(|| "in use".into(), |p| p.display().to_string()),
                self.recipient.text
            )));
        }
        let mut all = vec![parse_recipient(&self.recipient.text)?];
        for recipient in given {
            if !all.iter().any(|r| r.text == recipient.text) {
                all.push(recipient);
            }
        }
        Ok(all)
    }

    pub fn signer(&self) -> Signer {
        self.put.signer()
    }

    /// The keys of deduplication (the same as the owner key's).
    pub fn chunk_keys(&self) -> ChunkKeys {
        self.put.chunk_keys()
    }

    /// Its own signing key: what list, show, verify and prune accept on the backup host.
    pub fn trust(&self) -> Trust {
        Trust::new(vec![self.signer().public()])
    }

    /// The file `lifeboat keygen` writes.
    pub fn file_text(&self) -> Zeroizing<String> {
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let signer = self.signer().public();
        Zeroizing::new(format!(
            "{BACKUP_KEY_TAG}: for the backup host. It encrypts backups to the owner key and signs\n\
             # them; it cannot decrypt any backup. Keep it readable by root only (mode 600).\n\
             # created: {created}\n\
             # signing key: {} ({})\n\
             recipient: {}\n\
             put-secret: {}\n",
            crate::auth::openssh(&signer),
            crate::auth::fingerprint(&signer),
            self.recipient.text,
            self.put.to_hex().as_str()
        ))
    }
}

/// Where `backup` looks for its key when none is given: `$XDG_CONFIG_HOME/lifeboat/backup.key`,
/// else `~/.config/lifeboat/backup.key`.
pub fn default_backup_key_path() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc"))
        .join("lifeboat/backup.key")
}

/// A new owner key: its file text and its backup key.
pub fn generate() -> (Zeroizing<String>, BackupKey) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let put = PutSecret::of_owner(&identity);
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let file = Zeroizing::new(format!(
        "# lifeboat owner key: decrypts every backup made to it; keep it offline (mode 600).\n\
         # created: {created}\n\
         # public key: {recipient}\n\
         {ALLOWED_SIGNERS_COMMENT}{}\n\
         {}\n",
        crate::auth::allowed_signers_line(&put.signer().public()),
        identity.to_string().expose_secret()
    ));
    let backup = BackupKey {
        recipient: parse_recipient(&recipient).expect("a generated recipient parses"),
        put,
        path: None,
    };
    (file, backup)
}

/// Refuses a secret file that group or others may read, as ssh does.
#[cfg(unix)]
fn refuse_if_readable_by_others(path: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.is_file()
        && meta.permissions().mode() & 0o077 != 0
    {
        return Err(crate::error::usage(format!(
            "the {what} {} is readable by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_readable_by_others(_path: &Path, _what: &str) -> Result<()> {
    Ok(())
}

fn abbreviate(text: &str) -> String {
    if text.chars().count() > 24 {
        format!("{}…", text.chars().take(24).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_secret(path: &Path, text: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn the_owner_key_makes_the_backup_key_and_vouches_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (owner_text, backup) = generate();
        let owner_path = dir.path().join("key.txt");
        write_secret(&owner_path, &owner_text);
        let owner = OwnerKey::read(&owner_path).unwrap();
        assert_eq!(owner.identities.len(), 1);
        assert_eq!(owner.recipients(), vec![backup.recipient.text.clone()]);

        let backup_path = dir.path().join("backup.key");
        write_secret(&backup_path, &backup.file_text());
        let read = BackupKey::read(&backup_path).unwrap();
        assert_eq!(read.recipient.text, backup.recipient.text);
        let sig = read.signer().sign(b"m");
        owner.trust().verify(b"m", Some(sig.as_bytes())).unwrap();
        read.trust().verify(b"m", Some(sig.as_bytes())).unwrap();
        // made again from the owner key: the same signing key
        let again = owner.backup_key().unwrap();
        assert_eq!(
            again.signer().public().key_data(),
            read.signer().public().key_data()
        );
        // the backup key holds no identity: nothing in it decrypts
        let text = std::fs::read_to_string(&backup_path).unwrap();
        assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
    }

    #[test]
    fn keys_in_the_wrong_place_or_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (owner_text, backup) = generate();
        let owner_path = dir.path().join("key.txt");
        write_secret(&owner_path, &owner_text);
        let backup_path = dir.path().join("backup.key");
        write_secret(&backup_path, &backup.file_text());
        let err = BackupKey::read(&owner_path).err().unwrap().to_string();
        assert!(err.contains("owner key, which must stay off"), "{err}");
        let err = OwnerKey::read(&backup_path).err().unwrap().to_string();
        assert!(err.contains("is a backup key"), "{err}");
        std::fs::set_permissions(&owner_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = OwnerKey::read(&owner_path).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert_eq!(
            crate::error::classified(&err),
            Some(crate::error::ExitClass::Usage)
        );
    }

    #[test]
    fn an_edited_signing_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (owner_text, _) = generate();
        let (other_text, _) = generate();
        let other_line = other_text
            .lines()
            .find(|l| l.starts_with(ALLOWED_SIGNERS_COMMENT))
            .unwrap();
        let mixed: String = owner_text
            .lines()
            .map(|l| {
                if l.starts_with(ALLOWED_SIGNERS_COMMENT) {
                    other_line
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.path().join("key.txt");
        write_secret(&path, &mixed);
        let err = OwnerKey::read(&path).err().unwrap().to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn an_age_keygen_identity_is_an_owner_key_too() {
        use age::secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let identity = age::x25519::Identity::generate();
        let path = dir.path().join("age.txt");
        write_secret(
            &path,
            &format!(
                "# created by age-keygen\n{}\n",
                identity.to_string().expose_secret()
            ),
        );
        let owner = OwnerKey::read(&path).unwrap();
        assert!(!owner.trust().is_empty());
        assert_eq!(owner.recipients(), vec![identity.to_public().to_string()]);
    }

    #[test]
    fn passphrases_and_passphrase_protected_keys_are_explained() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let passphrase = dir.path().join("passphrase.txt");
        write_secret(&passphrase, "correct horse battery staple\n");
        let err = OwnerKey::read(&passphrase).err().unwrap().to_string();
        assert!(err.contains("not passphrases"), "{err}");
        assert!(!err.contains("correct horse"), "{err}");

        // `age -p` over a key file, made with the age crate.
        let (identity, _) = generate();
        let encryptor = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(
            "pw".to_string(),
        ));
        let mut encrypted = Vec::new();
        let mut writer = encryptor.wrap_output(&mut encrypted).unwrap();
        writer.write_all(identity.as_bytes()).unwrap();
        writer.finish().unwrap();
        let protected = dir.path().join("key.txt.age");
        std::fs::write(&protected, &encrypted).unwrap();
        let err = OwnerKey::read(&protected).err().unwrap();
        assert!(err.to_string().contains("age -d"), "{err}");
        assert_eq!(
            crate::error::classified(&err),
            Some(crate::error::ExitClass::Usage)
        );

        let err = OwnerKey::read(&dir.path().join("missing.txt"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot read the owner key"), "{err}");
    }

    #[test]
    fn bad_recipients_are_explained() {
        let err = parse_recipient("age1notakey").err().unwrap().to_string();
        assert!(err.contains("age1notakey"), "{err}");
        let (identity, _) = generate();
        let secret = identity.lines().last().unwrap();
        let err = parse_recipient(secret).err().unwrap().to_string();
        assert!(err.contains("secret key"), "{err}");
        assert!(
            !err.contains(secret),
            "the secret must not be echoed: {err}"
        );
        let err = parse_recipient("hello").err().unwrap().to_string();
        assert!(err.contains("neither"), "{err}");
    }

    #[test]
    fn recipients_files_skip_comments() {
        let dir = tempfile::tempdir().unwrap();
        let (_, backup) = generate();
        let recipients = dir.path().join("recipients.txt");
        std::fs::write(
            &recipients,
            format!("# ops team\n\n{}\n", backup.recipient.text),
        )
        .unwrap();
        let parsed = read_recipients_file(&recipients).unwrap();
        assert_eq!(parsed[0].text, backup.recipient.text);
    }
}
