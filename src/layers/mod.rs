//! The tower layers every call passes, outermost first: its span and log
//! line ([`calls`]), its limits and deadline ([`limits`]), and its admission
//! (credential and tenant, [`routing`]). [`crate::server`] stacks them in one
//! `ServiceBuilder`; services below them receive an admitted call.

pub mod calls;
pub mod limits;
pub mod routing;

/// The inner service a layer's `call` must use: the one `poll_ready` made
/// ready, taken out of the layer, which keeps a clone in its place for the
/// next call. A fresh clone has not been polled ready, so calling it could
/// break a service that reserves capacity in `poll_ready` (tower's
/// clone-and-swap idiom).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
