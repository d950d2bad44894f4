//! Atomic output: files and whole directories appear complete or not at all.
//!
//! A file is written to a temporary sibling, flushed, and renamed over the target. A
//! directory is built under a temporary sibling name and renamed into place; an
//! existing directory of that name is replaced only after the new one is complete.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically (temporary file + fsync + rename).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_with(path, |w| w.write_all(bytes)).map_err(|e| Error::io(path, e))
}

/// Writes `path` atomically through a buffered writer: `fill` writes a temporary
/// sibling, which is flushed, synced and renamed over `path`, then the directory is
/// synced. On any error the temporary file is removed and `path` is left as it was. The
/// raw I/O error is returned so that callers can say what it means for them (a full
/// disk, what is still consistent).
pub fn write_file_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    match result {
        Ok(()) => {
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(dir);
            }
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Builds the directory `dir` atomically: `fill` writes into a fresh temporary
/// directory, which then replaces `dir`. On any error nothing at `dir` changes and the
/// temporary directory is removed.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_sibling(dir);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| Error::io(dir, e))?;
    let result = fill(&tmp).and_then(|()| {
        sync_dir(&tmp);
        let old = old_sibling(dir);
        if dir.exists() {
            let _ = fs::remove_dir_all(&old);
            fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
            fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent);
        }
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Repairs what a crash inside [`write_dir_atomic`] can leave: between its two renames
/// `dir` is missing and `dir.old` holds the previous complete version, which this puts
/// back. Does nothing when `dir` exists or there is no `dir.old`. Call it before reading
/// a directory that is replaced in place (a checkpoint).
pub fn recover_dir(dir: &Path) -> Result<()> {
    let old = old_sibling(dir);
    if dir.exists() || !old.is_dir() {
        return Ok(());
    }
    fs::rename(&old, dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// `dir.old`: where [`write_dir_atomic`] moves the version it replaces.
fn old_sibling(dir: &Path) -> PathBuf {
    dir.with_file_name(format!(
        "{}.old",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// Checks that `dir` can be created and written, without leaving anything behind that
/// was not there before. Used to fail early, before hours of training.
pub fn check_writable(dir: &Path) -> Result<()> {
    let probe_parent = if dir.exists() {
        dir.to_path_buf()
    } else {
        let mut p = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        while !p.as_os_str().is_empty() && !p.exists() {
            p = p.parent().map(Path::to_path_buf).unwrap_or_default();
        }
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p
        }
    };
    let probe = probe_parent.join(format!(".saelab-write-test-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| Error::bad_file(dir, format!("cannot write here: {e}")))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_leaves_nothing_and_success_replaces() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sae");
        let err = write_dir_atomic(&dir, |tmp| {
            fs::write(tmp.join("a"), b"1").unwrap();
            Err(Error::config("boom"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
        write_dir_atomic(&dir, |tmp| {
            fs::write(tmp.join("a"), b"1").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        write_dir_atomic(&dir, |tmp| {
            fs::write(tmp.join("b"), b"2").map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        assert!(!dir.join("a").exists() && dir.join("b").exists());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn recover_dir_puts_back_a_version_moved_aside_by_a_crash() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("checkpoint");
        let write = |name: &str| {
            write_dir_atomic(&dir, |tmp| {
                fs::write(tmp.join(name), b"x").map_err(|e| Error::io(tmp, e))
            })
            .unwrap()
        };
        write("a");
        // Nothing to do while `dir` is in place (a stale `.old` is left alone).
        fs::create_dir(old_sibling(&dir)).unwrap();
        recover_dir(&dir).unwrap();
        assert!(dir.join("a").exists());
        fs::remove_dir(old_sibling(&dir)).unwrap();
        // A crash between the two renames of a replacement: `dir` gone, `dir.old` whole.
        write("b");
        fs::rename(&dir, old_sibling(&dir)).unwrap();
        recover_dir(&dir).unwrap();
        assert!(dir.join("b").exists() && !old_sibling(&dir).exists());
        // Neither there: nothing to recover, and no error.
        fs::remove_dir_all(&dir).unwrap();
        recover_dir(&dir).unwrap();
        assert!(!dir.exists());
    }
}
