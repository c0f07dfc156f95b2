//! What asks for a swap besides the admin endpoint: a change of the module
//! file, and SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Error, Request};

/// Quiet time after the last change before the file is read: a copy in
/// progress settles first.
const SETTLE: Duration = Duration::from_millis(250);

/// Watches the module file's folder and asks for a swap once changes in it
/// settle: an editor or a deploy replaces the file by renaming a new one
/// over it, and a Kubernetes ConfigMap by swapping the `..data` link the
/// file points through, so any write in the folder counts; the stager
/// compares the file's sha256 with the running module's.
pub(super) struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl FileWatcher {
    pub(super) fn start(path: &Path, requests: mpsc::UnboundedSender<Request>) -> Result<Self, Error> {
        let watch_error = |reason: String| Error::Watch {
            path: path.display().to_string(),
            reason,
        };
        let path = std::path::absolute(path).map_err(|e| watch_error(e.to_string()))?;
        let folder = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let (changed, mut changes) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Reads (ours included) are not changes.
            let writes = matches!(
                event.kind,
                EventKind::Create(_)
                    | EventKind::Modify(_)
                    | EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write))
            );
            if writes {
                let _ = changed.send(());
            }
        })
        .map_err(|e| watch_error(e.to_string()))?;
        watcher
            .watch(&folder, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(e.to_string()))?;
        tokio::spawn(async move {
            while changes.recv().await.is_some() {
                loop {
                    match tokio::time::timeout(SETTLE, changes.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_settled) => break,
                    }
                }
                let request = Request {
                    path: Some(path.clone()),
                    trigger: "file change",
                    reply: None,
                };
                if requests.send(request).is_err() {
                    return;
                }
            }
        });
        Ok(Self { _watcher: watcher })
    }
}

/// SIGHUP reloads the active module's file (and no longer ends the process).
pub(super) fn on_sighup(requests: mpsc::UnboundedSender<Request>) {
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; swap through the file or the admin endpoint");
            return;
        };
        while hangups.recv().await.is_some() {
            let request = Request {
                path: None,
                trigger: "SIGHUP",
                reply: None,
            };
            if requests.send(request).is_err() {
                return;
            }
        }
    });
}
