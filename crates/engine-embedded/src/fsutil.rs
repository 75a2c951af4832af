//! The file-system steps that make a write durable, shared by the log, the
//! journal, the delay index and the metadata files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Syncs a directory, so that files created, renamed or removed in it survive
/// a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `tmp`, syncs them when `fsync`, and renames `tmp` over
/// `path`: a crash leaves either the old or the new content, never a mix. The
/// rename itself is durable only once the directory is synced ([`sync_dir`]).
pub(crate) fn write_and_rename(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    fsync: bool,
) -> io::Result<()> {
    let mut file = File::create(tmp)?;
    file.write_all(bytes)?;
    if fsync {
        file.sync_data()?;
    }
    fs::rename(tmp, path)
}

/// Replaces `dir/name` with `bytes` through the temporary file `dir/tmp_name`
/// ([`write_and_rename`]), then syncs `dir`; both syncs only when `fsync`.
pub(crate) fn replace_file(
    dir: &Path,
    name: &str,
    tmp_name: &str,
    bytes: &[u8],
    fsync: bool,
) -> io::Result<()> {
    write_and_rename(&dir.join(tmp_name), &dir.join(name), bytes, fsync)?;
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_swaps_the_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        replace_file(dir.path(), "f", ".f.tmp", b"one", true).unwrap();
        replace_file(dir.path(), "f", ".f.tmp", b"two", false).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"two");
        assert!(!dir.path().join(".f.tmp").exists());
    }
}
