//! Keeping a view of the store up to date: rebuild it at start, then after every burst of
//! changes that concern it.

use std::future::Future;
use std::time::Duration;

use kuma_core::manager::ResourceManager;
use kuma_core::resource::ResourceKey;
use tokio::sync::broadcast::error::RecvError;

/// Changes arriving within this window after the first are handled together.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Runs `rebuild` once, then again after each burst of store changes to a key that
/// `concerns` picks (and after missed changes), until the store's change stream ends. The
/// stream is subscribed before the first rebuild, so no change slips between the two.
pub async fn rebuild_on_changes<F, Fut>(
    manager: &ResourceManager,
    concerns: impl Fn(&ResourceKey) -> bool,
    mut rebuild: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut events = manager.store().watch();
    rebuild().await;
    loop {
        match events.recv().await {
            Ok(e) if concerns(&e.key) => {}
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        tokio::time::sleep(DEBOUNCE).await;
        while events.try_recv().is_ok() {}
        rebuild().await;
    }
}
