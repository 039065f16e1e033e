//! A one-shot pause point: a decorated call that reaches an armed [`Hold`] reports it and waits
//! until the test releases it. This is how the model test makes a sweep (or a request) read a
//! state, lets other steps run, and then lets it finish with what it read, deterministically and
//! without sleeps.

use std::sync::Mutex;

use tokio::sync::oneshot;

struct Armed {
    entered: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// One pause point (disarmed by default).
#[derive(Default)]
pub(crate) struct Hold {
    armed: Mutex<Option<Armed>>,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").finish_non_exhaustive()
    }
}

/// The test's side of an armed [`Hold`].
pub(crate) struct Armer {
    /// Resolves when a call reached the hold (and now waits).
    pub(crate) entered: oneshot::Receiver<()>,
    /// Send (or drop) to let the waiting call go on.
    pub(crate) release: oneshot::Sender<()>,
}

impl Hold {
    /// Arms the hold for the next call that passes it.
    pub(crate) fn arm(&self) -> Armer {
        let (entered_tx, entered_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some(Armed {
            entered: entered_tx,
            release: release_rx,
        });
        Armer {
            entered: entered_rx,
            release: release_tx,
        }
    }

    /// Disarms it (the held task finished without reaching it).
    pub(crate) fn disarm(&self) {
        self.armed.lock().unwrap().take();
    }

    /// Waits here if armed (once), until released.
    pub(crate) async fn pass(&self) {
        let armed = self.armed.lock().unwrap().take();
        if let Some(armed) = armed {
            let _ = armed.entered.send(());
            let _ = armed.release.await;
        }
    }
}
