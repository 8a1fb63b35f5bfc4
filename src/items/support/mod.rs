//! Helpers shared by several item kinds, one concern per file. Nothing here is an item: these
//! modules use `base`, the item context (`ItemCtx`, `Prepare`) and `child_env`, never the module
//! of one kind, so each kind can use them without reaching into another.
//!
//! - [`backup_files`]: which files of a backup folder are backups, and the newest complete one
//!   (`backup` and `restore_drill` must pick the same file).
//! - [`backup_format`]: a backup's format by its content, and reading a gzip or plain stream to
//!   its end (completion marker, table names).
//! - [`checksum`]: streamed SHA-256 and `sha256sum` sidecars.
//! - [`plain_guard`]: what of an untrusted plain dump may reach psql.
//! - [`process`]: a child in its own process group, stopped as a whole (`command`, the
//!   PostgreSQL tools).
//! - [`http`]: the HTTP client, checks and messages of the web-API kinds.
//! - [`workers`]: the connection-per-worker pool of `vacuum` and `reindex`.
//! - [`pg_tools`]: `pg_restore`/`psql` runs with a deadline, cancellation and stderr tail.

pub mod backup_files;
pub mod backup_format;
pub mod checksum;
pub mod http;
pub mod pg_tools;
pub mod plain_guard;
pub mod process;
pub mod workers;
