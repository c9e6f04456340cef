//! age recipients (public keys, all a backup host needs) and identities (secret keys, needed
//! only to restore and verify).
//!
//! Recipients: native X25519 (`age1…`) and SSH public keys (`ssh-ed25519 …`, `ssh-rsa …`), given
//! on the command line or one per line in a recipients file (`#` comments allowed). Identities:
//! an age identity file (as written by `lifeboat keygen` or `age-keygen`) or an unencrypted SSH
//! private key.

use anyhow::{Context, Result};
use std::path::Path;
use std::str::FromStr;

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

/// Reads an identity file: an age identity file or an unencrypted SSH private key.
pub fn read_identities(path: &Path) -> Result<Vec<BoxIdentity>> {
    let data = std::fs::read(path).map_err(|e| {
        crate::error::usage(format!(
            "cannot read identity file {}: {e}; pass the key file written by `lifeboat keygen` with --identity",
            path.display()
        ))
    })?;
    warn_if_readable_by_others(path);
    let text = String::from_utf8_lossy(&data);
    if text.contains("AGE-SECRET-KEY-") {
        let file = age::IdentityFile::from_buffer(&data[..]).map_err(|e| {
            crate::error::usage(format!(
                "identity file {} is not valid: {e}",
                path.display()
            ))
        })?;
        let identities = file.into_identities().map_err(|e| {
            crate::error::usage(format!(
                "identity file {} is not valid: {e}",
                path.display()
            ))
        })?;
        return Ok(identities.into_iter().map(|i| i as BoxIdentity).collect());
    }
    if text.contains("PRIVATE KEY") {
        let identity = age::ssh::Identity::from_buffer(&data[..], Some(path.display().to_string()))
            .map_err(|e| {
                crate::error::usage(format!("SSH key {} is not readable: {e}", path.display()))
            })?;
        return match identity {
            age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(identity)]),
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
    Err(crate::error::usage(format!(
        "{} holds no identity: expected an age identity (AGE-SECRET-KEY-…) or an SSH private key; lifeboat decrypts with keys, not passphrases",
        path.display()
    )))
}

/// A new X25519 identity: (the identity file's text, the public recipient).
pub fn generate() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let file = format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    );
    (file, recipient)
}

fn abbreviate(text: &str) -> String {
    if text.chars().count() > 24 {
        format!("{}…", text.chars().take(24).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "identity file {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let (identity, recipient) = generate();
        let key = dir.path().join("key.txt");
        std::fs::write(&key, &identity).unwrap();
        assert_eq!(read_identities(&key).unwrap().len(), 1);
        let recipients = dir.path().join("recipients.txt");
        std::fs::write(&recipients, format!("# ops team\n\n{recipient}\n")).unwrap();
        let parsed = read_recipients_file(&recipients).unwrap();
        assert_eq!(parsed[0].text, recipient);
    }

    #[test]
    fn passphrases_and_passphrase_protected_keys_are_explained() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let passphrase = dir.path().join("passphrase.txt");
        std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
        let err = read_identities(&passphrase).err().unwrap().to_string();
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
        let err = read_identities(&protected).err().unwrap().to_string();
        assert!(err.contains("age -d"), "{err}");
        assert_eq!(
            crate::error::class_of(&read_identities(&protected).err().unwrap()),
            crate::error::ExitClass::Usage
        );

        let err = read_identities(&dir.path().join("missing.txt"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot read identity file"), "{err}");
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
    fn missing_identity_file_names_the_path() {
        let err = read_identities(Path::new("/nonexistent/key.txt"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/key.txt"));
        assert_eq!(crate::error::class_of(&err), crate::error::ExitClass::Usage);
    }
}
