//! Temporary siblings of outputs: every file or directory is written under a hidden name in
//! the same directory (`.NAME.tmp-PID`) and renamed when complete, so a reader never sees a
//! partial output. A killed writer leaves its temporary behind; the next writer of the same
//! output removes it ([`remove_stale_temps`]).

use std::path::{Path, PathBuf};

/// A name for a temporary sibling of `path` (same directory, so a rename is atomic):
/// `.NAME.tmp-PID` of this process.
fn temp_sibling(path: &Path) -> PathBuf {
    temp_sibling_of_pid(path, std::process::id())
}

/// The temporary sibling a writer of `path` should write to, made ready: the temporaries of
/// killed writers ([`remove_stale_temps`]) and any earlier one of this process are removed
/// first. Errors name the path they concern.
pub fn fresh_temp_sibling(path: &Path) -> std::io::Result<PathBuf> {
    remove_stale_temps(path)?;
    let tmp = temp_sibling(path);
    if let Ok(meta) = std::fs::symlink_metadata(&tmp) {
        remove(&tmp, meta.is_dir())?;
    }
    Ok(tmp)
}

fn remove(p: &Path, is_dir: bool) -> std::io::Result<()> {
    let result = if is_dir {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    result.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

fn temp_sibling_of_pid(path: &Path, pid: u32) -> PathBuf {
    path.with_file_name(format!(".{}.tmp-{pid}", file_name(path)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether process `pid` is running, or `None` where that cannot be told (no `/proc`).
fn process_alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    proc.join("self")
        .exists()
        .then(|| proc.join(pid.to_string()).exists())
}

/// Removes the temporaries of `path` left by writers that are no longer running (a killed
/// run) and returns the paths removed. A temporary of a running process (this one, or
/// another writer still at work) is kept; so is everything where liveness cannot be told
/// (systems without `/proc`). Errors while removing are returned with the path.
pub fn remove_stale_temps(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let prefix = format!(".{}.tmp-", file_name(path));
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) != Some(false) {
            continue;
        }
        let p = entry.path();
        remove(&p, entry.file_type()?.is_dir())?;
        removed.push(p);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_are_removed_live_ones_and_others_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("store");
        // Linux pids are at most 2^22, so this process cannot exist.
        let dead_dir = temp_sibling_of_pid(&out, 4_000_000_000);
        std::fs::create_dir_all(dead_dir.join("inner")).unwrap();
        let dead_file = temp_sibling_of_pid(&out, 4_000_000_001);
        std::fs::write(&dead_file, b"partial").unwrap();
        let own = temp_sibling(&out);
        std::fs::create_dir(&own).unwrap();
        let other_output = temp_sibling_of_pid(&tmp.path().join("stor"), 4_000_000_000);
        std::fs::write(&other_output, b"x").unwrap();
        for keep in [".store.tmp-x", ".store.tmp-", "store.tmp-4000000000"] {
            std::fs::write(tmp.path().join(keep), b"x").unwrap();
        }
        let mut removed = remove_stale_temps(&out).unwrap();
        removed.sort();
        if process_alive(1).is_none() {
            assert!(removed.is_empty());
            return;
        }
        assert_eq!(removed, vec![dead_dir.clone(), dead_file.clone()]);
        assert!(!dead_dir.exists() && !dead_file.exists());
        assert!(own.exists(), "this process's temporary was removed");
        assert!(other_output.exists());
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".stor.tmp-4000000000",
                ".store.tmp-",
                &format!(".store.tmp-{}", std::process::id()),
                ".store.tmp-x",
                "store.tmp-4000000000",
            ]
        );
        // Nothing stale left: a second call removes nothing; a missing directory is fine.
        assert!(remove_stale_temps(&out).unwrap().is_empty());
        assert!(remove_stale_temps(&tmp.path().join("no/such/dir/x"))
            .unwrap()
            .is_empty());
        // A fresh temporary: this process's earlier one is cleared too.
        assert_eq!(fresh_temp_sibling(&out).unwrap(), own);
        assert!(!own.exists());
    }
}
