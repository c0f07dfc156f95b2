//! Compiled modules kept on disk (wasmtime's compilation cache), so a module
//! compiled once is not compiled again: not at a job's restart, not by the
//! next job or backfill over the same file, not when a swap returns to an
//! earlier module. Entries are keyed by the module's bytes and the engine's
//! settings, so a changed module or another sluice version compiles anew.
//!
//! What the cache holds is machine code this process runs, so its folder
//! must be the user's alone: sluice makes it private (0700) and will not use
//! one that others may write to.

use std::path::{Path, PathBuf};

use wasmtime::{Cache, CacheConfig};

/// The cache's folder when none is given: `$XDG_CACHE_HOME/sluice/modules`,
/// else `$HOME/.cache/sluice/modules`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("sluice").join("modules"))
}

/// The cache in `dir`, made private if it is new. An error says why it
/// cannot be used; the caller compiles without it.
pub(super) fn open(dir: &Path) -> Result<Cache, String> {
    let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    create_private(&dir)?;
    refuse_shared(&dir)?;
    let mut config = CacheConfig::new();
    config.with_directory(&dir);
    Cache::new(config).map_err(|e| format!("{}: {e:#}", dir.display()))
}

fn create_private(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// Refuses a folder that a group or everyone may write to: a module planted
/// there would run as this process.
fn refuse_shared(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} may be written by other users (mode {:o}); make it private (chmod 700) to use it",
            dir.display(),
            mode & 0o777
        ));
    }
    Ok(())
}
