//! Stopping a run cleanly: a signal asks once, every writer finishes (or
//! rolls back) the batch in hand at its next batch boundary, and the run
//! reports which tables stopped.

use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};

/// The side that asks a run to stop.
#[derive(Debug)]
pub struct StopHandle(watch::Sender<bool>);

/// The side that watches for a stop request; cheap to clone.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

/// A connected pair.
pub fn channel() -> (StopHandle, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopHandle(tx), Stop(rx))
}

impl StopHandle {
    /// Asks every watcher to stop at its next batch boundary.
    pub fn request(&self) {
        let _ = self.0.send(true);
    }
}

impl Default for Stop {
    fn default() -> Stop {
        Stop::never()
    }
}

impl Stop {
    /// A watcher that is never asked to stop.
    pub fn never() -> Stop {
        let (tx, rx) = watch::channel(false);
        drop(tx);
        Stop(rx)
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is requested; never, for a watcher no one can
    /// ask.
    pub async fn requested_wait(&mut self) {
        if self.0.wait_for(|asked| *asked).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// An [`ErrorKind::Interrupted`] error when a stop was requested.
    pub fn check(&self, table: &str, done: &str) -> Result<()> {
        if self.requested() {
            return Err(Error::new(
                ErrorKind::Interrupted,
                format!("`{table}` stopped on request {done}; the next run resumes from there"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reaches_every_clone() {
        let (handle, stop) = channel();
        let other = stop.clone();
        assert!(stop.check("t", "").is_ok());
        handle.request();
        assert!(other.requested());
        assert_eq!(
            stop.check("t", "after 3 batches").unwrap_err().kind(),
            ErrorKind::Interrupted
        );
        assert!(!Stop::never().requested());
    }
}
