//! Backups the collector takes by itself and the encrypted files they are: the schedule
//! (`serve --backup-every …`) and the age format they are written in. The online copy
//! itself is the SQLite store's (`store::sqlite::backup`); the commands that read backups
//! are in `commands::backup`.

pub mod age_file;
pub mod schedule;
