//! Wake-ups for the manifest directory source: an inotify watch (through
//! `notify`) on the directory tree, so a change is scanned within
//! milliseconds instead of at the next poll. It only says *that* something
//! changed; the scan still decides what (and the polling stays, slower, as
//! a safety net for what inotify misses: a full event queue, a tree
//! replaced under the watch, file systems without inotify).
//!
//! It also knows which files a writer still holds open (modified, not yet
//! closed after writing): the scan leaves those for later, however long
//! the writer stalls, instead of taking a prefix that happens to parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::Notify;

/// How long a file counts as being written after its last modification
/// without a close: a lost close event (a full queue) must not hold the
/// file back forever.
const WRITING_HOLD: Duration = Duration::from_secs(2);

/// A live watch; dropping it stops watching.
pub struct DirWatch {
    changed: Arc<Notify>,
    writing: Arc<Mutex<Writing>>,
    _watcher: notify::RecommendedWatcher,
}

/// Files modified and not yet closed, with when they were last modified.
#[derive(Debug, Default)]
struct Writing(BTreeMap<PathBuf, Instant>);

impl Writing {
    fn record(&mut self, event: &notify::Event, now: Instant) {
        use notify::event::{CreateKind, ModifyKind};
        for path in &event.paths {
            match event.kind {
                EventKind::Create(CreateKind::File | CreateKind::Any)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                    self.0.insert(path.clone(), now);
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => {
                    self.0.remove(path);
                }
                _ => {}
            }
        }
    }

    fn held(&mut self, now: Instant) -> BTreeMap<PathBuf, Instant> {
        self.0
            .retain(|_, at| now.saturating_duration_since(*at) < WRITING_HOLD);
        self.0.clone()
    }
}

impl DirWatch {
    /// Watches `dir` and everything below it.
    pub fn start(dir: &Path) -> notify::Result<Self> {
        let changed = Arc::new(Notify::new());
        let writing = Arc::new(Mutex::new(Writing::default()));
        let (wake, record) = (changed.clone(), writing.clone());
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = notify::RecommendedWatcher::new(
            move |event: notify::Result<notify::Event>| {
                // An error (a queue overflow among them) may hide a change:
                // a scan finds out.
                if let Ok(event) = &event {
                    let mut writing = record.lock().unwrap_or_else(PoisonError::into_inner);
                    writing.record(event, Instant::now());
                }
                if event.map_or(true, |e| wakes(&e.kind)) {
                    wake.notify_one();
                }
            },
            config,
        )?;
        watcher.watch(dir, RecursiveMode::Recursive)?;
        Ok(Self {
            changed,
            writing,
            _watcher: watcher,
        })
    }

    /// The files a writer is still writing, as far as the events tell.
    pub fn writing(&self) -> Vec<PathBuf> {
        let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        writing.held(Instant::now()).into_keys().collect()
    }

    /// Returns once something changed since the last return (changes in
    /// between coalesce into one wake-up).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Whether an event can mean new content. Opening and reading change
/// nothing, and the scan's own reads cause them: waking on those would
/// scan forever.
fn wakes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, ModifyKind, RenameMode};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn a_file_is_being_written_from_its_change_to_its_close() {
        let mut writing = Writing::default();
        let t0 = Instant::now();
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        writing.record(&event(EventKind::Create(CreateKind::File), "/d/a.yaml"), t0);
        writing.record(&event(data, "/d/b.yaml"), t0);
        writing.record(
            &event(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/d/c.yaml",
            ),
            t0,
        );
        let held: Vec<_> = writing.held(t0).into_keys().collect();
        assert_eq!(
            held,
            [PathBuf::from("/d/a.yaml"), PathBuf::from("/d/b.yaml")]
        );
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        writing.record(&event(close, "/d/a.yaml"), t0);
        let held: Vec<_> = writing.held(t0).into_keys().collect();
        assert_eq!(held, [PathBuf::from("/d/b.yaml")]);
        // A close never seen (a lost event) stops holding the file back.
        assert!(writing.held(t0 + WRITING_HOLD).is_empty());
    }

    #[test]
    fn reads_do_not_wake_and_writes_do() {
        assert!(!wakes(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!wakes(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(wakes(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(wakes(&EventKind::Create(CreateKind::File)));
        assert!(wakes(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(wakes(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(wakes(&EventKind::Any));
    }
}
