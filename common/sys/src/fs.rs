//! Files others read while they change: CNI configs kubelet's runtime
//! watches, binaries it executes, manifests agents poll.

use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Writes `bytes` with permission bits `mode` through a temporary file in
/// the same directory and renames it over `path`, so readers see the old
/// or the new content, never a torn one (and a binary being executed is
/// replaced, not overwritten: ETXTBSY cannot happen). The temporary name
/// starts with a dot and ends in `.tmp`, which manifest readers and
/// libcni (it loads only `*.conf`, `*.conflist`, `*.json`) skip. The
/// directory is created if missing.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("sluice-sys-fs-{}", std::process::id()));
        let path = dir.join("sub").join("05-x.conflist");
        write_atomic(&path, b"one", 0o644).expect("first write");
        write_atomic(&path, b"two", 0o755).expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["05-x.conflist"]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
