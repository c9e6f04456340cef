//! Settings: one set of option structs serves as command-line flags, `LIFEBOAT_*` environment
//! variables (clap reads both; flags win) and sections of the TOML config file (which fills what
//! neither gave). Unknown keys in the file are errors. Each struct merges with [`Merge::or`]
//! and is validated once, where it is turned into the objects the operations use.
//!
//! Where it sits: Above the adapters it configures (`store`, `docker`, `hooks`, `notify`,
//! `retention`), below the binary; nothing in the library imports it.

use crate::format::Compression;
use crate::store::StoreOptions;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Fill what `self` leaves unset from `file`.
pub trait Merge {
    fn or(self, file: Self) -> Self;
}

macro_rules! merge_options {
    ($ty:ident { $($field:ident),* $(,)? } bools { $($flag:ident),* $(,)? }) => {
        impl Merge for $ty {
            fn or(self, file: Self) -> Self {
                Self {
                    $($field: self.$field.or(file.$field),)*
                    $($flag: self.$flag || file.$flag,)*
                }
            }
        }
    };
}

merge_options!(StoreOptions { url, endpoint, region, profile, storage_class, sse, sse_kms_key_id, io_timeout, part_size_mib, max_parts, parts_in_flight } bools { virtual_hosted_style });

/// Which app: a compose project or named containers.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppOptions {
    /// The docker compose project whose containers make up the app
    #[arg(long, short = 'p', env = "LIFEBOAT_PROJECT")]
    pub project: Option<String>,
    /// A container of the app, by name or id (repeatable; instead of --project)
    #[arg(
        long = "container",
        env = "LIFEBOAT_CONTAINERS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub containers: Option<Vec<String>>,
    /// The name backups are stored under [default: the project, else the first container]
    #[arg(long, env = "LIFEBOAT_NAME")]
    pub name: Option<String>,
    /// Seconds every container gets to stop gracefully before it is killed [default: each
    /// container's own stop timeout (compose's stop_grace_period), else Docker's 10]
    #[arg(long, env = "LIFEBOAT_STOP_TIMEOUT", value_name = "SECONDS")]
    pub stop_timeout: Option<u32>,
}
merge_options!(AppOptions { project, containers, name, stop_timeout } bools {});

impl AppOptions {
    pub fn selector(&self) -> Result<crate::docker::AppSelector> {
        match (&self.project, &self.containers) {
            (Some(project), None) => Ok(crate::docker::AppSelector::Project(project.clone())),
            (None, Some(containers)) if !containers.is_empty() => {
                Ok(crate::docker::AppSelector::Containers(containers.clone()))
            }
            (Some(_), Some(_)) => Err(crate::error::usage(
                "give either --project or --container, not both",
            )),
            _ => Err(crate::error::usage(
                "which app? give --project NAME (a docker compose project) or --container NAME (repeatable), or set [app] project in the config file",
            )),
        }
    }

    /// The name backups are stored under.
    pub fn app_name(&self) -> Result<String> {
        let name = self
            .name
            .clone()
            .or_else(|| self.project.clone())
            .or_else(|| self.containers.as_ref().and_then(|c| c.first().cloned()))
            .ok_or_else(|| crate::error::usage("which app? give --project or --container"))?;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(crate::error::usage(format!(
                "app name '{name}' cannot be used as a folder in the store; pass --name with letters, digits, '-' or '_'"
            )));
        }
        Ok(name)
    }

    /// The stop timeout for every container, when the operator set one; otherwise each
    /// container's own (compose's `stop_grace_period`), else Docker's 10 s.
    pub fn stop_timeout(&self) -> Option<u32> {
        self.stop_timeout
    }
}

/// Which app's backups a command that reads the store acts on: the same rule as backup and
/// restore ([`AppOptions::app_name`]), flags and variables first, then the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AppNameOptions {
    /// The compose project; its backups are stored under its name unless --name says otherwise
    #[arg(long, short = 'p', env = "LIFEBOAT_PROJECT")]
    pub project: Option<String>,
    /// The name the backups are stored under [default: the project]
    #[arg(long, env = "LIFEBOAT_NAME")]
    pub name: Option<String>,
}

impl AppNameOptions {
    /// The app name, from these options and the config file's `[app]`.
    pub fn app_name(&self, file: &AppOptions) -> Result<String> {
        self.merged(file).app_name()
    }

    /// The app name if one is given anywhere (`list` lists every app without).
    pub fn app_name_if_any(&self, file: &AppOptions) -> Result<Option<String>> {
        let merged = self.merged(file);
        if merged.name.is_none() && merged.project.is_none() && merged.containers.is_none() {
            return Ok(None);
        }
        merged.app_name().map(Some)
    }

    fn merged(&self, file: &AppOptions) -> AppOptions {
        AppOptions {
            project: self.project.clone(),
            name: self.name.clone(),
            ..Default::default()
        }
        .or(file.clone())
    }
}

/// How a backup is made.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupOptions {
    /// The backup key `lifeboat keygen` wrote: encrypts to the owner and signs the backup
    /// [default: ~/.config/lifeboat/backup.key]
    #[arg(
        long,
        short = 'k',
        env = "LIFEBOAT_BACKUP_KEY_FILE",
        value_name = "PATH"
    )]
    pub backup_key: Option<PathBuf>,
    /// An extra age recipient (age1… or an SSH public key) to encrypt to, besides the backup
    /// key's owner (repeatable); the owner's own recipient may be given too
    #[arg(
        long = "recipient",
        short = 'r',
        env = "LIFEBOAT_RECIPIENTS",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    pub recipients: Option<Vec<String>>,
    /// File of recipients, one per line (the owner's, and any extra ones)
    #[arg(
        long,
        short = 'R',
        env = "LIFEBOAT_RECIPIENTS_FILE",
        value_name = "PATH"
    )]
    pub recipients_file: Option<PathBuf>,
    /// Compression of the tar streams
    #[arg(long, env = "LIFEBOAT_COMPRESSION", value_enum)]
    pub compression: Option<Compression>,
    /// Compression level [default: zstd 3, gzip 6]
    #[arg(long, env = "LIFEBOAT_LEVEL")]
    pub level: Option<i32>,
    /// Back up only these volumes (repeatable; full or compose name) [default: every named volume]
    #[arg(long = "volume", value_name = "NAME")]
    pub volumes: Option<Vec<String>>,
    /// Leave this volume out (repeatable; full or compose name)
    #[arg(long = "exclude-volume", value_name = "NAME")]
    pub exclude_volumes: Option<Vec<String>>,
    /// Also back up the bind mount at this container path (repeatable), e.g. /etc/gitlab
    #[arg(long = "bind-path", value_name = "PATH")]
    pub bind_paths: Option<Vec<String>>,
    /// Where to read one app version string: label:KEY, env:NAME or file:SERVICE:/path
    #[arg(long, env = "LIFEBOAT_VERSION_FROM", value_name = "SOURCE")]
    pub version_from: Option<String>,
    /// Disk space in MiB for encrypted output the uplink cannot take yet, so the app restarts
    /// as soon as its volumes are read; 0 turns the spool off [default: half the free space of
    /// the spool directory, at most 16 GiB]
    #[arg(long, env = "LIFEBOAT_SPOOL_SIZE_MIB", value_name = "MIB")]
    pub spool_size_mib: Option<u64>,
    /// Directory of the spool (only ciphertext, unlinked files) [default: the state directory's
    /// spool/]
    #[arg(long, env = "LIFEBOAT_SPOOL_DIR", value_name = "PATH")]
    pub spool_dir: Option<PathBuf>,
    /// Store volumes as deduplicated chunks (format 3): a nightly backup uploads and stores
    /// only the chunks that changed since the newest backup. zstd or no compression
    #[arg(long, env = "LIFEBOAT_DEDUP")]
    #[serde(default)]
    pub dedup: bool,
    /// Read every volume through Docker's archive API, also a local volume whose directory
    /// this host can read itself (which is read there, at about twice the speed)
    #[arg(long, env = "LIFEBOAT_READ_THROUGH_DOCKER")]
    #[serde(default)]
    pub read_through_docker: bool,
}
merge_options!(BackupOptions { backup_key, recipients, recipients_file, compression, level, volumes, exclude_volumes, bind_paths, version_from, spool_size_mib, spool_dir } bools { dedup, read_through_docker });

/// How a restore is done.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreOptions {
    /// age identity file (or SSH private key) that decrypts the backup
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY_FILE", value_name = "PATH")]
    pub identity: Option<PathBuf>,
}
merge_options!(RestoreOptions { identity } bools {});

/// Which backups `lifeboat prune` keeps; in the config file, also applied after each backup.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionOptions {
    /// Keep the N newest backups
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep the newest backup of each of the N newest hours that have one
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<usize>,
    /// Keep the newest backup of each of the N newest days that have one
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<usize>,
    /// Keep the newest backup of each of the N newest ISO weeks that have one
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<usize>,
    /// Keep the newest backup of each of the N newest months that have one
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<usize>,
    /// Keep the newest backup of each of the N newest years that have one
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<usize>,
    /// Keep every backup made within this long before the newest one (30d, 12h, 1y6m)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Remove incomplete backups (objects without a manifest) older than this [default: 24h]
    #[arg(long, value_name = "DURATION")]
    pub incomplete_grace: Option<String>,
}
merge_options!(RetentionOptions { keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, incomplete_grace } bools {});

impl RetentionOptions {
    pub fn policy(&self) -> Result<crate::retention::KeepPolicy> {
        let within = self
            .keep_within
            .as_deref()
            .map(crate::retention::parse_duration)
            .transpose()
            .map_err(|e| crate::error::usage(format!("keep_within: {e}")))?;
        Ok(crate::retention::KeepPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within,
        })
    }

    pub fn grace(&self) -> Result<chrono::Duration> {
        self.incomplete_grace
            .as_deref()
            .map_or(
                Ok(chrono::Duration::hours(24)),
                crate::retention::parse_duration,
            )
            .map_err(|e| crate::error::usage(format!("incomplete_grace: {e}")))
    }
}

/// Who hears about each backup.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyOptions {
    /// POST a JSON report to this URL (Slack-compatible `text` field included); a secret:
    /// LIFEBOAT_WEBHOOK_URL_FILE reads it from a file
    #[arg(
        long,
        env = "LIFEBOAT_WEBHOOK_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub webhook: Option<String>,
    /// Which events go to the webhook [default: success,failure]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "EVENTS")]
    pub webhook_on: Option<Vec<crate::notify::Event>>,
    /// healthchecks.io-style check URL: pinged at URL/start, URL and URL/fail; a secret:
    /// LIFEBOAT_HEALTHCHECKS_URL_FILE reads it from a file
    #[arg(
        long,
        env = "LIFEBOAT_HEALTHCHECKS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub healthchecks: Option<String>,
    /// Which events are pinged [default: start,success,failure]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "EVENTS")]
    pub healthchecks_on: Option<Vec<crate::notify::Event>>,
    /// Seconds each notification request may take (3 attempts) [default: 10]
    #[arg(long = "notify-timeout", value_name = "SECONDS")]
    pub timeout: Option<u64>,
}
merge_options!(NotifyOptions { webhook, webhook_on, healthchecks, healthchecks_on, timeout } bools {});

impl NotifyOptions {
    pub fn notifier(&self) -> Result<crate::notify::Notifier> {
        crate::notify::Notifier::new(
            self.webhook.as_deref(),
            self.webhook_on.clone(),
            self.healthchecks.as_deref(),
            self.healthchecks_on.clone(),
            std::time::Duration::from_secs(self.timeout.unwrap_or(10).max(1)),
        )
    }
}

/// The config file: one section per option struct.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    pub store: StoreOptions,
    /// `[[stores]]` tables: more stores every backup writes to, each with its own settings
    /// (unset ones come from `[store]`).
    pub stores: Vec<StoreOptions>,
    pub app: AppOptions,
    pub backup: BackupOptions,
    pub restore: RestoreOptions,
    pub retention: RetentionOptions,
    pub notify: NotifyOptions,
    /// `[[hook]]` tables.
    pub hook: Vec<crate::hooks::HookConfig>,
}

impl ConfigFile {
    /// `[store]` without its URLs: the settings every `[[stores]]` table inherits.
    fn shared_settings(&self) -> StoreOptions {
        StoreOptions {
            url: None,
            ..self.store.clone()
        }
    }

    /// Each `[[stores]]` table must name one URL.
    fn check_tables(&self) -> Result<()> {
        for (i, table) in self.stores.iter().enumerate() {
            if table.urls().len() != 1 {
                return Err(crate::error::usage(format!(
                    "[[stores]] table {} must have one `url` (it has {}); give each store its own table",
                    i + 1,
                    table.urls().len()
                )));
            }
        }
        Ok(())
    }

    /// The `[[stores]]` table of `url`, if one names it.
    fn table_of(&self, url: &str) -> Option<&StoreOptions> {
        self.stores
            .iter()
            .find(|t| t.urls().first().is_some_and(|u| same_store(u, url)))
    }

    /// The settings of the store at `url`. A `[[stores]]` table is that store's own: its keys,
    /// then `[store]`'s; flags and `LIFEBOAT_*` variables apply to it only when this command
    /// names it (`named`: `--to`/`--from` gave its URL, or the command works on one store),
    /// and then win. Any other store: the flags, then `[store]`.
    fn settings_for(&self, url: &str, flags: &StoreOptions, named: bool) -> StoreOptions {
        let flags = StoreOptions {
            url: None,
            ..flags.clone()
        };
        match self.table_of(url) {
            Some(table) if named => flags.or(table.clone()).or(self.shared_settings()),
            Some(table) => table.clone().or(self.shared_settings()),
            None => flags.or(self.shared_settings()),
        }
        .with_url(url)
    }

    /// Every store the config file names, in order: `[store]`'s URLs, then each `[[stores]]`
    /// table's.
    fn configured_urls(&self) -> Vec<String> {
        let mut urls = self.store.urls().to_vec();
        urls.extend(self.stores.iter().flat_map(|t| t.urls().first().cloned()));
        urls
    }

    /// The one store a command other than `backup` uses: the URL given by flag, else the
    /// first configured store, else the local-folder default; with the settings of
    /// [`Self::settings_for`] (a `[[stores]]` table's endpoint, region and profile for its URL).
    pub fn store_for(&self, flags: StoreOptions) -> Result<StoreOptions> {
        self.check_tables()?;
        match flags.urls() {
            [] => Ok(match self.configured_urls().first() {
                Some(url) => self.settings_for(url, &flags, true),
                None => flags.or(self.store.clone()),
            }),
            [url] => Ok(self.settings_for(url, &flags, true)),
            [..] => Err(crate::error::usage(
                "this command works on one store: give --store (--from) once; only backup writes to several",
            )),
        }
    }

    /// Every store a backup writes to: each URL given by flag (`--to`, repeatable, or
    /// `LIFEBOAT_STORE`), else every configured one, else the local-folder default.
    pub fn stores_for_backup(&self, flags: StoreOptions) -> Result<Vec<StoreOptions>> {
        self.check_tables()?;
        let configured = self.configured_urls();
        let named = !flags.urls().is_empty();
        let urls: Vec<String> = if flags.urls().is_empty() {
            configured.clone()
        } else {
            let hidden: Vec<&str> = configured
                .iter()
                .filter(|c| !flags.urls().iter().any(|u| same_store(u, c)))
                .map(String::as_str)
                .collect();
            if !hidden.is_empty() {
                tracing::warn!(
                    "--to/LIFEBOAT_STORE names the stores of this run: the configured {} {} not written",
                    hidden.join(", "),
                    if hidden.len() == 1 { "is" } else { "are" }
                );
            }
            flags.urls().to_vec()
        };
        if urls.is_empty() {
            return Ok(vec![flags.or(self.store.clone())]);
        }
        for (i, url) in urls.iter().enumerate() {
            if urls[..i].iter().any(|earlier| same_store(earlier, url)) {
                return Err(crate::error::usage(format!(
                    "the store {url} is named twice; give each store once"
                )));
            }
        }
        Ok(urls
            .iter()
            .map(|url| self.settings_for(url, &flags, named))
            .collect())
    }

    /// Reads the file at `path`; `None` gives the empty config.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::error::usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let config =
            Self::parse(&text).with_context(|| format!("in config file {}", path.display()))?;
        if config.notify.webhook.is_some() || config.notify.healthchecks.is_some() {
            refuse_open_secret_file(path, "config file (it holds a webhook or healthchecks URL)")?;
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let message = redact_snippets(&e.to_string());
            match nearest_valid_name(&message) {
                Some(name) => crate::error::usage(format!("{message}did you mean `{name}`?")),
                None => crate::error::usage(message),
            }
        })
    }
}

/// Two store URLs that name the same place (a trailing slash aside).
fn same_store(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// A TOML error quotes the offending line, which may hold a secret (a webhook URL): the quoted
/// lines are cut down to their line numbers.
fn redact_snippets(message: &str) -> String {
    message
        .lines()
        .map(|line| match line.split_once('|') {
            Some((number, rest))
                if !number.trim().is_empty()
                    && number.trim().chars().all(|c| c.is_ascii_digit())
                    && !rest.trim().is_empty() =>
            {
                format!("{number}| (line not shown: it may hold a secret)")
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Refuses a file that holds a secret when group or others may read it, as ssh does.
pub fn refuse_open_secret_file(path: &Path, what: &str) -> Result<()> {
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

/// For serde's "unknown field `x`, expected one of `a`, `b`" (and "unknown variant"): the valid
/// name closest to the wrong one, when one is close.
fn nearest_valid_name(message: &str) -> Option<String> {
    let rest = message
        .split_once("unknown field `")
        .or_else(|| message.split_once("unknown variant `"))?
        .1;
    let (wrong, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected")?.1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| (strsim::damerau_levenshtein(wrong, name), name))
        .filter(|(distance, name)| *distance <= 2.max(name.len() / 3))
        .min()
        .map(|(_, name)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let file = ConfigFile::parse(
            "[store]\nurl = \"s3://b/p\"\nmax_parts = 1000\n[app]\nproject = \"cvat\"\n",
        )
        .unwrap();
        let flags = StoreOptions::default().with_url("file:///x");
        let merged = file.store_for(flags).unwrap();
        assert_eq!(merged.urls(), ["file:///x"]);
        assert_eq!(merged.max_parts, Some(1000));
        assert_eq!(
            AppOptions::default().or(file.app).app_name().unwrap(),
            "cvat"
        );
    }

    #[test]
    fn a_backup_writes_every_configured_store_each_with_its_own_settings() {
        let file = ConfigFile::parse(
            "[store]\nurl = \"file:///local\"\nregion = \"eu-west-1\"\n\n\
             [[stores]]\nurl = \"s3://offsite/app\"\nendpoint = \"http://minio:9000\"\n\n\
             [[stores]]\nurl = \"az://other/app\"\n",
        )
        .unwrap();
        let stores = file.stores_for_backup(StoreOptions::default()).unwrap();
        let urls: Vec<String> = stores.iter().map(StoreOptions::url_or_default).collect();
        assert_eq!(
            urls,
            ["file:///local", "s3://offsite/app", "az://other/app"]
        );
        assert_eq!(stores[1].endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(
            stores[1].region.as_deref(),
            Some("eu-west-1"),
            "from [store]"
        );
        assert_eq!(stores[2].endpoint, None);
        // Commands that read take the first, or the one named, with its settings.
        let first = file.store_for(StoreOptions::default()).unwrap();
        assert_eq!(first.url_or_default(), "file:///local");
        let named = file
            .store_for(StoreOptions::default().with_url("s3://offsite/app"))
            .unwrap();
        assert_eq!(named.endpoint.as_deref(), Some("http://minio:9000"));
        // --to on the command line replaces the list; a flag's settings win.
        let flags = StoreOptions {
            url: Some(vec!["s3://offsite/app".into(), "file:///elsewhere".into()]),
            region: Some("us-east-2".into()),
            ..Default::default()
        };
        let stores = file.stores_for_backup(flags.clone()).unwrap();
        assert_eq!(stores.len(), 2);
        assert_eq!(stores[0].endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(stores[0].region.as_deref(), Some("us-east-2"));
        assert_eq!(stores[1].url_or_default(), "file:///elsewhere");
        // A table's own keys are that store's: an endpoint flag (or LIFEBOAT_S3_ENDPOINT) meant
        // for the first store does not send the offsite uploads elsewhere.
        let endpoint_flag = StoreOptions {
            endpoint: Some("http://local-minio:9000".into()),
            ..Default::default()
        };
        let stores = file.stores_for_backup(endpoint_flag).unwrap();
        assert_eq!(
            stores[0].endpoint.as_deref(),
            Some("http://local-minio:9000")
        );
        assert_eq!(stores[1].endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(
            stores[2].endpoint, None,
            "az://other/app has none of its own"
        );
        let err = file.store_for(flags).unwrap_err().to_string();
        assert!(err.contains("one store"), "{err}");
    }

    #[test]
    fn a_store_named_twice_is_refused_and_a_list_of_urls_is_read() {
        let file = ConfigFile::parse("[store]\nurl = [\"file:///a\", \"file:///a\"]\n").unwrap();
        let err = file
            .stores_for_backup(StoreOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("file:///a is named twice"), "{err}");
        let file = ConfigFile::parse("[store]\nurl = [\"file:///a\", \"file:///b\"]\n").unwrap();
        assert_eq!(
            file.stores_for_backup(StoreOptions::default())
                .unwrap()
                .len(),
            2
        );
        let err = ConfigFile::parse("[[stores]]\nurll = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `url`"), "{err}");
        for table in [
            "[[stores]]\nregion = \"x\"\n",
            "[[stores]]\nurl = [\"file:///a\", \"file:///b\"]\n",
        ] {
            let err = ConfigFile::parse(table)
                .unwrap()
                .stores_for_backup(StoreOptions::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("must have one `url`"), "{err}");
        }
        let file =
            ConfigFile::parse("[store]\nurl = \"s3://b/p\"\n[[stores]]\nurl = \"s3://b/p/\"\n")
                .unwrap();
        let err = file
            .stores_for_backup(StoreOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("named twice"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_valid_ones() {
        let err = ConfigFile::parse("[store]\nurll = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `url`?"), "{err}");
        assert!(
            err.contains("expected one of `url`, `endpoint`") && err.contains("`parts_in_flight`"),
            "the valid keys are listed: {err}"
        );
        let err = ConfigFile::parse("[retention]\nkeep_dayly = 7\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `keep_daily`?"), "{err}");
        let err = ConfigFile::parse("[[hook]]\non = \"befor-backup\"\ncommand = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `before-backup`?"), "{err}");
        let err = ConfigFile::parse("[stor]\n").unwrap_err().to_string();
        assert!(err.contains("stor"), "{err}");
    }

    #[test]
    fn parse_errors_never_quote_the_line() {
        let err = ConfigFile::parse("[notify]\nwebhook = \"https://hooks.example/T0KEN-SECRET\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("T0KEN-SECRET"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_example_config_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
                .unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| rest.contains(" = ") || rest.starts_with('['))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        ConfigFile::parse(&uncommented).unwrap();
    }

    #[test]
    fn app_selection_is_explained() {
        let err = AppOptions::default().selector().unwrap_err().to_string();
        assert!(err.contains("--project"), "{err}");
        let bad = AppOptions {
            name: Some("../x".into()),
            ..Default::default()
        };
        assert!(bad.app_name().is_err());
    }
}
