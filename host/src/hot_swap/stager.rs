//! Turns swap requests into staged modules, one at a time, off the hot
//! path: compile, link, probe and instantiate on a blocking thread.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::runtime::{self, Compiled, Guest, ModuleFile, Runtime, World};

use super::{Answer, KEPT_REFUSALS, Refusal, Request, Shared, Staged};

/// Compiles, probes and instantiates the module at `path`.
pub(super) async fn accept<W: World>(
    runtime: Arc<Runtime>,
    path: PathBuf,
) -> Result<(Arc<Compiled<W>>, Guest<W>), runtime::Error> {
    tokio::task::spawn_blocking(move || {
        let module = Compiled::<W>::compile(&runtime, &path)?;
        Compiled::probe(&module)?;
        let guest = Compiled::guest(&module)?;
        Ok((module, guest))
    })
    .await
    .map_err(|e| runtime::Error::Engine(format!("preparing a module: {e}")))?
}

/// Serves requests until every sender is gone.
pub(super) async fn run<W: World>(
    runtime: Arc<Runtime>,
    shared: Arc<Shared<W>>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    while let Some(request) = requests.recv().await {
        let answer = handle(&runtime, &shared, request.path, request.trigger).await;
        if let Some(reply) = request.reply {
            let _ = reply.send(answer);
        }
    }
}

async fn handle<W: World>(
    runtime: &Arc<Runtime>,
    shared: &Arc<Shared<W>>,
    path: Option<PathBuf>,
    trigger: &'static str,
) -> Answer {
    let (active, staged) = {
        let inner = shared.lock();
        (inner.status.active.clone(), inner.status.staged.clone())
    };
    let path = path.unwrap_or_else(|| active.path.clone());
    // The same bytes as the module running (or about to) change nothing.
    let reading = path.clone();
    let read = tokio::task::spawn_blocking(move || ModuleFile::read(&reading)).await;
    if let Ok(Ok((_, file))) = read {
        let newest = staged.as_ref().unwrap_or(&active);
        if file.sha256 == newest.sha256 {
            // The file watcher reacts to any change in the folder.
            if trigger == "file change" {
                tracing::debug!(module = %path.display(), "module file unchanged");
            } else {
                tracing::info!(trigger, module = %path.display(), sha256 = %file.sha256, "module unchanged; nothing to swap");
            }
            return Answer::Unchanged(file);
        }
    }
    match accept::<W>(runtime.clone(), path.clone()).await {
        Ok((module, guest)) => {
            let file = module.file().clone();
            tracing::info!(
                trigger,
                module = %path.display(),
                sha256 = %file.sha256,
                "module accepted; it takes over at the next batch boundary"
            );
            let mut inner = shared.lock();
            inner.status.staged = Some(file.clone());
            // A newer request wins over a module staged but not yet swapped in.
            inner.staged = Some(Staged { module, guest, trigger });
            Answer::Staged(file)
        }
        Err(e) => Answer::Refused(refuse(shared, path, trigger, e.to_string())),
    }
}

/// Logs and keeps a refusal (the status shows the last `KEPT_REFUSALS`);
/// returns its reason.
pub(super) fn refuse<W: World>(shared: &Shared<W>, path: PathBuf, trigger: &'static str, reason: String) -> String {
    tracing::warn!(trigger, module = %path.display(), %reason, "module refused; the running module stays");
    metrics::counter!(crate::ops::metrics::SWAP_REFUSALS).increment(1);
    let mut inner = shared.lock();
    let refusals = &mut inner.status.refusals;
    if refusals.len() == KEPT_REFUSALS {
        refusals.remove(0);
    }
    refusals.push(Refusal {
        path,
        trigger,
        reason: reason.clone(),
    });
    reason
}
