//! The artifacts directory on disk: which image directory a machine boots
//! (flat, or per architecture), and opening a file of it safely: regular
//! files inside it (or in the Nix store) only, never through a symlink out of
//! it, never blocking on a FIFO. Used by the artifacts handler and the boot
//! decision (which reads `ARTIFACTS/cmdline`); below both.

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

/// The per-architecture directories of the artifacts directory
/// (`ARTIFACTS/x86_64/`, `ARTIFACTS/arm64/`), by iPXE `${buildarch}`.
pub const ARCH_DIRS: [&str; 2] = ["x86_64", "arm64"];

/// The directory for iPXE's `${buildarch}`: `i386` (undionly.kpxe is a
/// 32-bit iPXE, on 64-bit BIOS machines too) and `x86_64` boot the x86_64
/// image, `arm64` the arm64 one. `None` for another architecture.
pub fn arch_dir(buildarch: &str) -> Option<&'static str> {
    match buildarch {
        "x86_64" | "i386" => Some("x86_64"),
        "arm64" => Some("arm64"),
        _ => None,
    }
}

/// Where the installer image for a machine is, relative to the artifacts
/// directory: `""` for a flat directory (one architecture), `"x86_64/"` or
/// `"arm64/"` for per-architecture ones. `Err` (why, fix) when there is no
/// image for `buildarch`: the machine holds with that reason.
pub fn image_dir(root: &Path, buildarch: Option<&str>) -> Result<&'static str, (String, String)> {
    let has_image = |d: &Path| d.join("vmlinuz").is_file();
    let per_arch: Vec<&str> = ARCH_DIRS
        .into_iter()
        .filter(|a| root.join(a).is_dir())
        .collect();
    match buildarch {
        Some(b) => match arch_dir(b) {
            Some(a) if has_image(&root.join(a)) => Ok(match a {
                "x86_64" => "x86_64/",
                _ => "arm64/",
            }),
            // A flat directory serves the one architecture it was built for.
            _ if per_arch.is_empty() => Ok(""),
            Some(a) => Err((
                format!("no installer image for architecture {b}: {a}/vmlinuz is missing in the artifacts directory"),
                format!("build the {a} installer into ARTIFACTS/{a}/ (vmlinuz, initrd)"),
            )),
            None => Err((
                format!("no installer image for architecture {b}"),
                format!("landfall installs {}", ARCH_DIRS.join(" and ")),
            )),
        },
        // No `${buildarch}` (an old chain script): the flat directory, else
        // the only architecture there is.
        None if per_arch.is_empty() => Ok(""),
        None if per_arch.len() == 1 => Ok(if per_arch[0] == "x86_64" { "x86_64/" } else { "arm64/" }),
        None => Err((
            "the boot request names no architecture and the artifacts directory has several".into(),
            "chain boot.ipxe?mac=${net0/mac}&arch=${buildarch}".into(),
        )),
    }
}
