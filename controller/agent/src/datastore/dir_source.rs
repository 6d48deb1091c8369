//! The manifest-directory datastore (`--datastore dir:PATH`): ordinary
//! Kubernetes YAML/JSON files stand in for the API server, for the lab.
//!
//! The directory is scanned: listed, and files whose stamp changed read.
//! A scan is immune to the ways editors and tools write files (rename
//! over, truncate and rewrite, ConfigMap volumes swapping a `..data`
//! symlink), each of which an event-driven reader has to special-case. An
//! inotify watch ([`super::dir_watch`]) only says when to scan, so changes
//! arrive in milliseconds; a slow poll stays as the safety net, and is
//! the only trigger (at [`Timing::poll`]) where the watch cannot be set up.
//!
//! Rules, chosen so a mistake in one file never takes the cluster down:
//! - `*.yaml`, `*.yml`, `*.json` regular files (symlinks followed), in
//!   subdirectories too (symlinked directories are not followed, so there
//!   are no loops); hidden names and editor backups (`foo~`) are skipped.
//! - A malformed document is logged, counted and skipped; the rest of its
//!   file still loads. While a file has any malformed document, nothing it
//!   used to define is deleted: a half-written file keeps its last good
//!   objects until it parses cleanly again. A document whose kind and name
//!   can be read but that does not decode, or that the API server would
//!   reject, is passed on as [`Resource::Rejected`] (not a delete: the
//!   consumer keeps its last good version and policy fails closed).
//! - A file with no objects at all (empty, or only comments) is malformed
//!   too: that is what a truncating writer leaves first.
//! - A file is taken only once it has settled: read twice in a row with the
//!   same content and metadata, unless it was last modified long enough
//!   ago. A writer that truncates and rewrites in place is thus not seen
//!   mid-way unless it stalls for a whole poll interval; a version seen
//!   mid-way and then rewritten in place is counted as malformed.
//! - An unreadable file or directory likewise keeps what it had.
//! - The same object in two places, or twice in one file, is a conflict
//!   (logged, counted): identical copies are the object, different ones
//!   are neither but a [`Resource::Rejected`] holding every version.
//!
//! Write files atomically (temporary file + rename) where you can.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::cluster_state::Event;
use super::dir_watch::DirWatch;
use super::resource::{parse_documents, parse_json, Kind, ObjectKey, Rejected, Resource};
use crate::metrics::{reason, Metrics};

/// When the directory source scans.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Between scans when the directory cannot be watched.
    pub poll: Duration,
    /// Between scans while watched and nothing happens: the safety net.
    pub safety_poll: Duration,
    /// Until the second read of a file read while recently modified.
    pub settle: Duration,
    /// How long a burst of changes must pause before the scan (bounded by
    /// `settle`), so a writer's many events cost one scan.
    pub quiet: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll: Duration::from_millis(200),
            safety_poll: Duration::from_secs(2),
            settle: Duration::from_millis(30),
            quiet: Duration::from_millis(5),
        }
    }
}

/// The next change `watch` reports; never without one.
async fn changed(watch: Option<&DirWatch>) {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// Waits until changes pause for `timing.quiet`, at most `timing.settle`.
async fn quiet(watch: Option<&DirWatch>, timing: &Timing) {
    let deadline = tokio::time::Instant::now() + timing.settle;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(timing.quiet) => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = changed(watch) => {}
        }
    }
}

/// A file modified this recently may have changed again, within the same
/// timestamp tick, after we read it; such files are re-read until they are
/// older ("racy git"). Generous, because file times come from a coarse clock.
const RACY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DirSourceError {
    #[error("manifest directory {0} does not exist")]
    Missing(PathBuf),
    #[error("manifest directory {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("manifest directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub struct DirSource {
    dir: PathBuf,
    metrics: Metrics,
    files: BTreeMap<PathBuf, FileState>,
    /// What the previous scan handed out; `None` until the first scan.
    /// Shared with `files` (an unchanged file's objects are the same
    /// allocations), so a scan after a change costs no deep copy of the
    /// cluster and holding it costs no second copy.
    published: Option<BTreeMap<ObjectKey, Arc<Resource>>>,
    /// Reported problems still present, so each is logged and counted once
    /// rather than on every poll.
    read_errors: BTreeMap<PathBuf, String>,
    conflicts: BTreeSet<(ObjectKey, Vec<PathBuf>)>,
    /// Files read once while recently modified, waiting to settle.
    unsettled: BTreeMap<PathBuf, Unsettled>,
    /// Files a writer still holds open (from the watch): not taken yet.
    writing: BTreeSet<PathBuf>,
}

/// Identifies a file version without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

struct FileState {
    stamp: Stamp,
    read_at: SystemTime,
    /// SHA-256 of the content taken: whether a re-read brings anything
    /// new, without keeping a copy of every file's bytes.
    digest: [u8; 32],
    /// What the file contributes: its good objects, plus, while it has
    /// malformed documents, those it had before that are not among them.
    objects: Vec<Arc<Resource>>,
}

/// A version of a file read while it may still have been written: taken
/// if the next read finds the same.
struct Unsettled {
    stamp: Stamp,
    content: Vec<u8>,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    /// `None` for times `SystemTime` cannot hold.
    fn modified(&self) -> Option<SystemTime> {
        let (secs, nanos) = self.mtime;
        let whole = Duration::from_secs(secs.unsigned_abs());
        let base = if secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(whole)
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(whole)
        };
        base?.checked_add(Duration::from_nanos(nanos.try_into().ok()?))
    }
}

impl FileState {
    fn is_current(&self, stamp: Stamp) -> bool {
        // Unrepresentable times count as recent: re-reading is always safe.
        self.stamp == stamp
            && stamp
                .modified()
                .and_then(|t| t.checked_add(RACY))
                .is_some_and(|t| t < self.read_at)
    }
}

impl DirSource {
    pub fn new(dir: PathBuf, metrics: Metrics) -> Result<Self, DirSourceError> {
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(DirSourceError::NotADirectory(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DirSourceError::Missing(dir))
            }
            Err(source) => return Err(DirSourceError::Io { path: dir, source }),
        }
        // Unreadable (permissions) is a setup mistake too: say so at start.
        if let Err(source) = fs::read_dir(&dir) {
            return Err(DirSourceError::Io { path: dir, source });
        }
        Ok(DirSource {
            dir,
            metrics,
            files: BTreeMap::new(),
            published: None,
            read_errors: BTreeMap::new(),
            conflicts: BTreeSet::new(),
            unsettled: BTreeMap::new(),
            writing: BTreeSet::new(),
        })
    }

    /// Polls the directory and returns what changed since the last call:
    /// first one `Resync` with everything, then `Delete`s and `Apply`s.
    /// The events of one call belong together; a consumer should apply all
    /// of them before acting.
    pub fn scan(&mut self) -> Vec<Event> {
        let listing = list(&self.dir);
        let mut read_errors = listing.errors;
        let mut changed = self.published.is_none();
        let mut present = BTreeSet::new();

        for (path, stamp) in listing.files {
            if self.files.get(&path).is_some_and(|f| f.is_current(stamp))
                && !self.read_errors.contains_key(&path)
            {
                present.insert(path);
                continue;
            }
            let read_at = SystemTime::now();
            match fs::read(&path) {
                // Gone between listing and reading: as if not listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    read_errors.insert(path.clone(), e.to_string());
                    present.insert(path);
                }
                Ok(content) => {
                    // Changed while being read: what we have may be half of
                    // one version; the stamp after the read is the one to
                    // compare the next read with.
                    let after = fs::metadata(&path).ok().map(|m| Stamp::of(&m));
                    let changing = after != Some(stamp) || self.writing.contains(&path);
                    let stamp = after.unwrap_or(stamp);
                    if let Some(content) = self.settle(&path, stamp, read_at, content, changing) {
                        changed |= self.load(&path, stamp, read_at, content);
                    }
                    present.insert(path);
                }
            }
        }
        self.unsettled.retain(|path, _| present.contains(path));

        // A file is gone only if we could look where it was.
        let before = self.files.len();
        self.files.retain(|path, _| {
            present.contains(path) || read_errors.keys().any(|bad| path.starts_with(bad))
        });
        changed |= self.files.len() != before;
        // The first event is a Resync, which deletes whatever a restarted
        // agent's consumer still has; never send one for a directory we
        // could not even list.
        let unlisted = read_errors.contains_key(&self.dir);
        self.report_read_errors(read_errors);

        // Nor one that leaves out a file still being written.
        let unsettled = !self.unsettled.is_empty();
        if !changed || (self.published.is_none() && (unlisted || unsettled)) {
            return Vec::new();
        }
        let (objects, conflicts) = merge(&self.files);
        self.report_conflicts(conflicts);
        for kind in Kind::ALL {
            let count = objects.keys().filter(|k| k.kind == kind).count();
            self.metrics
                .datastore_objects
                .with_label_values(&[kind.label()])
                .set(count as i64);
        }
        let events = match &self.published {
            None => {
                info!(
                    dir = %self.dir.display(),
                    objects = objects.len(),
                    files = self.files.len(),
                    "loaded manifest directory"
                );
                vec![Event::Resync(
                    objects.values().map(|o| Resource::clone(o)).collect(),
                )]
            }
            Some(published) => diff(published, &objects),
        };
        self.published = Some(objects);
        events
    }

    /// Scans on every change the watch reports (and as often as `timing`
    /// says otherwise) and sends the changes until the receiver is dropped.
    pub async fn run(mut self, tx: mpsc::Sender<Event>, timing: Timing) {
        let watch = match DirWatch::start(&self.dir) {
            Ok(watch) => {
                info!(dir = %self.dir.display(), "watching the manifest directory");
                Some(watch)
            }
            Err(error) => {
                warn!(dir = %self.dir.display(), %error, poll = ?timing.poll, "cannot watch the manifest directory; polling it");
                None
            }
        };
        loop {
            if let Some(watch) = &watch {
                self.writing = watch.writing().into_iter().collect();
            }
            // Blocking file I/O: keep it off the (current-thread) runtime.
            let scanned = tokio::task::spawn_blocking(move || {
                let events = self.scan();
                (self, events)
            })
            .await;
            let events;
            (self, events) = match scanned {
                Ok(scanned) => scanned,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return, // the runtime is shutting down
            };
            if !send_together(&tx, events).await {
                return;
            }
            // A file read while recently modified is taken only when a
            // second read finds it the same: soon, while watched.
            let wait = match (&watch, self.unsettled.is_empty() && self.writing.is_empty()) {
                (None, _) => timing.poll,
                (Some(_), true) => timing.safety_poll,
                (Some(_), false) => timing.settle,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed(watch.as_ref()) => quiet(watch.as_ref(), &timing).await,
                _ = tx.closed() => return,
            }
        }
    }

    /// The content to load from this read of a file, if it has settled:
    /// last modified long enough ago, or read the same the time before.
    fn settle(
        &mut self,
        path: &Path,
        stamp: Stamp,
        read_at: SystemTime,
        content: Vec<u8>,
        changing: bool,
    ) -> Option<Vec<u8>> {
        let previous = self.unsettled.remove(path);
        let old = stamp
            .modified()
            .and_then(|t| t.checked_add(RACY))
            .is_some_and(|t| t < read_at);
        let same = |p: &Unsettled| p.stamp == stamp && p.content == content;
        if !changing && (old || previous.as_ref().is_some_and(same)) {
            return Some(content);
        }
        if !changing
            && self
                .files
                .get(path)
                .is_some_and(|f| f.digest == digest(&content))
        {
            return Some(content); // touched: nothing new to wait for
        }
        if let Some(previous) = previous {
            if previous.stamp.ino == stamp.ino && previous.content != content {
                warn!(
                    file = %path.display(),
                    "manifest was rewritten in place while being read; not taken until it settles (write files atomically: temporary file and rename)"
                );
                self.count(reason::MALFORMED);
            }
        }
        self.unsettled
            .insert(path.to_owned(), Unsettled { stamp, content });
        None
    }

    /// Takes a newly read version of a file; true if its objects may have
    /// changed.
    fn load(&mut self, path: &Path, stamp: Stamp, read_at: SystemTime, content: Vec<u8>) -> bool {
        if let Some(state) = self.files.get_mut(path) {
            if state.digest == digest(&content) {
                // Touched, or rewritten with the same bytes.
                state.stamp = stamp;
                state.read_at = read_at;
                return false;
            }
        }

        let (objects, malformed) = self.parse(path, &content);
        let mut objects: Vec<Arc<Resource>> = objects.into_iter().map(Arc::new).collect();
        if let (true, Some(state)) = (malformed, self.files.get(path)) {
            let fresh: BTreeSet<ObjectKey> = objects.iter().map(|o| o.key()).collect();
            let kept: Vec<Arc<Resource>> = state
                .objects
                .iter()
                .filter(|o| !fresh.contains(&o.key()))
                .cloned()
                .collect();
            if !kept.is_empty() {
                warn!(
                    file = %path.display(),
                    kept = kept.len(),
                    "keeping objects the file defined before until it parses again"
                );
            }
            objects.extend(kept);
        }
        self.files.insert(
            path.to_owned(),
            FileState {
                stamp,
                read_at,
                digest: digest(&content),
                objects,
            },
        );
        true
    }

    /// The good objects of a file, and whether anything in it was malformed.
    fn parse(&self, path: &Path, content: &[u8]) -> (Vec<Resource>, bool) {
        let text = match std::str::from_utf8(content) {
            Ok(text) => text,
            Err(error) => {
                warn!(file = %path.display(), %error, "skipping manifest that is not UTF-8");
                self.count(reason::MALFORMED);
                return (Vec::new(), true);
            }
        };
        let is_json = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        let results = if is_json {
            parse_json(text)
        } else {
            parse_documents(text)
        };

        if results.is_empty() {
            // kubectl refuses such a file ("no objects passed to apply");
            // here it is most likely one being written.
            warn!(file = %path.display(), "manifest holds no objects; keeping what it defined");
            self.count(reason::MALFORMED);
            return (Vec::new(), true);
        }
        let mut objects = Vec::new();
        let mut malformed = false;
        for result in results {
            match result {
                Ok(Resource::Rejected(rejected)) => {
                    warn!(
                        file = %path.display(),
                        object = %Resource::Rejected(rejected.clone()).key(),
                        reason = %rejected.reason,
                        "rejected manifest object; its last good version stays and its policy fails closed"
                    );
                    self.count(reason::MALFORMED);
                    malformed = true;
                    objects.push(Resource::Rejected(rejected));
                }
                Ok(object) => objects.push(object),
                Err(e) if e.is_unsupported() => {
                    debug!(file = %path.display(), document = e.location.document, "ignoring {}", e.kind);
                }
                Err(e) => {
                    warn!(
                        file = %path.display(),
                        document = e.location.document,
                        line = e.location.line,
                        error = %e.kind,
                        "skipping malformed manifest document"
                    );
                    self.count(reason::MALFORMED);
                    malformed = true;
                }
            }
        }
        (objects, malformed)
    }

    fn report_read_errors(&mut self, errors: BTreeMap<PathBuf, String>) {
        for (path, error) in &errors {
            if self.read_errors.get(path) != Some(error) {
                warn!(path = %path.display(), %error, "cannot read manifests; keeping what they defined");
                self.count(reason::READ);
            }
        }
        self.read_errors = errors;
    }

    fn report_conflicts(&mut self, conflicts: Vec<Conflict>) {
        let mut current = BTreeSet::new();
        for conflict in conflicts {
            let id = (conflict.key, conflict.paths);
            if !self.conflicts.contains(&id) {
                let paths: Vec<_> = id.1.iter().map(|p| p.display().to_string()).collect();
                if conflict.identical {
                    warn!(object = %id.0, files = ?paths, "object defined more than once (identical copies)");
                } else {
                    warn!(
                        object = %id.0,
                        files = ?paths,
                        "object defined more than once, differently: neither definition is taken (its last good version stays; a policy fails closed)"
                    );
                }
                self.count(reason::CONFLICT);
            }
            current.insert(id);
        }
        self.conflicts = current;
    }

    fn count(&self, reason: &str) {
        self.metrics
            .datastore_errors
            .with_label_values(&[reason])
            .inc();
    }
}

/// Queues one scan's events so that a receiver draining the queue takes
/// them in one go (one sync, one compile): a send each would hand the
/// receiver a part every 128 sends, when tokio's cooperative budget makes
/// this task yield. On the agent's current-thread runtime nothing runs
/// between these sends; only more events than the queue holds go in
/// queue-sized parts. False once the receiver is gone.
async fn send_together(tx: &mpsc::Sender<Event>, events: Vec<Event>) -> bool {
    let mut events = events.into_iter();
    while events.len() > 0 {
        let Ok(permits) = tx.reserve_many(events.len().min(tx.max_capacity())).await else {
            return false;
        };
        for (permit, event) in permits.zip(&mut events) {
            permit.send(event);
        }
    }
    true
}

struct Conflict {
    key: ObjectKey,
    /// Every place it is defined, in path order (a path twice for two
    /// definitions in one file).
    paths: Vec<PathBuf>,
    identical: bool,
}

/// All files' objects in one map. A key defined more than once is a
/// conflict: identical copies are taken as one; different ones are
/// neither, whatever their order, but a [`Rejected`] of all versions.
fn digest(content: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(content).into()
}

#[allow(clippy::type_complexity)]
fn merge(
    files: &BTreeMap<PathBuf, FileState>,
) -> (BTreeMap<ObjectKey, Arc<Resource>>, Vec<Conflict>) {
    let mut defined: BTreeMap<ObjectKey, Vec<(&Path, &Arc<Resource>)>> = BTreeMap::new();
    for (path, file) in files {
        for object in &file.objects {
            defined
                .entry(object.key())
                .or_default()
                .push((path, object));
        }
    }
    let mut objects = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (key, definitions) in defined {
        let [(_, first), rest @ ..] = &definitions[..] else {
            continue;
        };
        if rest.is_empty() {
            objects.insert(key, Arc::clone(first));
            continue;
        }
        let identical = rest.iter().all(|(_, o)| o == first);
        let paths: Vec<PathBuf> = definitions.iter().map(|(p, _)| p.to_path_buf()).collect();
        let object = if identical {
            Arc::clone(first)
        } else {
            let versions = definitions
                .iter()
                .flat_map(|(_, o)| match o.as_ref() {
                    Resource::Rejected(r) => r.versions.clone(),
                    good => vec![good.to_value()],
                })
                .collect();
            let places: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
            let reason = format!("defined more than once: {}", places.join(", "));
            Arc::new(Resource::Rejected(Box::new(Rejected::new(
                &key, versions, reason,
            ))))
        };
        objects.insert(key.clone(), object);
        conflicts.push(Conflict {
            key,
            paths,
            identical,
        });
    }
    (objects, conflicts)
}

/// The events that turn `old` into `new`: deletions first, as a watcher
/// would see them when an object is replaced by another.
fn diff(
    old: &BTreeMap<ObjectKey, Arc<Resource>>,
    new: &BTreeMap<ObjectKey, Arc<Resource>>,
) -> Vec<Event> {
    let deleted = old
        .keys()
        .filter(|key| !new.contains_key(*key))
        .map(|key| Event::Delete(key.clone()));
    let applied = new
        .iter()
        // The same allocation is the same object (its file was not
        // re-read): no deep comparison.
        .filter(|(key, object)| {
            !old.get(*key)
                .is_some_and(|o| Arc::ptr_eq(o, object) || o == *object)
        })
        .map(|(_, object)| Event::Apply(Resource::clone(object)));
    deleted.chain(applied).collect()
}

struct Listing {
    files: Vec<(PathBuf, Stamp)>,
    /// Paths (files or directories) that could not be looked at.
    errors: BTreeMap<PathBuf, String>,
}

fn list(dir: &Path) -> Listing {
    let mut listing = Listing {
        files: Vec::new(),
        errors: BTreeMap::new(),
    };
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                listing.errors.insert(dir, e.to_string());
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    listing.errors.insert(dir.clone(), e.to_string());
                    break;
                }
            };
            let path = entry.path();
            if !is_candidate(&entry.file_name()) {
                continue;
            }
            // file_type() does not follow symlinks: only real directories
            // are descended into.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
                continue;
            }
            if !is_manifest(&path) {
                continue;
            }
            match fs::metadata(&path) {
                // Not regular: FIFOs and devices would block or never end.
                Ok(meta) if meta.is_file() => listing.files.push((path, Stamp::of(&meta))),
                Ok(_) => {}
                // Dangling symlink, or removed since read_dir.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    listing.errors.insert(path, e.to_string());
                }
            }
        }
    }
    listing
}

/// Hidden files and directories (`.git`, `.foo.yaml.swp`, ConfigMap
/// volumes' `..data`) and backups (`foo.yaml~`) are not ours.
fn is_candidate(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    !name.starts_with('.') && !name.ends_with('~')
}

fn is_manifest(path: &Path) -> bool {
    path.extension().is_some_and(|ext| {
        ["yaml", "yml", "json"]
            .iter()
            .any(|want| ext.eq_ignore_ascii_case(want))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::fixtures::{
        self, join, CONFIG_MAP, ENDPOINT_SLICE, NAMESPACE, NODE, POD, POLICY, SERVICE,
    };

    struct Lab {
        dir: tempfile::TempDir,
        metrics: Metrics,
        source: DirSource,
    }

    impl Lab {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let metrics = Metrics::new();
            let source = DirSource::new(dir.path().to_owned(), metrics.clone()).unwrap();
            Lab {
                dir,
                metrics,
                source,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Writes atomically, as editors and the lab do.
        fn write(&self, name: &str, content: &str) {
            let path = self.path(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let temp = path.with_file_name(".tmp-write");
            fs::write(&temp, content).unwrap();
            fs::rename(&temp, &path).unwrap();
        }

        fn remove(&self, name: &str) {
            fs::remove_file(self.path(name)).unwrap();
        }

        /// The events of one scan, as short strings.
        fn scan_once(&mut self) -> Vec<String> {
            self.source.scan().iter().map(describe).collect()
        }

        /// The events of two scans in a row: what was just written has
        /// settled (read the same twice) by the second.
        fn scan(&mut self) -> Vec<String> {
            let mut events = self.scan_once();
            events.extend(self.scan_once());
            events
        }

        fn errors(&self, reason: &str) -> u64 {
            self.metrics
                .datastore_errors
                .with_label_values(&[reason])
                .get()
        }

        fn objects(&self, kind: Kind) -> i64 {
            self.metrics
                .datastore_objects
                .with_label_values(&[kind.label()])
                .get()
        }

        /// What a consumer would hold after every scan so far.
        fn published(&self) -> Vec<String> {
            let published = self.source.published.as_ref().expect("scanned");
            published.keys().map(ObjectKey::to_string).collect()
        }
    }

    fn describe(event: &Event) -> String {
        match event {
            Event::Apply(o) => format!("apply {}", o.key()),
            Event::Delete(key) => format!("delete {key}"),
            Event::Resync(all) => {
                let keys: Vec<_> = all.iter().map(|o| o.key().to_string()).collect();
                format!("resync [{}]", keys.join(", "))
            }
            Event::ResyncKind(..) => unreachable!("the manifest source resyncs everything"),
        }
    }

    const WEB: &str = "Pod shop/web-7d4b9c5f6-x2x9k";

    #[test]
    fn first_scan_is_one_resync_of_everything_then_quiet() {
        let mut lab = Lab::new();
        lab.write("cluster.yaml", &join(&[NODE, NAMESPACE]));
        lab.write("apps/shop/web.yml", POD);
        lab.write("apps/shop/service.yaml", &join(&[SERVICE, ENDPOINT_SLICE]));
        let policy: serde_json::Value = serde_yaml::from_str(POLICY).unwrap();
        lab.write("apps/shop/policy.json", &policy.to_string());

        assert_eq!(
            lab.scan(),
            [format!(
                "resync [Node node-a, Namespace shop, {WEB}, NetworkPolicy shop/web-allow-frontend, Service shop/web, EndpointSlice shop/web-abc12]"
            )]
        );
        assert!(lab.scan().is_empty());
        for kind in Kind::ALL {
            assert_eq!(lab.objects(kind), 1, "{kind}");
        }
    }

    #[test]
    fn an_empty_directory_resyncs_to_nothing() {
        let mut lab = Lab::new();
        assert_eq!(lab.scan(), ["resync []"]);
        assert!(lab.scan().is_empty());
    }

    #[test]
    fn added_changed_and_removed_files() {
        let mut lab = Lab::new();
        lab.write("ns.yaml", NAMESPACE);
        lab.scan();

        lab.write("web.yaml", POD);
        assert_eq!(lab.scan(), [format!("apply {WEB}")]);

        lab.write("web.yaml", &POD.replace("10.244.1.5", "10.244.1.50"));
        assert_eq!(lab.scan(), [format!("apply {WEB}")]);

        // Rewritten with the same bytes: nothing to tell.
        lab.write("web.yaml", &POD.replace("10.244.1.5", "10.244.1.50"));
        assert!(lab.scan().is_empty());

        lab.remove("web.yaml");
        assert_eq!(lab.scan(), [format!("delete {WEB}")]);
        assert_eq!(lab.published(), ["Namespace shop"]);
        assert_eq!(lab.objects(Kind::Pod), 0);
    }

    #[test]
    fn in_place_rewrite_of_the_same_size_is_seen() {
        // Same inode, same size and (at timestamp granularity) the same
        // mtime: only the recent-modification re-read catches this.
        let mut lab = Lab::new();
        let path = lab.path("web.yaml");
        fs::write(&path, POD).unwrap();
        lab.scan();
        fs::write(&path, POD.replace("10.244.1.5", "10.244.1.6")).unwrap();
        assert_eq!(lab.scan(), [format!("apply {WEB}")]);
    }

    #[test]
    fn multi_document_files_change_per_object() {
        let mut lab = Lab::new();
        let db = fixtures::pod("shop", "db", "10.244.1.9");
        let cache = fixtures::pod("shop", "cache", "10.244.1.10");
        lab.write("pods.yaml", &join(&[POD, &db, &cache]));
        lab.scan();

        // One document edited, one removed, one untouched.
        let db2 = db.replace("10.244.1.9", "10.244.1.99");
        lab.write("pods.yaml", &join(&[POD, &db2]));
        assert_eq!(lab.scan(), ["delete Pod shop/cache", "apply Pod shop/db"]);
        assert_eq!(lab.objects(Kind::Pod), 2);
    }

    #[test]
    fn a_malformed_document_among_good_ones_is_skipped_and_counted() {
        let mut lab = Lab::new();
        let nameless = "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {app: x}\n";
        lab.write("pods.yaml", &join(&[POD, nameless, NAMESPACE]));
        lab.write("other.yaml", NODE);
        assert_eq!(
            lab.scan(),
            [format!("resync [Node node-a, Namespace shop, {WEB}]")]
        );
        assert_eq!(lab.errors(reason::MALFORMED), 1);
        // Counted once, not on every poll.
        assert!(lab.scan().is_empty());
        assert_eq!(lab.errors(reason::MALFORMED), 1);
    }

    #[test]
    fn a_file_gone_malformed_keeps_its_objects_until_it_parses_again() {
        let mut lab = Lab::new();
        let db = fixtures::pod("shop", "db", "10.244.1.9");
        lab.write("pods.yaml", &join(&[POD, &db]));
        lab.scan();

        // Half written: the first document changed, the second cut off.
        let half = format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [",
            POD.replace("10.244.1.5", "10.244.1.6")
        );
        lab.write("pods.yaml", &half);
        assert_eq!(lab.scan(), [format!("apply {WEB}")], "db must stay");
        assert_eq!(lab.errors(reason::MALFORMED), 1);

        // Garbage altogether: still nothing deleted.
        lab.write("pods.yaml", "{{{ not yaml");
        assert!(lab.scan().is_empty());
        fs::write(lab.path("pods.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        assert!(lab.scan().is_empty());
        assert_eq!(lab.published(), ["Pod shop/db", WEB]);

        // Valid again, without db: now it goes.
        lab.write("pods.yaml", POD);
        assert_eq!(
            lab.scan(),
            ["delete Pod shop/db".to_string(), format!("apply {WEB}")]
        );
    }

    #[test]
    fn unsupported_kinds_are_ignored_not_counted() {
        let mut lab = Lab::new();
        let deployment =
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n";
        lab.write("web.yaml", &join(&[deployment, POD]));
        lab.write("config.yaml", CONFIG_MAP);
        assert_eq!(lab.scan(), [format!("resync [{WEB}]")]);
        for reason in reason::ALL {
            assert_eq!(lab.errors(reason), 0, "{reason}");
        }
    }

    fn published_object(lab: &Lab, key: &ObjectKey) -> Resource {
        Resource::clone(&lab.source.published.as_ref().unwrap()[key])
    }

    #[test]
    fn two_different_definitions_are_neither_and_the_conflict_is_counted_once() {
        let mut lab = Lab::new();
        let key = ObjectKey::namespaced(Kind::Pod, "shop", "web-7d4b9c5f6-x2x9k");
        // "a" sorts first: it must not win for that.
        lab.write("a.yaml", &POD.replace("10.244.1.5", "10.244.1.77"));
        lab.write("b.yaml", POD);
        assert_eq!(lab.scan(), [format!("resync [{WEB}]")]);
        assert_eq!(lab.errors(reason::CONFLICT), 1);
        let Resource::Rejected(rejected) = published_object(&lab, &key) else {
            panic!("a conflict is rejected")
        };
        assert_eq!(rejected.versions.len(), 2);
        assert!(rejected.reason.contains("a.yaml") && rejected.reason.contains("b.yaml"));

        // Still in conflict after an unrelated change: not counted again.
        lab.write("ns.yaml", NAMESPACE);
        assert_eq!(lab.scan(), ["apply Namespace shop"]);
        assert_eq!(lab.errors(reason::CONFLICT), 1);

        // One definition goes: the other is the object.
        lab.remove("a.yaml");
        assert_eq!(lab.scan(), [format!("apply {WEB}")]);
        let Resource::Pod(pod) = published_object(&lab, &key) else {
            panic!("one definition left is the pod")
        };
        assert_eq!(pod.status.unwrap().pod_ip.as_deref(), Some("10.244.1.5"));

        // Twice in one file, differently, counts too.
        lab.write(
            "b.yaml",
            &join(&[POD, &POD.replace("app: web", "app: admin")]),
        );
        assert_eq!(lab.scan(), [format!("apply {WEB}")]);
        assert_eq!(lab.errors(reason::CONFLICT), 2);
        assert!(published_object(&lab, &key).is_rejected());
    }

    #[test]
    fn identical_copies_are_the_object_but_still_a_conflict() {
        let mut lab = Lab::new();
        lab.write("a.yaml", POD);
        lab.write("b.yaml", POD);
        assert_eq!(lab.scan(), [format!("resync [{WEB}]")]);
        assert_eq!(lab.errors(reason::CONFLICT), 1);
        let key = ObjectKey::namespaced(Kind::Pod, "shop", "web-7d4b9c5f6-x2x9k");
        assert!(matches!(published_object(&lab, &key), Resource::Pod(_)));
    }

    #[test]
    fn an_object_that_does_not_decode_or_validate_is_rejected_not_deleted() {
        let mut lab = Lab::new();
        lab.write("policy.yaml", POLICY);
        lab.scan();
        let key = ObjectKey::namespaced(Kind::NetworkPolicy, "shop", "web-allow-frontend");
        for broken in [
            // The API server would reject it.
            POLICY.replace(
                "podSelector:
    matchLabels:
      app: web",
                "podSelector:
    matchExpressions:
    - {key: app, operator: Equals, values: [web]}",
            ),
            // It does not decode.
            POLICY.replace(
                "policyTypes:",
                "policyTypes: 7
  x:",
            ),
        ] {
            assert_ne!(broken, POLICY, "the fixture changed");
            lab.write("policy.yaml", &broken);
            assert_eq!(lab.scan(), ["apply NetworkPolicy shop/web-allow-frontend"]);
            let Resource::Rejected(rejected) = published_object(&lab, &key) else {
                panic!("rejected: {broken}")
            };
            assert_eq!(rejected.versions.len(), 1);
        }
        assert_eq!(lab.errors(reason::MALFORMED), 2);
        lab.write("policy.yaml", POLICY);
        assert_eq!(lab.scan(), ["apply NetworkPolicy shop/web-allow-frontend"]);
        assert!(matches!(
            published_object(&lab, &key),
            Resource::NetworkPolicy(_)
        ));
    }

    #[test]
    fn an_emptied_file_is_malformed_and_keeps_its_objects() {
        let mut lab = Lab::new();
        lab.write("web.yaml", &join(&[NAMESPACE, POD]));
        lab.scan();
        for empty in ["", "\n\n", "# nothing yet\n---\n"] {
            lab.write("web.yaml", empty);
            assert!(lab.scan().is_empty(), "{empty:?}");
            assert_eq!(lab.published(), ["Namespace shop", WEB]);
        }
        assert_eq!(lab.errors(reason::MALFORMED), 3);
        // Deleting the file is how its objects go.
        lab.remove("web.yaml");
        assert_eq!(lab.scan().len(), 2);
        assert!(lab.published().is_empty());
    }

    #[test]
    fn a_file_being_written_is_taken_only_once_it_settles() {
        let mut lab = Lab::new();
        lab.write("ns.yaml", NAMESPACE);
        let path = lab.path("policy.yaml");
        // A writer that truncates, then writes a prefix that parses: the
        // policy's ingress rule cut after `- from:` would allow everyone.
        let cut = POLICY
            .find("    - namespaceSelector")
            .expect("fixture has a from peer");
        fs::write(&path, &POLICY[..cut]).unwrap();
        // Not even the first resync goes out with a file still in flux.
        assert!(lab.scan_once().is_empty());
        assert!(lab.source.published.is_none());
        fs::write(&path, POLICY).unwrap();
        assert!(lab.scan_once().is_empty(), "changed since the last read");
        assert_eq!(lab.errors(reason::MALFORMED), 1, "seen mid-way: counted");
        let events = lab.scan_once();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            events[0].contains("NetworkPolicy shop/web-allow-frontend"),
            "{events:?}"
        );
        let key = ObjectKey::namespaced(Kind::NetworkPolicy, "shop", "web-allow-frontend");
        let Resource::NetworkPolicy(policy) = published_object(&lab, &key) else {
            panic!("the whole policy")
        };
        let from = policy.spec.unwrap().ingress.unwrap()[0].from.clone();
        assert!(
            from.is_some_and(|f| !f.is_empty()),
            "the complete rule, not the prefix"
        );
        assert_eq!(lab.errors(reason::MALFORMED), 1);
    }

    #[test]
    fn a_file_turned_unreadable_keeps_its_objects() {
        let mut lab = Lab::new();
        lab.write("web.yaml", POD);
        lab.scan();
        // Root reads any mode; a symlink loop it cannot read either.
        fs::remove_file(lab.path("web.yaml")).unwrap();
        std::os::unix::fs::symlink("web.yaml", lab.path("web.yaml")).unwrap();
        assert!(lab.scan().is_empty());
        assert_eq!(lab.published(), [WEB]);
        assert_eq!(lab.errors(reason::READ), 1);
        fs::remove_file(lab.path("web.yaml")).unwrap();
        lab.write("web.yaml", POD);
        assert!(lab.scan().is_empty(), "the same object again");
        assert_eq!(lab.published(), [WEB]);
    }

    #[test]
    fn hidden_backup_and_foreign_files_are_skipped() {
        let mut lab = Lab::new();
        lab.write("real.yaml", NAMESPACE);
        let db = fixtures::pod("shop", "db", "10.244.1.9");
        for name in [
            ".real.yaml.swp",
            ".hidden.yaml",
            "real.yaml~",
            "#real.yaml#",
            "notes.txt",
            "README",
            ".git/pods.yaml",
            "..data/pods.yaml",
        ] {
            lab.write(name, &db);
        }
        assert_eq!(lab.scan(), ["resync [Namespace shop]"]);
    }

    #[test]
    fn symlinked_files_are_followed_like_configmap_volumes() {
        let mut lab = Lab::new();
        lab.write("..2025_01_01/pods.yaml", POD);
        std::os::unix::fs::symlink("..2025_01_01", lab.path("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pods.yaml", lab.path("pods.yaml")).unwrap();
        assert_eq!(lab.scan(), [format!("resync [{WEB}]")]);

        // The kubelet's update: new timestamped dir, `..data` swapped.
        lab.write(
            "..2025_01_02/pods.yaml",
            &POD.replace("10.244.1.5", "10.244.1.8"),
        );
        std::os::unix::fs::symlink("..2025_01_02", lab.path("..data_tmp")).unwrap();
        fs::rename(lab.path("..data_tmp"), lab.path("..data")).unwrap();
        assert_eq!(lab.scan(), [format!("apply {WEB}")]);
    }

    #[test]
    fn fifos_are_not_opened() {
        let mut lab = Lab::new();
        nix::unistd::mkfifo(&lab.path("pipe.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(lab.scan(), ["resync []"]);
    }

    #[test]
    fn emptying_the_directory_deletes_everything() {
        let mut lab = Lab::new();
        lab.write("all.yaml", &join(&[NODE, POD]));
        lab.write("sub/ns.yaml", NAMESPACE);
        lab.scan();
        fs::remove_file(lab.path("all.yaml")).unwrap();
        fs::remove_dir_all(lab.path("sub")).unwrap();
        assert_eq!(
            lab.scan(),
            [
                "delete Node node-a".to_string(),
                "delete Namespace shop".into(),
                format!("delete {WEB}"),
            ]
        );
        for kind in Kind::ALL {
            assert_eq!(lab.objects(kind), 0);
        }
    }

    #[test]
    fn the_directory_vanishing_keeps_everything() {
        let mut lab = Lab::new();
        lab.write("ns.yaml", NAMESPACE);
        lab.scan();
        fs::remove_file(lab.path("ns.yaml")).unwrap();
        let dir = lab.dir.path().to_owned();
        fs::remove_dir(&dir).unwrap();
        assert!(lab.scan().is_empty());
        assert_eq!(lab.errors(reason::READ), 1);
        assert!(lab.scan().is_empty());
        assert_eq!(lab.errors(reason::READ), 1, "reported once");
        fs::create_dir(&dir).unwrap();
        assert_eq!(lab.scan(), ["delete Namespace shop"]);
    }

    #[test]
    fn no_resync_before_the_directory_could_be_listed() {
        let mut lab = Lab::new();
        lab.write("ns.yaml", NAMESPACE);
        let dir = lab.dir.path().to_owned();
        let aside = dir.with_extension("aside");
        fs::rename(&dir, &aside).unwrap();
        assert!(lab.scan().is_empty());
        assert!(lab.source.published.is_none());
        fs::rename(&aside, &dir).unwrap();
        assert_eq!(lab.scan(), ["resync [Namespace shop]"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let error = DirSource::new(missing.clone(), Metrics::new())
            .err()
            .expect("must fail");
        assert_eq!(
            error.to_string(),
            format!("manifest directory {} does not exist", missing.display())
        );
        let file = dir.path().join("file.yaml");
        fs::write(&file, NAMESPACE).unwrap();
        assert!(matches!(
            DirSource::new(file, Metrics::new()),
            Err(DirSourceError::NotADirectory(_))
        ));
    }

    async fn recv(rx: &mut mpsc::Receiver<Event>) -> String {
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event in time")
            .expect("source alive");
        describe(&event)
    }

    /// What the agent's main loop does: wait for one event, then take what
    /// is queued with it.
    async fn recv_batch(rx: &mut mpsc::Receiver<Event>) -> Vec<Event> {
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event in time")
            .expect("source alive");
        let mut batch = vec![first];
        while let Ok(event) = rx.try_recv() {
            batch.push(event);
        }
        batch
    }

    #[tokio::test]
    async fn one_scans_events_reach_a_draining_receiver_together() {
        let lab = Lab::new();
        let (tx, mut rx) = mpsc::channel(1024);
        let timing = Timing {
            poll: Duration::from_millis(10),
            ..Timing::default()
        };
        let task = tokio::spawn(lab.source.run(tx, timing));
        assert_eq!(recv_batch(&mut rx).await.len(), 1, "the first resync");
        // More than tokio's cooperative budget (128) of sends, as one
        // atomically written file.
        let pods: Vec<String> = (0..300)
            .map(|i| {
                fixtures::pod(
                    "shop",
                    &format!("pod-{i}"),
                    &format!("10.244.{}.{}", i / 200, i % 200 + 2),
                )
            })
            .collect();
        let docs: Vec<&str> = pods.iter().map(String::as_str).collect();
        let tmp = lab.dir.path().join(".pods.yaml.tmp");
        fs::write(&tmp, join(&docs)).unwrap();
        fs::rename(&tmp, lab.dir.path().join("pods.yaml")).unwrap();
        let batch = recv_batch(&mut rx).await;
        assert_eq!(batch.len(), 300, "one batch, not parts of it");
        assert!(batch.iter().all(|e| matches!(e, Event::Apply(_))));
        drop(rx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn more_events_than_the_queue_holds_go_in_queue_sized_parts() {
        let (tx, mut rx) = mpsc::channel(4);
        let events: Vec<Event> = (0..10)
            .map(|i| Event::Delete(ObjectKey::namespaced(Kind::Pod, "shop", format!("p{i}"))))
            .collect();
        let sender = tokio::spawn(async move { send_together(&tx, events).await });
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < 10 {
            sizes.push(recv_batch(&mut rx).await.len());
        }
        assert_eq!(sizes, [4, 4, 2]);
        assert!(sender.await.unwrap(), "the receiver was there");
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        assert!(!send_together(&tx, vec![Event::Resync(Vec::new())]).await);
    }

    #[tokio::test]
    async fn run_sends_changes_and_stops_when_the_receiver_goes() {
        let lab = Lab::new();
        lab.write("ns.yaml", NAMESPACE);
        let (tx, mut rx) = mpsc::channel(16);
        let timing = Timing {
            poll: Duration::from_millis(10),
            ..Timing::default()
        };
        let task = tokio::spawn(lab.source.run(tx, timing));
        assert_eq!(recv(&mut rx).await, "resync [Namespace shop]");
        let pod = fixtures::pod("shop", "db", "10.244.1.9");
        let path = lab.dir.path().join("db.yaml");
        fs::write(&path, pod).unwrap();
        assert_eq!(recv(&mut rx).await, "apply Pod shop/db");

        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("run returns once the receiver is dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn changes_arrive_on_the_watch_without_waiting_for_a_poll() {
        let lab = Lab::new();
        lab.write("ns.yaml", NAMESPACE);
        let (tx, mut rx) = mpsc::channel(16);
        // No poll would come within the test's life: only the watch can
        // trigger the scans.
        let hour = Duration::from_secs(3600);
        let timing = Timing {
            poll: hour,
            safety_poll: hour,
            ..Timing::default()
        };
        let task = tokio::spawn(lab.source.run(tx, timing));
        assert_eq!(recv(&mut rx).await, "resync [Namespace shop]");
        // Written in place (truncate, write): read while recent, taken on
        // the settle read.
        fs::write(
            lab.dir.path().join("db.yaml"),
            fixtures::pod("shop", "db", "10.244.1.9"),
        )
        .unwrap();
        assert_eq!(recv(&mut rx).await, "apply Pod shop/db");
        // Renamed over, in a subdirectory created after the watch began.
        let sub = lab.dir.path().join("more");
        fs::create_dir(&sub).unwrap();
        let tmp = lab.dir.path().join(".web.tmp");
        fs::write(&tmp, fixtures::pod("shop", "web", "10.244.1.10")).unwrap();
        fs::rename(&tmp, sub.join("web.yaml")).unwrap();
        assert_eq!(recv(&mut rx).await, "apply Pod shop/web");
        fs::remove_file(lab.dir.path().join("db.yaml")).unwrap();
        assert_eq!(recv(&mut rx).await, "delete Pod shop/db");
        task.abort();
    }

    #[tokio::test]
    async fn a_file_still_open_for_writing_is_not_taken() {
        use std::io::Write as _;
        let lab = Lab::new();
        lab.write("ns.yaml", NAMESPACE);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(lab.source.run(tx, Timing::default()));
        assert_eq!(recv(&mut rx).await, "resync [Namespace shop]");
        // A writer that stalls after a prefix that parses on its own, for
        // many settle intervals.
        let mut file = fs::File::create(lab.dir.path().join("pods.yaml")).unwrap();
        file.write_all(fixtures::pod("shop", "db", "10.244.1.9").as_bytes())
            .unwrap();
        let early = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(
            early.is_err(),
            "taken mid-write: {:?}",
            early.map(|e| e.as_ref().map(describe))
        );
        file.write_all(b"\n---\n").unwrap();
        file.write_all(fixtures::pod("shop", "web", "10.244.1.10").as_bytes())
            .unwrap();
        drop(file);
        let mut got = vec![recv(&mut rx).await, recv(&mut rx).await];
        got.sort();
        assert_eq!(got, ["apply Pod shop/db", "apply Pod shop/web"]);
        task.abort();
    }
}
