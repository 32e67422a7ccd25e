//! Opening a file of a served directory safely: regular files inside it (or
//! in the Nix store) only, never through a symlink out of it, never blocking
//! on a FIFO. Used by the artifacts handler and the boot decision (which
//! reads `ARTIFACTS/cmdline`); below both.

use std::path::Path;

/// Where a symlink in the artifacts directory may point: the Nix store is
/// world-readable and immutable by design (the NixOS module's netboot
/// directory is symlinks into it), so serving from it discloses nothing.
pub const NIX_STORE: &str = "/nix/store/";

/// Open `dir/name` for reading when it is a regular file in `dir`; `None`
/// when there is none: missing, or something else under that name. A
/// symlink is followed only when its whole resolution stays inside `dir` or
/// ends in the Nix store ([`NIX_STORE`]); one to anywhere else (the data
/// directory's `admin.token`) is refused. Every open is `O_NOFOLLOW` (the
/// file opened is the one checked) and `O_NONBLOCK` (a FIFO does not wait for
/// a writer), and the `fstat` after it refuses FIFOs, devices, sockets and
/// directories. `name` must be a checked plain file name.
pub fn open_regular(dir: &Path, name: &str) -> std::io::Result<Option<(std::fs::File, u64)>> {
    open_regular_with_store(dir, name, Path::new(NIX_STORE))
}

/// [`open_regular`] with the store directory given (the tests' stand-in).
pub(crate) fn open_regular_with_store(
    dir: &Path,
    name: &str,
    store: &Path,
) -> std::io::Result<Option<(std::fs::File, u64)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(p)
    };
    let path = dir.join(name);
    let file = match open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            let target = match std::fs::canonicalize(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let inside = std::fs::canonicalize(dir).is_ok_and(|d| target.starts_with(d));
            if !inside && !target.starts_with(store) {
                tracing::warn!(
                    "{} is a symlink to {}, outside the artifacts directory and the Nix store: not served",
                    path.display(),
                    target.display()
                );
                return Ok(None);
            }
            match open(&target) {
                Ok(f) => f,
                // Changed since it was resolved: there is nothing safe to serve.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ELOOP) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        tracing::warn!(
            "{} is not a regular file ({:?}); not served",
            path.display(),
            meta.file_type()
        );
        return Ok(None);
    }
    Ok(Some((file, meta.len())))
}
