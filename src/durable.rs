//! Crash-safe replacement of a state file, shared by every role that keeps state on disk (the
//! TCS view snapshot, the edge's cache file): write a temp file beside the target, fsync it,
//! rename it over the target, fsync the directory. A reader sees the old file or the new one,
//! never a mix, and a crash loses at most the write in progress.

use std::fs::File;
use std::path::{Path, PathBuf};

/// One step of a file replacement failed.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done.
    pub step: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// Replaces `path` with what `fill` writes into a fresh file. The temp file is removed when
/// anything fails; the error that matters is returned.
pub fn replace_file<E: From<FileError>>(
    path: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    replace(path, 0o666, fill)
}

/// [`replace_file`] with `bytes`, the file readable and writable by its owner only (0600)
/// from its creation: for files holding secrets (tokens, configs that name them).
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    use std::io::Write;
    replace(path, 0o600, |f: &mut File| {
        f.write_all(bytes).map_err(step("writing", path))
    })
}

fn replace<E: From<FileError>>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(step("creating", &dir))?;
    let tmp = temp_path(path);
    // A temp file a crash left behind goes first: a new one gets `mode` (an old one would keep
    // whatever mode it had).
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(step("creating", &tmp))
        .map_err(E::from)
        .and_then(|mut file| {
            fill(&mut file)?;
            file.sync_all().map_err(step("syncing", &tmp))?;
            std::fs::rename(&tmp, path).map_err(step("renaming to", path))?;
            // Makes the rename itself durable.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(step("syncing directory", &dir))?;
            Ok(())
        });
    if result.is_err() {
        // Best effort: do not leave a stale temp file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Maps an I/O error of `what` on `path` into a [`FileError`].
pub fn step(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError {
        step: what,
        path,
        source,
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.json");
        replace_file::<FileError>(&path, |f| f.write_all(b"one").map_err(step("writing", &path))).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let failed = replace_file::<FileError>(&path, |f| {
            f.write_all(b"half").map_err(step("writing", &path))?;
            Err(step("writing", &path)(std::io::Error::other("disk full")))
        });
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"one",
            "a failed write leaves the old file"
        );
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }
}
