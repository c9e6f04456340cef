//! lifeboat: back up a docker compose app's volumes to object storage and restore them.
//!
//! A backup finds the app's containers, records the app's version, stops the containers, streams
//! each volume out of Docker as a tar, compresses and age-encrypts it in flight, multipart-uploads
//! it, and writes a manifest last (the commit point). The containers that were running are
//! started again whatever happens. A restore reads the manifest, refuses a different app version,
//! verifies every object end to end, then streams the volumes back.
//!
//! # Layout, bottom to top
//! Each layer uses only the layers below it; `main.rs` and `commands/` (the binary) sit on top.
//! - Leaves: [`format`](mod@format) (the types written to the bucket), [`error`] (exit classes), [`text`]
//!   (name rules, printing what came from the bucket), [`shutdown`], [`progress`].
//! - Keys: [`auth`] (manifest signatures), [`keys`] (age recipients, identities, key files).
//! - Adapters: [`pipeline`] (the streaming stages, and the two chains that put them together:
//!   `seal` writes a volume, `open` reads one back), [`docker`] (everything asked of the
//!   engine), [`host_tree`] (a local volume's tree read on the host, as the tar Docker's archive
//!   API would give), [`store`] (store URLs to `object_store` clients), [`manifest`] (what makes a
//!   manifest genuine), [`lock`] (one run per app and store), [`repo`] (the bucket as lifeboat
//!   uses it: layout, manifests, lock — the only way the operations reach it), [`hooks`],
//!   [`notify`].
//! - Local state: [`state`] (what a killed run left behind, the per-app claim), [`downtime`]
//!   (the window that stops the app and always starts it again, and recovery after a kill).
//! - Operations: [`backup`], [`restore`], [`retention`] (`prune`); `lifeboat verify` runs the
//!   read chain ([`pipeline::open`]) over a backup's objects.
//! - [`config`]: the settings, from flags, `LIFEBOAT_*` variables and a TOML file, turned into
//!   the objects the operations take.
//!
//! The mapping of errors to exit codes is the binary's (`main.rs`): it alone knows every layer.

pub mod auth;
pub mod backup;
pub mod config;
pub mod copy;
pub mod docker;
pub mod downtime;
pub mod error;
pub mod extract;
pub mod format;
pub mod hooks;
pub mod host_tree;
pub mod keys;
pub mod lock;
pub mod manifest;
pub mod notify;
pub mod pipeline;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod shutdown;
pub mod state;

pub mod store;
pub mod text;
