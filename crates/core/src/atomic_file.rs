//! Files written whole or not at all. The bytes go to a temporary sibling, which is synced to disk
//! and then renamed over the target, so an error midway (a lost database connection, a full
//! disk) or a crash never leaves half a file, and a file already at the target stays as it was
//! until its replacement is complete. A symbolic link is followed (the file it names is
//! replaced, the link stays), a replaced file keeps its permissions, and a target that is not a
//! regular file (`/dev/stdout`, a pipe) is written in place, as there is nothing to replace.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Writes `path` through `fill`, atomically, creating its directory when missing. On an error
/// from `fill` or from the file system the temporary file is removed and `path` is untouched.
pub fn write<E: From<std::io::Error>>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
) -> Result<(), E> {
    let existing = std::fs::metadata(path).ok();
    if existing.as_ref().is_some_and(|meta| !meta.is_file()) {
        let mut out = BufWriter::new(File::create(path)?);
        fill(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?;
        return Ok(());
    }
    // The file a link names, so that the link stays a link.
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let directory = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(directory) = directory {
        std::fs::create_dir_all(directory)?;
    }
    let temporary = temporary_sibling(&path);
    let written = write_synced(&temporary, existing, fill).and_then(|()| {
        std::fs::rename(&temporary, &path)?;
        Ok(())
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
        return written;
    }
    // The rename is durable once the directory is synced; a file system that cannot sync a
    // directory still renamed the file, so that is not an error.
    if let Ok(directory) = File::open(directory.unwrap_or(Path::new("."))) {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// `<name>.<process id>.partial` beside `path`: two processes writing one target never share it.
fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{name}.{}.partial", std::process::id()))
}

/// `fill` into `temporary`, with the permissions of the file it will replace, synced.
fn write_synced<E: From<std::io::Error>>(
    temporary: &Path,
    replaced: Option<std::fs::Metadata>,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
) -> Result<(), E> {
    let mut out = BufWriter::new(File::create(temporary)?);
    fill(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    if let Some(replaced) = replaced {
        file.set_permissions(replaced.permissions())?;
    }
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let failed = write(&path, |out| {
            out.write_all(b"half of the new")?;
            Err(std::io::Error::other("the store went away"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "the store went away");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");

        write::<std::io::Error>(&path, |out| out.write_all(b"new\n")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let nested = dir.path().join("a/b/c.json");
        write::<std::io::Error>(&nested, |out| out.write_all(b"{}")).unwrap();
        assert_eq!(std::fs::read_to_string(nested).unwrap(), "{}");
    }

    #[test]
    fn a_link_stays_a_link_and_a_replaced_file_keeps_its_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("backup.jsonl");
        std::fs::write(&target, "old\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("latest.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write::<std::io::Error>(&link, |out| out.write_all(b"new\n")).unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
