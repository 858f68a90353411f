//! `deltaspace export`: every stored task as one JSON line, the format `deltaspace import` reads,
//! from either store: how tasks move from SQLite to PostgreSQL (or back, or to a backup).

use std::io::Write;

use super::location::StoreLocation;
use super::open;
use super::{Record, StoreError};

/// Writes every stored task of `location` to `out`, one JSON line each in name order (tasks of
/// every subspace, each naming its own); returns how many. A SQLite file that does not exist is
/// an error rather than an empty export.
pub fn export_tasks(location: &StoreLocation, out: &mut dyn Write) -> Result<usize, StoreError> {
    if let StoreLocation::Sqlite(path) = location
        && !path.is_file()
    {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            message: "no task database here".into(),
        });
    }
    let backend = open(location)?;
    let mut written = 0;
    backend.each(&mut |record: Record| {
        out.write_all(record.task_json.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|error| StoreError::Visit(Box::new(error)))?;
        written += 1;
        Ok(())
    })?;
    out.flush()
        .map_err(|error| StoreError::Visit(Box::new(error)))?;
    Ok(written)
}
