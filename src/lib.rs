//! lifeboat: back up a docker compose app's volumes to object storage and restore them.
//!
//! A backup finds the app's containers, records the app's version, stops the containers, streams
//! each volume out of Docker as a tar, compresses and age-encrypts it in flight, multipart-uploads
//! it, and writes a manifest last (the commit point). The containers that were running are
//! started again whatever happens. A restore reads the manifest, refuses a different app version,
//! verifies every object end to end, then streams the volumes back.
//!
//! # Layout
//! - [`config`]: the settings, from flags, `LIFEBOAT_*` variables and a TOML file.
//! - [`docker`]: finding the app, stopping and starting it, the archive streams in and out.
//! - [`pipeline`]: the streaming stages (hash, compress, encrypt, upload, download, tar check).
//! - [`store`]: store URLs to `object_store` clients, S3 credentials from aws-config.
//! - [`manifest`]: the self-describing record of one backup, and the bucket layout.
//! - [`keys`]: age recipients and identities.
//! - [`lock`]: one run per app and store at a time.
//! - [`backup`], [`restore`], [`verify`]: the operations the subcommands run.
//! - [`hooks`]: the operator's commands around a backup, each volume and a restore.
//! - [`notify`]: webhook and healthchecks pings about each backup.
//! - [`progress`]: per-volume progress bars on a terminal.
//! - [`retention`]: which backups a keep policy keeps (`lifeboat prune`).
//! - [`shutdown`]: SIGINT/SIGTERM turned into a cancellation token.
//! - [`stopped`]: the downtime window that always starts the app again.
//! - [`state`]: the local record that restarts an app a killed run left stopped.
//! - [`error`]: error classes and the exit codes they map to.

pub mod auth;
pub mod backup;
pub mod config;
pub mod docker;
pub mod error;
pub mod hooks;
pub mod keys;
pub mod lock;
pub mod manifest;
pub mod notify;
pub mod pipeline;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod shutdown;
pub mod state;
pub mod stopped;
pub mod store;
pub mod text;
pub mod verify;
