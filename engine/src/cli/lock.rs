//! One process per data directory: the `LOCK` every command takes, and the `HOLDER.json`
//! record that says who holds it (PID, command line, a service's address).

use super::*;

/// The file, next to `LOCK`, in which the process holding a data directory's lock says who it
/// is (PID, command line and, for a service, its HTTP address). Written atomically while the
/// lock is held and removed on exit; one left behind by a killed process is ignored, since the
/// lock itself is the truth.
pub(super) const HOLDER_FILE: &str = "HOLDER.json";

/// Who holds a data directory (the contents of [`HOLDER_FILE`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Holder {
    pub(super) pid: u32,
    /// The subcommand (`serve`, `demo`, `ingest`, …).
    pub(super) command: String,
    /// The whole command line.
    pub(super) argv: String,
    /// Where a service (`serve`, `cluster`, `demo`) answers HTTP.
    pub(super) addr: Option<std::net::SocketAddr>,
    /// Whether that service requires a bearer token.
    pub(super) token: bool,
}

impl Holder {
    pub(super) fn describe(&self) -> String {
        let addr = self.addr.map(|a| format!(", serving http://{a}")).unwrap_or_default();
        format!("process {} (`{}`{addr})", self.pid, self.argv)
    }
}

/// Reads the holder record of `dir`, if there is a plausible one: `None` when it is missing,
/// unreadable, or names a process that no longer runs (a stale file).
pub(super) fn read_holder(dir: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(dir.join(HOLDER_FILE)).ok()?;
    let h: Holder = serde_json::from_str(&text).ok()?;
    let proc = Path::new("/proc");
    if proc.is_dir() && !proc.join(h.pid.to_string()).exists() {
        return None;
    }
    Some(h)
}

/// The lock of a data directory, held for the life of a command so two processes never
/// recover, append to or delete the same data at once. Dropping it removes the holder record
/// (the OS releases the lock itself, also when the process is killed).
pub(super) struct DirLock {
    pub(super) _file: std::fs::File,
    pub(super) dir: PathBuf,
    pub(super) holder: Holder,
}

/// What holding the lock failed with: another process has it.
pub(super) struct Busy {
    /// Who, if it said so.
    pub(super) holder: Option<Holder>,
}

impl DirLock {
    /// Takes the lock of `dir` (creating the directory) for `command`, waiting at most `wait`
    /// for another holder to let go. Busy after that, naming the holder and `advice`.
    pub(super) fn acquire(dir: &Path, command: &str, wait: Duration, advice: &str) -> Result<DirLock> {
        match DirLock::try_acquire(dir, command, wait, false)? {
            Ok(lock) => Ok(lock),
            Err(busy) => Err(busy_error(dir, &busy, wait, advice)),
        }
    }

    /// Like [`DirLock::acquire`], but returns who holds it instead of an error; with
    /// `until_served`, as soon as the holder is a service answering HTTP.
    pub(super) fn try_acquire(dir: &Path, command: &str, wait: Duration, until_served: bool) -> Result<std::result::Result<DirLock, Busy>> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            what: "create data directory".into(),
            source,
        })?;
        let path = dir.join("LOCK");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            what: "open".into(),
            source,
        })?;
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            match f.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = holder_of(dir);
                    if Instant::now() >= deadline || until_served && holder.as_ref().is_some_and(|h| h.addr.is_some()) {
                        return Ok(Err(Busy { holder }));
                    }
                    if !told {
                        let who = holder.as_ref().map(Holder::describe).unwrap_or_else(|| "another lambdaflow process".into());
                        eprintln!("{} is held by {who}; waiting up to {} s (--wait) ...", dir.display(), wait.as_secs_f64().ceil());
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(source)) => return Err(Error::Io { path, what: "lock".into(), source }),
            }
        }
        let argv = std::env::args().collect::<Vec<_>>().join(" ");
        let holder = Holder { pid: std::process::id(), command: command.to_string(), argv, addr: None, token: false };
        let lock = DirLock { _file: f, dir: dir.to_path_buf(), holder };
        lock.write_holder()?;
        Ok(Ok(lock))
    }

    /// Records the address the service answers on (and whether it needs a token).
    pub(super) fn publish(&mut self, addr: std::net::SocketAddr, token: bool) -> Result<()> {
        self.holder.addr = Some(addr);
        self.holder.token = token;
        self.write_holder()
    }

    pub(super) fn write_holder(&self) -> Result<()> {
        let path = self.dir.join(HOLDER_FILE);
        let tmp = self.dir.join(format!("{HOLDER_FILE}.tmp"));
        let text = serde_json::to_string(&self.holder).unwrap_or_default();
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|source| Error::Io {
            path,
            what: "write".into(),
            source,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(HOLDER_FILE));
    }
}

/// The holder of `dir`'s lock as recorded, allowing it a moment to write its record (it
/// writes it right after taking the lock).
pub(super) fn holder_of(dir: &Path) -> Option<Holder> {
    for _ in 0..10 {
        if let Some(h) = read_holder(dir) {
            return Some(h);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub(super) fn busy_error(dir: &Path, busy: &Busy, wait: Duration, advice: &str) -> Error {
    let who = busy.holder.as_ref().map(Holder::describe).unwrap_or_else(|| "another lambdaflow process".into());
    let waited = if wait.is_zero() { String::new() } else { format!(" (waited {} s; see --wait)", wait.as_secs_f64().ceil()) };
    Error::Unavailable(format!("{} is in use by {who}{waited}; {advice}", dir.display()))
}

/// The entries of `dir`, if it holds nothing but lambdaflow data (what `demo --fresh` may
/// delete); a usage error naming them otherwise.
pub(super) fn check_only_ours(dir: &Path) -> Result<Vec<String>> {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io { path: dir.to_path_buf(), what: "list".into(), source })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    let ours = |name: &str| matches!(name, "log" | "views" | "keys" | "LOCK") || name.starts_with(HOLDER_FILE);
    let data = entries.iter().any(|e| e != "LOCK" && !e.starts_with(HOLDER_FILE));
    if data && !dir.join("log").join("MANIFEST").exists() || entries.iter().any(|e| !ours(e)) {
        return Err(Error::Usage(format!(
            "--fresh would delete {}, which is not (only) a lambdaflow data directory (it holds {}); pick another --data",
            dir.display(),
            entries.join(", ")
        )));
    }
    Ok(entries)
}
