//! File writes the data directory relies on, once each: atomic (absent or complete, even after
//! `kill -9` or a power loss) and private (mode 0600, for keys).

use std::io::Write as _;

use anyhow::Context as _;
use cap_std::fs::Dir;

/// Writes `name` in `dir` so that it is either absent or complete: temp file, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(dir: &Dir, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = format!(".{name}.{}.tmp", uuid::Uuid::now_v7().simple());
    let mut file = dir.create(&tmp).with_context(|| format!("creating {tmp}"))?;
    file.write_all(bytes).with_context(|| format!("writing {tmp}"))?;
    file.sync_all().with_context(|| format!("syncing {tmp}"))?;
    drop(file);
    dir.rename(&tmp, dir, name).with_context(|| format!("renaming {tmp} to {name}"))?;
    dir.open(".").and_then(|d| d.sync_all()).ok();
    Ok(())
}

#[cfg(unix)]
pub fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
pub fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{contents}\n"))?;
    Ok(())
}
