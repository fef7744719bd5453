//! evio-ipam's reservations for one network: one file per address under
//! `<state dir>/<network name>/`, named by the address and holding `<containerID>\r\n<ifname>`
//! (host-local's own format, so its reservations import as they are and `ls` shows what is
//! held). A file appears complete or not at all (written aside, then renamed), so a daemon
//! killed at any point leaves every reservation it answered with, and none half-made. See
//! docs/decisions/evio-ipam-store.md for why no fsync.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

/// (container id, ifname).
pub type Key = (String, String);

/// Marks a network whose host-local reservations were imported.
const IMPORTED: &str = ".imported-host-local";
/// Prefix of a reservation being written.
const PARTIAL: &str = ".partial-";

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct StoreError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub struct Store {
    dir: PathBuf,
    by_key: HashMap<Key, Vec<IpAddr>>,
    by_addr: HashMap<IpAddr, Key>,
    /// Where the next search starts in each range (by its first address): addresses are
    /// handed out round-robin, so one just released is not reused at once.
    cursors: HashMap<IpAddr, u128>,
    imported: bool,
}

/// Reads one reservation file (host-local's format; its oldest versions wrote the id only).
fn read_owner(path: &Path) -> Key {
    let content = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = content.split(['\r', '\n']).filter(|l| !l.is_empty());
    let container = lines.next().unwrap_or_default().trim().to_string();
    let ifname = lines.next().unwrap_or_default().trim().to_string();
    (container, ifname)
}

/// The reservations in `dir` (evio-ipam's or host-local's): (address, owner) for every file
/// named by an address, sorted by address.
pub fn read_reservations(dir: &Path) -> Result<Vec<(IpAddr, Key)>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Ok(ip) = name.parse::<IpAddr>() {
            found.push((ip, read_owner(&entry.path())));
        }
    }
    found.sort();
    Ok(found)
}

impl Store {
    /// Opens (creating) the network's directory and loads what it holds.
    pub fn open(dir: PathBuf) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let mut store = Self {
            imported: dir.join(IMPORTED).exists(),
            dir,
            by_key: HashMap::new(),
            by_addr: HashMap::new(),
            cursors: HashMap::new(),
        };
        // A write the daemon did not finish: never answered, so never held.
        if let Ok(entries) = std::fs::read_dir(&store.dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_name().to_string_lossy().starts_with(PARTIAL) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        for (ip, key) in read_reservations(&store.dir)? {
            store.remember(ip, key);
        }
        Ok(store)
    }

    fn remember(&mut self, ip: IpAddr, key: Key) {
        self.by_key.entry(key.clone()).or_default().push(ip);
        self.by_addr.insert(ip, key);
    }

    /// Copies host-local's reservations in `blocks` from `host_local_dir` (once per network:
    /// a node switching to evio-ipam keeps its running pods' addresses).
    pub fn import_once(
        &mut self,
        host_local_dir: &Path,
        blocks: &[IpNetwork],
    ) -> Result<usize, StoreError> {
        if self.imported || blocks.is_empty() {
            return Ok(0);
        }
        let mut count = 0;
        for (ip, key) in read_reservations(host_local_dir)? {
            if self.by_addr.contains_key(&ip) || !blocks.iter().any(|b| b.contains(ip)) {
                continue;
            }
            self.reserve(key, ip)?;
            count += 1;
        }
        let marker = self.dir.join(IMPORTED);
        std::fs::write(&marker, host_local_dir.to_string_lossy().as_bytes())
            .map_err(io_err("writing", &marker))?;
        self.imported = true;
        if count > 0 {
            tracing::info!(count, from = %host_local_dir.display(), to = %self.dir.display(), "imported host-local reservations");
        }
        Ok(count)
    }

    pub fn addresses(&self, key: &Key) -> &[IpAddr] {
        self.by_key.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn is_held(&self, ip: IpAddr) -> bool {
        self.by_addr.contains_key(&ip)
    }

    pub fn cursor(&self, range_start: IpAddr) -> Option<u128> {
        self.cursors.get(&range_start).copied()
    }

    /// Records `ip` for `key` on disk, then in memory.
    pub fn reserve(&mut self, key: Key, ip: IpAddr) -> Result<(), StoreError> {
        let path = self.dir.join(ip.to_string());
        let partial = self.dir.join(format!("{PARTIAL}{ip}"));
        std::fs::write(&partial, format!("{}\r\n{}", key.0, key.1))
            .map_err(io_err("writing", &partial))?;
        std::fs::rename(&partial, &path).map_err(io_err("renaming", &path))?;
        self.remember(ip, key);
        Ok(())
    }

    /// Moves the round-robin cursor of the range starting at `range_start` past `ip`.
    pub fn advance(&mut self, range_start: IpAddr, next: u128) {
        self.cursors.insert(range_start, next);
    }

    /// Releases everything `key` holds; returns the addresses.
    pub fn release(&mut self, key: &Key) -> Result<Vec<IpAddr>, StoreError> {
        let held = self.by_key.get(key).cloned().unwrap_or_default();
        for ip in &held {
            let path = self.dir.join(ip.to_string());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
            self.by_addr.remove(ip);
        }
        self.by_key.remove(key);
        Ok(held)
    }

    /// Releases every reservation whose owner is not in `valid`; returns how many.
    pub fn retain(&mut self, valid: &HashSet<Key>) -> Result<usize, StoreError> {
        let stale: Vec<Key> = self
            .by_key
            .keys()
            .filter(|k| !valid.contains(*k))
            .cloned()
            .collect();
        for key in &stale {
            let released = self.release(key)?;
            tracing::info!(container = %key.0, ifname = %key.1, ?released, "GC: releasing stale evio-ipam reservation");
        }
        Ok(stale.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn key(c: &str) -> Key {
        (c.to_string(), "eth0".to_string())
    }

    #[test]
    fn reservations_survive_reopening_and_import_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let host_local = dir.path().join("hl");
        std::fs::create_dir_all(&host_local).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(host_local.join("10.0.0.7"), "old\r\neth0")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(host_local.join("10.9.0.7"), "elsewhere\r\neth0")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(host_local.join("last_reserved_ip.0"), "10.0.0.7")
            .unwrap_or_else(|e| panic!("{e}"));
        let blocks = ["10.0.0.0/24".parse().unwrap_or_else(|e| panic!("{e}"))];
        let net = dir.path().join("net");
        let mut store = Store::open(net.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store
                .import_once(&host_local, &blocks)
                .unwrap_or_else(|e| panic!("{e}")),
            1
        );
        store
            .reserve(key("a"), ip("10.0.0.2"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(net.join(".partial-10.0.0.3"), "torn").unwrap_or_else(|e| panic!("{e}"));

        let mut store = Store::open(net.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.addresses(&key("a")), [ip("10.0.0.2")]);
        assert_eq!(store.addresses(&key("old")), [ip("10.0.0.7")]);
        assert!(!store.is_held(ip("10.0.0.3")));
        assert!(!net.join(".partial-10.0.0.3").exists());
        // Imported once: a host-local reservation made later is not taken over.
        std::fs::write(host_local.join("10.0.0.8"), "late\r\neth0")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store
                .import_once(&host_local, &blocks)
                .unwrap_or_else(|e| panic!("{e}")),
            0
        );

        let valid: HashSet<Key> = [key("a")].into();
        assert_eq!(store.retain(&valid).unwrap_or_else(|e| panic!("{e}")), 1);
        assert_eq!(
            store.release(&key("a")).unwrap_or_else(|e| panic!("{e}")),
            [ip("10.0.0.2")]
        );
        let store = Store::open(net).unwrap_or_else(|e| panic!("{e}"));
        assert!(store.by_addr.is_empty());
    }
}
